"""Test CAs made with openssl: the internet's "public" root and the API server's CA."""
import os
import subprocess


def openssl(*args):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.strip()}")


def make_ca(d, name, cn):
    key, crt = os.path.join(d, f"{name}.key"), os.path.join(d, f"{name}.crt")
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    return key, crt


def make_leaf(d, name, ca_key, ca_crt, cn, dns=(), ips=()):
    key, csr, crt = (os.path.join(d, f"{name}.{e}") for e in ("key", "csr", "crt"))
    san = ",".join([f"DNS:{n}" for n in dns] + [f"IP:{i}" for i in ips])
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w", encoding="utf-8") as f:
        f.write(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "2", "-extfile", ext)
    return key, crt
