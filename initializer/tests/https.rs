//! End to end over HTTPS: the real binary, a test CA and serving cert, curl
//! as the client. Reviews, bad bodies, health and metrics, and a serving
//! certificate swapped on disk the way a Secret volume updates.

// Helpers outside #[test] fns unwrap too: a panic is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, patch_of};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

/// Kills the server on drop (also when the test fails).
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (PEM) and a leaf for 127.0.0.1/localhost signed by it (PEM cert, key).
fn make_pki(cn: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "tproxy-initializer.tproxy.svc");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// Writes a Secret-volume-like layout: `dir/..data -> ..<version>`,
/// `dir/tls.crt -> ..data/tls.crt`; a new version swaps `..data` atomically.
fn write_secret(dir: &Path, version: &str, cert: &str, key: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

fn start(secret: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tproxy-initializer"))
        .args(["--listen", "127.0.0.1:0", "--tls-reload-secs", "1"])
        .arg("--tls-cert")
        .arg(secret.join("tls.crt"))
        .arg("--tls-key")
        .arg(secret.join("tls.key"))
        .env("POD_NAMESPACE", "tproxy-system")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let mut server = Server {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        log,
    };
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no listening line; stderr:\n{}", server.log.lock().unwrap()));
    server.addr = addr.parse().unwrap();
    server
}

/// curl with `--cacert`; returns (HTTP status, body) or curl's error.
fn curl(
    server: &Server,
    ca: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, String), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o"])
        .arg(dir.path().join("out"))
        .args(["-w", "%{http_code}", "-X", method, "--cacert"])
        .arg(ca);
    if let Some(b) = body {
        let f = dir.path().join("in");
        std::fs::write(&f, b).unwrap();
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", f.display()));
    }
    let out = cmd
        .arg(format!("https://{}{path}", server.addr))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let body = std::fs::read_to_string(dir.path().join("out")).unwrap_or_default();
    Ok((code, body))
}

fn response_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    v["response"].clone()
}

#[test]
fn https_reviews_errors_metrics_and_cert_reload() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let (ca1, cert1, key1) = make_pki("test CA one");
    let ca1_path: PathBuf = dir.path().join("ca1.pem");
    std::fs::write(&ca1_path, &ca1).unwrap();
    write_secret(&secret, "v1", &cert1, &key1);
    let server = start(&secret);

    // A Deployment gets a patch; applied, it carries the sidecar.
    let dep = fixture("deployment-create.json");
    let (code, body) = curl(
        &server,
        &ca1_path,
        "POST",
        "/mutate",
        Some(&serde_json::to_vec(&dep).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let resp = response_of(&body);
    assert_eq!(resp["uid"], dep["request"]["uid"]);
    assert_eq!(resp["allowed"], true);
    let patch = patch_of(&resp).expect("patch");
    let mut obj = dep["request"]["object"].clone();
    json_patch::patch(&mut obj, &patch).unwrap();
    assert_eq!(
        obj["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "tproxy-sidecar"
    );

    // Already injected: neither patch nor patchType.
    let done = fixture("pod-already-injected.json");
    let (code, body) = curl(
        &server,
        &ca1_path,
        "POST",
        "/mutate",
        Some(&serde_json::to_vec(&done).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200);
    let resp = response_of(&body);
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "{resp}"
    );

    // The webhook's own namespace (POD_NAMESPACE) is excluded, with a warning.
    let mut own = fixture("pod-create.json");
    own["request"]["namespace"] = Value::from("tproxy-system");
    let (code, body) = curl(
        &server,
        &ca1_path,
        "POST",
        "/mutate",
        Some(&serde_json::to_vec(&own).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200);
    let resp = response_of(&body);
    assert!(patch_of(&resp).is_none(), "{resp}");
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("namespace tproxy-system is excluded"),
        "{resp}"
    );

    // Bad input: 400 with a one-line reason, and the server keeps serving.
    let mut no_req = dep.clone();
    no_req.as_object_mut().unwrap().remove("request");
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"apiVersion\": ".to_vec(),
            "malformed AdmissionReview JSON",
        ),
        (
            b"\xff\xfe garbage".to_vec(),
            "malformed AdmissionReview JSON",
        ),
        (serde_json::to_vec(&no_req).unwrap(), "no request"),
        (
            br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
            "expected apiVersion admission.k8s.io/v1",
        ),
    ];
    for (b, want) in bad {
        let (code, body) = curl(&server, &ca1_path, "POST", "/mutate", Some(&b)).unwrap();
        assert_eq!(code, 400, "{body}");
        assert!(body.contains(want), "{want}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1);
    }
    // Plain HTTP on the TLS port: the handshake fails, the server lives on.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{}/healthz", server.addr))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"));
    assert_eq!(
        curl(&server, &ca1_path, "GET", "/healthz", None).unwrap(),
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        curl(&server, &ca1_path, "GET", "/mutate", None).unwrap().0,
        405
    );
    assert_eq!(
        curl(&server, &ca1_path, "GET", "/nope", None).unwrap().0,
        404
    );
    let (code, metrics) = curl(&server, &ca1_path, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics
            .contains(r#"tproxy_initializer_reviews_total{kind="Deployment",result="patched"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"tproxy_initializer_rejected_requests_total{reason="malformed_json"} 2"#),
        "{metrics}"
    );

    // The exposition passes Prometheus' own linter.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // One structured log line per review.
    {
        let log = server.log.lock().unwrap();
        let line = log
            .lines()
            .find(|l| {
                l.contains("admission review") && l.contains("4a5c6e1f-2b1d-4c4b-9d0e-8f2a7b6c5d41")
            })
            .unwrap_or_else(|| panic!("no review log line:\n{log}"));
        for field in [
            "kind=apps/v1/Deployment",
            "namespace=default",
            "name=web",
            "operation=\"CREATE\"",
            "result=\"patched\"",
        ] {
            assert!(line.contains(field), "{field} not in {line}");
        }
    }

    // Swap the Secret to a cert from another CA: new connections get it.
    let (ca2, cert2, key2) = make_pki("test CA two");
    let ca2_path = dir.path().join("ca2.pem");
    std::fs::write(&ca2_path, &ca2).unwrap();
    write_secret(&secret, "v2", &cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match curl(&server, &ca2_path, "GET", "/healthz", None) {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "new cert never served: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let old = curl(&server, &ca1_path, "GET", "/healthz", None);
    assert!(old.is_err(), "old CA still accepted: {old:?}");
    let (code, body) = curl(
        &server,
        &ca2_path,
        "POST",
        "/mutate",
        Some(&serde_json::to_vec(&dep).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(patch_of(&response_of(&body)).is_some());

    // A broken pair (key from elsewhere) is rejected; the current cert stays.
    let rejections = |log: &str| log.matches("new serving certificate rejected").count();
    let before = rejections(&server.log.lock().unwrap());
    let (_, cert3, _) = make_pki("test CA three");
    write_secret(&secret, "v3", &cert3, &key2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rejections(&server.log.lock().unwrap()) == before {
        assert!(
            Instant::now() < deadline,
            "mismatched key not reported:\n{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        curl(&server, &ca2_path, "GET", "/healthz", None).unwrap().0,
        200
    );

    // SIGTERM: stop accepting, drain, exit 0.
    let mut server = server;
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    // The reader thread may still be draining the closed pipe.
    while !server.log.lock().unwrap().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown log line");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_config_fails_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "proxyMode: standard\nserviceCidr: 10.96.0.0/33\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tproxy-initializer"))
        .arg("--config")
        .arg(&cfg)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serviceCidr") && err.contains("prefix length"),
        "{err}"
    );

    std::fs::write(
        &cfg,
        "proxyMode: standard\nsidecar:\n  image: registry.local/tproxy-sidecar:1.2\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tproxy-initializer"))
        .arg("--config")
        .arg(&cfg)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed["marker"].as_str().unwrap().starts_with("0.1.0-"));
    let inj = &printed["injection"];
    assert_eq!(
        inj["initContainers"][0]["image"],
        "registry.local/tproxy-sidecar:1.2"
    );
    assert!(
        inj["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "https_proxy")
    );

    // Missing cert files: exit 1 naming the file.
    let out = Command::new(env!("CARGO_BIN_EXE_tproxy-initializer"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tls.crt"));
}
