"""HTTP/2 client for tests/h2_engine.rs: through a CONNECT tunnel of the
proxy, open GET /hang, then reset the stream with HTTP_1_1_REQUIRED (0xd).

usage: resetting_client.py PROXY_PORT HOST:PORT
"""
import socket, ssl, sys, time
import h2.connection
proxy_port, target = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", proxy_port))
s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += s.recv(1)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
t = ctx.wrap_socket(s, server_hostname=target.split(":")[0])
c = h2.connection.H2Connection()
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":path", "/hang"), (":scheme", "https"),
                   (":authority", target)], end_stream=True)
t.sendall(c.data_to_send())
time.sleep(0.5)
c.reset_stream(1, error_code=0xd)
t.sendall(c.data_to_send())
time.sleep(1)
print("sent reset", flush=True)
