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
    setup_with(rules, &[])
}

fn setup_with(rules: &str, extra: &[&str]) -> (TestPki, Nginx, Proxy, tempfile::TempDir) {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .args(&["--rules", s(&file)])
        .args(extra)
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

/// A passthrough rule on the TLS server name of the CONNECT target. (The
/// server name must be the CONNECT target: an SNI naming another host than
/// where the bytes go is refused, see policy_bypass.rs.)
const PINNED: &str = r#"
rules:
  - name: pinned
    match:
      sni: localhost
    action: passthrough
default: deny
"#;

#[test]
fn passthrough_rule_shows_the_upstream_certificate() {
    let (pki, ng, p, _dir) = setup(PINNED);
    let out = run_ok(
        Command::new("openssl")
            .args(["s_client", "-proxy", &p.addr("regular").to_string()])
            .args(["-connect", &format!("localhost:{}", ng.https_port)])
            .args(["-servername", "localhost", "-CAfile", s(&pki.ca_pem())])
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

/// One keep-alive client connection to the proxy speaking absolute-form.
struct KeepAlive {
    s: std::io::BufReader<std::net::TcpStream>,
    req: Vec<u8>,
}

impl KeepAlive {
    fn new(p: &Proxy, url: &str) -> KeepAlive {
        let s = std::net::TcpStream::connect(p.addr("regular")).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        KeepAlive {
            s: std::io::BufReader::new(s),
            req,
        }
    }

    /// Status of one request, or an error text (reset, EOF, garbage).
    fn get(&mut self) -> Result<u16, String> {
        use std::io::{BufRead, Read, Write};
        self.s
            .get_mut()
            .write_all(&self.req)
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.s.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or(format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.s.read_line(&mut h).map_err(|e| e.to_string())?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad length {h:?}"))?;
            }
        }
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok(status)
    }
}

#[test]
fn reload_under_load_fails_no_request_and_follows_the_policy_in_force() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const ALLOW: &str = "rules: []\ndefault: allow\n";
    const DENY: &str = "rules: []\ndefault: {action: deny}\n";
    let (_pki, ng, p, dir) = setup(ALLOW);
    let file = dir.path().join("rules.yaml");
    let url = format!("{}/small.txt", ng.http_base());

    // Background load: one keep-alive connection, every result timestamped.
    let stop = Arc::new(AtomicBool::new(false));
    type Results = Vec<(Instant, Result<u16, String>)>;
    let log: Arc<Mutex<Results>> = Arc::default();
    let loader = {
        let (stop, log) = (stop.clone(), log.clone());
        let mut c = KeepAlive::new(&p, &url);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let r = c.get();
                let failed = r.is_err();
                log.lock().unwrap().push((t, r));
                if failed {
                    break;
                }
            }
        })
    };

    // 20 rewrites, alternating; each phase starts when a probe sees it.
    let mut probe = KeepAlive::new(&p, &url);
    let mut phases = Vec::new();
    for i in 0..20 {
        let (text, want) = if i % 2 == 0 {
            (DENY, 418)
        } else {
            (ALLOW, 200)
        };
        std::fs::write(&file, text).unwrap();
        let seen = wait_until(T, || (probe.get() == Ok(want)).then(Instant::now));
        let seen =
            seen.unwrap_or_else(|| panic!("rewrite {i} not applied within {T:?}\n{}", p.dump()));
        std::thread::sleep(Duration::from_millis(150));
        phases.push((seen, Instant::now(), want));
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();

    let log = log.lock().unwrap();
    assert!(log.len() > 40, "load loop made only {} requests", log.len());
    for (t, r) in log.iter() {
        let status = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a request failed during reloads: {e}\n{}", p.dump()));
        assert!(
            *status == 200 || *status == 418,
            "unexpected status {status}"
        );
        // A request sent inside a phase (after its policy was observed and
        // before the next rewrite) must get that phase's answer.
        if let Some((_, _, want)) = phases.iter().find(|(from, to, _)| t > from && t < to) {
            assert_eq!(status, want, "request at {t:?} answered by the old policy");
        }
    }
}

#[test]
fn rule_tag_and_redact_reach_the_flow_log() {
    let rules = "rules:\n  - name: tagged\n    match: {path_prefix: /small.txt}\n    action: allow\n    \
                 tag: files\n    redact: [x-team-key]\n    request_headers: {set: {x-added: yes}}\ndefault: allow\n";
    let (_pki, ng, p, _dir) = setup_with(rules, &["--flow-detail", "2"]);
    let url = format!("{}/small.txt", ng.http_base());
    let r = curl(&["-x", &p.proxy_url(), "-H", "X-Team-Key: hunter2", &url]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        p.wait_for_stdout(r"<< 200 OK .*\[rule tagged tag files\]", T)
            .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(r"(?i)^\s+x-team-key: \.\.\.$", T)
            .is_some(),
        "{}",
        p.dump()
    );
    assert!(
        !p.flow_lines().iter().any(|l| l.contains("hunter2")),
        "{}",
        p.dump()
    );
}

#[test]
fn tls_fail_open_passes_a_rejecting_host_through() {
    let rules = "rules: []\ndefault: allow\ntls_fail_open:\n  after: 2\n  ttl: 10m\n";
    let (pki, ng, p, _dir) = setup(rules);
    let url = format!("https://localhost:{}/small.txt", ng.https_port);
    // A client pinned to the upstream's CA rejects tproxy's certificate.
    for _ in 0..2 {
        let r = curl(&["-x", &p.proxy_url(), "--cacert", s(&pki.ca_pem()), &url]);
        assert_ne!(r.exit, 0, "interception should have been rejected: {r:?}");
    }
    assert!(
        p.wait_for_stdout("client does not trust the tproxy CA for localhost", T)
            .is_some(),
        "{}",
        p.dump()
    );
    // Now the host is passed through: the same client succeeds, end to end.
    let r = curl(&["-x", &p.proxy_url(), "--cacert", s(&pki.ca_pem()), &url]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, SMALL_BODY),
        "{r:?}\n{}",
        p.dump()
    );
    assert!(
        p.wait_for_stdout(r"passthrough .*\(tls fail-open\)", T)
            .is_some(),
        "{}",
        p.dump()
    );
}
