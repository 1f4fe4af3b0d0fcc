"""Writes the tproxy Grafana dashboards (classic JSON model) next to this file.

Edit here, run `python3 dashboards/generate.py`, commit the JSON it writes.
proxy/tests/prometheus.rs checks every query against a real Prometheus.
"""
import json
import os
DS = {"type": "prometheus", "uid": "${datasource}"}

def ds_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False, "multi": False}

def q_var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "includeAll": multi, "multi": multi,
            **({"allValue": ".*"} if multi else {}), "current": {}, "options": [], "hide": 0, "regex": ""}

class Layout:
    def __init__(self): self.x = 0; self.y = 0; self.rowh = 0; self.id = 0
    def place(self, w, h):
        if self.x + w > 24:
            self.x = 0; self.y += self.rowh; self.rowh = 0
        g = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w; self.rowh = max(self.rowh, h); self.id += 1
        return g, self.id

def panel(L, kind, title, targets, unit="short", w=12, h=8, desc="", **extra):
    g, pid = L.place(w, h)
    p = {"id": pid, "type": kind, "title": title, "description": desc, "datasource": DS, "gridPos": g,
         "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": lf,
                      **({"instant": True, "format": "table"} if kind in ("table", "bargauge") else {"range": True})}
                     for i, (e, lf) in enumerate(targets)],
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area"}
    p.update(extra)
    return p

def dashboard(uid, title, desc, variables, panels):
    return {"uid": uid, "title": title, "description": desc, "tags": ["tproxy"], "editable": True,
            "schemaVersion": 39, "version": 1, "graphTooltip": 1, "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s", "timezone": "", "annotations": {"list": []},
            "links": [{"title": "tproxy dashboards", "type": "dashboards", "tags": ["tproxy"], "asDropdown": True}],
            "templating": {"list": variables}, "panels": panels}

RI = "$__rate_interval"

# ---------------- overview ----------------
S = 'source_namespace=~"$namespace",source_workload=~"$workload"'
L = Layout()
req = f"tproxy_requests_total{{{S}}}"
P = [
    panel(L, "stat", "Requests/s", [(f"sum(rate({req}[{RI}]))", "requests/s")], "reqps", w=6, h=4),
    panel(L, "stat", "Error ratio (5xx + no response)", [(
        f'(sum(rate(tproxy_requests_total{{{S},status_class=~"5xx|error"}}[{RI}])) or vector(0)) / sum(rate({req}[{RI}]))', "errors")],
        "percentunit", w=6, h=4),
    panel(L, "stat", "Block ratio (denied by policy)", [(
        f'(sum(rate(tproxy_requests_total{{{S},decision="deny"}}[{RI}])) or vector(0)) / sum(rate({req}[{RI}]))', "denied")],
        "percentunit", w=6, h=4),
    panel(L, "stat", "p99 request duration", [(
        f"histogram_quantile(0.99, sum by (le) (rate(tproxy_request_duration_seconds_bucket{{{S}}}[{RI}])))", "p99")],
        "s", w=6, h=4),
    panel(L, "timeseries", "Requests/s by status class", [(f"sum by (status_class) (rate({req}[{RI}]))", "{{status_class}}")], "reqps"),
    panel(L, "timeseries", "Requests/s by decision", [(f"sum by (decision) (rate({req}[{RI}]))", "{{decision}}")], "reqps"),
    panel(L, "timeseries", "Request duration quantiles", [
        (f"histogram_quantile({q}, sum by (le) (rate(tproxy_request_duration_seconds_bucket{{{S}}}[{RI}])))", f"p{int(q*100)}")
        for q in (0.5, 0.9, 0.99)], "s", desc="From the request head to the end of the response."),
    panel(L, "timeseries", "Upstream time to first byte quantiles", [
        (f"histogram_quantile({q}, sum by (le) (rate(tproxy_upstream_ttfb_seconds_bucket{{{S}}}[{RI}])))", f"p{int(q*100)}")
        for q in (0.5, 0.9, 0.99)], "s"),
    panel(L, "timeseries", "HTTP body bytes/s", [
        (f"sum by (direction) (rate(tproxy_body_bytes_total{{{S}}}[{RI}]))", "{{direction}}")], "Bps"),
    panel(L, "table", "Top destinations (requests/s)", [
        (f"topk(10, sum by (destination_host) (rate({req}[{RI}])))", "{{destination_host}}")], "reqps",
        desc="Hosts beyond --metrics-max-hosts (and not named by a rule) are counted as `other`."),
    panel(L, "timeseries", "Requests/s by namespace / workload", [
        (f"sum by (source_namespace, source_workload) (rate({req}[{RI}]))", "{{source_namespace}}/{{source_workload}}")], "reqps"),
    panel(L, "timeseries", "Errors/s by namespace / workload", [
        (f'sum by (source_namespace, source_workload) (rate(tproxy_requests_total{{{S},status_class=~"5xx|error"}}[{RI}]))',
         "{{source_namespace}}/{{source_workload}}")], "reqps"),
    panel(L, "timeseries", "Denied requests/s by rule", [
        (f'sum by (rule) (rate(tproxy_requests_total{{{S},decision="deny"}}[{RI}]))', "{{rule}}")], "reqps"),
    panel(L, "timeseries", "p99 request duration by workload", [
        (f"histogram_quantile(0.99, sum by (source_namespace, source_workload, le) (rate(tproxy_request_duration_seconds_bucket{{{S}}}[{RI}])))",
         "{{source_namespace}}/{{source_workload}}")], "s"),
]
overview = dashboard("tproxy-overview", "tproxy / Overview",
    "Egress through tproxy: request rate, errors, blocks, latency, bytes, destinations, by source namespace and workload.",
    [ds_var(), q_var("namespace", "Namespace", "label_values(tproxy_requests_total, source_namespace)"),
     q_var("workload", "Workload", 'label_values(tproxy_requests_total{source_namespace=~"$namespace"}, source_workload)')], P)

# ---------------- pod drill-down ----------------
S = 'source_namespace="$namespace",source_workload="$workload",source_pod=~"$pod"'
L = Layout()
req = f"tproxy_requests_total{{{S}}}"
P = [
    panel(L, "stat", "Requests/s", [(f"sum(rate({req}[{RI}]))", "requests/s")], "reqps", w=8, h=4),
    panel(L, "stat", "Error ratio", [(
        f'(sum(rate(tproxy_requests_total{{{S},status_class=~"5xx|error"}}[{RI}])) or vector(0)) / sum(rate({req}[{RI}]))', "errors")],
        "percentunit", w=8, h=4),
    panel(L, "stat", "Block ratio", [(
        f'(sum(rate(tproxy_requests_total{{{S},decision="deny"}}[{RI}])) or vector(0)) / sum(rate({req}[{RI}]))', "denied")],
        "percentunit", w=8, h=4),
    panel(L, "timeseries", "Requests/s by pod and status class", [
        (f"sum by (source_pod, status_class) (rate({req}[{RI}]))", "{{source_pod}} {{status_class}}")], "reqps"),
    panel(L, "timeseries", "Requests/s by method", [(f"sum by (method) (rate({req}[{RI}]))", "{{method}}")], "reqps"),
    panel(L, "timeseries", "Request duration p50 / p99 by pod", [
        (f"histogram_quantile({q}, sum by (source_pod, le) (rate(tproxy_request_duration_seconds_bucket{{{S}}}[{RI}])))", f"{{{{source_pod}}}} p{int(q*100)}")
        for q in (0.5, 0.99)], "s"),
    panel(L, "timeseries", "Upstream time to first byte p50 / p99 by pod", [
        (f"histogram_quantile({q}, sum by (source_pod, le) (rate(tproxy_upstream_ttfb_seconds_bucket{{{S}}}[{RI}])))", f"{{{{source_pod}}}} p{int(q*100)}")
        for q in (0.5, 0.99)], "s"),
    panel(L, "table", "Destinations (requests/s)", [
        (f"topk(20, sum by (destination_host, decision, rule) (rate({req}[{RI}])))", "{{destination_host}}")], "reqps"),
    panel(L, "timeseries", "Denied requests/s by rule and destination", [
        (f'sum by (rule, destination_host) (rate(tproxy_requests_total{{{S},decision="deny"}}[{RI}]))', "{{rule}} → {{destination_host}}")], "reqps"),
    panel(L, "timeseries", "HTTP body bytes/s", [
        (f"sum by (source_pod, direction) (rate(tproxy_body_bytes_total{{{S}}}[{RI}]))", "{{source_pod}} {{direction}}")], "Bps"),
    panel(L, "timeseries", "Passthrough bytes/s and connections/s", [
        (f"sum by (direction) (rate(tproxy_passthrough_bytes_total{{{S}}}[{RI}]))", "bytes {{direction}}"),
        (f"sum(rate(tproxy_passthrough_flows_total{{{S}}}[{RI}]))", "connections/s")], "Bps",
        desc="Connections spliced without interception (passthrough rules, --ignore-hosts, TLS fail-open, non-HTTP)."),
]
pod = dashboard("tproxy-pod", "tproxy / Pod",
    "One workload's pods: requests, errors, denials, latency, destinations, bytes.",
    [ds_var(), q_var("namespace", "Namespace", "label_values(tproxy_requests_total, source_namespace)", multi=False),
     q_var("workload", "Workload", 'label_values(tproxy_requests_total{source_namespace="$namespace"}, source_workload)', multi=False),
     q_var("pod", "Pod", 'label_values(tproxy_requests_total{source_namespace="$namespace",source_workload="$workload"}, source_pod)')], P)

# ---------------- internals ----------------
I = 'instance=~"$instance"'
L = Layout()
P = [
    panel(L, "stat", "Proxies up", [(f'sum(up{{{I}}} * on (instance, job) group_left tproxy_build_info{{{I}}})', "up")], "short", w=6, h=4),
    panel(L, "stat", "Active connections", [(f"sum(tproxy_connections_active{{{I}}})", "active")], "short", w=6, h=4),
    panel(L, "stat", "Certificate cache entries", [(f"sum(tproxy_cert_cache_entries{{{I}}})", "entries")], "short", w=6, h=4),
    panel(L, "table", "Versions", [(f"count by (version) (tproxy_build_info{{{I}}})", "{{version}}")], "short", w=6, h=4),
    panel(L, "timeseries", "Connections opened/s by listener mode and kind", [
        (f"sum by (mode, kind) (rate(tproxy_connections_total{{{I}}}[{RI}]))", "{{mode}} {{kind}}")], "cps",
        desc="kind: intercepted, passthrough (spliced), blocked (deny rule, loop guard)."),
    panel(L, "timeseries", "Active connections by listener mode and kind", [
        (f"sum by (mode, kind) (tproxy_connections_active{{{I}}})", "{{mode}} {{kind}}")], "short"),
    panel(L, "timeseries", "TLS handshakes/s by side and result", [
        (f"sum by (side, result) (rate(tproxy_tls_handshakes_total{{{I}}}[{RI}]))", "{{side}} {{result}}")], "ops"),
    panel(L, "timeseries", "TLS handshake failures/s by side and reason", [
        (f"sum by (side, reason) (rate(tproxy_tls_handshake_failures_total{{{I}}}[{RI}]))", "{{side}} {{reason}}")], "ops",
        desc="client unknown_ca: a client does not trust the tproxy CA (install it, or see TLS fail-open)."),
    panel(L, "timeseries", "Certificate cache lookups/s by result", [
        (f"sum by (result) (rate(tproxy_cert_cache_lookups_total{{{I}}}[{RI}]))", "{{result}}")], "ops"),
    panel(L, "timeseries", "Certificate mint duration", [
        (f"histogram_quantile({q}, sum by (le) (rate(tproxy_cert_mint_duration_seconds_bucket{{{I}}}[{RI}])))", f"p{int(q*100)}")
        for q in (0.5, 0.99)], "s"),
    panel(L, "timeseries", "Upstream connections/s by result", [
        (f"sum by (result) (rate(tproxy_upstream_connections_total{{{I}}}[{RI}]))", "{{result}}")], "ops",
        desc="opened, failed, reused (from the keep-alive pool)."),
    panel(L, "table", "Workers and I/O driver", [
        (f"sum by (instance, worker, driver) (tproxy_worker_info{{{I}}})", "{{worker}} {{driver}}")], "short"),
    panel(L, "timeseries", "Config reloads by file and result", [
        (f"sum by (file, result) (increase(tproxy_config_reloads_total{{{I}}}[{RI}]))", "{{file}} {{result}}")], "short",
        desc="rules and pod directory; a rejected file keeps the previous version."),
    panel(L, "timeseries", "TLS fail-open events", [
        (f"sum by (event) (increase(tproxy_tls_fail_open_total{{{I}}}[{RI}]))", "{{event}}")], "short"),
]
internals = dashboard("tproxy-internals", "tproxy / Internals",
    "Proxy internals: connections, TLS, certificate cache, upstream pool, workers, reloads.",
    [ds_var(), q_var("instance", "Instance", "label_values(tproxy_build_info, instance)")], P)

for name, d in [("tproxy-overview", overview), ("tproxy-pod", pod), ("tproxy-internals", internals)]:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.json"), "w") as f:
        json.dump(d, f, indent=2, ensure_ascii=False)
        f.write("\n")
