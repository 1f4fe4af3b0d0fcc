"""Closed JSON schemas for the custom resources the chart renders.

kubernetes-validate bundles only the built-in API, so ServiceMonitor,
PrometheusRule (prometheus-operator monitoring.coreos.com/v1) and cert-manager's
Issuer/Certificate (cert-manager.io/v1) are checked here instead. Each schema
lists the fields of the upstream CRD that the chart may use (a subset of the
CRDs' properties, names and types as in the upstream OpenAPI), with
additionalProperties: false, so a misspelt field fails like it would on the
API server.
"""


def closed(props, required=()):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": list(required)}


STR = {"type": "string"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = closed({
    "name": STR,
    "namespace": STR,
    "labels": STR_MAP,
    "annotations": STR_MAP,
}, ["name", "namespace"])
LABEL_SELECTOR = closed({
    "matchLabels": STR_MAP,
    "matchExpressions": {"type": "array", "items": closed({
        "key": STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": STR}}, ["key", "operator"])},
})
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


def resource(api, kind, spec):
    return closed({
        "apiVersion": {"const": api},
        "kind": {"const": kind},
        "metadata": META,
        "spec": spec,
    }, ["apiVersion", "kind", "metadata", "spec"])


SERVICE_MONITOR = resource("monitoring.coreos.com/v1", "ServiceMonitor", closed({
    "jobLabel": STR,
    "selector": LABEL_SELECTOR,
    "namespaceSelector": closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STR}}),
    "endpoints": {"type": "array", "items": closed({
        "port": STR,
        "targetPort": {"anyOf": [STR, {"type": "integer"}]},
        "path": STR,
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": {"type": "object"}},
        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
    })},
}, ["selector"]))

RULE = closed({
    "alert": STR,
    "record": STR,
    "expr": {"anyOf": [STR, {"type": "integer"}]},
    "for": DURATION,
    "keep_firing_for": DURATION,
    "labels": STR_MAP,
    "annotations": STR_MAP,
}, ["expr"])

PROMETHEUS_RULE = resource("monitoring.coreos.com/v1", "PrometheusRule", closed({
    "groups": {"type": "array", "items": closed({
        "name": STR,
        "interval": DURATION,
        "limit": {"type": "integer"},
        "partial_response_strategy": STR,
        "labels": STR_MAP,
        "rules": {"type": "array", "items": RULE},
    }, ["name"])},
}))

ISSUER_REF = closed({"name": STR, "kind": STR, "group": STR}, ["name"])

ISSUER = resource("cert-manager.io/v1", "Issuer", {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "selfSigned": closed({"crlDistributionPoints": {"type": "array", "items": STR}}),
        "ca": closed({"secretName": STR, "crlDistributionPoints": {"type": "array", "items": STR}}, ["secretName"]),
    },
})

CERTIFICATE = resource("cert-manager.io/v1", "Certificate", closed({
    "secretName": STR,
    "commonName": STR,
    "dnsNames": {"type": "array", "items": STR},
    "isCA": {"type": "boolean"},
    "duration": STR,
    "renewBefore": STR,
    "usages": {"type": "array", "items": STR},
    "privateKey": closed({
        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
        "size": {"type": "integer"},
        "encoding": {"enum": ["PKCS1", "PKCS8"]},
        "rotationPolicy": {"enum": ["Never", "Always"]},
    }),
    "issuerRef": ISSUER_REF,
}, ["secretName", "issuerRef"]))

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
}
