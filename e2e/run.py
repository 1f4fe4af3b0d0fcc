#!/usr/bin/env python3
"""tproxy end to end: the chart's components in a cluster made of network and
mount namespaces (e2e/README.md). Run as root: `e2e/run.sh`.

Prints one PASS/FAIL line per check and `N passed, M failed`; exits 1 on any
failure. Everything started is stopped by PID and every namespace removed,
also when a check fails or the run is interrupted.
"""
import argparse
import json
import os
import re
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from e2e.lib import net  # noqa: E402
from e2e.lib.cluster import (  # noqa: E402
    APP_NS, BUCKET_HOST, DENIED_HOST, METADATA_HOST, OTHER_HOST, PROM_PORT, SERVICE_HOST, Cluster)
from e2e.lib.procs import wait_for  # noqa: E402

SECRET = "e2e-secret-token-d41d8cd98f"
TITLES = {
    1: "allowed bucket URL over HTTPS → 200 with the upstream's body (curl, Python requests, openssl s_client)",
    2: "another HTTPS URL → 418 Access Denied by Administrator (chart rules), upstream never reached",
    3: "metadata server → 418, never the upstream's answer",
    4: "service IP in the blocked service CIDR → rejected, cluster DNS (ALLOW_DNS) answers",
    5: "no service-account token in the pod, API server unreachable",
    6: "ping not permitted; TCP to a port other than 80/443 rejected",
    7: "flow log shows the pod's requests (text, then JSON after a rollout), credentials redacted",
    8: "/metrics by source pod (podwatch's directory) and a real Prometheus scraping per the chart's annotations",
    9: "traces exported over OTLP under the workload's service.name",
    10: "standard mode (addStandardModeProxy, webhook proxy env): same answers through http(s)_proxy",
    11: "helm upgrade of rules: atomic ConfigMap swap changes the answer within 2 s, no restart, no failed request",
    12: "pod deleted from the API (after a 410 Gone relist) → its REDIRECT rule and metric series go",
    13: "a pod without the annotation is not intercepted",
    19: "a host outside the pod network cannot use the node's proxy (issue #19)",
    16: "DaemonSet rollout (new args) with zero failed requests in a client loop across it (issue #16)",
}


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


class Run:
    def __init__(self, cluster):
        self.c = cluster
        self.results = {}

    def record(self, n, ok, detail):
        self.results[n] = ok
        print(f"{'PASS' if ok else 'FAIL'} {n:2d} {TITLES[n]}" + ("" if ok else f"\n        {detail}"), flush=True)
        if ok and detail:
            print(f"        {detail}", flush=True)

    def check(self, n, fn, *args):
        try:
            detail = fn(*args)
            self.record(n, True, detail or "")
        except Exception as e:  # one check's failure never stops the others
            msg = str(e) if isinstance(e, (CheckFailed, TimeoutError)) else f"{type(e).__name__}: {e}"
            if not isinstance(e, CheckFailed) and os.environ.get("E2E_DEBUG"):
                traceback.print_exc()
            self.record(n, False, msg.replace("\n", "\n        "))

    # ---- helpers ---------------------------------------------------------------
    def curl(self, pod, url, *extra, container="app", timeout=10):
        """curl in the pod; returns (exit code, HTTP status, body, stderr)."""
        r = pod.exec(container, ["curl", "-sS", "--max-time", str(timeout), "-o", "/dev/stdout",
                                 "-w", "\n@@%{http_code}", *extra, url], timeout=timeout + 10)
        body, _, code = r.stdout.rpartition("\n@@")
        return r.returncode, int(code or 0), body, r.stderr.strip()

    def py_get(self, pod, url, headers=None):
        script = ("import json,sys,requests\n"
                  f"r=requests.get({url!r},headers={headers or {}!r},timeout=10)\n"
                  "print(json.dumps([r.status_code,r.text]))")
        r = pod.exec("app", [self.c.python, "-c", script], timeout=30)
        if r.returncode != 0:
            raise CheckFailed(f"python requests {url}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout)

    def flow_log(self, node_pod=None):
        p = node_pod or self.c.node_pod
        with open(p.logs["proxy"], encoding="utf-8", errors="replace") as f:
            return f.read()

    def metrics(self):
        r = self.c.node_curl(self.c.admin_url("/metrics"))
        expect(r.returncode == 0, f"GET /metrics: {r.stderr.strip()}")
        return r.stdout

    def redirect_rules(self):
        return net.in_ns(self.c.topo.node, "nft", "list", "ruleset", check=False).stdout + \
            net.in_ns(self.c.topo.node, "iptables-save", "-t", "nat", check=False).stdout

    # ---- the checks ------------------------------------------------------------
    def c1_allowed(self, pod):
        rc, code, body, err = self.curl(pod, f"https://{BUCKET_HOST}/object")
        expect(rc == 0 and code == 200, f"curl: exit {rc}, status {code}, {err}")
        want = f"upstream {BUCKET_HOST} /object {self.c.nonce}"
        expect(body.strip() == want, f"curl body {body!r}, want {want!r}")
        status, text = self.py_get(pod, f"https://{BUCKET_HOST}/py")
        expect(status == 200 and text.strip() == f"upstream {BUCKET_HOST} /py {self.c.nonce}",
               f"python requests: {status} {text!r}")
        r = pod.exec("app", ["sh", "-c", f"echo | openssl s_client -connect {BUCKET_HOST}:443 -servername {BUCKET_HOST} "
                                         "-CAfile /etc/ssl/certs/ca-certificates.crt -verify_return_error 2>&1"])
        expect("Verify return code: 0 (ok)" in r.stdout, f"openssl s_client: {r.stdout[-600:]}")
        m = re.search(r"issuer=(.*)", r.stdout)
        expect(m and "mitmproxy" in m.group(1), f"certificate not minted by the tproxy CA: issuer {m and m.group(1)}")
        return f"curl/requests got the upstream's body; s_client verified a leaf issued by {m.group(1).strip()}"

    def c2_denied(self, pod):
        before = self.nginx_hits(DENIED_HOST)
        rc, code, body, err = self.curl(pod, f"https://{DENIED_HOST}/")
        expect(rc == 0 and code == 418, f"curl: exit {rc}, status {code}, {err} {body!r}")
        expect(body.strip() == "Access Denied by Administrator", f"body {body!r}")
        status, text = self.py_get(pod, f"https://{DENIED_HOST}/py")
        expect(status == 418 and text.strip() == "Access Denied by Administrator", f"python requests: {status} {text!r}")
        expect(self.nginx_hits(DENIED_HOST) == before, "the denied host's upstream was reached")

    def nginx_hits(self, host):
        with open(self.c.nginx_access, encoding="utf-8") as f:
            return sum(1 for line in f if f" {host} " in line)

    def c3_metadata(self, pod):
        rc, code, body, err = self.curl(pod, f"http://{METADATA_HOST}/computeMetadata/v1/instance/", "-H", "Metadata-Flavor: Google")
        expect("metadata-server-secret" not in body, f"the metadata server answered: {body!r}")
        expect(code == 418 or rc != 0, f"status {code}, exit {rc}")
        return f"status {code}" if code else f"curl exit {rc}: {err}"

    def c4_service(self, pod):
        r = pod.exec("app", ["getent", "hosts", SERVICE_HOST])
        expect(r.returncode == 0 and net.SERVICE_IP in r.stdout, f"cluster DNS did not answer {SERVICE_HOST}: {r.stdout} {r.stderr}")
        out = []
        for url in (f"http://{SERVICE_HOST}/", f"https://{SERVICE_HOST}/", f"http://{net.SERVICE_IP}:8080/"):
            rc, code, body, err = self.curl(pod, url, timeout=5)
            expect(rc != 0 and code == 0, f"{url}: status {code} body {body!r}")
            expect(self.c.nonce not in body, f"{url} reached the service")
            out.append(f"{url} curl exit {rc}")
        return f"DNS {SERVICE_HOST} → {net.SERVICE_IP}; " + ", ".join(out)

    def c5_token(self, pod):
        r = pod.exec("app", ["sh", "-c", "ls -A /var/run/secrets/kubernetes.io/serviceaccount "
                                         "/run/secrets/kubernetes.io/serviceaccount 2>/dev/null; "
                                         "grep -l serviceaccount /proc/self/mountinfo 2>/dev/null"])
        expect(r.stdout.strip() == "", f"service-account files in the pod: {r.stdout.strip()}")
        for v in pod.spec.get("volumes") or []:
            expect("serviceAccountToken" not in json.dumps(v), f"volume {v['name']} projects a token")
        rc, code, body, err = self.curl(pod, f"https://{net.API_IP}/api/v1/pods", "-k", timeout=5)
        expect(rc != 0 and code == 0, f"API server reachable from the pod: {code} {body[:200]!r}")
        return f"no token; API server {net.API_IP}:443 → curl exit {rc}"

    def c6_ping_port(self, pod):
        r = pod.exec("app", ["ping", "-c", "1", "-W", "2", net.BUCKET_IP])
        expect(r.returncode != 0, f"ping answered: {r.stdout}")
        t0 = time.monotonic()
        rc, code, body, err = self.curl(pod, f"https://{OTHER_HOST}:8443/", timeout=8)
        expect(rc == 7 and code == 0, f"port 8443: curl exit {rc} status {code} {err}")
        rc2, code2, _, err2 = self.curl(pod, f"http://{OTHER_HOST}:8080/", timeout=8)
        expect(rc2 == 7, f"port 8080: curl exit {rc2} status {code2} {err2}")
        return f"ping exit {r.returncode} ({(r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else ''}); 8443/8080 refused: {err}"

    def c13_plain(self, plain):
        expect(not plain.containers(True), f"init containers injected: {[c['name'] for c in plain.containers(True)]}")
        expect(plain.pod_response is None and plain.deployment_response is None,
               "the API server would have sent this pod to the webhook")
        ip = plain.obj["status"]["podIP"]
        rc, code, body, err = self.curl(plain, f"https://{DENIED_HOST}/plain")
        expect(rc == 0 and code == 200 and self.c.nonce in body, f"direct request: exit {rc} {code} {err} {body!r}")
        r = plain.exec("app", ["sh", "-c", f"echo | openssl s_client -connect {BUCKET_HOST}:443 -servername {BUCKET_HOST} 2>&1"])
        m = re.search(r"issuer=(.*)", r.stdout)
        expect(m and "e2e internet root" in m.group(1), f"not the upstream's own certificate: {m and m.group(1)}")
        time.sleep(0.5)
        expect(f"{ip}:" not in self.flow_log(), f"flow log has {ip}")
        expect(ip not in self.redirect_rules(), f"a REDIRECT rule names {ip}")
        return f"{ip}: upstream's own certificate ({m.group(1).strip()}), not in flow log or REDIRECT rules"

    def c7_text(self, pod):
        ip = pod.obj["status"]["podIP"]
        rc, code, _, err = self.curl(pod, f"https://{BUCKET_HOST}/creds", "-H", f"Authorization: Bearer {SECRET}",
                                     "-H", f"X-Api-Key: {SECRET}")
        expect(code == 200, f"request with credentials: {rc} {code} {err}")

        def logged():
            return f"GET https://{BUCKET_HOST}/creds" in self.flow_log()
        wait_for(logged, 5, what="the flow log line")
        log = self.flow_log()
        for want in (f"{ip}:", f"GET https://{BUCKET_HOST}/object", "<< 200", f"GET https://{DENIED_HOST}/", "<< 418",
                     "Authorization: Bearer ...", "X-Api-Key: ..."):
            expect(want.lower() in log.lower(), f"flow log lacks {want!r}")
        expect(SECRET not in log, "the credential is in the flow log")
        self.flow_text_ok = True

    def c7_json(self, pod, node_pod):
        ip = pod.obj["status"]["podIP"]
        rc, code, _, err = self.curl(pod, f"https://{BUCKET_HOST}/creds-json", "-H", f"Authorization: Bearer {SECRET}")
        expect(code == 200, f"request: {rc} {code} {err}")

        def records():
            out = []
            for line in self.flow_log(node_pod).splitlines():
                if line.strip():
                    out.append(json.loads(line))
            return out
        wait_for(lambda: any(r.get("url") == f"https://{BUCKET_HOST}/creds-json" for r in records()), 5, what="the JSON record")
        rec = next(r for r in records() if r.get("url") == f"https://{BUCKET_HOST}/creds-json")
        expect(rec["client"].startswith(f"{ip}:") and rec["status"] == 200, f"record {rec}")
        auth = [v for k, v in rec.get("request_headers", []) if k.lower() == "authorization"]
        expect(auth == ["Bearer ..."], f"authorization in the JSON record: {auth}")
        expect(SECRET not in self.flow_log(node_pod), "the credential is in the JSON flow log")
        return f"text and JSON (one object per line, {len(records())} records), Authorization → 'Bearer ...'"

    def c8_metrics(self, pod):
        name = pod.name
        want = {"source_namespace": APP_NS, "source_workload": "web", "source_pod": name}

        def series():
            out = []
            for line in self.metrics().splitlines():
                if line.startswith("tproxy_requests_total{") and all(f'{k}="{v}"' in line for k, v in want.items()):
                    out.append(line)
            return out
        lines = wait_for(lambda: (s := series()) and any('status_class="2xx"' in x for x in s)
                         and any('status_class="4xx"' in x and 'decision="deny"' in x for x in s) and s,
                         10, what=f"2xx and denied 4xx tproxy_requests_total series for {name}")
        q = f'sum(tproxy_requests_total{{source_pod="{name}",source_workload="web",source_namespace="{APP_NS}"}})'

        def prom():
            r = net.in_ns(self.c.topo.node, "curl", "-s", "--max-time", "5", "--get", "--data-urlencode", f"query={q}",
                          f"http://127.0.0.1:{PROM_PORT}/api/v1/query", check=False)
            try:
                res = json.loads(r.stdout)["data"]["result"]
            except (ValueError, KeyError):
                return None
            return res and float(res[0]["value"][1]) >= 2 and res
        res = wait_for(prom, 30, 0.5, "Prometheus to return the pod's requests")
        return f"{len(lines)} series for {name}; PromQL {q} = {res[0]['value'][1]}"

    def c9_traces(self, pod):
        def spans():
            out = []
            with open(self.c.otlp_out, encoding="utf-8") as f:
                for line in f:
                    s = json.loads(line)
                    if s.get("resource", {}).get("k8s.pod.name") == pod.name:
                        out.append(s)
            return out
        got = wait_for(spans, 15, 0.5, f"spans of {pod.name} at the OTLP receiver")
        names = {s["resource"].get("service.name") for s in got}
        expect(names == {"web"}, f"service.name of the pod's spans: {names}")
        ns = {s["resource"].get("k8s.namespace.name") for s in got}
        expect(ns == {APP_NS}, f"k8s.namespace.name: {ns}")
        return f"{len(got)} spans, service.name=web"

    def c10_standard(self, std):
        env = std.env_of(std.container("app"))
        expect(env.get("https_proxy", "").endswith(":1080") and "$(" not in env.get("https_proxy", ""),
               f"https_proxy in the patched pod: {env.get('https_proxy')!r}")
        rc, code, body, err = self.curl(std, f"https://{BUCKET_HOST}/std")
        expect(code == 200 and body.strip() == f"upstream {BUCKET_HOST} /std {self.c.nonce}", f"bucket: {rc} {code} {err} {body!r}")
        rc, code, body, err = self.curl(std, f"https://{DENIED_HOST}/std")
        expect(code == 418, f"denied host: {rc} {code} {err}")
        status, text = self.py_get(std, f"https://{BUCKET_HOST}/std-py")
        expect(status == 200, f"python requests: {status} {text!r}")
        ip = std.obj["status"]["podIP"]
        wait_for(lambda: f'"client":"{ip}:' in self.flow_log() and '"mode":"regular"' in self.flow_log(), 5,
                 what="the standard-mode flows in the flow log")
        return f"https_proxy={env['https_proxy']}; bucket 200, other 418 via CONNECT"

    def c19_outside(self, std):
        """Through the node's standard-mode port (open on the node's
        addresses) and its transparent port, from beyond the pod network."""
        ns = self.c.topo.outside or self.c.topo.add_outside()
        port = std.env_of(std.container("app"))["https_proxy"].rsplit(":", 1)[1].strip("/")
        r = net.in_ns(ns, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                      "--cacert", self.c.internet_ca, "-x", f"http://{net.NODE_IP}:{port}",
                      f"http://{BUCKET_HOST}/outside", check=False)
        expect(r.stdout not in ("200", "418"), f"the proxy at {net.NODE_IP}:{port} served {net.OUTSIDE_IP}: HTTP {r.stdout}")
        r2 = net.in_ns(ns, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-k",
                       "--connect-to", f"{BUCKET_HOST}:443:{net.NODE_IP}:{self.c.hostport()}",
                       f"https://{BUCKET_HOST}/outside", check=False)
        expect(r2.stdout not in ("200", "418"), f"the transparent port served {net.OUTSIDE_IP}: HTTP {r2.stdout}")
        return f"standard port: curl exit {r.returncode} ({r.stderr.strip()[:80]}); transparent port: exit {r2.returncode}"

    def client_loop(self, pod, url, seconds, name):
        """Starts a bounded client loop in the pod (new connection per request);
        its output is a JSON list of [start, status (0: error), body, end]."""
        script = f"""
import json, time, requests
end = time.time() + {seconds}
out = []
for i in range(5000):
    if time.time() > end:
        break
    t = time.time()
    try:
        r = requests.get({url!r}, timeout=5, headers={{"Connection": "close"}})
        out.append([t, r.status_code, r.text[:80], time.time()])
    except Exception as e:
        out.append([t, 0, repr(e)[:200], time.time()])
    time.sleep(0.02)
print(json.dumps(out))
"""
        c = pod.container("app")
        argv, d = pod.launch_argv(c, name, [self.c.python, "-c", script])
        return self.c.procs.start(f"{pod.name}.{name}", argv, stdout_path=os.path.join(d, "stdout"),
                                  stderr_path=os.path.join(d, "stderr"))

    def loop_result(self, proc, timeout):
        proc.popen.wait(timeout)
        with open(proc.log, encoding="utf-8") as f:
            data = f.read()
        expect(data.strip(), f"client loop printed nothing: {open(proc.err).read()[-500:]}")
        return json.loads(data)

    def c11_upgrade(self, pod):
        proxy = self.c.node_pod.running["proxy"]
        pid = proxy.pid
        reloads_before = self.reload_count()
        loop = self.client_loop(pod, f"https://{DENIED_HOST}/loop", 8, "rules-loop")
        time.sleep(2)
        old_ds = json.dumps(self.c.daemonset()["spec"])
        self.c.values.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "values-rules-upgrade.yaml"))
        self.c.render()
        expect(json.dumps(self.c.daemonset()["spec"]) == old_ds,
               "the DaemonSet changed with the rules (a rules change would roll the pods)")
        cm_name = next(v["configMap"]["name"] for v in self.c.daemonset_spec()["volumes"] if "configMap" in v and v["name"] == "rules")
        cm = self.c.rendered.get("ConfigMap", name=cm_name)
        cm["metadata"].setdefault("namespace", "tproxy")
        t_swap = time.time()
        self.c.node.configmap_updated(cm)
        res = self.loop_result(loop, 30)
        errors = [r for r in res if r[1] not in (200, 418)]
        expect(not errors, f"{len(errors)} failed requests across the upgrade, e.g. {errors[:3]}")
        # [start, status, body, end]: a request in flight across the swap
        # may get either answer.
        before = [r for r in res if r[3] < t_swap]
        expect(before and all(r[1] == 418 for r in before),
               f"before the upgrade the host must be denied (418): {sorted({r[1] for r in before})}")
        first_200 = next((r[0] for r in res if r[1] == 200), None)
        expect(first_200 is not None, f"the answer never changed to 200 ({len(res)} requests)")
        lag = first_200 - t_swap
        expect(lag <= 2.0, f"the new rules answered {lag:.2f}s after the swap (limit 2 s)")
        after = [r for r in res if r[0] >= first_200]
        expect(all(r[1] == 200 for r in after), "418 after the first 200: the old policy came back")
        expect(proxy.alive() and proxy.pid == pid, "the proxy restarted")
        expect(self.reload_count() > reloads_before, "tproxy_config_reloads_total{file=rules,result=ok} did not grow")
        return f"{len(res)} requests, 0 failed; 200 {lag:.2f}s after the ..data swap; same proxy PID {pid}"

    def reload_count(self):
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("tproxy_config_reloads_total{") and 'file="rules"' in line and 'result="ok"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def c12_delete(self, pod):
        ip = pod.obj["status"]["podIP"]
        expect(ip in self.redirect_rules(), f"no REDIRECT rule for {ip} before the deletion")
        lists_before = self.api_lists()
        # Compaction: the open watch ends, its resumption gets 410 Gone.
        self.c.api_call({"op": "expire"})
        wait_for(lambda: self.api_lists() > lists_before, 15, 0.2, "podwatch to relist after 410 Gone")
        self.c.stop_pod(pod, delete=True)
        wait_for(lambda: ip not in self.redirect_rules(), 10, 0.2, f"the REDIRECT rule of {ip} to go")

        def series_gone():
            return not any(f'source_pod="{pod.name}"' in line for line in self.metrics().splitlines()
                           if line.startswith("tproxy_"))
        wait_for(series_gone, 10, 0.5, f"the series of {pod.name} to leave /metrics")
        restarts = [line for line in self.podwatch_metrics().splitlines() if line.startswith("tproxy_podwatch_watch_restarts_total")]
        expect(restarts and float(restarts[0].rsplit(" ", 1)[1]) >= 1, f"podwatch counted no relist: {restarts}")
        return f"relisted after 410 ({restarts[0]}); rule and series of {pod.name} gone"

    def podwatch_metrics(self):
        port = next(a.split(":")[-1] for a in self.c.node_pod.container("podwatch")["args"] if a.startswith("--listen="))
        return self.c.node_curl(f"http://{net.NODE_IP}:{port}/metrics").stdout

    def api_lists(self):
        n = 0
        with open(self.c.api_requests, encoding="utf-8") as f:
            for line in f:
                path = json.loads(line)["path"]
                if "/pods" in path and "watch=" not in path:
                    n += 1
        return n

    def rollout(self, pod, sets):
        """The DaemonSet controller with maxSurge 1: the new pod starts and
        becomes ready beside the old one, then the old one is stopped; a client
        loop runs across it."""
        loop = self.client_loop(pod, f"https://{BUCKET_HOST}/roll", 10, "roll-loop")
        time.sleep(2)
        old = self.c.node_pod
        self.c.sets += sets
        self.c.render()
        self.c.load_objects()
        surge_error = None
        try:
            self.c.start_node_pod()
        except Exception as e:  # the surge pod never became ready
            surge_error = e
            self.c.stop_pod(self.c.node_pod, delete=True)
        self.c.stop_pod(old, delete=True)
        if surge_error is not None:
            # What `maxUnavailable: 1` would do, so the later checks run on
            # the new configuration; the rollout check has failed already.
            self.c.start_node_pod()
        res = self.loop_result(loop, 40)
        if surge_error is not None:
            raise CheckFailed(f"the surge pod did not start beside the old one: {surge_error}")
        return res, old


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--chart", default=os.environ.get("TPROXY_CHART", os.path.join(repo, "charts/tproxy")),
                    help="chart directory (env TPROXY_CHART; default <repo>/charts/tproxy)")
    ap.add_argument("--helm", default=os.environ.get("HELM", os.path.join(repo, "target/tools/bin/helm")),
                    help="helm binary (env HELM; default <repo>/target/tools/bin/helm)")
    ap.add_argument("--bin-dir", default=os.environ.get("TPROXY_E2E_BIN_DIR", os.path.join(repo, "target/debug")),
                    help="directory of tproxy, tproxy-podwatch, tproxy-initializer, tproxy-sidecar (default <repo>/target/debug)")
    ap.add_argument("--python", default=os.environ.get("TPROXY_TEST_VENV", os.path.join(repo, "target/test-venv")) + "/bin/python",
                    help="Python with requests, run in the pods (default the test venv's)")
    ap.add_argument("--values", action="append", default=[], metavar="FILE",
                    help="extra chart values file after e2e/values.yaml (repeatable), e.g. to see a check fail")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, volumes) after the run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            print("e2e: must run as root (network namespaces, netfilter, mounts)", file=sys.stderr)
            return 1
        print("e2e: SKIP: not root (network namespaces, netfilter and mounts need root; CI fails instead)")
        return 0
    missing = [p for p in [args.helm, args.python] + [os.path.join(args.bin_dir, b) for b in
               ("tproxy", "tproxy-podwatch", "tproxy-initializer", "tproxy-sidecar")] if not os.access(p, os.X_OK)]
    if missing:
        print(f"e2e: missing {', '.join(missing)}: run scripts/install-test-deps.sh and cargo build --workspace --bins",
              file=sys.stderr)
        return 1
    if not os.path.isdir(args.chart):
        print(f"e2e: no chart at {args.chart} (set TPROXY_CHART)", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    started = time.monotonic()
    c = Cluster(repo, args.chart, args.helm, args.bin_dir, keep=args.keep)
    c.python = args.python
    c.values += [os.path.abspath(v) for v in args.values]
    run = Run(c)
    try:
        print("== building the cluster", flush=True)
        c.build()
        c.start_prometheus()
        web = c.deploy("web", annotated=True)
        plain = c.deploy("plain", annotated=False)
        c.wait_intercepted(web)
        print("== checks", flush=True)
        run.check(1, run.c1_allowed, web)
        run.check(2, run.c2_denied, web)
        run.check(3, run.c3_metadata, web)
        run.check(4, run.c4_service, web)
        run.check(5, run.c5_token, web)
        run.check(6, run.c6_ping_port, web)
        run.check(13, run.c13_plain, plain)
        text_err = None
        try:
            run.c7_text(web)
        except Exception as e:
            text_err = e
        run.check(8, run.c8_metrics, web)
        run.check(9, run.c9_traces, web)
        # Second install-time configuration: JSON flow log and the standard
        # mode, rolled out like the DaemonSet controller does.
        std_sets = ["tproxy.logFormat=json", "tproxy.addStandardModeProxy=true", "initializer.proxyMode=standard"]
        roll = {}

        def do_roll():
            res, _old = run.rollout(web, std_sets)
            roll["res"] = res
            errors = [r for r in res if r[1] != 200]
            expect(len(res) > 10, f"only {len(res)} requests in the loop")
            expect(not errors, f"{len(errors)} of {len(res)} requests failed across the rollout, e.g. {errors[:3]}")
            return f"{len(res)} requests, 0 failed"
        run.check(16, do_roll)
        c.stop_pod(c.webhook_pod)
        c.start_webhook()
        std = None
        try:
            std = c.deploy("web-std", annotated=True)
            c.wait_intercepted(std)
        except Exception as e:
            run.record(10, False, f"standard-mode pod: {e}")
        if std is not None:
            run.check(10, run.c10_standard, std)
            run.check(19, run.c19_outside, std)

        def c7():
            if text_err:
                raise text_err
            return run.c7_json(web, c.node_pod)
        run.check(7, c7)
        run.check(11, run.c11_upgrade, web)
        run.check(12, run.c12_delete, web)
    except KeyboardInterrupt as e:
        print(f"e2e: interrupted ({e})", flush=True)
    except Exception as e:
        print(f"e2e: the cluster could not be built or run: {type(e).__name__}: {e}", flush=True)
        if os.environ.get("E2E_DEBUG"):
            traceback.print_exc()
    finally:
        print("== cleanup", flush=True)
        c.close()
    for n in TITLES:
        if n not in run.results:
            run.record(n, False, "not run (see above)")
    passed = sum(1 for ok in run.results.values() if ok)
    failed = len(run.results) - passed
    print(f"{passed} passed, {failed} failed ({time.monotonic() - started:.0f}s)")
    if args.keep:
        print(f"logs and volumes kept in {c.dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
