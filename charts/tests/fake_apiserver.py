"""A minimal Kubernetes API server for `helm --dry-run=server`: discovery for
the core group plus GET of Secrets from a dict. Enough for the chart's
`lookup "v1" "Secret" …` calls (helm also maps every rendered kind through
discovery, hence RESOURCES), so an upgrade can be rendered offline
against the Secrets an install rendered. Unknown paths answer 404 (a
Status object, like the real server) and are recorded."""

import json
import threading

# group/version -> [(resource, kind, namespaced)]: every kind the chart renders.
RESOURCES = {
    "v1": [("secrets", "Secret", True), ("configmaps", "ConfigMap", True), ("services", "Service", True),
           ("serviceaccounts", "ServiceAccount", True)],
    "apps/v1": [("daemonsets", "DaemonSet", True), ("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "admissionregistration.k8s.io/v1": [("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
    "cert-manager.io/v1": [("issuers", "Issuer", True), ("certificates", "Certificate", True)],
}


def resource_list(gv):
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
        {"name": r, "singularName": k.lower(), "namespaced": ns, "kind": k, "verbs": ["get", "list"]}
        for r, k, ns in RESOURCES[gv]]}


def group_list():
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        g, v = gv.split("/")
        ver = {"groupVersion": gv, "version": v}
        groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeAPIServer:
    def __init__(self, secrets):
        # (namespace, name) -> Secret object
        self.secrets = dict(secrets)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.requests.append(path)
                if path == "/version":
                    return self.send_json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                                "platform": "linux/amd64"})
                if path == "/api":
                    return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                                "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    return self.send_json(200, group_list())
                if path == "/api/v1":
                    return self.send_json(200, resource_list("v1"))
                if path.startswith("/apis/") and path[len("/apis/"):] in RESOURCES:
                    return self.send_json(200, resource_list(path[len("/apis/"):]))
                parts = path.strip("/").split("/")
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                    obj = outer.secrets.get((parts[3], parts[5]))
                    if obj is not None:
                        return self.send_json(200, obj)
                return self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "NotFound", "code": 404,
                                            "message": f"{path} not found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path):
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "tproxy"}}],
        }))
        return path
