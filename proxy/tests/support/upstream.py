"""Small upstream servers for the tproxy black-box tests, where nginx cannot
do the job. Usage: upstream.py KIND --host H --port P [--tls CERT KEY]

KIND:
  sink    HTTP/1.1: PUT/POST bodies (Content-Length or chunked) are hashed and
          answered with JSON {"size": N, "sha256": HEX}; GET answers "py upstream".
  ws      WebSocket echo (the `websockets` library) on any path.
  tcpecho raw TCP echo: every byte back, close after the client's EOF.
  oneshot HTTP/1.1 keep-alive race: the first request on a connection is
          answered 200 "oneshot <n>\n" (n counts answers, server-wide) and the
          connection kept open; the next request's head is read and the
          connection closed without an answer, as a server does whose
          keep-alive timeout fired just as the request arrived.

Prints "READY <port>" on stdout once listening.
"""
import argparse
import asyncio
import hashlib
import json
import ssl
import sys


def tls_context(args):
    if not args.tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls[0], args.tls[1])
    return ctx


def ready(server):
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, target, headers


async def sink_conn(reader, writer):
    try:
        while True:
            try:
                method, target, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            h = hashlib.sha256()
            size = 0
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    line = await reader.readuntil(b"\r\n")
                    n = int(line.split(b";")[0].strip(), 16)
                    if n == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    left = n
                    while left:
                        b = await reader.read(min(left, 1 << 20))
                        if not b:
                            return
                        h.update(b)
                        size += len(b)
                        left -= len(b)
                    await reader.readexactly(2)
            else:
                left = int(headers.get("content-length", "0"))
                while left:
                    b = await reader.read(min(left, 1 << 20))
                    if not b:
                        return
                    h.update(b)
                    size += len(b)
                    left -= len(b)
            if method in ("PUT", "POST"):
                body = json.dumps({"size": size, "sha256": h.hexdigest(),
                                   "method": method, "target": target}).encode()
                ctype = b"application/json"
            else:
                body = b"py upstream\n"
                ctype = b"text/plain"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
                         b"\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\n\r\n" + body)
            await writer.drain()
    finally:
        writer.close()


ONESHOT_ANSWERS = 0


async def oneshot_conn(reader, writer):
    global ONESHOT_ANSWERS
    try:
        method, target, headers = await read_head(reader)
        left = int(headers.get("content-length", "0"))
        if left:
            await reader.readexactly(left)
        ONESHOT_ANSWERS += 1
        body = b"oneshot %d\n" % ONESHOT_ANSWERS
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        await read_head(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def tcpecho_conn(reader, writer):
    try:
        while True:
            b = await reader.read(65536)
            if not b:
                break
            writer.write(b)
            await writer.drain()
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["sink", "ws", "tcpecho", "oneshot"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = p.parse_args()
    ctx = tls_context(args)
    if args.kind == "ws":
        try:
            from websockets.asyncio.server import serve
        except ImportError:  # websockets < 13
            from websockets import serve

        async def echo(ws, *_path):
            async for msg in ws:
                await ws.send(msg)

        async with serve(echo, args.host, args.port, ssl=ctx, max_size=None) as server:
            ready(server)
            await asyncio.Future()
    handler = {"sink": sink_conn, "oneshot": oneshot_conn}.get(args.kind, tcpecho_conn)
    server = await asyncio.start_server(handler, args.host, args.port, ssl=ctx,
                                        limit=1 << 20)
    ready(server)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
