"""What the kubelet and the container runtime do for a pod, on one node.

* Volumes (configMap, secret, projected, downwardAPI) are written with the
  kubelet's atomic-writer layout: the files live in a timestamped directory
  `..2026_12_03_17_00_00.123456`, `..data` is a symlink to it and every
  top-level key is a symlink through `..data`. An update writes a new
  directory and renames a new `..data` link over the old one (one atomic
  rename), then removes the old directory. emptyDir and hostPath are plain
  directories (hostPath under the harness's node filesystem, never the host's).
* subPath mounts bind the resolved file, so (as in Kubernetes) they do not see
  updates.
* Environment: the container's `env` (values with `$(VAR)` expanded,
  `fieldRef`, `configMapKeyRef`, `secretKeyRef`, `resourceFieldRef`), `envFrom`,
  plus the service variables every container gets (`KUBERNETES_SERVICE_HOST`,
  ...). `$(VAR)` in command and args is expanded the same way.
* The image: `image` names one of the workspace binaries (last path component,
  tag removed), bind-mounted at /usr/local/bin/<name>; `command` or else that
  path is the entrypoint. Every image's trust store is the host's plus the
  e2e internet's root (as if it were a public CA).
* /etc/resolv.conf, /etc/hosts, /etc/hostname and (unless automount is off)
  the service-account token volume are the kubelet's, per pod.
* `securityContext`: runAsUser / runAsGroup / fsGroup (volume files get the
  group; the process runs with it as supplementary group) and
  readOnlyRootFilesystem are applied; capabilities are not (root containers
  keep them all).
"""
import base64
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ENTER = os.path.join(HERE, "enter.py")
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeletError(Exception):
    pass


def write_atomic(target, files, gid=None):
    """Writes {relative path: (bytes, mode)} into `target` with the atomic-writer
    layout; replaces whatever was there before in one rename of `..data`."""
    os.makedirs(target, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    new = os.path.join(target, stamp)
    os.mkdir(new)
    for rel, (data, mode) in files.items():
        p = os.path.join(new, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        if gid is not None:
            os.chown(p, 0, gid)
    os.chmod(new, 0o755)
    data_link = os.path.join(target, "..data")
    old = os.readlink(data_link) if os.path.islink(data_link) else None
    tmp = os.path.join(target, "..data_tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(stamp, tmp)
    os.rename(tmp, data_link)
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = os.path.join(target, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..data", top), link)
    for entry in os.listdir(target):
        if entry.startswith(".."):
            continue
        if entry not in tops:
            os.unlink(os.path.join(target, entry))
    if old:
        shutil.rmtree(os.path.join(target, old), ignore_errors=True)


def expand(s, env):
    """Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` is a
    literal `$`, undefined references stay as they are."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, s)


def field_path(pod, path):
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": pod["status"].get("hostIP"),
        "status.podIP": pod["status"].get("podIP"),
    }
    if path in simple:
        return simple[path] or ""
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise KubeletError(f"fieldRef {path!r} is not supported by the e2e kubelet")


class Node:
    """The kubelet of one node: the API objects it can read (ConfigMaps,
    Secrets from the rendered chart), the pods it runs."""

    def __init__(self, root, procs, topo, binaries, node_name, node_ip, dns_ip, api_ip,
                 image_ca_bundle, cluster_domain="cluster.local"):
        self.root = root
        self.procs = procs
        self.topo = topo
        self.binaries = binaries  # image name → host binary
        self.node_name = node_name
        self.node_ip = node_ip
        self.dns_ip = dns_ip
        self.api_ip = api_ip
        self.image_ca_bundle = image_ca_bundle
        self.cluster_domain = cluster_domain
        self.objects = {}  # (kind, namespace, name) → object
        self.pods = {}  # pod name → Pod
        self.tokens = {}  # service account → token
        self.api_ca = None
        os.makedirs(os.path.join(root, "nodefs"), exist_ok=True)

    # ---- API objects -------------------------------------------------------
    def put_object(self, obj):
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj

    def data_of(self, kind, namespace, name):
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise KubeletError(f"{kind} {namespace}/{name} does not exist (the pod would stay ContainerCreating)")
        out = {}
        if kind == "Secret":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                out[k] = v.encode()
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    # ---- pods --------------------------------------------------------------
    def create_pod(self, pod, netns, pod_ip):
        p = Pod(self, pod, netns, pod_ip)
        self.pods[pod["metadata"]["name"]] = p
        p.materialise()
        return p

    def configmap_updated(self, obj):
        """The kubelet's periodic sync after a ConfigMap/Secret changed: every
        pod volume built from it is rewritten (atomic swap)."""
        self.put_object(obj)
        for p in self.pods.values():
            p.resync_volumes(obj["kind"], obj["metadata"]["name"])


class Pod:
    def __init__(self, node, pod, netns, pod_ip):
        self.node = node
        self.obj = pod
        self.netns = netns
        self.name = pod["metadata"]["name"]
        self.namespace = pod["metadata"]["namespace"]
        self.uid = pod["metadata"]["uid"]
        self.spec = pod["spec"]
        self.host_network = bool(self.spec.get("hostNetwork"))
        pod.setdefault("status", {})
        pod["status"]["hostIP"] = node.node_ip
        pod["status"]["podIP"] = node.node_ip if self.host_network else pod_ip
        pod["status"]["podIPs"] = [{"ip": pod["status"]["podIP"]}]
        self.dir = os.path.join(node.root, "pods", self.uid)
        self.vol_dir = os.path.join(self.dir, "volumes")
        self.running = {}  # container name → Proc
        self.logs = {}  # container name → stdout path
        self.fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")

    # ---- volumes -------------------------------------------------------------
    def volumes(self):
        vols = list(self.spec.get("volumes") or [])
        if self.automount():
            vols.append({
                "name": "kube-api-access-e2e",
                "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                ]},
            })
        return vols

    def automount(self):
        return self.spec.get("automountServiceAccountToken", True) is not False

    def source_files(self, kind, name, items, default_mode, optional=False):
        try:
            data = self.node.data_of(kind, self.namespace, name)
        except KubeletError:
            if optional:
                return {}
            raise
        files = {}
        if items:
            for it in items:
                if it["key"] not in data:
                    raise KubeletError(f"{kind} {self.namespace}/{name} has no key {it['key']!r}")
                files[it["path"]] = (data[it["key"]], it.get("mode", default_mode))
        else:
            for k, v in data.items():
                files[k] = (v, default_mode)
        return files

    def volume_files(self, vol):
        """The files of an atomic-writer volume, or None for a plain directory."""
        if "configMap" in vol:
            c = vol["configMap"]
            return self.source_files("ConfigMap", c["name"], c.get("items"), c.get("defaultMode", 0o644), c.get("optional", False))
        if "secret" in vol:
            s = vol["secret"]
            return self.source_files("Secret", s["secretName"], s.get("items"), s.get("defaultMode", 0o644), s.get("optional", False))
        if "downwardAPI" in vol:
            d = vol["downwardAPI"]
            return {it["path"]: (field_path(self.obj, it["fieldRef"]["fieldPath"]).encode(), it.get("mode", d.get("defaultMode", 0o644)))
                    for it in d.get("items", [])}
        if "projected" in vol:
            pr = vol["projected"]
            mode = pr.get("defaultMode", 0o644)
            files = {}
            for src in pr.get("sources", []):
                if "serviceAccountToken" in src:
                    sa = self.spec.get("serviceAccountName") or "default"
                    tok = self.node.tokens.setdefault(f"{self.namespace}/{sa}", "e2e-token-" + os.urandom(12).hex())
                    files[src["serviceAccountToken"]["path"]] = (tok.encode(), 0o600 if not self.fs_group else 0o640)
                elif "configMap" in src:
                    c = src["configMap"]
                    if c["name"] == "kube-root-ca.crt":
                        files["ca.crt"] = (self.node.api_ca.encode(), mode)
                    else:
                        files.update(self.source_files("ConfigMap", c["name"], c.get("items"), mode, c.get("optional", False)))
                elif "secret" in src:
                    s = src["secret"]
                    files.update(self.source_files("Secret", s["name"], s.get("items"), mode, s.get("optional", False)))
                elif "downwardAPI" in src:
                    for it in src["downwardAPI"].get("items", []):
                        files[it["path"]] = (field_path(self.obj, it["fieldRef"]["fieldPath"]).encode(), mode)
            return files
        return None

    def materialise(self):
        os.makedirs(self.vol_dir, exist_ok=True)
        for vol in self.volumes():
            path = self.volume_path(vol)
            files = self.volume_files(vol)
            if files is not None:
                write_atomic(path, files, self.fs_group)
            elif "emptyDir" in vol:
                os.makedirs(path, exist_ok=True)
                os.chmod(path, 0o777)
                if self.fs_group is not None:
                    os.chown(path, 0, self.fs_group)
                    os.chmod(path, 0o2777)
            elif "hostPath" in vol:
                hp = vol["hostPath"]
                t = hp.get("type", "")
                if t in ("FileOrCreate", "File"):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    if not os.path.exists(path):
                        if t == "File":
                            raise KubeletError(f"hostPath {hp['path']} does not exist")
                        open(path, "a", encoding="utf-8").close()
                else:
                    os.makedirs(path, exist_ok=True)
            else:
                raise KubeletError(f"volume {vol['name']}: type not supported by the e2e kubelet: {sorted(vol)}")
        # The kubelet's own files.
        etc = os.path.join(self.dir, "etc")
        os.makedirs(etc, exist_ok=True)
        search = f"{self.namespace}.svc.{self.node.cluster_domain} svc.{self.node.cluster_domain} {self.node.cluster_domain}"
        with open(os.path.join(etc, "resolv.conf"), "w", encoding="utf-8") as f:
            f.write(f"search {search}\nnameserver {self.node.dns_ip}\noptions ndots:5\n")
        with open(os.path.join(etc, "hosts"), "w", encoding="utf-8") as f:
            hostname = self.node.node_name if self.host_network else self.name
            f.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{self.obj['status']['podIP']}\t{hostname}\n")
        with open(os.path.join(etc, "hostname"), "w", encoding="utf-8") as f:
            f.write((self.node.node_name if self.host_network else self.name) + "\n")

    def volume_path(self, vol):
        if "hostPath" in vol:
            return os.path.join(self.node.root, "nodefs", vol["hostPath"]["path"].lstrip("/"))
        return os.path.join(self.vol_dir, vol["name"])

    def resync_volumes(self, kind, name):
        for vol in self.volumes():
            ref = None
            if kind == "ConfigMap" and "configMap" in vol:
                ref = vol["configMap"]["name"]
            elif kind == "Secret" and "secret" in vol:
                ref = vol["secret"]["secretName"]
            elif "projected" in vol:
                for src in vol["projected"].get("sources", []):
                    key = "configMap" if kind == "ConfigMap" else "secret"
                    if key in src and src[key].get("name") == name:
                        ref = name
            if ref == name:
                write_atomic(self.volume_path(vol), self.volume_files(vol), self.fs_group)

    # ---- containers ----------------------------------------------------------
    def containers(self, init):
        return list(self.spec.get("initContainers" if init else "containers") or [])

    def container(self, name):
        for c in self.containers(True) + self.containers(False):
            if c["name"] == name:
                return c
        raise KubeletError(f"pod {self.name} has no container {name}")

    def env_of(self, c):
        env = {"PATH": IMAGE_PATH, "HOSTNAME": self.node.node_name if self.host_network else self.name}
        # Service links of the `kubernetes` service, in every container.
        env.update({
            "KUBERNETES_SERVICE_HOST": self.node.api_ip,
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_SERVICE_PORT_HTTPS": "443",
            "KUBERNETES_PORT": f"tcp://{self.node.api_ip}:443",
            "KUBERNETES_PORT_443_TCP": f"tcp://{self.node.api_ip}:443",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": "443",
            "KUBERNETES_PORT_443_TCP_ADDR": self.node.api_ip,
        })
        for ef in c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                data = self.node.data_of("ConfigMap", self.namespace, ef["configMapRef"]["name"])
            else:
                data = self.node.data_of("Secret", self.namespace, ef["secretRef"]["name"])
            for k, v in data.items():
                env[prefix + k] = v.decode()
        for e in c.get("env") or []:
            if "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    v = field_path(self.obj, vf["fieldRef"]["fieldPath"])
                elif "configMapKeyRef" in vf:
                    r = vf["configMapKeyRef"]
                    v = self.node.data_of("ConfigMap", self.namespace, r["name"])[r["key"]].decode()
                elif "secretKeyRef" in vf:
                    r = vf["secretKeyRef"]
                    v = self.node.data_of("Secret", self.namespace, r["name"])[r["key"]].decode()
                elif "resourceFieldRef" in vf:
                    v = "0"
                else:
                    raise KubeletError(f"env {e['name']}: unsupported valueFrom {sorted(vf)}")
            else:
                v = expand(e.get("value", ""), env)
            env[e["name"]] = v
        return env

    def spec_for(self, c, argv=None):
        """The enter.py spec of container `c` (argv: an exec instead of its command)."""
        env = self.env_of(c)
        image = c["image"]
        base = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
        mounts = []
        image_files = [{"src": self.node.image_ca_bundle, "dst": "/etc/ssl/certs/ca-certificates.crt"}]
        entrypoint = None
        if base in self.node.binaries:
            mounts.append({"src": self.node.binaries[base], "dst": f"/usr/local/bin/{base}", "ro": True})
            entrypoint = [f"/usr/local/bin/{base}"]
        if argv is None:
            cmd = [expand(a, env) for a in (c.get("command") or entrypoint or [])]
            if not cmd:
                raise KubeletError(f"container {c['name']}: image {image} has no entrypoint here and no command")
            argv = cmd + [expand(a, env) for a in (c.get("args") or [])]
        etc = os.path.join(self.dir, "etc")
        for f in ("resolv.conf", "hosts", "hostname"):
            mounts.append({"src": os.path.join(etc, f), "dst": f"/etc/{f}"})
        vols = {v["name"]: v for v in self.volumes()}
        vmounts = list(c.get("volumeMounts") or [])
        if self.automount() and not any(m["mountPath"] == SA_DIR for m in vmounts):
            vmounts.append({"name": "kube-api-access-e2e", "mountPath": SA_DIR, "readOnly": True})
        for vm in vmounts:
            if vm["name"] not in vols:
                raise KubeletError(f"container {c['name']}: volumeMount {vm['name']!r} names no volume of the pod")
            src = self.volume_path(vols[vm["name"]])
            if vm.get("subPath"):
                src = os.path.realpath(os.path.join(src, vm["subPath"]))
                if not os.path.exists(src):
                    raise KubeletError(f"container {c['name']}: subPath {vm['subPath']!r} does not exist in volume {vm['name']}")
            mounts.append({"src": src, "dst": vm["mountPath"], "ro": bool(vm.get("readOnly"))})
        sc = c.get("securityContext") or {}
        psc = self.spec.get("securityContext") or {}
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        return {
            "mounts": mounts,
            "image_files": image_files,
            "argv": argv,
            "env": env,
            "cwd": c.get("workingDir") or "/",
            "uid": uid,
            "gid": gid,
            "groups": [self.fs_group] if self.fs_group is not None else [],
            "ro_root": bool(sc.get("readOnlyRootFilesystem")),
        }

    def launch_argv(self, c, tag, argv=None, extra_env=None):
        spec = self.spec_for(c, argv)
        if extra_env:
            spec["env"].update(extra_env)
        d = os.path.join(self.dir, "ctr", f"{c['name']}-{tag}")
        os.makedirs(d, exist_ok=True)
        spec["scratch"] = os.path.join(d, "fs")
        os.makedirs(spec["scratch"], exist_ok=True)
        spec_file = os.path.join(d, "spec.json")
        with open(spec_file, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
        return ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
                "/usr/bin/python3", ENTER, spec_file], d

    def start(self, name, tag="run"):
        c = self.container(name)
        argv, d = self.launch_argv(c, tag)
        p = self.node.procs.start(f"{self.name}.{name}.{tag}", argv,
                                  stdout_path=os.path.join(d, "stdout"), stderr_path=os.path.join(d, "stderr"))
        self.running[name] = p
        self.logs[name] = os.path.join(d, "stdout")
        return p

    def run_init_containers(self, timeout=60):
        """Each init container in order, to completion; a failure is an error
        (the kubelet would retry it and never start the app)."""
        for c in self.containers(True):
            p = self.start(c["name"], "init")
            try:
                rc = p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                p.stop()
                raise KubeletError(f"init container {c['name']} of {self.name} did not finish in {timeout}s")
            if rc != 0:
                raise KubeletError(
                    f"init container {c['name']} of {self.name} exited {rc}: "
                    + open(p.err, encoding="utf-8", errors="replace").read()[-2000:])

    def start_containers(self):
        for c in self.containers(False):
            self.start(c["name"])

    def exec(self, container, argv, timeout=30, extra_env=None):
        """`kubectl exec`: argv in the container's network, mounts and env.
        Returns CompletedProcess (text)."""
        c = self.container(container)
        tag = f"exec{time.monotonic_ns()}"
        full, d = self.launch_argv(c, tag, argv, extra_env)
        try:
            return subprocess.run(full, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def stop(self):
        for p in self.running.values():
            p.stop()
        self.running = {}
