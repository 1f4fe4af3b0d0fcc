#!/usr/bin/env python3
"""A small authoritative DNS server for the e2e cluster (UDP and TCP).

Usage: dns_server.py ADDR PORT ZONE.json
ZONE.json maps lower-case names (no trailing dot) to lists of IPv4 addresses.
A known name asked for another type gets NOERROR with no answer (NODATA), an
unknown name NXDOMAIN: resolvers (glibc, musl) then give up at once.
Prints "ready" on stdout once both sockets are bound.
"""
import json
import socket
import struct
import sys
import threading

A, AAAA = 1, 28


def parse_question(msg):
    """Returns (id, flags, qname, qtype, end offset of the question)."""
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if qd != 1:
        raise ValueError("one question expected")
    i = 12
    labels = []
    while True:
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compression in a question")
        labels.append(msg[i : i + n].decode("ascii", "replace"))
        i += n
    qtype, _qclass = struct.unpack("!HH", msg[i : i + 4])
    return qid, flags, ".".join(labels).lower(), qtype, i + 4


def answer(msg, zone):
    try:
        qid, flags, name, qtype, qend = parse_question(msg)
    except (ValueError, IndexError, struct.error):
        return None
    rd = flags & 0x0100
    addrs = zone.get(name.rstrip("."))
    rcode = 0 if addrs is not None else 3
    answers = []
    if addrs and qtype == A:
        for a in addrs:
            answers.append(
                struct.pack("!HHHIH", 0xC00C, A, 1, 5, 4) + socket.inet_aton(a)
            )
    head = struct.pack(
        "!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, len(answers), 0, 0
    )
    return head + msg[12:qend] + b"".join(answers)


def serve_udp(sock, zone):
    while True:
        msg, peer = sock.recvfrom(4096)
        out = answer(msg, zone)
        if out:
            sock.sendto(out, peer)


def serve_tcp_conn(conn, zone):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                msg = b""
                while len(msg) < n:
                    part = conn.recv(n - len(msg))
                    if not part:
                        return
                    msg += part
                out = answer(msg, zone)
                if out is None:
                    return
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return


def serve_tcp(sock, zone):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, zone), daemon=True).start()


def main():
    addr, port, zone_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(zone_file, encoding="utf-8") as f:
        zone = {k.lower().rstrip("."): v for k, v in json.load(f).items()}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((addr, port))
    tcp.listen(64)
    threading.Thread(target=serve_tcp, args=(tcp, zone), daemon=True).start()
    print("ready", flush=True)
    serve_udp(udp, zone)


if __name__ == "__main__":
    main()
