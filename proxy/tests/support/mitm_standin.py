#!/usr/bin/env python3
"""Stand-in for the tproxy binary built on mitmdump: checks the tests
themselves against a reference implementation of the same ideas.

  TPROXY_TEST_PROXY_BIN=$PWD/proxy/tests/support/mitm_standin.py cargo test -p tproxy

Understands the CLI spec's options enough to start mitmdump (first --mode,
--confdir, --upstream-ca, --ssl-insecure, --ignore-hosts, --flow-detail) and
prints the `listening mode=... addr=...` lines. Expected differences: no
admin server, no JSON log, no redaction, no connect timeout, no passthrough
lines, whole-body buffering, h2 response lines carry the version, RSS is the wrapper's. mitmdump is
taken from $TPROXY_TEST_VENV (default <workspace>/target/test-venv).
"""

import argparse, os, signal, socket, subprocess, sys, time
p = argparse.ArgumentParser()
p.add_argument("--mode", action="append", default=[])
p.add_argument("--admin", default="127.0.0.1:9090")
p.add_argument("--confdir")
p.add_argument("--upstream-ca", action="append", default=[])
p.add_argument("--ssl-insecure", "-k", action="store_true")
p.add_argument("--ignore-hosts", action="append", default=[])
p.add_argument("--flow-detail", default="1")
p.add_argument("--log-format", default="text")
p.add_argument("--show-secrets", action="store_true")
p.add_argument("--passthrough")
p.add_argument("--connect-timeout")
p.add_argument("--shutdown-timeout")
a = p.parse_args()
mode = a.mode[0] if a.mode else "regular@127.0.0.1:8080"
m, _, hp = mode.partition("@")
host, _, port = hp.rpartition(":")
port = int(port)
if port == 0:
    s = socket.socket(); s.bind((host, 0)); port = s.getsockname()[1]; s.close()
here = os.path.dirname(os.path.abspath(__file__))
venv = os.environ.get("TPROXY_TEST_VENV") or os.path.join(here, "../../../target/test-venv")
cmd = [os.path.join(venv, "bin", "mitmdump"), "--mode", m, "--listen-host", host,
       "--listen-port", str(port), "--set", f"confdir={a.confdir}", "--flow-detail", a.flow_detail]
for ca in a.upstream_ca:
    cmd += ["--set", f"ssl_verify_upstream_trusted_ca={ca}"]
if a.ssl_insecure:
    cmd += ["--ssl-insecure"]
for ih in a.ignore_hosts:
    cmd += ["--ignore-hosts", ih]
child = subprocess.Popen(cmd)
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGINT))
def listening(port):
    # /proc/net/tcp{,6}: no probe connection (mitmdump exits on an error
    # logged during start-up, and a probe shows up as a client).
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(f).read().splitlines()[1:]:
                cols = line.split()
                if cols[1].endswith(":%04X" % port) and cols[3] == "0A":
                    return True
        except OSError:
            pass
    return False
for _ in range(400):
    if listening(port):
        break
    time.sleep(0.05)
print(f"listening mode={m} addr={host}:{port}", file=sys.stderr, flush=True)
if a.admin != "off":
    print(f"listening mode=admin addr=127.0.0.1:1", file=sys.stderr, flush=True)
sys.exit(child.wait())
