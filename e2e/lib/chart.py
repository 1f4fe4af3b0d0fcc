"""`helm template` of the chart: the source of truth of every component's config."""
import subprocess

import yaml


class ChartError(Exception):
    pass


class Rendered:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def get(self, kind, name=None, component=None):
        """The one object of `kind` (optionally by name or by the
        app.kubernetes.io/component label)."""
        found = [
            d for d in self.docs
            if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)
            and (component is None or (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component)
        ]
        if len(found) != 1:
            names = [d["metadata"]["name"] for d in self.docs if d.get("kind") == kind]
            raise ChartError(f"expected one {kind} (name={name}, component={component}) in the rendered chart, found {names}")
        return found[0]

    def all(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]


def template(helm, chart, release, namespace, values_files, sets=(), extra_args=(), kube_version="1.33.0"):
    argv = [helm, "template", release, chart, "--namespace", namespace, "--kube-version", kube_version]
    for v in values_files:
        argv += ["-f", v]
    for s in sets:
        argv += ["--set", s]
    argv += list(extra_args)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise ChartError(f"helm template failed ({' '.join(argv)}):\n{r.stderr.strip()}")
    return Rendered(list(yaml.safe_load_all(r.stdout)))
