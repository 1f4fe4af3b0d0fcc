"""The API server's side of admission: which objects a MutatingWebhookConfiguration
selects, the AdmissionReview call over HTTPS (verified with its caBundle), and
RFC 6902 JSON Patch application."""
import base64
import copy
import json
import os
import subprocess
import uuid


class AdmissionError(Exception):
    pass


def selector_matches(sel, labels):
    if not sel:
        return True
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def rule_matches(rule, group, version, resource, operation):
    def has(lst, v):
        return "*" in lst or v in lst

    return (has(rule.get("apiGroups", []), group) and has(rule.get("apiVersions", []), version)
            and has(rule.get("resources", []), resource) and has(rule.get("operations", []), operation))


def unescape(tok):
    return tok.replace("~1", "/").replace("~0", "~")


def apply_patch(doc, ops):
    doc = copy.deepcopy(doc)

    def walk(path):
        if not path.startswith("/"):
            raise AdmissionError(f"JSON Patch path {path!r} does not start with /")
        toks = [unescape(t) for t in path[1:].split("/")]
        parent = doc
        for t in toks[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        return parent, toks[-1]

    for op in ops:
        kind = op["op"]
        if kind in ("add", "replace"):
            parent, last = walk(op["path"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise AdmissionError(f"replace of missing {op['path']}")
                parent[last] = op["value"]
        elif kind == "remove":
            parent, last = walk(op["path"])
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            parent, last = walk(op["path"])
            cur = parent[int(last)] if isinstance(parent, list) else parent[last]
            if cur != op["value"]:
                raise AdmissionError(f"test failed at {op['path']}")
        else:
            raise AdmissionError(f"JSON Patch op {kind!r} not supported")
    return doc


class Webhook:
    """One webhook of a MutatingWebhookConfiguration, reached at its
    Service's endpoint (`connect`: pod IP and target port)."""

    def __init__(self, hook, connect_ip, connect_port, netns, workdir):
        self.hook = hook
        svc = hook["clientConfig"]["service"]
        self.host = f"{svc['name']}.{svc['namespace']}.svc"
        self.port = svc.get("port", 443)
        self.path = svc.get("path", "/")
        self.connect = (connect_ip, connect_port)
        self.netns = netns
        self.workdir = workdir
        self.ca_file = os.path.join(workdir, "webhook-cabundle.pem")
        with open(self.ca_file, "wb") as f:
            f.write(base64.b64decode(hook["clientConfig"]["caBundle"]))

    def selects(self, group, version, resource, operation, obj, ns_labels):
        labels = obj["metadata"].get("labels") or {}
        return (any(rule_matches(r, group, version, resource, operation) for r in self.hook.get("rules", []))
                and selector_matches(self.hook.get("objectSelector"), labels)
                and selector_matches(self.hook.get("namespaceSelector"), ns_labels))

    def review(self, group, version, kind, resource, operation, obj, namespace):
        """POSTs the AdmissionReview; returns (response, patched object)."""
        uid = str(uuid.uuid4())
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "requestResource": {"group": group, "version": version, "resource": resource},
                "name": obj["metadata"].get("name", ""),
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
                "object": obj,
                "oldObject": None,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        body = os.path.join(self.workdir, f"review-{uid}.json")
        with open(body, "w", encoding="utf-8") as f:
            json.dump(review, f)
        timeout = str(self.hook.get("timeoutSeconds", 10))
        r = subprocess.run(
            ["ip", "netns", "exec", self.netns, "curl", "-sS", "--fail-with-body", "--max-time", timeout,
             "--cacert", self.ca_file,
             "--connect-to", f"{self.host}:{self.port}:{self.connect[0]}:{self.connect[1]}",
             "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
             f"https://{self.host}:{self.port}{self.path}?timeout={timeout}s"],
            capture_output=True, text=True)
        if r.returncode != 0:
            raise AdmissionError(f"webhook call failed (curl exit {r.returncode}): {r.stderr.strip()} {r.stdout.strip()}")
        resp = json.loads(r.stdout)
        if resp.get("kind") != "AdmissionReview" or resp.get("apiVersion") != "admission.k8s.io/v1":
            raise AdmissionError(f"not an admission.k8s.io/v1 AdmissionReview: {r.stdout[:300]}")
        response = resp["response"]
        if response.get("uid") != uid:
            raise AdmissionError(f"response uid {response.get('uid')} != request uid {uid}")
        if not response.get("allowed"):
            raise AdmissionError(f"denied: {response.get('status')}")
        patched = obj
        if "patch" in response:
            if response.get("patchType") != "JSONPatch":
                raise AdmissionError(f"patchType {response.get('patchType')!r}")
            patched = apply_patch(obj, json.loads(base64.b64decode(response["patch"])))
        return response, patched
