"""HTTP/2 client for the tproxy tests: many concurrent streams on ONE
connection, optionally through an explicit proxy (CONNECT), reporting what
happened to every stream as JSON.

Usage: h2client.py --connect HOST:PORT [--proxy HOST:PORT] [--sni NAME]
                   --cafile CA [--authority A] [--timeout S] PATH...

Output (stdout): {"alpn": "h2", "streams": [{"path", "status", "headers",
"body_len", "body_sha256", "body_head", "trailers", "reset"}...]} where
"reset" is the RST_STREAM error code the stream got, or null.
"""
import argparse
import hashlib
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def open_socket(args):
    host, port = args.connect.rsplit(":", 1)
    if not args.proxy:
        return socket.create_connection((host, int(port)), timeout=args.timeout)
    phost, pport = args.proxy.rsplit(":", 1)
    s = socket.create_connection((phost, int(pport)), timeout=args.timeout)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (args.connect, args.connect)).encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("proxy closed the connection during CONNECT: %r" % resp)
        resp += chunk
    status = resp.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        sys.exit("CONNECT failed: %r" % status)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--proxy")
    ap.add_argument("--sni")
    ap.add_argument("--authority")
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["h2"])
    sni = args.sni or args.connect.rsplit(":", 1)[0]
    tls = ctx.wrap_socket(open_socket(args), server_hostname=sni)
    alpn = tls.selected_alpn_protocol()
    if alpn != "h2":
        sys.exit("server did not negotiate h2 (ALPN %r)" % alpn)

    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * 1024 * 1024)
    authority = args.authority or args.connect
    streams = {}
    for path in args.paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path)],
            end_stream=True,
        )
        conn.increment_flow_control_window(1024 * 1024, stream_id=sid)
        streams[sid] = {
            "path": path,
            "status": None,
            "headers": [],
            "body": hashlib.sha256(),
            "body_len": 0,
            "body_head": b"",
            "trailers": None,
            "reset": None,
            "done": False,
        }
    tls.sendall(conn.data_to_send())

    deadline = time.monotonic() + args.timeout
    while not all(s["done"] for s in streams.values()):
        if time.monotonic() > deadline:
            break
        tls.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = tls.recv(65536)
        except (socket.timeout, ssl.SSLError, OSError):
            break
        if not data:
            break
        for ev in conn.receive_data(data):
            st = streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                st["headers"] = [list(h) for h in ev.headers]
                st["status"] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                st["body"].update(ev.data)
                st["body_len"] += len(ev.data)
                if len(st["body_head"]) < 200:
                    st["body_head"] += ev.data[: 200 - len(st["body_head"])]
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st["trailers"] = [list(h) for h in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded):
                st["done"] = True
            elif isinstance(ev, h2.events.StreamReset):
                st["reset"] = int(ev.error_code)
                st["done"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                for s in streams.values():
                    s["done"] = True
        out = conn.data_to_send()
        if out:
            tls.sendall(out)

    result = []
    for s in streams.values():
        result.append(
            {
                "path": s["path"],
                "status": s["status"],
                "headers": s["headers"],
                "body_len": s["body_len"],
                "body_sha256": s["body"].hexdigest(),
                "body_head": s["body_head"].decode("utf-8", "replace"),
                "trailers": s["trailers"],
                "reset": s["reset"],
                "done": s["done"],
            }
        )
    print(json.dumps({"alpn": alpn, "streams": result}))


if __name__ == "__main__":
    main()
