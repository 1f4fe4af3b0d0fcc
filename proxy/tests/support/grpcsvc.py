"""A real gRPC service and client (grpcio) for the tproxy tests. No protobuf
codegen: the methods exchange raw bytes, which is still the full gRPC wire
protocol (HTTP/2, length-prefixed messages, grpc-status trailers).

  grpcsvc.py serve --tls CERT KEY [--host H] [--port P] [--max-age-ms MS]
      Service tproxy.test.Echo:
        Unary  (unary-unary):  replies b"echo:" + request; trailing metadata
                               x-trailer: unary-ok
        Stream (unary-stream): request is a decimal count N, or "N:MS" to wait
                               MS milliseconds before each message; replies N
                               messages b"msg-<i>"; trailing x-trailer: stream-ok
        Fail   (unary-unary):  aborts with PERMISSION_DENIED "denied by test"
        Peers  (unary-unary):  replies the number of distinct client
                               connections (peer addresses) seen so far
      --max-age-ms: grpc.max_connection_age_ms, so every connection gets a
      GOAWAY after about MS (in-flight calls get 60 s of grace).
      Prints "READY <port>".

  grpcsvc.py churn --target HOST:PORT --ca CA [--proxy HOST:PORT]
                   [--name TLS-NAME] [--calls N] [--pause-ms MS] [--stream N:MS]
      While one slow server stream (--stream) runs, makes N unary calls one
      after the other, MS milliseconds apart; prints JSON: {"unary_ok", "unary_errors", "stream":
      {"messages", "code"}, "peers"}.

  grpcsvc.py call --target HOST:PORT --ca CA [--proxy HOST:PORT]
                  [--name TLS-NAME] [--count N]
      Calls Unary, Stream (count N) and Fail; prints JSON with the messages,
      status codes, details and trailing metadata of each call.
"""
import argparse
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "tproxy.test.Echo"


def serve(args):
    peers = set()

    def unary(request, context):
        peers.add(context.peer())
        context.set_trailing_metadata((("x-trailer", "unary-ok"),))
        return b"echo:" + request

    def stream(request, context):
        peers.add(context.peer())
        context.set_trailing_metadata((("x-trailer", "stream-ok"),))
        count, _, delay = request.decode().partition(":")
        for i in range(int(count)):
            if delay:
                time.sleep(int(delay) / 1000.0)
            yield b"msg-%d" % i

    def peer_count(_request, context):
        return str(len(peers)).encode()

    def fail(_request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Peers": grpc.unary_unary_rpc_method_handler(peer_count),
        },
    )
    options = []
    if args.max_age_ms:
        options.append(("grpc.max_connection_age_ms", args.max_age_ms))
        options.append(("grpc.max_connection_age_grace_ms", 60000))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers((handler,))
    with open(args.tls[0], "rb") as f:
        cert = f.read()
    with open(args.tls[1], "rb") as f:
        key = f.read()
    creds = grpc.ssl_server_credentials([(key, cert)])
    port = server.add_secure_port("%s:%d" % (args.host, args.port), creds)
    server.start()
    print("READY %d" % port, flush=True)
    while True:
        time.sleep(3600)


def channel_for(args):
    with open(args.ca, "rb") as f:
        ca = f.read()
    options = []
    if args.proxy:
        options.append(("grpc.http_proxy", "http://" + args.proxy))
    else:
        options.append(("grpc.enable_http_proxy", 0))
    if args.name:
        options.append(("grpc.ssl_target_name_override", args.name))
    channel = grpc.secure_channel(
        args.target, grpc.ssl_channel_credentials(root_certificates=ca), options=options
    )
    grpc.channel_ready_future(channel).result(timeout=20)
    return channel


def churn(args):
    import threading

    channel = channel_for(args)
    out = {"unary_ok": 0, "unary_errors": []}
    result = {}

    def slow():
        stream = channel.unary_stream("/%s/Stream" % SERVICE)
        it = stream(args.stream.encode(), timeout=60)
        try:
            msgs = [m.decode() for m in it]
            result["stream"] = {"messages": len(msgs), "code": it.code().name}
        except grpc.RpcError as e:
            result["stream"] = {"messages": -1, "code": e.code().name, "details": e.details()}

    t = threading.Thread(target=slow)
    t.start()
    unary = channel.unary_unary("/%s/Unary" % SERVICE)
    for i in range(args.calls):
        try:
            reply = unary(b"n%d" % i, timeout=20)
            if reply == b"echo:n%d" % i:
                out["unary_ok"] += 1
            else:
                out["unary_errors"].append("bad reply %r" % reply)
        except grpc.RpcError as e:
            out["unary_errors"].append("%s: %s" % (e.code().name, e.details()))
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000.0)
    t.join(90)
    out["stream"] = result.get("stream")
    peers = channel.unary_unary("/%s/Peers" % SERVICE)
    out["peers"] = int(peers(b"", timeout=20).decode())
    channel.close()
    print(json.dumps(out))


def call(args):
    with open(args.ca, "rb") as f:
        ca = f.read()
    options = []
    if args.proxy:
        options.append(("grpc.http_proxy", "http://" + args.proxy))
    else:
        options.append(("grpc.enable_http_proxy", 0))
    if args.name:
        options.append(("grpc.ssl_target_name_override", args.name))
    channel = grpc.secure_channel(
        args.target, grpc.ssl_channel_credentials(root_certificates=ca), options=options
    )
    grpc.channel_ready_future(channel).result(timeout=20)
    out = {}

    unary = channel.unary_unary("/%s/Unary" % SERVICE)
    reply, c = unary.with_call(b"hello", timeout=20)
    out["unary"] = {
        "reply": reply.decode(),
        "code": c.code().name,
        "trailers": [list(m) for m in c.trailing_metadata()],
    }

    stream = channel.unary_stream("/%s/Stream" % SERVICE)
    it = stream(str(args.count).encode(), timeout=30)
    msgs = [m.decode() for m in it]
    out["stream"] = {
        "messages": msgs,
        "code": it.code().name,
        "trailers": [list(m) for m in it.trailing_metadata()],
    }

    fail = channel.unary_unary("/%s/Fail" % SERVICE)
    try:
        fail(b"x", timeout=20)
        out["fail"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["fail"] = {"code": e.code().name, "details": e.details()}
    channel.close()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--tls", nargs=2, required=True)
    s.add_argument("--max-age-ms", type=int, default=0)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--proxy")
    c.add_argument("--name")
    c.add_argument("--count", type=int, default=5)
    h = sub.add_parser("churn")
    h.add_argument("--target", required=True)
    h.add_argument("--ca", required=True)
    h.add_argument("--proxy")
    h.add_argument("--name")
    h.add_argument("--calls", type=int, default=200)
    h.add_argument("--pause-ms", type=int, default=0)
    h.add_argument("--stream", default="20:150")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "churn":
        churn(args)
    else:
        call(args)


if __name__ == "__main__":
    sys.exit(main())
