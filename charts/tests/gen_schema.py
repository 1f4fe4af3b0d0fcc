#!/usr/bin/env python3
"""Writes charts/tproxy/values.schema.json.

The schema is generated (not hand-edited) so every object is closed with
additionalProperties: false without repeating it by hand: edit this file, run
`python3 charts/tests/gen_schema.py`, commit both. charts/tests/test_chart.py
checks the committed file equals the output.
"""
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "tproxy" / "values.schema.json"


def obj(props, required=None, desc=None):
    s = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        s["required"] = required
    if desc:
        s["description"] = desc
    return s


def string(desc, **kw):
    return {"type": "string", "description": desc, **kw}


def boolean(desc):
    return {"type": "boolean", "description": desc}


def port(desc):
    return {"type": "integer", "minimum": 1, "maximum": 65535, "description": desc}


def kube(desc):
    """A Kubernetes-typed value passed through as is (its own API schema
    applies: the API server validates it)."""
    return {"type": "object", "description": desc}


def string_map(desc):
    return {"type": "object", "additionalProperties": {"type": "string"}, "description": desc}


def quantity():
    return {"anyOf": [{"type": "string"}, {"type": "number"}]}


def resources(desc):
    q = obj({"cpu": quantity(), "memory": quantity(), "ephemeral-storage": quantity()})
    return obj({"limits": q, "requests": q}, desc=desc)


IMAGE = string("image name below the registry, name:tag or name@digest; empty: <component>:<appVersion>",
               pattern=r"^$|^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
CIDR = r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"
CIDR_LIST = r"^$|^\s*[0-9A-Fa-f:.]+(/[0-9]{1,3})?\s*(,\s*[0-9A-Fa-f:.]+(/[0-9]{1,3})?\s*)*$"
IP_LIST = r"^$|^\s*[0-9A-Fa-f:.]+\s*(,\s*[0-9A-Fa-f:.]+\s*)*$"
LOG_FORMAT = {"enum": ["text", "json"]}
NS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}

schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "tproxy chart values",
    **obj({
        "images": obj({
            "tproxy_registry": string("prefix of every image (<registry>/<image>); empty: none"),
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"], "description": "pull policy of all images"},
            "tproxy": IMAGE,
            "tproxy_initializer": IMAGE,
            "tproxy_podwatch": IMAGE,
            "tproxy_sidecar": IMAGE,
        }),
        "imagePullSecrets": {"type": "array", "items": {"type": "string", "minLength": 1},
                             "description": "names of image pull Secrets"},
        "tproxy": obj({
            "useRBAC": boolean("create ServiceAccounts and RBAC"),
            "useInitializer": boolean("install the admission webhook"),
            "hostPort": port("node port of the transparent listener"),
            "addStandardModeProxy": boolean("also listen in regular mode on 1080"),
            "resources": resources("proxy container resources"),
            "blockSvcCIDR": string("sidecar BLOCK_SVC_CIDR (comma-separated CIDRs)", pattern=CIDR_LIST),
            "allowDNS": string("sidecar ALLOW_DNS (comma-separated IPs)", pattern=IP_LIST),
            "adminPort": port("admin listener port"),
            "logFormat": LOG_FORMAT,
            "flowDetail": {"type": "integer", "minimum": 0, "maximum": 4},
            "otlpEndpoint": string("OTLP/HTTP traces URL", pattern=r"^$|^https?://"),
            "tracesSampler": {"enum": ["", "always_on", "always_off", "traceidratio", "parentbased_always_on",
                                       "parentbased_always_off", "parentbased_traceidratio"]},
            "tracesSamplerArg": {"type": "string"},
            "allowClientCIDRs": {"type": "array", "items": {"type": "string", "pattern": CIDR}},
            "shutdownTimeout": {"type": "integer", "minimum": 0, "maximum": 3600},
            "maxConnections": {"anyOf": [{"type": "string", "enum": [""]}, {"type": "integer", "minimum": 0}],
                               "description": "--max-connections; \"\": from the memory limit, 0: none"},
            "logLevel": {"type": "string", "minLength": 1},
            "extraArgs": {"type": "array", "items": {"type": "string"}},
        }),
        "rules": obj({
            "rules": {"type": "array", "items": {"type": "object"},
                      "description": "ordered policy rules (docs/policy.md; checked by the proxy)"},
            "default": {"type": "object", "description": "the default action"},
        }, desc="the --rules YAML document"),
        "ca": obj({
            "existingSecret": string("Secret with mitmproxy-ca.pem and mitmproxy-ca-cert.pem"),
            "pem": string("mitmproxy-ca.pem content (key + certificate), via --set-file"),
            "validityDays": {"type": "integer", "minimum": 1},
        }),
        "podwatch": obj({
            "backend": {"enum": ["auto", "nft", "iptables-nft", "iptables-legacy"]},
            "namespaces": {"type": "array", "items": NS_NAME},
            "ipv6": boolean("render IPv6 REDIRECT rules"),
            "metricsPort": port("podwatch /metrics and /healthz port"),
            "logFormat": LOG_FORMAT,
            "resources": resources("podwatch container resources"),
        }),
        "initializer": obj({
            "replicas": {"type": "integer", "minimum": 1},
            "proxyMode": {"enum": ["transparent", "standard"]},
            "standardProxyUrl": string("proxy URL for proxyMode standard (empty: http://$(NODE_IP):<port>)",
                                       pattern=r"^$|^https?://."),
            "failurePolicy": {"enum": ["Fail", "Ignore"]},
            "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 30},
            "excludedNamespaces": {"type": "array", "items": NS_NAME},
            "namespaceSelector": obj({
                "matchLabels": string_map("namespace labels"),
                "matchExpressions": {"type": "array", "items": {"type": "object"}},
            }),
            "objectSelector": kube("LabelSelector of objects sent to the webhook; {}: all"),
            "certManager": obj({
                "enabled": boolean("serving certificate from cert-manager"),
                "issuerRef": kube("cert-manager issuerRef; {}: a chart-made CA Issuer"),
            }),
            "certValidityDays": {"type": "integer", "minimum": 1},
            "logFormat": LOG_FORMAT,
            "resources": resources("webhook container resources"),
            "nodeSelector": string_map("webhook nodeSelector"),
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": kube("webhook affinity"),
        }),
        "serviceAccounts": obj({
            "podwatch": {"type": "string"},
            "initializer": {"type": "string"},
        }),
        "nodeSelector": string_map("DaemonSet nodeSelector"),
        "tolerations": {"type": "array", "items": {"type": "object"}},
        "affinity": kube("DaemonSet affinity"),
        "priorityClassName": {"type": "string"},
        "podAnnotations": string_map("extra DaemonSet pod annotations"),
        "metrics": obj({"scrapeAnnotations": boolean("prometheus.io/* annotations")}),
        "serviceMonitor": obj({
            "enabled": boolean("create a ServiceMonitor"),
            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
            "labels": string_map("extra labels"),
        }),
        "prometheusRule": obj({
            "enabled": boolean("create a PrometheusRule"),
            "labels": string_map("extra labels"),
        }),
        "dashboards": obj({
            "enabled": boolean("create the dashboard ConfigMaps"),
            "labelKey": {"type": "string", "minLength": 1},
            "labelValue": {"type": "string"},
            "namespace": {"type": "string"},
            "annotations": string_map("extra annotations"),
        }),
        # helm adds this for subcharts/global values; allowed so `--set global.x` of
        # umbrella charts does not fail.
        "global": {"type": "object"},
    }),
}

text = json.dumps(schema, indent=2) + "\n"
if "--check" in sys.argv:
    sys.exit(0 if OUT.read_text() == text else 1)
OUT.write_text(text)
