#!/usr/bin/env python3
"""Bounded client loop for the restart tests (proxy/tests/restart.rs).

Each request uses a NEW connection (the case a restart can break: a
connection queued on the old listener). Runs THREADS loops until STOP_FILE
exists or MAX requests were made, then prints one JSON line:
{"ok": N, "failed": N, "errors": [...first 20...], "first_ok_at": t, "seconds": t}.

Kinds:
  proxy-http   GET http://HOST/PATH through an explicit proxy (absolute form)
  connect-tls  CONNECT HOST:443 through the proxy, TLS (verified against CAFILE), GET
  direct-http  GET http://HOST/PATH straight to HOST:80 (transparent: REDIRECTed)
"""

import argparse
import json
import os
import socket
import ssl
import threading
import time


def read_all(sock):
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def check(resp, expect):
    head, _, body = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"status {status!r}")
    if expect is not None and body != expect:
        raise RuntimeError(f"body {body[:80]!r} != expected ({len(body)} vs {len(expect)} bytes)")


def one(args, ctx, expect):
    req = (
        f"GET {{target}} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n"
        f"User-Agent: loadloop\r\n\r\n"
    )
    if args.kind == "proxy-http":
        s = socket.create_connection(args.proxy, timeout=args.timeout)
        with s:
            s.sendall(req.format(target=f"http://{args.host}{args.path}").encode())
            check(read_all(s), expect)
    elif args.kind == "direct-http":
        s = socket.create_connection((args.host, 80), timeout=args.timeout)
        with s:
            s.sendall(req.format(target=args.path).encode())
            check(read_all(s), expect)
    else:
        s = socket.create_connection(args.proxy, timeout=args.timeout)
        with s:
            s.sendall(f"CONNECT {args.host}:443 HTTP/1.1\r\nHost: {args.host}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    raise RuntimeError(f"proxy closed during CONNECT ({head!r})")
                head += b
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"CONNECT answered {head.splitlines()[0]!r}")
            with ctx.wrap_socket(s, server_hostname=args.host) as t:
                t.sendall(req.format(target=args.path).encode())
                check(read_all(t), expect)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", required=True, choices=["proxy-http", "connect-tls", "direct-http"])
    ap.add_argument("--proxy", default="127.0.0.1:8080")
    ap.add_argument("--host", required=True)
    ap.add_argument("--path", default="/small.txt")
    ap.add_argument("--expect-file", help="expected body")
    ap.add_argument("--cafile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max", type=int, default=100000)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    h, _, p = args.proxy.rpartition(":")
    args.proxy = (h, int(p))
    expect = open(args.expect_file, "rb").read() if args.expect_file else None
    ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    lock = threading.Lock()
    state = {"ok": 0, "failed": 0, "errors": [], "first_ok_at": None, "started": 0}
    t0 = time.monotonic()

    def loop():
        while not os.path.exists(args.stop_file):
            with lock:
                if state["started"] >= args.max:
                    return
                state["started"] += 1
            try:
                one(args, ctx, expect)
                with lock:
                    state["ok"] += 1
                    if state["first_ok_at"] is None:
                        state["first_ok_at"] = time.monotonic() - t0
            except Exception as e:  # every failure is counted and shown
                with lock:
                    state["failed"] += 1
                    if len(state["errors"]) < 20:
                        state["errors"].append(f"{time.monotonic() - t0:.3f}s {type(e).__name__}: {e}")

    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    del state["started"]
    state["seconds"] = time.monotonic() - t0
    print(json.dumps(state), flush=True)


if __name__ == "__main__":
    main()
