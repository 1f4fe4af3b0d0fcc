"""HTTP/2-only TLS upstream for the tproxy tests (hyper-h2 + pyOpenSSL).

Usage: h2server.py --host H --port P --tls CERT KEY [--alpn-mismatch alert|decline]

ALPN: it speaks only "h2". A client whose ALPN offer lacks h2 gets, with
`--alpn-mismatch alert`, the fatal no_application_protocol alert (as Go and
rustls servers send); with `decline` (the default, like Python's ssl module
and OpenSSL servers) the handshake completes without ALPN. Either way a
connection that did not negotiate h2 is closed after the handshake, so
nothing but a real HTTP/2 client is ever served.

Paths (any method):
  /slow...      200 after 0.5 s, body "<path>\\n"
  /reset...     RST_STREAM with ENHANCE_YOUR_CALM (0xb) and no response
  /hang...      no answer at all
  /goaway...    200 "bye\\n", then GOAWAY (the socket stays open)
  /refuse...    GOAWAY (NO_ERROR) with a last-stream-id below the stream, and
                no answer: "not processed", every time
  /refuse-once... the first time the path is seen (server-wide): RST_STREAM
                REFUSED_STREAM; later like /echo
  /goaway-once... the first time the path is seen: GOAWAY (NO_ERROR) with a
                last-stream-id below the stream, no answer; later like /echo
  /trailers...  200, body "body before trailers\\n", then trailer x-check: yes
  /echo...      200, JSON list of the request header fields received, and
                the request body's size and sha256
  anything else 200, body "<path>\\n"
Every response carries "x-upstream: h2-only".

Prints "READY <port>" on stdout once listening, then one line
"reset <path> <code>" per stream the client resets and one line
"refused <path>" per stream it refused (GOAWAY or REFUSED_STREAM).
"""
import argparse
import hashlib
import json
import select
import socket
import sys
import threading
import time
import traceback

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from OpenSSL import SSL


class NoH2(Exception):
    """Raised in the ALPN callback: pyOpenSSL then returns
    SSL_TLSEXT_ERR_ALERT_FATAL and OpenSSL sends no_application_protocol
    (its NO_OVERLAPPING_PROTOCOLS sentinel only declines ALPN silently)."""


def context(cert, key, mismatch):
    def alpn_select(_conn, offered):
        if b"h2" in offered:
            return b"h2"
        if mismatch == "alert":
            raise NoH2("client offered %r, not h2" % offered)
        return SSL.NO_OVERLAPPING_PROTOCOLS

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)
    ctx.set_alpn_select_callback(alpn_select)
    return ctx


SEEN = set()
SEEN_LOCK = threading.Lock()


def first_time(path):
    with SEEN_LOCK:
        if path in SEEN:
            return False
        SEEN.add(path)
        return True


class Conn:
    """One client connection, served by one thread (OpenSSL objects are not
    safe for concurrent read and write from different threads)."""

    def __init__(self, tls):
        self.tls = tls
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.heads = {}
        self.bodies = {}
        self.due = []  # (when, stream id)
        self.paths = {}  # stream id -> request head, kept after the answer
        self.goaway_sent = False

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.tls.sendall(data)

    def send_body(self, sid, data, end):
        step = self.h2.max_outbound_frame_size
        for i in range(0, len(data), step):
            last = i + step >= len(data)
            self.h2.send_data(sid, data[i : i + step], end_stream=end and last)
        if not data and end:
            self.h2.end_stream(sid)

    def respond(self, sid):
        head = self.heads.pop(sid)
        body = bytes(self.bodies.pop(sid, b""))
        path = dict(head).get(":path", "/")
        try:
            if path.startswith("/hang"):
                return
            once = path.startswith("/refuse-once") or path.startswith("/goaway-once")
            if (once and first_time(path)) or (path.startswith("/refuse") and not once):
                print("refused", path, flush=True)
                if path.startswith("/refuse-once"):
                    self.h2.reset_stream(sid, error_code=0x7)
                else:
                    self.h2.close_connection(last_stream_id=max(sid - 2, 0))
                    self.goaway_sent = True
                return
            if once:
                path = "/echo"
            if path.startswith("/reset"):
                self.h2.reset_stream(sid, error_code=0xB)
            elif path.startswith("/goaway"):
                self.h2.send_headers(sid, [(":status", "200"), ("content-length", "4")])
                self.send_body(sid, b"bye\n", True)
                self.h2.close_connection(last_stream_id=sid)
                self.goaway_sent = True
            elif path.startswith("/trailers"):
                self.h2.send_headers(
                    sid,
                    [(":status", "200"), ("content-type", "text/plain"), ("x-upstream", "h2-only")],
                )
                self.send_body(sid, b"body before trailers\n", False)
                self.h2.send_headers(sid, [("x-check", "yes")], end_stream=True)
            else:
                if path.startswith("/echo"):
                    out = json.dumps(
                        {
                            "headers": head,
                            "body_size": len(body),
                            "body_sha256": hashlib.sha256(body).hexdigest(),
                        }
                    ).encode()
                else:
                    out = ("%s\n" % path).encode()
                self.h2.send_headers(
                    sid,
                    [
                        (":status", "200"),
                        ("content-length", str(len(out))),
                        ("content-type", "text/plain"),
                        ("x-upstream", "h2-only"),
                    ],
                )
                self.send_body(sid, out, True)
        except h2.exceptions.H2Error:
            pass  # the client reset the stream meanwhile

    def ended(self, sid):
        path = dict(self.heads.get(sid, [])).get(":path", "/")
        delay = 0.5 if path.startswith("/slow") else 0.0
        self.due.append((time.monotonic() + delay, sid))

    def serve(self):
        self.tls.do_handshake()
        if self.tls.get_alpn_proto_negotiated() != b"h2":
            return
        self.h2.initiate_connection()
        self.flush()
        while True:
            now = time.monotonic()
            ready = [d for d in self.due if d[0] <= now]
            self.due = [d for d in self.due if d[0] > now]
            for _, sid in ready:
                self.respond(sid)
            self.flush()
            wait = min([d[0] for d in self.due], default=now + 0.2) - now
            if self.tls.pending() == 0:
                r, _, _ = select.select([self.tls], [], [], max(wait, 0.0))
                if not r:
                    continue
            try:
                data = self.tls.recv(65536)
            except SSL.WantReadError:
                continue
            except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error):
                return
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                if not self.goaway_sent:
                    raise
                # After our GOAWAY the peer's frames in flight are discarded
                # until it closes (a lingering close, like nginx): closing
                # with unread data would reset the connection and destroy
                # the GOAWAY before the peer read it.
                continue
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.heads[ev.stream_id] = [list(h) for h in ev.headers]
                    self.paths[ev.stream_id] = self.heads[ev.stream_id]
                elif isinstance(ev, h2.events.DataReceived):
                    self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    head = self.heads.pop(ev.stream_id, None) or self.paths.get(ev.stream_id)
                    path = dict(head).get(":path") if head else None
                    print("reset", path, int(ev.error_code), flush=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.flush()
                    return
            self.flush()


def handle(ctx, sock):
    sock.setblocking(True)
    tls = SSL.Connection(ctx, sock)
    tls.set_accept_state()
    try:
        Conn(tls).serve()
    except (SSL.Error, OSError, NoH2):
        pass  # the client went away, or offered no h2 (alerted)
    except Exception:  # a broken client must not kill the server; say why
        traceback.print_exc(file=sys.stderr)
    finally:
        try:
            tls.shutdown()
        except Exception:
            pass
        sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, required=True, metavar=("CERT", "KEY"))
    ap.add_argument("--alpn-mismatch", choices=["alert", "decline"], default="decline")
    args = ap.parse_args()
    ctx = context(args.tls[0], args.tls[1], args.alpn_mismatch)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(128)
    print("READY %d" % lsock.getsockname()[1], flush=True)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=handle, args=(ctx, sock), daemon=True).start()


if __name__ == "__main__":
    main()
