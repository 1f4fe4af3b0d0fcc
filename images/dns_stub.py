#!/usr/bin/env python3
"""Tiny DNS responder for images/test.sh: answers every A query for NAME with ADDR
and every other query with an empty NOERROR answer, over UDP on 127.0.0.1:53 of the
network namespace it runs in. Proves name resolution (glibc's built-in DNS in the
static binaries) works inside the scratch images.

usage: dns_stub.py NAME ADDR   (runs until killed)
"""

import socket
import struct
import sys


def qname_end(msg: bytes, off: int) -> int:
    while msg[off] != 0:
        off += msg[off] + 1
    return off + 1


def main() -> None:
    name = sys.argv[1].rstrip(".").lower()
    addr = socket.inet_aton(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    while True:
        msg, peer = sock.recvfrom(512)
        if len(msg) < 12:
            continue
        (qid,) = struct.unpack("!H", msg[:2])
        end = qname_end(msg, 12)
        qtype, _qclass = struct.unpack("!HH", msg[end : end + 4])
        question = msg[12 : end + 4]
        labels, off = [], 12
        while msg[off] != 0:
            labels.append(msg[off + 1 : off + 1 + msg[off]].decode("ascii", "replace"))
            off += msg[off] + 1
        asked = ".".join(labels).lower()
        answers = b""
        count = 0
        if asked == name and qtype == 1:
            # Name pointer to the question (offset 12), A, IN, TTL 5, 4 bytes.
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + addr
            count = 1
        rcode = 0 if asked == name else 3  # NXDOMAIN for other names
        flags = 0x8180 | rcode  # response, recursion desired + available
        header = struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0)
        sock.sendto(header + question + answers, peer)


if __name__ == "__main__":
    main()
