//! Real AdmissionReview requests (as the API server sends them) through the
//! webhook: the patched objects deserialise into k8s-openapi types, pass
//! `kubernetes-validate --strict`, carry the injection, and a second review
//! gives no patch.

// Helpers outside #[test] fns unwrap too: a panic is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{env_names, fixture, kubernetes_validate, mount_paths, patch_of, with_object};
use http::StatusCode;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;
use tproxy_initializer::config::{Config, RawConfig};
use tproxy_initializer::metrics::Metrics;
use tproxy_initializer::server::Webhook;

const OPT_IN: &str = "initializer.kubernetes.io/tproxy";
const MARKER: &str = "tproxy.io/injected";

fn webhook(cfg: Config) -> Webhook {
    Webhook::new(cfg, Arc::new(Metrics::new().unwrap()))
}

/// Sends a review; returns the `response` member.
fn review(wh: &Webhook, body: &[u8]) -> Value {
    let reply = wh.handle_review(body);
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["allowed"], true);
    v["response"].clone()
}

/// Reviews a fixture, applies the patch, checks the second pass is a no-op.
fn inject(wh: &Webhook, review_json: &Value) -> (Value, json_patch::Patch) {
    let body = serde_json::to_vec(review_json).unwrap();
    let resp = review(wh, &body);
    assert_eq!(resp["uid"], review_json["request"]["uid"]);
    let patch = patch_of(&resp).expect("a patch");
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert!(
        resp["auditAnnotations"]["injected"]
            .as_str()
            .unwrap()
            .starts_with("0.1.0-")
    );
    let mut obj = review_json["request"]["object"].clone();
    json_patch::patch(&mut obj, &patch).unwrap();
    let again = review(wh, &with_object(review_json, &obj));
    assert!(
        patch_of(&again).is_none(),
        "second review patched again: {again}"
    );
    assert!(again.get("warnings").is_none());
    (obj, patch)
}

/// Checks the injection on a pod spec (typed) and its metadata (JSON).
fn check_pod(spec: &PodSpec, meta: &Value, app_containers: usize) {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let ours: Vec<_> = inits
        .iter()
        .filter(|c| c.name == "tproxy-sidecar")
        .collect();
    assert_eq!(ours.len(), 1, "exactly one sidecar");
    assert_eq!(inits[0].name, "tproxy-sidecar", "sidecar runs first");
    let sc = ours[0];
    assert_eq!(sc.image.as_deref(), Some("tproxy/tproxy-sidecar:0.1.0"));
    let caps = sc
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    let env = sc.env.as_deref().unwrap();
    assert_eq!(
        env.iter()
            .find(|e| e.name == "BLOCK_SVC_CIDR")
            .unwrap()
            .value
            .as_deref(),
        Some("10.96.0.0/12")
    );
    assert!(env.iter().any(|e| e.name == "ALLOW_DNS"));
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "status.hostIP");
    assert!(sc.resources.as_ref().unwrap().limits.is_some());

    let vols = spec.volumes.as_deref().unwrap();
    let bundle = vols.iter().find(|v| v.name == "tproxy-ca-bundle").unwrap();
    assert_eq!(bundle.config_map.as_ref().unwrap().name, "tproxy-ca-bundle");
    assert!(vols.iter().any(|v| v.name == "tproxy-ca"));

    let others: Vec<_> = spec
        .containers
        .iter()
        .chain(inits.iter().filter(|c| c.name != "tproxy-sidecar"))
        .collect();
    assert_eq!(others.len(), app_containers);
    for c in others {
        let mounts = c.volume_mounts.as_deref().unwrap();
        for (path, sub) in [
            (
                "/etc/ssl/certs/ca-certificates.crt",
                Some("ca-certificates.crt"),
            ),
            (
                "/etc/pki/tls/certs/ca-bundle.crt",
                Some("ca-certificates.crt"),
            ),
            ("/usr/local/share/ca-certificates", None),
        ] {
            let m = mounts
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap_or_else(|| panic!("{} lacks {path}", c.name));
            assert_eq!(m.sub_path.as_deref(), sub);
            assert_eq!(m.read_only, Some(true));
        }
        let env: Vec<_> = c
            .env
            .as_deref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for name in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
        ] {
            assert_eq!(
                env.iter().filter(|n| **n == name).count(),
                1,
                "{}: {name} in {env:?}",
                c.name
            );
        }
    }
    assert_eq!(meta["annotations"][OPT_IN], "true");
    assert_eq!(meta["labels"][OPT_IN], "true");
    assert!(
        meta["annotations"][MARKER]
            .as_str()
            .unwrap()
            .starts_with("0.1.0-")
    );
}

fn paths(patch: &json_patch::Patch) -> Vec<String> {
    serde_json::to_value(patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn fixtures_patch_into_valid_objects() {
    let wh = webhook(Config::default());
    let mut validated = Vec::new();

    // kubectl create deployment web --image=nginx, annotated.
    let dep_review = fixture("deployment-create.json");
    let (dep, patch) = inject(&wh, &dep_review);
    let p = paths(&patch);
    // Arrays/maps that do not exist are added whole, keys are escaped.
    assert!(
        p.contains(&"/spec/template/spec/initContainers".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/spec/volumes".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/spec/containers/0/env".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/metadata/annotations".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/metadata/labels/initializer.kubernetes.io~1tproxy".to_owned()),
        "{p:?}"
    );
    let typed: Deployment = serde_json::from_value(dep.clone()).unwrap();
    let tpl = typed.spec.as_ref().unwrap().template.clone();
    check_pod(
        tpl.spec.as_ref().unwrap(),
        &dep["spec"]["template"]["metadata"],
        1,
    );
    assert_eq!(
        dep["metadata"], dep_review["request"]["object"]["metadata"],
        "object metadata untouched"
    );
    validated.push(("deployment", dep));

    // A bare pod (kubectl run): existing volumes/mounts get appended to.
    let pod_review = fixture("pod-create.json");
    let (pod, patch) = inject(&wh, &pod_review);
    let p = paths(&patch);
    assert!(p.contains(&"/spec/volumes/-".to_owned()), "{p:?}");
    assert!(
        p.contains(&"/spec/containers/0/volumeMounts/-".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/metadata/annotations/tproxy.io~1injected".to_owned()),
        "{p:?}"
    );
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    check_pod(typed.spec.as_ref().unwrap(), &pod["metadata"], 1);
    assert_eq!(
        typed.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].name,
        "kube-api-access-7xk2p"
    );
    assert_eq!(
        mount_paths(&pod["spec"]["containers"][0])[0],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    validated.push(("pod", pod));

    // CronJob, dry run: the same answer as a real request.
    let cj_review = fixture("cronjob-create-dryrun.json");
    assert_eq!(cj_review["request"]["dryRun"], true);
    let (cj, patch) = inject(&wh, &cj_review);
    assert!(
        paths(&patch)
            .iter()
            .all(|p| p.starts_with("/spec/jobTemplate/spec/template/"))
    );
    let mut real = cj_review.clone();
    real["request"]["dryRun"] = Value::Bool(false);
    assert_eq!(
        review(&wh, &serde_json::to_vec(&real).unwrap()),
        review(&wh, &serde_json::to_vec(&cj_review).unwrap()),
    );
    let typed: CronJob = serde_json::from_value(cj.clone()).unwrap();
    let tpl = typed.spec.unwrap().job_template.spec.unwrap().template;
    check_pod(
        tpl.spec.as_ref().unwrap(),
        &cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
        1,
    );
    validated.push(("cronjob", cj));

    // StatefulSet UPDATE with the annotation on the pod template only.
    let sts_review = fixture("statefulset-update.json");
    let (sts, patch) = inject(&wh, &sts_review);
    let p = paths(&patch);
    assert!(
        p.contains(&"/spec/template/metadata/annotations/tproxy.io~1injected".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/spec/containers/0/env/-".to_owned()),
        "{p:?}"
    );
    let typed: StatefulSet = serde_json::from_value(sts.clone()).unwrap();
    let tpl = typed.spec.as_ref().unwrap().template.clone();
    check_pod(
        tpl.spec.as_ref().unwrap(),
        &sts["spec"]["template"]["metadata"],
        1,
    );
    let env = env_names(&sts["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(
        &env[..2],
        ["PGDATA", "POSTGRES_PASSWORD"],
        "user env kept first"
    );
    validated.push(("statefulset", sts));

    // Standard mode: proxy env on every container.
    let raw: RawConfig =
        serde_yaml_ng::from_str("proxyMode: standard\nserviceCidr: 10.43.0.0/16\n").unwrap();
    let std_wh = webhook(Config::try_from(raw).unwrap());
    let (pod_std, _) = inject(&std_wh, &pod_review);
    let c = &pod_std["spec"]["containers"][0];
    let env = env_names(c);
    for name in [
        "NODE_IP",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        assert!(env.contains(&name.to_owned()), "{name} missing in {env:?}");
    }
    let value = |n: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value("https_proxy"), "http://$(NODE_IP):1080");
    assert_eq!(
        value("NO_PROXY"),
        "localhost,127.0.0.1,::1,.svc,.cluster.local,10.43.0.0/16"
    );
    let typed: Pod = serde_json::from_value(pod_std.clone()).unwrap();
    assert_eq!(
        typed.spec.unwrap().init_containers.unwrap()[0]
            .env
            .as_ref()
            .unwrap()[0]
            .value
            .as_deref(),
        Some("10.43.0.0/16")
    );
    validated.push(("pod-standard", pod_std));

    let refs: Vec<(&str, &Value)> = validated.iter().map(|(n, v)| (*n, v)).collect();
    kubernetes_validate(&refs);
}

#[test]
fn skipped_objects_get_no_patch_and_say_why() {
    let mut cfg = Config::default();
    cfg.exclude_namespace("tproxy-system");
    let wh = webhook(cfg);

    let host = fixture("pod-hostnetwork.json");
    let resp = review(&wh, &serde_json::to_vec(&host).unwrap());
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "{resp}"
    );
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("hostNetwork"),
        "{resp}"
    );
    assert_eq!(resp["auditAnnotations"]["skipped"], "host_network");

    let done = fixture("pod-already-injected.json");
    let resp = review(&wh, &serde_json::to_vec(&done).unwrap());
    let keys: Vec<_> = resp.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["allowed", "uid"], "plain allow: {resp}");
    // Our init container alone (no marker) also counts as injected.
    let mut no_marker = done["request"]["object"].clone();
    no_marker["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(MARKER);
    let resp = review(&wh, &with_object(&done, &no_marker));
    assert!(patch_of(&resp).is_none(), "{resp}");

    for ns in ["kube-system", "tproxy-system"] {
        let mut r = fixture("pod-create.json");
        r["request"]["namespace"] = Value::from(ns);
        r["request"]["object"]["metadata"]["namespace"] = Value::from(ns);
        let resp = review(&wh, &serde_json::to_vec(&r).unwrap());
        assert!(patch_of(&resp).is_none());
        assert!(resp["warnings"][0].as_str().unwrap().contains(ns), "{resp}");
        assert_eq!(resp["auditAnnotations"]["skipped"], "excluded_namespace");
    }

    // Not annotated: plain allow, no warning.
    let mut r = fixture("deployment-create.json");
    r["request"]["object"]["metadata"]["annotations"] = serde_json::json!({});
    let resp = review(&wh, &serde_json::to_vec(&r).unwrap());
    assert_eq!(resp.as_object().unwrap().len(), 2, "{resp}");

    let metrics = String::from_utf8(wh.metrics().render()).unwrap();
    assert!(
        metrics.contains(r#"tproxy_initializer_reviews_total{kind="Pod",result="host_network"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"tproxy_initializer_reviews_total{kind="Pod",result="already_injected"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn bad_input_is_400_with_one_line() {
    let wh = webhook(Config::default());
    let mut unknown = fixture("pod-create.json");
    unknown["request"]["kind"] =
        serde_json::json!({"group": "", "version": "v1", "kind": "Service"});
    let mut no_uid = fixture("pod-create.json");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut wrong = fixture("pod-create.json");
    wrong["apiVersion"] = Value::from("admission.k8s.io/v1beta1");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed AdmissionReview JSON"),
        (b"".to_vec(), "malformed AdmissionReview JSON"),
        (
            serde_json::to_vec(&wrong).unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (serde_json::to_vec(&no_uid).unwrap(), "no uid"),
        (
            serde_json::to_vec(&unknown).unwrap(),
            "unknown object kind v1/Service",
        ),
    ];
    for (body, want) in cases {
        let reply = wh.handle_review(&body);
        let text = String::from_utf8(reply.body).unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{want}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    }
}

/// The validation harness itself must be able to fail: an unknown field and
/// a removed API version are both rejected.
#[test]
fn kubernetes_validate_harness_rejects_bad_objects() {
    let mut pod = fixture("pod-create.json")["request"]["object"].clone();
    pod["spec"]["containers"][0]["bogus"] = Value::from(1);
    let result = std::panic::catch_unwind(|| kubernetes_validate(&[("bad-pod", &pod)]));
    assert!(result.is_err(), "unknown field passed validation");

    let mut cj = fixture("cronjob-create-dryrun.json")["request"]["object"].clone();
    cj["apiVersion"] = Value::from("batch/v1beta1");
    let result = std::panic::catch_unwind(|| kubernetes_validate(&[("old-cronjob", &cj)]));
    assert!(
        result.is_err(),
        "removed API version passed validation (warning ignored)"
    );
}
