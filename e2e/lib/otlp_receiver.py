#!/usr/bin/env python3
"""OTLP/HTTP traces receiver: decodes ExportTraceServiceRequest protobufs.

Usage: otlp_receiver.py ADDR PORT OUT.jsonl
Appends one JSON line per received span: {"resource": {attr: value},
"name": span name, "attributes": {attr: value}}. Only the fields the e2e checks
read are decoded (a minimal protobuf wire reader, no generated code).
"""
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = None
LOCK = threading.Lock()


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf):
    """Yields (field number, wire type, value) of one message."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def any_value(buf):
    for num, wt, v in fields(buf):
        if num == 1 and wt == 2:
            return v.decode("utf-8", "replace")
        if num in (2, 3) and wt == 0:
            return v
    return None


def key_values(bufs):
    out = {}
    for kv in bufs:
        key = value = None
        for num, _, v in fields(kv):
            if num == 1:
                key = v.decode("utf-8", "replace")
            elif num == 2:
                value = any_value(v)
        if key is not None:
            out[key] = value
    return out


def decode(body):
    """ExportTraceServiceRequest → list of span dicts."""
    spans = []
    for num, _, rs in fields(body):
        if num != 1:
            continue
        resource, scope_spans = {}, []
        for n2, _, v2 in fields(rs):
            if n2 == 1:
                resource = key_values([v for n3, _, v in fields(v2) if n3 == 1])
            elif n2 == 2:
                scope_spans.append(v2)
        for ss in scope_spans:
            for n3, _, span in fields(ss):
                if n3 != 2:
                    continue
                name, attrs = None, []
                for n4, _, v4 in fields(span):
                    if n4 == 5:
                        name = v4.decode("utf-8", "replace")
                    elif n4 == 9:
                        attrs.append(v4)
                spans.append({"resource": resource, "name": name, "attributes": key_values(attrs)})
    return spans


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            spans = decode(body)
            code = 200
        except (ValueError, IndexError) as e:
            spans, code = [{"error": str(e)}], 400
        with LOCK:
            for s in spans:
                OUT.write(json.dumps(s) + "\n")
            OUT.flush()
        self.send_response(code)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    global OUT
    addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    OUT = open(out, "a", encoding="utf-8")
    srv = ThreadingHTTPServer((addr, port), Handler)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
