#!/usr/bin/env python3
"""Becomes one "container": run as `ip netns exec NS unshare -m --propagation
private python3 enter.py SPEC.json` (so already in the pod's network namespace
and in a private mount namespace of its own).

Builds the container's root filesystem the way a runtime does, without
touching the host: a tmpfs holds an overlay whose lower layer is the host's
root ("the image") and whose upper layer takes every write, so mount points
for the rendered mountPaths (/config, /var/run/secrets/..., single files over
/etc/ssl/certs/ca-certificates.crt) are created in the container only. Then
/proc, /sys, /dev are bound in, every volume and image binary is bind-mounted
at its path, and the process chroots and execs the container's command with
its environment. The mount namespace (and so every mount) disappears with the
process.

SPEC: {"scratch": dir, "mounts": [{"src", "dst", "ro"}], "argv": [...],
"env": {...}, "cwd": "/"}
"""
import json
import os
import shutil
import subprocess
import sys


def in_root(root, path):
    """`path` as seen inside `root` (symlinks resolved relative to `root`, as
    after chroot: /var/run → /run must not lead out to the host's /run)."""
    parts = [p for p in path.split("/") if p]
    cur = root
    hops = 0
    while parts:
        comp = parts.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            if cur != root:
                cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, comp)
        if os.path.islink(nxt):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks under {path}")
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                cur = root
            continue
        cur = nxt
    return cur


def mount(*args):
    subprocess.run(["mount", *args], check=True)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    scratch = spec["scratch"]
    mount("-t", "tmpfs", "-o", "mode=0755", "ctr", scratch)
    for d in ("upper", "work", "root"):
        os.mkdir(os.path.join(scratch, d))
    root = os.path.join(scratch, "root")
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work",
        root,
    )
    for special in ("proc", "sys", "dev"):
        mount("--rbind", f"/{special}", os.path.join(root, special))
    # The image's own files (its trust store).
    for f in spec.get("image_files", []):
        dst = in_root(root, f["dst"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):
            os.unlink(dst)
        shutil.copyfile(f["src"], dst)
        os.chmod(dst, 0o644)
    # Parents before children, as the runtime sorts them.
    for m in sorted(spec["mounts"], key=lambda m: m["dst"].rstrip("/").count("/")):
        dst = in_root(root, m["dst"])
        if os.path.isdir(m["src"]):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.lexists(dst):
                open(dst, "a", encoding="utf-8").close()
        mount("--bind", m["src"], dst)
        if m.get("ro"):
            mount("-o", "remount,bind,ro", dst)
    if spec.get("ro_root"):
        mount("-o", "remount,ro", root)
    os.chroot(root)
    os.chdir(spec.get("cwd") or "/")
    env = spec["env"]
    argv = spec["argv"]
    if spec.get("gid") is not None or spec.get("groups"):
        os.setgroups(spec.get("groups") or [])
    if spec.get("gid") is not None:
        os.setgid(spec["gid"])
    if spec.get("uid") is not None:
        os.setuid(spec["uid"])
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main()
