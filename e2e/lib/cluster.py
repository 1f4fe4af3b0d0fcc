"""The e2e cluster: network, internet services, API server, chart-rendered
components, admission, pods. Everything started is torn down by `close`."""
import base64
import json
import os
import random
import shutil
import string
import tempfile
import time

from . import admission, chart, kubelet, net, pki
from .procs import Procs, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_NAME = "e2e-node"
RELEASE = "tproxy"
RELEASE_NS = "tproxy"
APP_NS = "e2e"
BUCKET_HOST = "e2e-bucket.s3.amazonaws.com"
DENIED_HOST = "www.example.com"
METADATA_HOST = "metadata.google.internal"
OTHER_HOST = "other.e2e.test"
SERVICE_HOST = f"web.{APP_NS}.svc.cluster.local"
PROM_PORT = 19090
OPT_IN = "initializer.kubernetes.io/tproxy"


def rand(n):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


class Cluster:
    def __init__(self, repo, chart_dir, helm, bindir, keep=False):
        self.repo = repo
        self.chart_dir = chart_dir
        self.helm = helm
        self.bindir = bindir
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="tproxy-e2e-")
        self.logdir = os.path.join(self.dir, "logs")
        os.makedirs(self.logdir)
        self.procs = Procs(self.logdir)
        self.topo = net.Topology(f"tpe2e{os.getpid()}")
        self.nonce = rand(8)
        self.api = None
        self.node = None
        self.node_pod = None
        self.webhook_pod = None
        self.webhook = None
        self.rendered = None
        self.values = [os.path.join(os.path.dirname(HERE), "values.yaml")]
        self.sets = []
        self.ca_pem_file = None
        self.pod_ips = iter(f"198.18.1.{i}" for i in range(10, 200))

    # ---- lifecycle -----------------------------------------------------------
    def close(self):
        self.procs.stop_all()
        self.topo.destroy()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, msg):
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def build(self):
        self.log(f"work dir {self.dir}")
        self.make_pki()
        self.topo.build()
        self.start_internet()
        self.start_apiserver()
        self.render()
        self.node = kubelet.Node(
            os.path.join(self.dir, "kubelet"), self.procs, self.topo,
            {n: os.path.join(self.bindir, n) for n in ("tproxy", "tproxy-podwatch", "tproxy-initializer", "tproxy-sidecar")},
            NODE_NAME, net.NODE_IP, net.DNS_IP, net.API_IP, self.image_bundle)
        self.node.api_ca = open(self.api_ca, encoding="utf-8").read()
        self.load_objects()
        self.node.tokens[f"{RELEASE_NS}/{self.daemonset_spec()['serviceAccountName']}"] = self.api_token
        self.start_node_pod()
        self.start_webhook()

    # ---- PKI, internet ---------------------------------------------------------
    def make_pki(self):
        d = os.path.join(self.dir, "pki")
        os.makedirs(d)
        key, crt = pki.make_ca(d, "internet-ca", "e2e internet root CA")
        self.internet_ca = crt
        self.inet_key, self.inet_crt = pki.make_leaf(
            d, "internet", key, crt, BUCKET_HOST,
            dns=[BUCKET_HOST, DENIED_HOST, SERVICE_HOST, OTHER_HOST], ips=[net.SERVICE_IP])
        akey, acrt = pki.make_ca(d, "api-ca", "e2e kubernetes CA")
        self.api_ca = acrt
        self.api_key, self.api_crt = pki.make_leaf(
            d, "apiserver", akey, acrt, "kube-apiserver",
            dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
            ips=[net.API_IP])
        # Every image's trust store: the distribution's roots + the e2e
        # internet's root, as if it were a public CA.
        self.image_bundle = os.path.join(d, "image-ca-certificates.crt")
        with open(self.image_bundle, "wb") as out:
            for src in ("/etc/ssl/certs/ca-certificates.crt", crt):
                if os.path.exists(src):
                    with open(src, "rb") as f:
                        out.write(f.read().rstrip(b"\n") + b"\n")
        self.api_token = "e2e-podwatch-token-" + rand(16)

    def start_internet(self):
        d = os.path.join(self.dir, "internet")
        os.makedirs(d)
        zone = {
            BUCKET_HOST: [net.BUCKET_IP], DENIED_HOST: [net.DENIED_IP], METADATA_HOST: [net.METADATA_IP],
            OTHER_HOST: [net.OTHER_PORT_IP], "otel.e2e.test": [net.OTLP_IP], SERVICE_HOST: [net.SERVICE_IP],
            "kubernetes.default.svc.cluster.local": [net.API_IP],
            f"tproxy-initializer.{RELEASE_NS}.svc.cluster.local": [net.SERVICE_IP],
            NODE_NAME: [net.NODE_IP],
        }
        with open(os.path.join(d, "zone.json"), "w", encoding="utf-8") as f:
            json.dump(zone, f)
        dns = self.procs.start_piped("dns", ["ip", "netns", "exec", self.topo.inet, "/usr/bin/python3",
                                             os.path.join(HERE, "dns_server.py"), net.DNS_IP, "53", os.path.join(d, "zone.json")])
        self.expect_ready(dns)
        self.otlp_out = os.path.join(d, "spans.jsonl")
        open(self.otlp_out, "w").close()
        otlp = self.procs.start_piped("otlp", ["ip", "netns", "exec", self.topo.inet, "/usr/bin/python3",
                                               os.path.join(HERE, "otlp_receiver.py"), net.OTLP_IP, "4318", self.otlp_out])
        self.expect_ready(otlp)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, sub))
        self.nginx_access = os.path.join(d, "access.log")
        n = self.nonce
        conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  log_format e2e '$remote_addr $host "$request" $status';
  access_log {d}/access.log e2e;
  default_type text/plain;
  server {{
    listen {net.BUCKET_IP}:443 ssl; listen {net.DENIED_IP}:443 ssl; listen {net.SERVICE_IP}:443 ssl;
    listen {net.BUCKET_IP}:80; listen {net.DENIED_IP}:80; listen {net.SERVICE_IP}:80;
    ssl_certificate {self.inet_crt}; ssl_certificate_key {self.inet_key};
    location / {{ return 200 "upstream $host $uri {n}\\n"; }}
  }}
  server {{
    listen {net.METADATA_IP}:80;
    location / {{ return 200 "metadata-server-secret {n}\\n"; }}
  }}
  server {{
    listen {net.OTHER_PORT_IP}:8443 ssl; ssl_certificate {self.inet_crt}; ssl_certificate_key {self.inet_key};
    listen {net.OTHER_PORT_IP}:8080;
    location / {{ return 200 "other port {n}\\n"; }}
  }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w", encoding="utf-8") as f:
            f.write(conf)
        self.procs.start("nginx", ["ip", "netns", "exec", self.topo.inet, "nginx", "-c", os.path.join(d, "nginx.conf")])
        wait_for(lambda: net.in_ns(self.topo.inet, "curl", "-s", "-o", "/dev/null", f"http://{net.METADATA_IP}/", check=False).returncode == 0,
                 10, what="nginx in the internet namespace")

    def expect_ready(self, p, timeout=10):
        line = p.popen.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{p.name} did not start: {line!r}; stderr: {open(p.err).read()[-1000:]}")

    # ---- API server ------------------------------------------------------------
    def start_apiserver(self):
        d = os.path.join(self.dir, "api")
        os.makedirs(d)
        tok = os.path.join(d, "token")
        with open(tok, "w", encoding="utf-8") as f:
            f.write(self.api_token)
        self.api_requests = os.path.join(d, "requests.jsonl")
        self.api = self.procs.start_piped("apiserver", [
            "ip", "netns", "exec", self.topo.inet, "/usr/bin/python3", os.path.join(HERE, "apiserver.py"),
            net.API_IP, "443", self.api_crt, self.api_key, tok, self.api_requests])
        self.expect_ready(self.api)

    def api_call(self, cmd):
        self.api.popen.stdin.write(json.dumps(cmd) + "\n")
        self.api.popen.stdin.flush()
        line = self.api.popen.stdout.readline().strip()
        if not line.startswith("ok"):
            raise RuntimeError(f"API stand-in: {line!r}")

    def api_put_pod(self, pod):
        self.api_call({"op": "put", "pod": pod})

    def api_delete_pod(self, namespace, name):
        self.api_call({"op": "delete", "namespace": namespace, "name": name})

    # ---- chart -----------------------------------------------------------------
    def render(self, extra_sets=()):
        sets = list(self.sets) + list(extra_sets)
        if self.ca_pem_file:
            # `lookup` of the kept CA Secret (what helm does on a real upgrade).
            sets_files = ["--set-file", f"ca.pem={self.ca_pem_file}"]
        else:
            sets_files = []
        r = chart.template(self.helm, self.chart_dir, RELEASE, RELEASE_NS, self.values, sets, sets_files)
        self.rendered = r
        if not self.ca_pem_file:
            sec = self.ca_secret()
            self.ca_pem_file = os.path.join(self.dir, "kept-ca.pem")
            with open(self.ca_pem_file, "wb") as f:
                f.write(base64.b64decode(sec["data"]["mitmproxy-ca.pem"]))
        return r

    def ca_secret(self):
        ds = self.daemonset_spec()
        name = next(v["secret"]["secretName"] for v in ds["volumes"] if "secret" in v)
        return self.rendered.get("Secret", name=name)

    def daemonset(self):
        return self.rendered.get("DaemonSet")

    def daemonset_spec(self):
        return self.daemonset()["spec"]["template"]["spec"]

    def load_objects(self):
        for kind in ("ConfigMap", "Secret"):
            for o in self.rendered.all(kind):
                o["metadata"].setdefault("namespace", RELEASE_NS)
                self.node.put_object(o)

    # ---- pods ------------------------------------------------------------------
    def pod_from_template(self, name, namespace, template, owner=None, labels_extra=None):
        meta = json.loads(json.dumps(template.get("metadata") or {}))
        meta["name"] = name
        meta["namespace"] = namespace
        meta["uid"] = f"{rand(8)}-0000-4000-8000-{rand(12)}"
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if labels_extra:
            meta.setdefault("labels", {}).update(labels_extra)
        if owner:
            meta["ownerReferences"] = [owner]
        spec = json.loads(json.dumps(template["spec"]))
        spec["nodeName"] = NODE_NAME
        spec.setdefault("serviceAccountName", "default")
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}}

    def run_pod(self, pod, netns_name=None):
        """Sandbox, API status, init containers, containers — as the kubelet
        does; the API object is Pending with an IP while init containers run."""
        host = bool(pod["spec"].get("hostNetwork"))
        if host:
            ns, ip = self.topo.node, net.NODE_IP
        else:
            ip = next(self.pod_ips)
            key = f"{netns_name or pod['metadata']['name']}-{ip.rsplit('.', 1)[1]}"
            ns = self.topo.add_pod(key, ip)
        p = self.node.create_pod(pod, ns, ip)
        p.netns_key = None if host else key
        self.api_put_pod(pod)
        p.run_init_containers()
        pod["status"]["phase"] = "Running"
        self.api_put_pod(pod)
        p.start_containers()
        return p

    def start_node_pod(self, rollout_from=None):
        ds = self.daemonset()
        name = f"{ds['metadata']['name']}-{rand(5)}"
        owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds["metadata"]["name"],
                 "uid": "ds-uid", "controller": True}
        pod = self.pod_from_template(name, RELEASE_NS, ds["spec"]["template"], owner)
        p = self.run_pod(pod)
        self.node_pod = p
        self.wait_proxy_ready(p)
        return p

    def hostport(self):
        """The transparent listener's port, from the proxy's rendered --mode."""
        for a in self.node_pod.container("proxy").get("args", []):
            m = a.split("=", 1)[1] if a.startswith("--mode=") else ""
            if m.startswith("transparent@"):
                return m.rsplit(":", 1)[1]
        raise RuntimeError("the rendered proxy has no transparent --mode")

    def admin_url(self, path):
        ds = self.daemonset()
        port = ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        return f"http://{net.NODE_IP}:{port}{path}"

    def node_curl(self, *args, check=False):
        return net.in_ns(self.topo.node, "curl", "-sS", "--max-time", "5", *args, check=check)

    def wait_proxy_ready(self, p, timeout=30):
        proxy = p.running["proxy"]

        def ready():
            if not proxy.alive():
                raise RuntimeError(f"proxy container exited {proxy.popen.returncode}: {open(proxy.err).read()[-2000:]}")
            pw = p.running.get("podwatch")
            if pw and not pw.alive():
                raise RuntimeError(f"podwatch container exited {pw.popen.returncode}: {open(pw.err).read()[-2000:]}")
            # During a surge rollout the admin port is shared (SO_REUSEPORT)
            # with the old pod, so /readyz alone cannot tell which one
            # answered: the new process must also have logged every listener.
            modes = sum(1 for a in p.container("proxy").get("args", []) if a.startswith("--mode"))
            with open(proxy.err, encoding="utf-8", errors="replace") as f:
                listening = f.read().count("listening")
            return listening >= modes + 1 and \
                self.node_curl("-f", "-o", "/dev/null", self.admin_url("/readyz")).returncode == 0

        wait_for(ready, timeout, 0.2, "the proxy's listeners and /readyz (startupProbe)")

    def start_webhook(self):
        dep = self.rendered.get("Deployment", component="initializer")
        name = f"{dep['metadata']['name']}-{rand(9)}-{rand(5)}"
        pod = self.pod_from_template(name, RELEASE_NS, dep["spec"]["template"])
        self.webhook_pod = self.run_pod(pod, "webhook")
        c = pod["spec"]["containers"][0]
        svc = self.rendered.get("Service", name=dep["metadata"]["name"])
        sp = next(p for p in svc["spec"]["ports"] if p["port"] == 443)
        target = sp.get("targetPort", 443)
        if isinstance(target, str):
            target = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == target)
        mwc = self.rendered.get("MutatingWebhookConfiguration")
        self.webhook = admission.Webhook(mwc["webhooks"][0], pod["status"]["podIP"], target, self.topo.node, self.dir)
        proc = self.webhook_pod.running[c["name"]]

        def healthy():
            if not proc.alive():
                raise RuntimeError(f"webhook exited {proc.popen.returncode}: {open(proc.err).read()[-2000:]}")
            r = net.in_ns(self.topo.node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                          self.webhook.ca_file, "--connect-to",
                          f"{self.webhook.host}:443:{pod['status']['podIP']}:{target}",
                          f"https://{self.webhook.host}/healthz", check=False)
            return r.stdout == "200"

        wait_for(healthy, 20, 0.2, "the webhook's /healthz over HTTPS (readinessProbe)")

    def stop_pod(self, p, delete=True):
        p.stop()
        if delete:
            self.api_delete_pod(p.namespace, p.name)
            self.node.pods.pop(p.name, None)
            if not p.host_network:
                self.topo.remove_pod(p.netns_key)

    def admit(self, group, version, kind, resource, obj, namespace):
        """The API server's mutating admission: the webhook is called only
        when its rules and selectors select the object."""
        if not self.webhook.selects(group, version, resource, "CREATE", obj, {"kubernetes.io/metadata.name": namespace}):
            return None, obj
        return self.webhook.review(group, version, kind, resource, "CREATE", obj, namespace)

    def deploy(self, name, annotated, command=("sleep", "infinity")):
        """kubectl apply of a Deployment, then the ReplicaSet controller's pod."""
        labels = {"app": name}
        meta = {"name": name, "namespace": APP_NS, "labels": dict(labels)}
        if annotated:
            meta["labels"][OPT_IN] = "true"
            meta["annotations"] = {OPT_IN: "true"}
        dep = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {
                "replicas": 1, "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        # Like the original tproxy-test pod: no API credentials.
                        "automountServiceAccountToken": False,
                        "containers": [{"name": "app", "image": "e2e-client:1", "command": list(command)}],
                    },
                },
            },
        }
        response, patched = self.admit("apps", "v1", "Deployment", "deployments", dep, APP_NS)
        h = rand(10)
        rs = f"{name}-{h}"
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": f"rs-{h}",
                 "controller": True, "blockOwnerDeletion": True}
        pod = self.pod_from_template(f"{rs}-{rand(5)}", APP_NS, patched["spec"]["template"], owner,
                                     {"pod-template-hash": h})
        pod_response, pod = self.admit("", "v1", "Pod", "pods", pod, APP_NS)
        p = self.run_pod(pod)
        p.deployment_response = response
        p.pod_response = pod_response
        p.deployment = patched
        return p


    # ---- observers ---------------------------------------------------------------
    def wait_intercepted(self, p, timeout=15):
        """Waits until podwatch has the pod in its directory and a REDIRECT
        rule for it (what an app relying on interception depends on)."""
        ip = p.obj["status"]["podIP"]
        pods_json = os.path.join(self.node_pod.volume_path({"name": "pod-directory", "emptyDir": {}}), "pods.json")

        def ready():
            try:
                with open(pods_json, encoding="utf-8") as f:
                    in_dir = ip in json.load(f)["pods"]
            except (OSError, ValueError, KeyError):
                in_dir = False
            rules = net.in_ns(self.topo.node, "nft", "list", "ruleset", check=False).stdout + \
                net.in_ns(self.topo.node, "iptables-save", "-t", "nat", check=False).stdout
            return in_dir and ip in rules
        wait_for(ready, timeout, 0.2, f"podwatch to list {p.name} ({ip}) in the pod directory and REDIRECT it")

    def start_prometheus(self):
        """A real Prometheus on the node network, with the scrape job that the
        chart's prometheus.io/* pod annotations are written for (the common
        `kubernetes-pods` job: scrape <pod IP>:<port><path> of annotated pods;
        the pod IP of a hostNetwork pod is the node IP)."""
        ann = self.daemonset()["spec"]["template"]["metadata"].get("annotations") or {}
        if ann.get("prometheus.io/scrape") != "true":
            raise RuntimeError("the DaemonSet's pods carry no prometheus.io/scrape annotation")
        d = os.path.join(self.dir, "prometheus")
        os.makedirs(d)
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": "kubernetes-pods",
                "metrics_path": ann.get("prometheus.io/path", "/metrics"),
                "scheme": ann.get("prometheus.io/scheme", "http"),
                "static_configs": [{
                    "targets": [f"{self.node_pod.obj['status']['podIP']}:{ann['prometheus.io/port']}"],
                    "labels": {"namespace": RELEASE_NS, "pod": self.node_pod.name},
                }],
            }],
        }
        with open(os.path.join(d, "prometheus.yml"), "w", encoding="utf-8") as f:
            json.dump(cfg, f)
        self.procs.start("prometheus", [
            "ip", "netns", "exec", self.topo.node, "prometheus", f"--config.file={d}/prometheus.yml",
            f"--storage.tsdb.path={d}/data", f"--web.listen-address=127.0.0.1:{PROM_PORT}"])
        wait_for(lambda: net.in_ns(self.topo.node, "curl", "-sf", f"http://127.0.0.1:{PROM_PORT}/-/ready",
                                   check=False).returncode == 0, 30, 0.3, "Prometheus to be ready")
