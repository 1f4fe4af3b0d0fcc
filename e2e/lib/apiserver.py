#!/usr/bin/env python3
"""Kubernetes API server stand-in: pods over list + watch, as kube-rs expects.

Usage: apiserver.py ADDR PORT CERT KEY TOKEN_FILE REQUEST_LOG

Serves HTTPS (the harness's API CA signs CERT; podwatch verifies it with the
service-account ca.crt, exactly like in-cluster). Every request must carry
`Authorization: Bearer <token>` (the projected service-account token).

Routes: GET /api/v1/pods and /api/v1/namespaces/NS/pods with
`fieldSelector=spec.nodeName=N`, `limit` + `continue` paging (list answers carry
`metadata.resourceVersion`), and `watch=true` from `resourceVersion=RV`:
newline-delimited `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}`
over a chunked 200 response, ended at `timeoutSeconds`. A watch from a
resource version older than the last "expire" gets an ERROR event with a
Status of code 410 inside the 200 stream (as etcd compaction causes), after
which kube-rs relists.

Control on stdin, one JSON object per line, each answered by `ok RV` on stdout:
  {"op": "put", "pod": {...}}                    create or replace a pod
  {"op": "delete", "namespace": N, "name": P}    delete it (DELETED event)
  {"op": "expire"}                               compact and end open watches:
                                                 their resumption gets 410 Gone
"""
import json
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Condition()
STATE = {"rv": 100, "pods": {}, "events": [], "compacted": 0, "epoch": 0}
TOKEN = ""
REQLOG = None


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def node_selector(query):
    """The node name of a `spec.nodeName=N` field selector (None: no selector)."""
    for sel in query.get("fieldSelector", []):
        for term in sel.split(","):
            key, _, value = term.partition("=")
            if key == "spec.nodeName":
                return value.lstrip("=")
    return None


def matches(pod, namespace, node):
    if namespace and pod["metadata"]["namespace"] != namespace:
        return False
    if node is not None and pod.get("spec", {}).get("nodeName") != node:
        return False
    return True


def control(line):
    cmd = json.loads(line)
    with LOCK:
        STATE["rv"] += 1
        rv = str(STATE["rv"])
        if cmd["op"] == "put":
            pod = cmd["pod"]
            meta = pod.setdefault("metadata", {})
            key = (meta["namespace"], meta["name"])
            old = STATE["pods"].get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                old["metadata"]["creationTimestamp"] if old else now(),
            )
            meta["resourceVersion"] = rv
            pod.setdefault("kind", "Pod")
            pod.setdefault("apiVersion", "v1")
            STATE["pods"][key] = pod
            STATE["events"].append((int(rv), "MODIFIED" if old else "ADDED", pod))
        elif cmd["op"] == "delete":
            key = (cmd["namespace"], cmd["name"])
            pod = STATE["pods"].pop(key, None)
            if pod is not None:
                pod = json.loads(json.dumps(pod))
                pod["metadata"]["resourceVersion"] = rv
                STATE["events"].append((int(rv), "DELETED", pod))
        elif cmd["op"] == "expire":
            # Compaction up to now, and every open watch ends (as when the API
            # server restarts): their resumption from an older version gets 410.
            STATE["compacted"] = int(rv)
            STATE["epoch"] += 1
        LOCK.notify_all()
    print(f"ok {rv}", flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; requests go to REQLOG
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with LOCK:
            REQLOG.write(json.dumps({"path": self.path, "t": time.time()}) + "\n")
            REQLOG.flush()
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_json(401, status(401, "Unauthorized", "bearer token required"))
            return
        parts = url.path.strip("/").split("/")
        namespace = None
        if parts == ["api", "v1", "pods"]:
            pass
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            namespace = parts[3]
        else:
            self.send_json(404, status(404, "NotFound", f"no route {url.path}"))
            return
        node = node_selector(query)
        if query.get("watch", ["false"])[0] in ("true", "1"):
            self.watch(namespace, node, query)
        else:
            self.list(namespace, node, query)

    def list(self, namespace, node, query):
        limit = int(query.get("limit", ["0"])[0] or 0)
        offset = int(query.get("continue", ["0"])[0] or 0)
        with LOCK:
            items = [p for _, p in sorted(STATE["pods"].items()) if matches(p, namespace, node)]
            rv = str(STATE["rv"])
        meta = {"resourceVersion": rv}
        if limit and offset + limit < len(items):
            meta["continue"] = str(offset + limit)
            page = items[offset : offset + limit]
        else:
            page = items[offset:]
        self.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, namespace, node, query):
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        timeout = min(int(query.get("timeoutSeconds", ["290"])[0] or 290), 290)
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        with LOCK:
            epoch = STATE["epoch"]
        last_sent = time.monotonic()
        try:
            while time.monotonic() < deadline:
                with LOCK:
                    if since < STATE["compacted"]:
                        gone = True
                        pending = []
                    else:
                        gone = False
                        pending = [e for e in STATE["events"] if e[0] > since]
                        if not pending:
                            LOCK.wait(1.0)
                            pending = [e for e in STATE["events"] if e[0] > since]
                    rv = STATE["rv"]
                    ended = STATE["epoch"] != epoch
                if gone:
                    self.chunk({"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since} ({rv})")})
                    break
                if ended:
                    break
                for erv, etype, obj in pending:
                    since = erv
                    if matches(obj, namespace, node):
                        self.chunk({"type": etype, "object": obj})
                        last_sent = time.monotonic()
                if bookmarks and time.monotonic() - last_sent > 5:
                    self.chunk({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(max(since, rv))}}})
                    since = max(since, rv)
                    last_sent = time.monotonic()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True


def main():
    global TOKEN, REQLOG
    addr, port, cert, key, token_file, reqlog = sys.argv[1:7]
    with open(token_file, encoding="utf-8") as f:
        TOKEN = f.read().strip()
    REQLOG = open(reqlog, "a", encoding="utf-8")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = ThreadingHTTPServer((addr, int(port)), Handler)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            control(line)


if __name__ == "__main__":
    main()
