"""HTTP/2-only TLS upstream for tests/h2_engine.rs (ALPN h2 only).

/reset* streams are reset with ENHANCE_YOUR_CALM, /hang* get no answer,
/goaway is answered and followed by GOAWAY (socket left open), other paths
get 200 with their path as the body. Prints its port, then one line per
stream the client resets: `reset PATH CODE`.

usage: h2_upstream.py CERT KEY
"""
import asyncio, ssl, sys
import h2.config, h2.connection, h2.errors, h2.events

async def handle(reader, writer):
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    paths = {}
    while True:
        data = await reader.read(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[":path"]
                paths[ev.stream_id] = path
                if path.startswith("/hang"):
                    pass
                elif path.startswith("/goaway"):
                    # Answer, then refuse further streams (the socket stays open).
                    body = b"bye\n"
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "4")])
                    conn.send_data(ev.stream_id, body, end_stream=True)
                    conn.close_connection(last_stream_id=ev.stream_id)
                elif path.startswith("/reset"):
                    conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                else:
                    body = path.encode() + b"\n"
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
            elif isinstance(ev, h2.events.StreamReset):
                print("reset", paths.get(ev.stream_id), int(ev.error_code), flush=True)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        writer.write(conn.data_to_send())
        await writer.drain()
    writer.close()

async def main():
    cert, key = sys.argv[1], sys.argv[2]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()

asyncio.run(main())
