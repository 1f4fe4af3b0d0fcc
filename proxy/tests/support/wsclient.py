"""Raw-socket WebSocket client for the tproxy tests (no library, so every
byte on the wire is ours). Usage:

  wsclient.py --target HOST:PORT [--proxy HOST:PORT --via absolute|connect]
              [--tls --cafile CA --server-name NAME]

--via absolute: GET http://target/ws through the proxy (plain ws only)
--via connect : CONNECT target, then ws (or wss with --tls) in the tunnel
no --proxy    : straight to the target
Sends text, unicode text and a 100 KiB binary message, checks each echo,
closes cleanly, prints "OK <messages>".
"""
import argparse
import base64
import hashlib
import os
import socket
import ssl
import struct
import sys

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise SystemExit(f"connection closed; buffered {self.buf[:200]!r}")
        self.buf += b

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        h, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return h.decode("latin-1")

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def send_frame(sock, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(hdr + mask + masked)


def recv_frame(conn):
    """One complete message (reassembles continuation frames)."""
    data, first_op = b"", None
    while True:
        b0, b1 = conn.exact(2)
        op, fin = b0 & 0x0F, b0 & 0x80
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", conn.exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", conn.exact(8))
        if b1 & 0x80:
            raise SystemExit("server frame is masked")
        payload = conn.exact(n)
        if op == 0x9:  # ping from server: ignore
            continue
        if first_op is None:
            first_op = op
        data += payload
        if fin:
            return first_op, data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--proxy")
    p.add_argument("--via", choices=["absolute", "connect"], default="connect")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--server-name")
    a = p.parse_args()
    th, tp = a.target.rsplit(":", 1)
    if a.proxy:
        ph, pp = a.proxy.rsplit(":", 1)
        sock = socket.create_connection((ph, int(pp)), timeout=20)
    else:
        sock = socket.create_connection((th, int(tp)), timeout=20)
    conn = Conn(sock)
    path = "/ws"
    if a.proxy and a.via == "connect":
        sock.sendall(f"CONNECT {a.target} HTTP/1.1\r\nHost: {a.target}\r\n\r\n".encode())
        h = conn.head()
        if not h.split("\r\n")[0].split(" ")[1] == "200":
            raise SystemExit(f"CONNECT refused: {h!r}")
        if conn.buf:
            raise SystemExit("bytes after CONNECT response")
    elif a.proxy:
        if a.tls:
            raise SystemExit("--via absolute cannot do TLS")
        path = f"http://{a.target}/ws"
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.cafile)
        sock = ctx.wrap_socket(sock, server_hostname=a.server_name or th)
        conn = Conn(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {a.target}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    h = conn.head()
    lines = h.split("\r\n")
    if lines[0].split(" ")[1] != "101":
        raise SystemExit(f"no 101: {h!r}")
    headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip()
               for l in lines[1:] if ":" in l}
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise SystemExit(f"bad Sec-WebSocket-Accept in {h!r}")
    msgs = [(0x1, b"hello through tproxy"), (0x1, "ünïcödé ✓".encode()),
            (0x2, bytes((i * 31 + (i >> 8)) & 0xFF for i in range(100 * 1024)))]
    for op, payload in msgs:
        send_frame(sock, op, payload)
        rop, data = recv_frame(conn)
        if (rop, data) != (op, payload):
            raise SystemExit(f"echo mismatch: sent op {op} {len(payload)}b, got op {rop} {len(data)}b")
    send_frame(sock, 0x8, struct.pack("!H", 1000))
    rop, _ = recv_frame(conn)
    if rop != 0x8:
        raise SystemExit(f"expected close frame, got op {rop}")
    print(f"OK {len(msgs)}")


if __name__ == "__main__":
    main()
