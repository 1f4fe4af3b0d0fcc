"""The chart rendered and checked against real things: helm lint, the
Kubernetes OpenAPI schemas, the binaries' own --help and config loaders,
openssl/curl for the webhook's certificate, tproxy and mitmproxy for the CA."""

import base64
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, NAMESPACE, REPO, find, helm, render
from crd_schemas import CRD_SCHEMAS

# The seed's CA step: a confdir made by `tproxy ca init` (session fixture below).
USER_CA = "user-ca"

# The values matrix of issue #12. Each entry: extra helm args.
MATRIX = {
    "defaults": [],
    "seed-sidecar": ["--set", "tproxy.blockSvcCIDR=10.11.240.0/20", "--set", "tproxy.allowDNS=10.11.240.10"],
    "standard-mode-proxy": ["--set", "tproxy.addStandardModeProxy=true"],
    "standard-mode-pods": ["--set", "tproxy.addStandardModeProxy=true", "--set", "initializer.proxyMode=standard"],
    "no-rbac": ["--set", "tproxy.useRBAC=false"],
    "no-initializer": ["--set", "tproxy.useInitializer=false"],
    "monitoring": [
        "--set", "serviceMonitor.enabled=true",
        "--set", "prometheusRule.enabled=true",
        "--set", "tproxy.otlpEndpoint=http://otel-collector.monitoring:4318",
        "--set", "tproxy.tracesSampler=parentbased_traceidratio",
        "--set", "tproxy.tracesSamplerArg=0.1",
    ],
    "user-ca": [USER_CA],
    "existing-secret": ["--set", "ca.existingSecret=my-mitmproxy-ca"],
    "cert-manager": ["--set", "initializer.certManager.enabled=true"],
    "namespaced-podwatch": ["--set", "podwatch.namespaces={shop,batch}"],
}

# Kubernetes versions validated against: the chart's minimum and the newest
# kubernetes-validate bundles.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


@pytest.fixture(scope="session")
def user_ca(binaries, tmp_path_factory):
    """A confdir from `tproxy ca init`: the seed's `certs/` step."""
    d = tmp_path_factory.mktemp("user-ca")
    subprocess.run([binaries["tproxy"], "ca", "init", "--confdir", d], check=True, capture_output=True)
    return d


def expand(args, user_ca):
    out = []
    for a in args:
        if a == USER_CA:
            out += ["--set-file", f"ca.pem={user_ca / 'mitmproxy-ca.pem'}"]
        else:
            out.append(a)
    return out


@pytest.fixture(scope="session")
def rendered(user_ca):
    """Every matrix entry rendered once: name → list of objects."""
    return {name: render(*expand(args, user_ca)) for name, args in MATRIX.items()}


def container(objs, name):
    ds = find(objs, "DaemonSet")
    for c in ds["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def flag(args, name):
    """Value of --name=VALUE in args (the chart always uses the = form)."""
    vals = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(vals) == 1, f"--{name} appears {len(vals)} times in {args}"
    return vals[0]


def secret_data(obj):
    return {k: base64.b64decode(v) for k, v in obj["data"].items()}


# --- lint and schemas ------------------------------------------------------


@pytest.mark.parametrize("name", MATRIX)
def test_lint_strict(name, user_ca):
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *expand(MATRIX[name], user_ca))
    assert "0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MATRIX)
def test_objects_validate_strictly(name, version, rendered):
    """Every object against the OpenAPI schema of that Kubernetes version,
    unknown fields rejected. Custom resources (prometheus-operator,
    cert-manager) have no schema there: they are checked against the closed
    schemas in crd_schemas.py instead — never skipped."""
    objs = rendered[name]
    assert objs
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[key])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            pytest.fail(f"{name}: {label} invalid for {version}: {e.message} at {list(e.path)}")
        except kubernetes_validate.utils.SchemaNotFoundError:
            pytest.fail(f"{name}: no schema for {label} ({obj['apiVersion']}) in {version}: add it to crd_schemas.py")


def test_every_object_is_labelled_and_namespaced(rendered):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    for name, objs in rendered.items():
        for obj in objs:
            meta = obj["metadata"]
            labels = meta.get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                        "app.kubernetes.io/managed-by", "helm.sh/chart"):
                assert key in labels, f"{name}: {obj['kind']}/{meta['name']} lacks label {key}"
            if obj["kind"] in cluster_scoped:
                assert "namespace" not in meta
            elif obj["kind"] in ("Role", "RoleBinding"):
                # podwatch's Roles live in the namespaces it watches.
                assert meta["namespace"] in ("shop", "batch"), meta
            else:
                assert meta.get("namespace") == NAMESPACE, f"{obj['kind']}/{meta['name']}"


def test_typo_in_a_value_fails_the_schema():
    for bad, needle in [
        (["--set", "tproxy.hostPrt=8080"], "hostPrt"),
        (["--set", "images.tproxy_regsitry=x"], "tproxy_regsitry"),
        (["--set", "serviceMonitor.enable=true"], "enable"),
        (["--set", "tproxy.hostPort=0"], "hostPort"),
        (["--set", "tproxy.flowDetail=9"], "flowDetail"),
        (["--set", "podwatch.backend=ebpf"], "backend"),
        (["--set", "tproxy.allowDNS=dns.local"], "allowDNS"),
        (["--set", "initializer.failurePolicy=fail"], "failurePolicy"),
    ]:
        proc = helm("template", "t", str(CHART), *bad, check=False)
        assert proc.returncode != 0, f"{bad} was accepted"
        assert needle in proc.stderr and "schema" in proc.stderr, proc.stderr


def test_schema_is_generated_and_closed():
    proc = subprocess.run([sys.executable, str(REPO / "charts/tests/gen_schema.py"), "--check"])
    assert proc.returncode == 0, "values.schema.json is stale: run python3 charts/tests/gen_schema.py"
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(s, v, path):
        if s.get("type") == "object" and "properties" in s:
            assert s.get("additionalProperties") is False, f"{path} is open"
            assert isinstance(v, dict), path
            assert set(v) <= set(s["properties"]), f"{path}: values.yaml has keys the schema lacks"
            for k, sub in s["properties"].items():
                if k in v:
                    walk(sub, v[k], f"{path}.{k}")
        jsonschema.validate(v, s)

    walk(schema, values, "values")
    # Every value in values.yaml is documented in the chart README.
    readme = (CHART / "README.md").read_text()

    def leaves(v, path):
        if isinstance(v, dict) and v and path not in ("rules", "tproxy.resources", "podwatch.resources",
                                                      "initializer.resources", "nodeSelector",
                                                      "initializer.objectSelector"):
            for k, sub in v.items():
                yield from leaves(sub, f"{path}.{k}" if path else k)
        else:
            yield path

    for leaf in leaves(values, ""):
        assert f"`{leaf}`" in readme, f"value {leaf} is not in charts/tproxy/README.md"


def test_chart_version_is_the_workspace_version():
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert chart["version"] == version
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.29.0-0"


# --- the DaemonSet is runnable as rendered ---------------------------------


def volume_for(pod_spec, c, path):
    """The volume (and the mount) under which `path` lies in container c."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    assert best, f"{path} is under no volumeMount of {c['name']}"
    vol = next(v for v in pod_spec["volumes"] if v["name"] == best["name"])
    return vol, best


@pytest.mark.parametrize("name", MATRIX)
def test_proxy_args_name_paths_the_volumes_mount(name, rendered):
    objs = rendered[name]
    ds = find(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    proxy = container(objs, "proxy")
    podwatch = container(objs, "podwatch")
    args = proxy["args"]

    # --confdir: the CA Secret, read-only, holding mitmproxy-ca.pem.
    confdir = flag(args, "confdir")
    vol, mount = volume_for(pod, proxy, confdir)
    assert mount["mountPath"] == confdir and mount.get("readOnly") is True and "subPath" not in mount
    secret_name = vol["secret"]["secretName"]
    assert {i["path"] for i in vol["secret"]["items"]} == {"mitmproxy-ca.pem", "mitmproxy-ca-cert.pem"}
    if name == "existing-secret":
        assert secret_name == "my-mitmproxy-ca"
        assert not [o for o in objs if o["kind"] == "Secret" and "mitmproxy-ca.pem" in o.get("data", {})]
    else:
        assert "mitmproxy-ca.pem" in find(objs, "Secret", secret_name)["data"]

    # --rules: a ConfigMap mounted as a directory (no subPath: kubelet's
    # atomic update must be visible), with that key.
    rules = flag(args, "rules")
    vol, mount = volume_for(pod, proxy, rules)
    assert "subPath" not in mount
    cm = find(objs, "ConfigMap", vol["configMap"]["name"])
    key = rules[len(mount["mountPath"].rstrip("/")) + 1:]
    assert key in cm["data"], f"{key} not in {cm['metadata']['name']}"
    assert "items" not in vol["configMap"]

    # --pod-directory: the emptyDir podwatch writes (same path in both).
    pdir = flag(args, "pod-directory")
    vol, _ = volume_for(pod, proxy, pdir)
    assert "emptyDir" in vol
    assert flag(podwatch["args"], "pod-directory") == pdir
    vol2, mount2 = volume_for(pod, podwatch, pdir)
    assert vol2["name"] == vol["name"] and not mount2.get("readOnly")

    # Listeners: transparent on hostPort (podwatch REDIRECTs there), regular on 1080 when asked.
    modes = [a.split("=", 1)[1] for a in args if a.startswith("--mode=")]
    # One dual-stack socket: podwatch redirects IPv6 too (podwatch.ipv6).
    assert modes[0] == "transparent@[::]:8080"
    assert flag(podwatch["args"], "proxy-port") == "8080"
    assert flag(podwatch["args"], "ipv6") == "true"
    if "standard" in name:
        assert modes[1:] == ["regular@[::]:1080"]
    else:
        assert modes[1:] == []

    # Admin on the node IP, and the probes on it.
    admin = flag(args, "admin")
    assert admin == "$(NODE_IP):9090"
    env = {e["name"]: e for e in proxy["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}

    # podwatch: node name from the downward API, the API through the service account.
    penv = {e["name"]: e for e in podwatch["env"]}
    assert penv["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod.get("automountServiceAccountToken", True) is True
    assert set(podwatch["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}

    # Host network, surge rollout, no host ports, grace > --shutdown-timeout.
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    ru = ds["spec"]["updateStrategy"]["rollingUpdate"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert (ru["maxSurge"], ru["maxUnavailable"]) == (1, 0)
    for c in pod["containers"]:
        assert "ports" not in c, f"{c['name']} declares ports: they would be host ports and block the surge pod"
    assert pod["terminationGracePeriodSeconds"] > int(flag(args, "shutdown-timeout"))

    # The proxy runs unprivileged; its Secret is group-readable by its group.
    sc = proxy["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["fsGroup"] == 65532

    # Checksums: the CA rolls the pods, the rules must not (they reload live).
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/ca" in ann
    assert not any("rules" in k for k in ann), ann


def test_ipv6_off_listens_on_ipv4_only():
    objs = render("--set", "podwatch.ipv6=false", "--set", "tproxy.addStandardModeProxy=true")
    args = container(objs, "proxy")["args"]
    assert [a for a in args if a.startswith("--mode=")] == ["--mode=transparent@0.0.0.0:8080",
                                                           "--mode=regular@0.0.0.0:1080"]
    assert flag(container(objs, "podwatch")["args"], "ipv6") == "false"


def test_max_connections_follows_the_memory_limit_or_the_value():
    def args(*sets):
        objs = render(*[x for s in sets for x in ("--set", s)])
        return container(objs, "proxy")["args"]

    # 256Mi: (256 - 48) * 1024 / 64 connections.
    assert flag(args(), "max-connections") == "3328"
    assert flag(args("tproxy.resources.limits.memory=1Gi"), "max-connections") == "15616"
    assert flag(args("tproxy.maxConnections=500"), "max-connections") == "500"
    for no_flag in (args("tproxy.maxConnections=0"), args("tproxy.resources.limits.memory=268435456")):
        assert not [a for a in no_flag if a.startswith("--max-connections")], no_flag
    proc = helm("template", "t", str(CHART), "--set", "tproxy.maxConnections=-1", check=False)
    assert proc.returncode != 0 and "maxConnections" in proc.stderr, proc.stderr


def test_tracing_and_sampler_reach_the_proxy(rendered):
    proxy = container(rendered["monitoring"], "proxy")
    assert flag(proxy["args"], "otlp-endpoint") == "http://otel-collector.monitoring:4318"
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    plain = container(rendered["defaults"], "proxy")
    assert not [a for a in plain["args"] if a.startswith("--otlp")]
    assert "OTEL_TRACES_SAMPLER" not in {e["name"] for e in plain["env"]}


def test_allow_client_cidrs_render_one_flag_each_and_none_by_default(rendered):
    assert not [a for a in container(rendered["defaults"], "proxy")["args"] if a.startswith("--allow-client")]
    objs = render("--set", "tproxy.allowClientCIDRs={10.244.0.0/16,fd00:10:244::/56}")
    args = container(objs, "proxy")["args"]
    assert [a for a in args if a.startswith("--allow-client")] == [
        "--allow-client=10.244.0.0/16", "--allow-client=fd00:10:244::/56"]


def help_flags(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--([a-z0-9][a-z0-9-]*)", out))


@pytest.mark.parametrize("name", MATRIX)
def test_every_rendered_flag_exists_in_its_binary(name, rendered, binaries):
    """The e2e harness runs the binaries with the rendered args: a flag the
    binary does not know would stop the pod."""
    objs = rendered[name]
    pods = [(find(objs, "DaemonSet")["spec"]["template"]["spec"], {"proxy": "tproxy", "podwatch": "tproxy-podwatch"})]
    if name != "no-initializer":
        pods.append((find(objs, "Deployment")["spec"]["template"]["spec"], {"initializer": "tproxy-initializer"}))
    known = {}
    for spec, by_container in pods:
        for c in spec["containers"]:
            binary = by_container[c["name"]]
            known.setdefault(binary, help_flags(binaries[binary]))
            for a in c["args"]:
                if a.startswith("--"):
                    f = a[2:].split("=", 1)[0]
                    assert f in known[binary], f"{c['name']}: {binary} has no --{f}"


def test_rules_default_and_readme_example_pass_tproxy_rules_check(rendered, binaries, tmp_path):
    cm = find(rendered["defaults"], "ConfigMap", "tproxy-rules")
    f = tmp_path / "rules.yaml"
    f.write_text(cm["data"]["rules.yaml"])
    subprocess.run([binaries["tproxy"], "rules", "check", f], check=True, capture_output=True)
    # The chart README's bucket example, as `rules:` values.
    readme = (CHART / "README.md").read_text()
    block = re.search(r"```yaml\n(rules:\n  rules:.*?)```", readme, re.S).group(1)
    values = tmp_path / "bucket-values.yaml"
    values.write_text(block)
    objs = render("-f", str(values))
    f.write_text(find(objs, "ConfigMap", "tproxy-rules")["data"]["rules.yaml"])
    out = subprocess.run([binaries["tproxy"], "rules", "check", f], check=True, capture_output=True, text=True)
    assert "bucket" in out.stdout + out.stderr


def test_podwatch_rbac_is_what_it_uses(rendered):
    objs = rendered["defaults"]
    pod = find(objs, "DaemonSet")["spec"]["template"]["spec"]
    role = find(objs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = find(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]
    find(objs, "ServiceAccount", pod["serviceAccountName"])
    # The webhook: an account with no roles and no token.
    dep = find(objs, "Deployment")["spec"]["template"]["spec"]
    assert dep["automountServiceAccountToken"] is False
    bound = {s["name"] for o in objs if o["kind"].endswith("Binding") for s in o["subjects"]}
    assert dep["serviceAccountName"] not in bound
    # Namespaced podwatch: a Role per namespace instead of the ClusterRole.
    ns = rendered["namespaced-podwatch"]
    assert not [o for o in ns if o["kind"].startswith("Cluster")]
    assert sorted(o["metadata"]["namespace"] for o in ns if o["kind"] == "Role") == ["batch", "shop"]
    assert flag(container(ns, "podwatch")["args"], "namespaces") == "shop,batch"
    # useRBAC=false: no accounts, roles or bindings; the namespace's default account.
    none = rendered["no-rbac"]
    assert not [o for o in none if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    assert find(none, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


# --- the webhook -----------------------------------------------------------


def webhook_parts(objs):
    mwc = find(objs, "MutatingWebhookConfiguration")
    hook = mwc["webhooks"][0]
    tls = find(objs, "Secret", "tproxy-initializer-tls")
    return hook, secret_data(tls)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cabundle_verifies_the_serving_certificate_of_the_running_webhook(rendered, binaries, tmp_path):
    """The real webhook serves the rendered certificate; curl trusts only the
    rendered caBundle and connects by the Service's DNS name."""
    objs = rendered["defaults"]
    hook, tls = webhook_parts(objs)
    svc = hook["clientConfig"]["service"]
    assert svc["path"] == "/mutate" and svc["port"] == 443
    service = find(objs, "Service", svc["name"])
    assert service["metadata"]["namespace"] == svc["namespace"]
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(hook["clientConfig"]["caBundle"]))
    assert ca.read_bytes() == tls["ca.crt"]
    (tmp_path / "tls.crt").write_bytes(tls["tls.crt"])
    (tmp_path / "tls.key").write_bytes(tls["tls.key"])
    subprocess.run(["openssl", "verify", "-CAfile", ca, "-purpose", "sslserver", tmp_path / "tls.crt"], check=True,
                   capture_output=True)
    port = free_port()
    proc = subprocess.Popen([binaries["tproxy-initializer"], f"--listen=127.0.0.1:{port}",
                             f"--tls-cert={tmp_path / 'tls.crt'}", f"--tls-key={tmp_path / 'tls.key'}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        host = f"{svc['name']}.{svc['namespace']}.svc"
        for _ in range(100):
            r = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", ca, "--resolve", f"{host}:{port}:127.0.0.1",
                                f"https://{host}:{port}/healthz"], capture_output=True, text=True)
            if r.returncode != 7:  # 7: not listening yet
                break
            time.sleep(0.1)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_webhook_configuration_matches_the_deployment(rendered):
    objs = rendered["seed-sidecar"]
    hook, _ = webhook_parts(objs)
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and set(excluded["values"]) == {"kube-system", NAMESPACE}
    dep = find(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    service = find(objs, "Service", hook["clientConfig"]["service"]["name"])
    assert service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # cert-manager: no chart-made serving cert, the CA injected by cert-manager.
    cm = rendered["cert-manager"]
    cmhook, = find(cm, "MutatingWebhookConfiguration")["webhooks"]
    assert "caBundle" not in cmhook["clientConfig"]
    ann = find(cm, "MutatingWebhookConfiguration")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    cert = find(cm, "Certificate", ann.split("/")[1])
    assert cert["spec"]["secretName"] == "tproxy-initializer-tls"
    assert f"tproxy-initializer.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert not [o for o in cm if o["kind"] == "Secret" and o["metadata"]["name"] == "tproxy-initializer-tls"]


def initializer_config(objs, tmp_path, ca_pem):
    """The rendered config.yaml, with caCertFile pointed at a copy of the CA
    certificate (the path the Deployment mounts it at, re-rooted)."""
    dep = find(objs, "Deployment")["spec"]["template"]["spec"]
    c = dep["containers"][0]
    cfg_path = flag(c["args"], "config")
    vol, mount = volume_for(dep, c, cfg_path)
    cm = find(objs, "ConfigMap", vol["configMap"]["name"])
    text = cm["data"][cfg_path[len(mount["mountPath"]) + 1:]]
    ca_path = yaml.safe_load(text)["caBundle"]["caCertFile"]
    cavol, camount = volume_for(dep, c, ca_path)
    assert camount.get("readOnly") is True
    assert [i["key"] for i in cavol["secret"]["items"]] == ["mitmproxy-ca-cert.pem"], "the webhook must not see the CA key"
    local_ca = tmp_path / "mitmproxy-ca-cert.pem"
    local_ca.write_bytes(ca_pem)
    f = tmp_path / "config.yaml"
    f.write_text(text.replace(ca_path, str(local_ca)))
    return f


@pytest.mark.parametrize("name", ["defaults", "seed-sidecar", "standard-mode-pods", "user-ca"])
def test_initializer_loads_the_rendered_config_and_injects_the_ca(name, rendered, binaries, tmp_path):
    objs = rendered[name]
    ca = secret_data(find(objs, "Secret", "tproxy-ca"))
    cfg = initializer_config(objs, tmp_path, ca["mitmproxy-ca-cert.pem"])
    out = subprocess.run([binaries["tproxy-initializer"], "--config", cfg, "--print-config"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    init = printed["injection"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["TPROXY_CA_CERT"].strip() == ca["mitmproxy-ca-cert.pem"].decode().strip()
    assert init["image"] == "registry.example.invalid/tproxy/tproxy-sidecar:0.1.0"
    if name == "seed-sidecar":
        assert (env["BLOCK_SVC_CIDR"], env["ALLOW_DNS"]) == ("10.11.240.0/20", "10.11.240.10")
    else:
        assert (env["BLOCK_SVC_CIDR"], env["ALLOW_DNS"]) == ("", "")
    text = json.dumps(printed)
    assert "configMap" not in text, "no per-namespace object may be needed"
    if name == "standard-mode-pods":
        # The node's IP from the downward API: node names do not resolve
        # from pods on many clusters.
        assert "http://$(NODE_IP):1080" in text
        app_env = {e["name"]: e for e in printed["injection"]["env"]}
        assert app_env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    node = next(e for e in init["env"] if e["name"] == "NODE_NAME")
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


def test_standard_proxy_url_is_settable_for_ipv6_nodes():
    objs = render("--set", "initializer.proxyMode=standard", "--set", "tproxy.addStandardModeProxy=true",
                  "--set", "initializer.standardProxyUrl=http://[$(NODE_IP)]:1080")
    text = json.dumps([o for o in objs if o["kind"] == "ConfigMap"])
    assert "http://[$(NODE_IP)]:1080" in text
    proc = helm("template", "t", str(CHART), "--set", "initializer.standardProxyUrl=node:1080", check=False)
    assert proc.returncode != 0 and "standardProxyUrl" in proc.stderr, proc.stderr


def test_sidecar_writes_the_bundle_the_webhook_describes(rendered, binaries, tmp_path):
    """The env the webhook gives the init container, fed to the real sidecar
    binary (--dry-run for the lock: no netfilter here): the bundle holds the
    system roots then the CA, and the app mounts name files it wrote."""
    objs = rendered["defaults"]
    ca = secret_data(find(objs, "Secret", "tproxy-ca"))
    cfg = initializer_config(objs, tmp_path, ca["mitmproxy-ca-cert.pem"])
    printed = json.loads(subprocess.run([binaries["tproxy-initializer"], "--config", cfg, "--print-config"],
                                        capture_output=True, text=True, check=True).stdout)
    conf = printed["injection"]
    init = conf["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"] if "value" in e}
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    roots = tmp_path / "roots.crt"
    system = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
    roots.write_bytes(system.read_bytes() if system.exists() else b"")
    env.update({"TPROXY_CA_BUNDLE_DIR": str(bundle_dir), "TPROXY_SYSTEM_ROOTS": str(roots), "NODE_NAME": "127.0.0.1",
                "PATH": os.environ["PATH"]})
    r = subprocess.run([binaries["tproxy-sidecar"], "--dry-run", "--backend", "iptables-nft"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # --dry-run writes nothing; the real run writes both files.
    assert list(bundle_dir.iterdir()) == []
    from_bundle = write_bundle(binaries, env)
    assert from_bundle["ca-certificates.crt"].startswith(roots.read_bytes())
    assert from_bundle["ca-certificates.crt"].rstrip().endswith(ca["mitmproxy-ca-cert.pem"].rstrip())
    assert from_bundle["tproxy-ca.crt"].strip() == ca["mitmproxy-ca-cert.pem"].strip()
    mounts = conf["volumeMounts"]
    assert {m["subPath"] for m in mounts} == set(from_bundle)
    assert {m["mountPath"] for m in mounts} >= {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"}
    # openssl trusts the CA through the written bundle.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca["mitmproxy-ca-cert.pem"])
    bundle = bundle_dir / "ca-certificates.crt"
    subprocess.run(["openssl", "verify", "-CAfile", bundle, ca_file], check=True, capture_output=True)


def write_bundle(binaries, env):
    """Runs only the sidecar's bundle step: the lock part fails without
    netfilter rights, so this calls it in a fresh network namespace when root,
    else skips."""
    d = pathlib.Path(env["TPROXY_CA_BUNDLE_DIR"])
    if os.geteuid() == 0:
        r = subprocess.run(["unshare", "--net", binaries["tproxy-sidecar"], "--backend", "iptables-nft"], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    else:
        if os.environ.get("CI"):
            pytest.fail("needs root (a network namespace for the sidecar's lock)")
        pytest.skip("not root: the sidecar's lock needs a network namespace")
    return {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")}


# --- the interception CA ---------------------------------------------------


def confdir_from(objs, tmp_path, name="tproxy-ca"):
    """The CA Secret as the DaemonSet mounts it: the items, mode 0440, in a
    directory nobody but root may write."""
    ds = find(objs, "DaemonSet")["spec"]["template"]["spec"]
    vol = next(v for v in ds["volumes"] if v["name"] == "ca")
    data = secret_data(find(objs, "Secret", name))
    d = tmp_path / "confdir"
    d.mkdir()
    for item in vol["secret"]["items"]:
        p = d / item["path"]
        p.write_bytes(data[item["key"]])
        os.chmod(p, vol["secret"]["defaultMode"])
    return d, data


def as_proxy_user():
    """Runs as the proxy image's uid/gid (65532, group owner of the Secret
    files like fsGroup makes it) when root, so nothing can be created."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups"]


@pytest.fixture
def open_tmp():
    """A temporary directory uid 65532 can traverse (pytest's tmp_path is
    under a 0700 directory)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="tproxy-chart-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("name", ["defaults", "user-ca"])
def test_ca_loads_in_tproxy_from_a_read_only_confdir(name, rendered, binaries, open_tmp, user_ca):
    objs = rendered[name]
    d, data = confdir_from(objs, open_tmp)
    if os.geteuid() == 0:
        for p in [d, *d.iterdir()]:
            os.chown(p, 0, 65532)
    os.chmod(d, 0o555)
    before = sorted(p.name for p in d.iterdir())
    if name == "user-ca":
        assert data["mitmproxy-ca.pem"] == (user_ca / "mitmproxy-ca.pem").read_bytes()
        assert data["mitmproxy-ca-cert.pem"].strip() == (user_ca / "mitmproxy-ca-cert.pem").read_bytes().strip()
    show = subprocess.run([*as_proxy_user(), binaries["tproxy"], "ca", "show", "--confdir", d],
                          capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "mitmproxy" in show.stdout
    # Start it as the DaemonSet does (its args, re-rooted), fetch /ca.pem.
    admin = free_port()
    proc = subprocess.Popen([*as_proxy_user(), binaries["tproxy"], "--confdir", d, "--mode", "regular@127.0.0.1:0",
                             "--admin", f"127.0.0.1:{admin}", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HOME": "/nonexistent"})
    try:
        pem = None
        for _ in range(100):
            try:
                pem = urllib.request.urlopen(f"http://127.0.0.1:{admin}/ca.pem", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"tproxy exited: {proc.stderr.read()}")
                time.sleep(0.1)
        assert pem is not None and pem.strip() == data["mitmproxy-ca-cert.pem"].strip()
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert "created a new CA" not in err, err
    assert sorted(p.name for p in d.iterdir()) == before, "tproxy created files in its confdir"


def test_generated_ca_is_mitmproxy_like_and_loads_in_mitmproxy(rendered, tmp_path):
    objs = rendered["defaults"]
    d, data = confdir_from(objs, tmp_path)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    cert = x509.load_pem_x509_certificate(data["mitmproxy-ca-cert.pem"])
    assert cert.subject.rfc4514_string() == "CN=mitmproxy"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    # mitmproxy's own loader takes the confdir and mints a leaf with it.
    script = """
import sys
from pathlib import Path
from mitmproxy import certs
store = certs.CertStore.from_store(Path(sys.argv[1]), "mitmproxy", 2048)
entry = store.get_cert("example.com", [])
print(entry.cert.issuer)
"""
    out = subprocess.run([sys.executable, "-c", script, d], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "mitmproxy" in out.stdout


def test_generated_ca_is_one_per_render_and_the_same_in_every_consumer(rendered):
    """genCA runs once per render: the Secret, the proxy's checksum and the
    webhook's checksum all describe the same CA."""
    objs = rendered["defaults"]
    data = secret_data(find(objs, "Secret", "tproxy-ca"))
    key_and_cert = data["mitmproxy-ca.pem"].decode()
    assert key_and_cert.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert key_and_cert.rstrip().endswith(data["mitmproxy-ca-cert.pem"].decode().rstrip())
    ds = find(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/ca"]
    dep = find(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/ca"]
    import hashlib
    assert ds == dep == hashlib.sha256(data["mitmproxy-ca-cert.pem"]).hexdigest()
    assert find(objs, "Secret", "tproxy-ca")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_bad_user_ca_fails_with_what_to_pass(user_ca, tmp_path):
    cert_only = user_ca / "mitmproxy-ca-cert.pem"
    proc = helm("template", "t", str(CHART), "--set-file", f"ca.pem={cert_only}", check=False)
    assert proc.returncode != 0 and "mitmproxy-ca.pem" in proc.stderr, proc.stderr
    both = helm("template", "t", str(CHART), "--set", "ca.existingSecret=x", "--set-file",
                f"ca.pem={user_ca / 'mitmproxy-ca.pem'}", check=False)
    assert both.returncode != 0 and "alternatives" in both.stderr


# --- dashboards and monitoring ---------------------------------------------


def test_dashboards_are_byte_equal_to_the_repository_ones(rendered):
    src = sorted((REPO / "dashboards").glob("*.json"))
    assert src
    for f in src:
        assert (CHART / "dashboards" / f.name).read_bytes() == f.read_bytes(), \
            f"charts/tproxy/dashboards/{f.name} differs from dashboards/{f.name}: cp dashboards/*.json dashboards/alerts.yaml charts/tproxy/dashboards/"
    assert (CHART / "dashboards/alerts.yaml").read_bytes() == (REPO / "dashboards/alerts.yaml").read_bytes()
    cms = [o for o in rendered["defaults"] if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    got = {k: v.encode() for cm in cms for k, v in cm["data"].items()}
    assert got == {f.name: f.read_bytes() for f in src}
    objs = render("--set", "dashboards.labelKey=dash", "--set", "dashboards.labelValue=yes",
                  "--set", "dashboards.namespace=monitoring")
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("dash") == "yes"]
    assert len(cms) == len(src) and {c["metadata"]["namespace"] for c in cms} == {"monitoring"}
    assert not [o for o in render("--set", "dashboards.enabled=false") if "dashboard" in o["metadata"]["name"]]


def test_monitoring_objects(rendered):
    assert not [o for o in rendered["defaults"] if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    ann = find(rendered["defaults"], "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == ("true", "9090", "/metrics")
    objs = rendered["monitoring"]
    rule = find(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO / "dashboards/alerts.yaml").read_text())
    sm = find(objs, "ServiceMonitor")
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["labels"].items() >= sm["spec"]["selector"]["matchLabels"].items())
    assert "tproxy" in svc["metadata"]["name"], "TproxyDown matches jobs named *tproxy*"
    assert svc["spec"]["clusterIP"] == "None"
    ds_labels = find(objs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= ds_labels.items()
    ports = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert ports == {"admin": 9090, "podwatch": 9091}
    assert {e["port"] for e in sm["spec"]["endpoints"]} == set(ports)
    assert not [a for a in render("--set", "metrics.scrapeAnnotations=false")
                if a["kind"] == "DaemonSet" and "prometheus.io/scrape" in a["spec"]["template"]["metadata"]["annotations"]]


def test_notes_say_what_to_annotate_and_where_to_look():
    out = helm("install", "--dry-run=client", "tproxy", str(CHART), "--namespace", NAMESPACE).stdout
    notes = out[out.index("NOTES:"):]
    for needle in ["initializer.kubernetes.io/tproxy", "logs -f daemonset/tproxy-node -c proxy", "/metrics",
                   "tproxy.otlpEndpoint", "tproxy.blockSvcCIDR"]:
        assert needle in notes, f"{needle!r} missing from NOTES:\n{notes}"
