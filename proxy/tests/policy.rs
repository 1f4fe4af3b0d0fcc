//! Policy rules end to end: request-level allow / 418 deny in regular mode
//! (HTTP and intercepted HTTPS), the rule named in the flow log, SNI-level
//! deny before TLS with no upstream connection, a passthrough rule showing
//! the upstream's real certificate, live reload, and `tproxy rules check`.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::nginx::{Nginx, SMALL_BODY};
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder, tproxy_bin};
use support::*;

const T: Duration = Duration::from_secs(10);

const RULES: &str = r#"
rules:
  - name: blocked-sni
    match:
      sni: blocked.test
    action: deny
    deny:
      connection: reset
  - name: pinned
    match:
      sni: pinned.test
    action: passthrough
  # After the connection-level rules: a request-level rule that could match a
  # connection keeps the decision until the request is seen (first match wins).
  - name: small-file
    match:
      host: [localhost, 127.0.0.1]
      path_prefix: /small.txt
    action: allow
default:
  action: deny
  deny:
    status: 418
    body: Access Denied by Administrator
"#;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn setup(rules: &str) -> (TestPki, Nginx, Proxy, tempfile::TempDir) {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--rules", s(&file)])
        .spawn();
    (pki, ng, p, dir)
}

#[test]
fn allowed_url_passes_everything_else_gets_418_with_the_rule_logged() {
    let (_pki, ng, p, _dir) = setup(RULES);
    let ca = p.ca_cert();
    for base in [ng.http_base(), ng.https_base()] {
        let ok = curl(&[
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            &format!("{base}/small.txt"),
        ]);
        assert_eq!(
            (ok.status, ok.text().as_str()),
            (200, SMALL_BODY),
            "{ok:?}\n{}",
            p.dump()
        );
        let denied = curl(&[
            "-x",
            &p.proxy_url(),
            "--cacert",
            s(&ca),
            &format!("{base}/other"),
        ]);
        assert_eq!(denied.status, 418, "{denied:?}\n{}", p.dump());
        assert_eq!(denied.text(), "Access Denied by Administrator");
    }
    assert!(
        p.wait_for_stdout(r"<< 200 OK .*\[rule small-file\]", T)
            .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(r"<< 418 .*deny rule default", T)
            .is_some(),
        "{}",
        p.dump()
    );
    // Denied requests never reached the upstream.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!ng.access_log().contains("/other"), "{}", ng.access_log());
}

#[test]
fn sni_deny_resets_before_tls_and_never_connects_upstream() {
    let (_pki, ng, p, _dir) = setup(RULES);
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        "--cacert",
        s(&p.ca_cert()),
        "--connect-to",
        &format!("blocked.test:443:127.0.0.1:{}", ng.https_port),
        "https://blocked.test/small.txt",
    ]);
    assert_ne!(r.status, 200, "{r:?}");
    assert_ne!(r.exit, 0, "curl should fail: {r:?}");
    assert!(
        p.wait_for_stdout(
            r"denied blocked\.test before TLS \(reset\) \[deny rule blocked-sni\]",
            T
        )
        .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        !p.flow_lines().iter().any(|l| l.contains("server connect")),
        "an upstream connection was opened\n{}",
        p.dump()
    );
    assert!(ng.access_log().is_empty(), "{}", ng.access_log());
}

#[test]
fn passthrough_rule_shows_the_upstream_certificate() {
    let (pki, ng, p, _dir) = setup(RULES);
    let out = run_ok(
        Command::new("openssl")
            .args(["s_client", "-proxy", &p.addr("regular").to_string()])
            .args(["-connect", &format!("localhost:{}", ng.https_port)])
            .args(["-servername", "pinned.test", "-CAfile", s(&pki.ca_pem())])
            .stdin(std::process::Stdio::null()),
        T,
    );
    let issuer = out
        .lines()
        .find(|l| l.contains("i:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !issuer.contains("mitmproxy"),
        "intercepted instead of passed through:\n{out}"
    );
    assert!(out.contains("Verify return code: 0"), "{out}");
    assert!(
        p.wait_for_stdout(r"passthrough .*\(rule pinned\)", T)
            .is_some(),
        "{}",
        p.dump()
    );
}

#[test]
fn rules_reload_live_and_a_bad_file_keeps_the_last_good_policy() {
    let (_pki, ng, p, dir) = setup(RULES);
    let file = dir.path().join("rules.yaml");
    let url = format!("{}/other", ng.http_base());
    assert_eq!(curl(&["-x", &p.proxy_url(), &url]).status, 418);
    let allow_all = "rules: []\ndefault: allow\n";
    // Write a new file and rename it over the old one (atomic, like editors).
    let tmp = dir.path().join("rules.tmp");
    std::fs::write(&tmp, allow_all).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let now_allowed = wait_until(T, || {
        (curl(&["-x", &p.proxy_url(), &url]).status == 404).then_some(())
    });
    assert!(now_allowed.is_some(), "reload not applied\n{}", p.dump());
    std::fs::write(&file, "rules:\n  - name: x\n    match: {host: [}\n").unwrap();
    assert!(
        p.wait_for_stderr(r"line \d+", T).is_some(),
        "no error naming the line\n{}",
        p.dump()
    );
    assert_eq!(
        curl(&["-x", &p.proxy_url(), &url]).status,
        404,
        "old policy must stay"
    );
}

#[test]
fn rules_check_prints_rules_and_fails_with_the_line_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, RULES).unwrap();
    let out = Command::new(tproxy_bin())
        .args(["rules", "check", s(&good)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("small-file") && text.contains("pinned"),
        "{text}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: a\n    match:\n      host: '~a('\n    action: allow\n",
    )
    .unwrap();
    let out = Command::new(tproxy_bin())
        .args(["rules", "check", s(&bad)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    let example = workspace_root().join("examples/rules/allow-bucket.yaml");
    let out = Command::new(tproxy_bin())
        .args(["rules", "check", s(&example)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
