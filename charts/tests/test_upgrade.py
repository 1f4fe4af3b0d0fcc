"""`helm upgrade` keeps both CAs. `lookup` returns nothing under plain
`helm template`, so the upgrade is rendered with `--dry-run=server` against a
fake API server (fake_apiserver.py) that serves the Secrets the install
rendered: the chart's real lookup code path, no cluster."""

import base64

import yaml

from conftest import CHART, NAMESPACE, RELEASE, find, helm, render
from fake_apiserver import FakeAPIServer


def as_installed(objs):
    """The install's Secrets as the API server would return them (helm's
    ownership annotations included, or helm refuses to adopt them)."""
    out = {}
    for o in objs:
        if o["kind"] == "Secret":
            o = yaml.safe_load(yaml.safe_dump(o))
            o["metadata"].setdefault("annotations", {}).update({
                "meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE})
            out[(NAMESPACE, o["metadata"]["name"])] = o
    return out


def render_against(secrets, tmp_path, *args):
    with FakeAPIServer(secrets) as api:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                   "--disable-openapi-validation", "--kubeconfig", str(kubeconfig), *args).stdout
        looked_up = [r for r in api.requests if "/secrets/" in r]
    return [d for d in yaml.safe_load_all(out) if d], looked_up


def ca_bundle(objs):
    return find(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]


def pod_template(objs, kind):
    return find(objs, kind)["spec"]["template"]


def test_upgrade_keeps_the_interception_ca_and_the_webhook_certificate(tmp_path):
    installed = render()
    secrets = as_installed(installed)
    upgraded, looked_up = render_against(secrets, tmp_path, "--set", "tproxy.flowDetail=2")
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/tproxy-ca" in looked_up
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/tproxy-initializer-tls" in looked_up
    for name in ("tproxy-ca", "tproxy-initializer-tls"):
        assert find(upgraded, "Secret", name)["data"] == secrets[(NAMESPACE, name)]["data"], f"{name} changed"
    # caBundle still the CA of the kept serving certificate.
    assert ca_bundle(upgraded) == ca_bundle(installed)
    assert base64.b64decode(ca_bundle(upgraded)) == base64.b64decode(
        secrets[(NAMESPACE, "tproxy-initializer-tls")]["data"]["ca.crt"])
    # Same CA → same checksum: the upgrade rolls the proxies only for the flag.
    for kind in ("DaemonSet", "Deployment"):
        assert (pod_template(upgraded, kind)["metadata"]["annotations"]["checksum/ca"]
                == pod_template(installed, kind)["metadata"]["annotations"]["checksum/ca"])


def test_without_the_secrets_the_upgrade_would_mint_new_ones(tmp_path):
    """The control: the same render with an empty API server makes new CAs,
    so the test above could fail."""
    installed = render()
    fresh, _ = render_against({}, tmp_path)
    assert find(fresh, "Secret", "tproxy-ca")["data"] != find(installed, "Secret", "tproxy-ca")["data"]
    assert ca_bundle(fresh) != ca_bundle(installed)


def test_incomplete_secret_is_replaced_not_half_used(tmp_path):
    installed = render()
    secrets = as_installed(installed)
    del secrets[(NAMESPACE, "tproxy-initializer-tls")]["data"]["ca.crt"]
    upgraded, _ = render_against(secrets, tmp_path)
    tls = find(upgraded, "Secret", "tproxy-initializer-tls")["data"]
    assert tls["ca.crt"] == ca_bundle(upgraded)
    assert tls["tls.crt"] != secrets[(NAMESPACE, "tproxy-initializer-tls")]["data"]["tls.crt"]


def test_a_rules_change_does_not_roll_the_daemonset(tmp_path):
    secrets = as_installed(render())
    before, _ = render_against(secrets, tmp_path)
    after, _ = render_against(secrets, tmp_path, "--set", "rules.default.action=deny")
    assert find(after, "ConfigMap", "tproxy-rules")["data"] != find(before, "ConfigMap", "tproxy-rules")["data"]
    assert pod_template(after, "DaemonSet") == pod_template(before, "DaemonSet")
