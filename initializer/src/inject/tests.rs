//! Unit tests of the decision and the patch shape.
use super::*;

#[test]
fn escapes_tokens() {
    assert_eq!(
        escape_token("initializer.kubernetes.io/tproxy"),
        "initializer.kubernetes.io~1tproxy"
    );
    assert_eq!(escape_token("a~b/c"), "a~0b~1c");
}

fn req(kind: (&str, &str), op: Operation, object: Value) -> AdmissionRequest {
    AdmissionRequest {
        uid: "u".into(),
        kind: GroupVersionKind {
            group: kind.0.into(),
            version: "v1".into(),
            kind: kind.1.into(),
        },
        namespace: "default".into(),
        name: "x".into(),
        operation: op,
        dry_run: false,
        object: Some(object),
    }
}

fn apply(obj: &Value, d: Decision) -> Value {
    let patch = match d {
        Decision::Patch { patch, .. } => patch,
        other => panic!("expected a patch, got {other:?}"),
    };
    let mut o = obj.clone();
    json_patch::patch(&mut o, &patch).unwrap();
    o
}

#[test]
fn minimal_pod_gets_whole_arrays_and_maps() {
    let cfg = Config::default();
    let pod = json!({"metadata": {"name": "p", "annotations": {OPT_IN: "true"}},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    let d = decide(&cfg, "m", &req(("", "Pod"), Operation::Create, pod.clone())).unwrap();
    let Decision::Patch { ref json, .. } = d else {
        panic!()
    };
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.contains("/metadata/annotations/tproxy.io~1injected"),
        "{text}"
    );
    assert!(text.contains(r#""path":"/metadata/labels""#), "{text}");
    assert!(text.contains(r#""path":"/spec/initContainers""#), "{text}");
    let out = apply(&pod, d);
    assert_eq!(out["spec"]["initContainers"][0]["name"], "tproxy-sidecar");
    assert_eq!(out["metadata"]["labels"][OPT_IN], "true");
    assert_eq!(out["metadata"]["annotations"][MARKER], "m");
    assert_eq!(
        out["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // Idempotent.
    let again = decide(&cfg, "m", &req(("", "Pod"), Operation::Create, out)).unwrap();
    assert!(matches!(again, Decision::Skip(Skip::AlreadyInjected)));
}

#[test]
fn existing_init_containers_keep_order_after_ours_and_user_env_wins() {
    let cfg = Config::default();
    let pod = json!({"metadata": {"annotations": {OPT_IN: "true"}, "labels": {"app": "a"}},
        "spec": {"initContainers": [{"name": "setup", "image": "busybox"}],
                 "containers": [{"name": "c", "image": "nginx",
                    "env": [{"name": "SSL_CERT_FILE", "value": "/mine.pem"}],
                    "volumeMounts": [{"name": "v", "mountPath": "/usr/local/share/ca-certificates"}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}]}});
    let out = apply(
        &pod,
        decide(&cfg, "m", &req(("", "Pod"), Operation::Create, pod.clone())).unwrap(),
    );
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "tproxy-sidecar");
    assert_eq!(inits[1]["name"], "setup");
    assert_eq!(inits[1]["env"].as_array().unwrap().len(), 4);
    let c = &out["spec"]["containers"][0];
    let ssl: Vec<_> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "SSL_CERT_FILE")
        .collect();
    assert_eq!(ssl.len(), 1);
    assert_eq!(ssl[0]["value"], "/mine.pem");
    // Our directory mount is skipped (the path is taken), the file mounts are added.
    assert_eq!(c["volumeMounts"].as_array().unwrap().len(), 3);
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(out["metadata"]["labels"]["app"], "a");
}

#[test]
fn skips_with_reasons() {
    let cfg = {
        let mut c = Config::default();
        c.exclude_namespace("tproxy");
        c
    };
    let pod = |extra: Value| {
        let mut p = json!({"metadata": {"annotations": {OPT_IN: "true"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        p
    };
    let d = |r: AdmissionRequest| match decide(&cfg, "m", &r).unwrap() {
        Decision::Skip(s) => s,
        Decision::Patch { .. } => panic!("patched"),
    };
    assert_eq!(
        d(req(
            ("", "Pod"),
            Operation::Create,
            pod(json!({"hostNetwork": true}))
        )),
        Skip::HostNetwork
    );
    let mut r = req(("", "Pod"), Operation::Create, pod(json!({})));
    r.namespace = "tproxy".into();
    assert_eq!(d(r.clone()), Skip::ExcludedNamespace("tproxy".into()));
    r.namespace = "kube-system".into();
    assert!(d(r).warning().unwrap().contains("kube-system"));
    assert_eq!(
        d(req(("", "Pod"), Operation::Update, pod(json!({})))),
        Skip::PodUpdate
    );
    let mut plain = pod(json!({}));
    plain["metadata"]["annotations"][OPT_IN] = json!("false");
    assert_eq!(
        d(req(("", "Pod"), Operation::Create, plain)),
        Skip::NotOptedIn
    );
    let job = json!({"metadata": {"annotations": {OPT_IN: "true"}}, "spec": {"template": pod(json!({}))}});
    assert_eq!(
        d(req(("batch", "Job"), Operation::Update, job.clone())),
        Skip::JobUpdate
    );
    assert!(matches!(
        decide(&cfg, "m", &req(("batch", "Job"), Operation::Create, job)).unwrap(),
        Decision::Patch { .. }
    ));
    let err = decide(
        &cfg,
        "m",
        &req(("", "Service"), Operation::Create, json!({})),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown object kind v1/Service"),
        "{err}"
    );
}

#[test]
fn template_annotation_overrides_object_annotation() {
    let cfg = Config::default();
    let dep = json!({"metadata": {"annotations": {OPT_IN: "true"}},
        "spec": {"template": {"metadata": {"annotations": {OPT_IN: "false"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let d = decide(
        &cfg,
        "m",
        &req(("apps", "Deployment"), Operation::Update, dep),
    )
    .unwrap();
    assert!(matches!(d, Decision::Skip(Skip::NotOptedIn)));
    let dep = json!({"metadata": {},
        "spec": {"template": {"metadata": {"annotations": {OPT_IN: "true"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let d = decide(
        &cfg,
        "m",
        &req(("apps", "Deployment"), Operation::Update, dep),
    )
    .unwrap();
    assert!(matches!(d, Decision::Patch { .. }));
}

#[test]
fn every_kind_patches_its_pod_template() {
    let cfg = Config::default();
    let pod = json!({"metadata": {"annotations": {OPT_IN: "true"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    let tpl = json!({"metadata": {"annotations": {OPT_IN: "true"}}, "spec": {"template": pod}});
    let cron = json!({"metadata": {}, "spec": {"jobTemplate": {"spec": {"template": pod}}}});
    let cases = [
        (("", "Pod"), pod.clone(), "/spec/initContainers"),
        (
            ("apps", "Deployment"),
            tpl.clone(),
            "/spec/template/spec/initContainers",
        ),
        (
            ("apps", "StatefulSet"),
            tpl.clone(),
            "/spec/template/spec/initContainers",
        ),
        (
            ("apps", "DaemonSet"),
            tpl.clone(),
            "/spec/template/spec/initContainers",
        ),
        (
            ("apps", "ReplicaSet"),
            tpl.clone(),
            "/spec/template/spec/initContainers",
        ),
        (("batch", "Job"), tpl, "/spec/template/spec/initContainers"),
        (
            ("batch", "CronJob"),
            cron,
            "/spec/jobTemplate/spec/template/spec/initContainers",
        ),
    ];
    for (kind, obj, path) in cases {
        let d = decide(&cfg, "m", &req(kind, Operation::Create, obj.clone())).unwrap();
        let out = apply(&obj, d);
        assert_eq!(
            out.pointer(path).unwrap()[0]["name"],
            "tproxy-sidecar",
            "{kind:?}"
        );
    }
}
