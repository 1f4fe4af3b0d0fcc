#!/usr/bin/env python3
"""CPU a tproxy spends on idle keep-alive connections.

Usage: bench/scripts/idle_cpu.py TPROXY_BINARY [N] [SECONDS]

Starts the binary in regular mode on 127.0.0.1 (a free port), an HTTP/1.1
upstream on loopback, opens N (default 1000) client connections that each
make one request and then stay open saying nothing, and prints the proxy's
CPU time (utime + stime from /proc) over SECONDS (default 10). Everything
stays on 127.0.0.1; the proxy is stopped at the end. Needs `ulimit -n` above
3 × N. Compare binaries in one run: the machine is shared and noisy.
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(binary, n, window):
    async def upstream(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up = server.sockets[0].getsockname()[1]
    port = free_port()
    with tempfile.TemporaryDirectory() as confdir:
        proxy = subprocess.Popen(
            [binary, "--mode", f"regular@127.0.0.1:{port}", "--admin", "off",
             "--flow-detail", "0", "--confdir", confdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            request = f"GET http://127.0.0.1:{up}/ HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n".encode()
            conns = []
            for _ in range(n):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(request)
                await w.drain()
                await r.readuntil(b"ok\n")
                conns.append(w)
            await asyncio.sleep(2)
            before = cpu_seconds(proxy.pid)
            await asyncio.sleep(window)
            used = cpu_seconds(proxy.pid) - before
            print(f"{binary}: {n} idle connections, {used:.2f} CPU-s in {window} s")
            for w in conns:
                w.close()
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
    server.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    asyncio.run(main(args[0], int(args[1]) if len(args) > 1 else 1000,
                     float(args[2]) if len(args) > 2 else 10.0))
