"""Shared fixtures of the chart tests: paths, helm, the built binaries, rendering."""

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tproxy"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
NAMESPACE = "tproxy"
RELEASE = "tproxy"

BINARIES = {
    "tproxy": "tproxy",
    "tproxy-podwatch": "tproxy-podwatch",
    "tproxy-initializer": "tproxy-initializer",
    "tproxy-sidecar": "tproxy-sidecar",
}


def helm_path():
    explicit = os.environ.get("HELM")
    if explicit:
        return explicit
    local = TARGET / "tools" / "bin" / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail("helm not found: run scripts/install-test-deps.sh (installs target/tools/bin/helm) or set HELM")


HELM = None


def helm(*args, check=True):
    global HELM
    HELM = HELM or helm_path()
    proc = subprocess.run([HELM, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(*args, namespace=NAMESPACE, chart=CHART):
    """`helm template` → list of objects (dicts)."""
    out = helm("template", RELEASE, str(chart), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert hits, f"no {kind} {name or ''} rendered"
    assert len(hits) == 1 or name is None, f"{len(hits)} {kind} {name}"
    return hits[0]


@pytest.fixture(scope="session")
def binaries():
    """Paths of the four binaries, built (debug) once per session."""
    paths = {k: TARGET / "debug" / v for k, v in BINARIES.items()}
    if not all(p.exists() for p in paths.values()):
        cmd = ["cargo", "build", "--locked"]
        for crate in BINARIES:
            cmd += ["-p", crate]
        subprocess.run(cmd, cwd=REPO, check=True)
    return paths
