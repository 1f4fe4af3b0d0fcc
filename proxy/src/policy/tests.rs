//! Rule language tests: parsing errors (golden), matchers, precedence,
//! decisions, fail-open, rendering.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

fn pol(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml) {
        Ok(p) => p,
        Err(e) => panic!("policy should parse: {e}\n{yaml}"),
    }
}

fn err(yaml: &str) -> PolicyError {
    match Policy::from_yaml(yaml) {
        Ok(_) => panic!("policy should be rejected:\n{yaml}"),
        Err(e) => e,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn conn<'a>(sni: Option<&'a str>, port: u16) -> ConnFacts<'a> {
    ConnFacts {
        client: ip("10.1.2.3"),
        dst_port: port,
        sni,
        host: None,
        source: None,
    }
}

/// Decide a request given as a URL like `https://host/path`.
fn req<'p>(p: &'p Policy, c: &ConnFacts<'_>, method: &str, url: &str) -> RequestDecision<'p> {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let host = match auth.find(']') {
        Some(end) => &auth[..=end],
        None => auth.split(':').next().unwrap(),
    };
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    p.decide_request(&RequestFacts {
        conn: c,
        scheme,
        method,
        host,
        path,
        url,
    })
}

fn rule_of(p: &Policy, url: &str) -> String {
    let c = conn(None, 443);
    req(p, &c, "GET", url).rule.to_owned()
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy/testdata")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules")
}

/// Compare with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = testdata().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(testdata()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual, want,
        "golden {name} differs (UPDATE_GOLDEN=1 to accept)"
    );
}

#[test]
fn parse_errors_name_field_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "bad-regex",
            "default: deny\nrules:\n  - name: a\n    action: allow\n  - name: b\n    match:\n      host: \"~a(\"\n    action: allow\n",
        ),
        (
            "unknown-field",
            "default: deny\nrules:\n  - name: a\n    match:\n      hots: x.com\n    action: allow\n",
        ),
        (
            "unknown-action",
            "default: deny\nrules:\n  - name: a\n    action: permit\n",
        ),
        (
            "bad-cidr",
            "default: allow\nrules:\n  - name: a\n    match: {client_cidr: [10.0.0.0/8, 10.0.0.0/33]}\n    action: deny\n",
        ),
        (
            "bad-port",
            "default: allow\nrules:\n  - name: a\n    match: {port: 0}\n    action: deny\n",
        ),
        (
            "bad-status",
            "default:\n  action: deny\n  deny: {status: 99}\n",
        ),
        (
            "bad-host",
            "default: allow\nrules:\n  - name: a\n    match: {host: \"a b.com\"}\n    action: deny\n",
        ),
        (
            "bad-ttl",
            "default: allow\ntls_fail_open: {after: 3, ttl: 10 minutes}\n",
        ),
        ("missing-default", "rules: []\n"),
        (
            "deny-opts-on-allow",
            "default: deny\nrules:\n  - name: a\n    action: allow\n    deny: {status: 403}\n",
        ),
        (
            "passthrough-with-url",
            "default: deny\nrules:\n  - name: pinned\n    match: {url: \"^https://x\"}\n    action: passthrough\n",
        ),
        (
            "bad-header",
            "default: deny\nrules:\n  - name: a\n    action: allow\n    request_headers: {set: {\"bad header\": x}}\n",
        ),
        (
            "missing-action",
            "default: deny\nrules:\n  - name: a\n   action: allow\n",
        ),
        (
            "yaml-syntax",
            "default: deny\nrules: [\n  {name: a, action: allow\n",
        ),
        (
            "empty-list",
            "default: deny\nrules:\n  - name: a\n    match: {method: []}\n    action: allow\n",
        ),
        (
            "duplicate-name",
            "default: deny\nrules:\n  - {name: a, action: allow}\n  - {name: a, action: deny}\n",
        ),
    ];
    let mut out = String::new();
    for (name, yaml) in cases {
        let e = err(yaml);
        let (line, col) = match &e {
            PolicyError::Parse { line, column, .. } => (*line, *column),
            _ => (None, None),
        };
        out.push_str(&format!("{name}: line={line:?} column={col:?}\n  {e}\n"));
    }
    golden("errors.txt", &out);
    // The headline case, asserted directly as well.
    let e = err(cases[0].1);
    let PolicyError::Parse { line, message, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*line, Some(7), "{e}");
    assert!(
        message.starts_with("rules[1].match.host: invalid regex `a(`"),
        "{message}"
    );
}

#[test]
fn wildcard_semantics() {
    let p =
        pol("default: deny\nrules:\n  - {name: w, match: {host: \"*.a.com\"}, action: allow}\n");
    assert_eq!(rule_of(&p, "https://x.a.com/"), "w");
    assert_eq!(rule_of(&p, "https://x.y.a.com/"), "w");
    assert_eq!(
        rule_of(&p, "https://X.A.COM./"),
        "w",
        "case and trailing dot"
    );
    assert_eq!(rule_of(&p, "https://a.com/"), "default");
    assert_eq!(rule_of(&p, "https://xa.com/"), "default");
    assert_eq!(rule_of(&p, "https://a.com.evil/"), "default");
}

#[test]
fn each_matcher() {
    let p = pol(r#"
default: allow
rules:
  - {name: exact, match: {host: exact.com}, action: deny}
  - {name: regex, match: {host: "~^re[0-9]+\\.com$"}, action: deny}
  - {name: sni, match: {sni: sni.com}, action: deny}
  - {name: url, match: {url: "^https://u\\.com/x\\?q=1$"}, action: deny}
  - {name: method, match: {host: m.com, method: [PUT, delete]}, action: deny}
  - {name: prefix, match: {host: p.com, path_prefix: /secret/}, action: deny}
  - {name: port, match: {host: port.com, port: [8443, "9000-9010"]}, action: deny}
  - {name: scheme, match: {host: s.com, scheme: http}, action: deny}
  - {name: cidr, match: {host: c.com, client_cidr: [10.1.0.0/16, "fd00::/8"]}, action: deny}
  - {name: src, match: {host: src.com, source: {namespace: prod, pod: "web-*", workload: Deployment/web, labels: {app: web}}}, action: deny}
"#);
    let c = conn(None, 443);
    let d = |m: &str, u: &str| req(&p, &c, m, u).rule.to_owned();
    assert_eq!(d("GET", "https://exact.com/"), "exact");
    assert_eq!(d("GET", "https://sub.exact.com/"), "default");
    assert_eq!(d("GET", "https://re42.com/"), "regex");
    assert_eq!(d("GET", "https://re.com/"), "default");
    assert_eq!(d("GET", "https://u.com/x?q=1"), "url");
    assert_eq!(d("GET", "https://u.com/x?q=2"), "default");
    assert_eq!(d("put", "https://m.com/"), "method");
    assert_eq!(d("DELETE", "https://m.com/"), "method");
    assert_eq!(d("GET", "https://m.com/"), "default");
    assert_eq!(d("GET", "https://p.com/secret/x"), "prefix");
    assert_eq!(d("GET", "https://p.com/secretx"), "default");
    assert_eq!(d("GET", "http://s.com/"), "scheme");
    assert_eq!(d("GET", "https://s.com/"), "default");
    assert_eq!(d("GET", "https://c.com/"), "cidr");
    let sni = conn(Some("SNI.com"), 443);
    assert_eq!(req(&p, &sni, "GET", "https://other.com/").rule, "sni");
    for (port, want) in [
        (8443, "port"),
        (9005, "port"),
        (9011, "default"),
        (443, "default"),
    ] {
        let c = conn(None, port);
        assert_eq!(
            req(&p, &c, "GET", "https://port.com/").rule,
            want,
            "port {port}"
        );
    }
    let mut c6 = conn(None, 443);
    c6.client = ip("fd00::1");
    assert_eq!(req(&p, &c6, "GET", "https://c.com/").rule, "cidr");
    c6.client = ip("::ffff:10.1.9.9");
    assert_eq!(
        req(&p, &c6, "GET", "https://c.com/").rule,
        "cidr",
        "v4-mapped client"
    );
    c6.client = ip("10.2.0.1");
    assert_eq!(req(&p, &c6, "GET", "https://c.com/").rule, "default");

    let mut pod = crate::poddir::PodInfo {
        namespace: "prod".into(),
        name: "web-abc12".into(),
        uid: "u".into(),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("web".into()),
        labels: BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "x".into())]),
    };
    let check = |pod: &crate::poddir::PodInfo| {
        let mut c = conn(None, 443);
        c.source = Some(pod);
        req(&p, &c, "GET", "https://src.com/").rule.to_owned()
    };
    assert_eq!(check(&pod), "src");
    pod.labels.insert("app".into(), "db".into());
    assert_eq!(check(&pod), "default", "label value differs");
    pod.labels.insert("app".into(), "web".into());
    pod.workload_kind = Some("StatefulSet".into());
    assert_eq!(check(&pod), "default", "workload kind differs");
    pod.workload_kind = Some("Deployment".into());
    pod.namespace = "dev".into();
    assert_eq!(check(&pod), "default", "namespace differs");
    assert_eq!(rule_of(&p, "https://src.com/"), "default", "no source pod");
}

#[test]
fn first_match_wins_and_default_applies() {
    let p = pol(r#"
default: {action: deny, deny: {status: 403, body: nope, headers: {x-why: policy}}}
rules:
  - {name: get-only, match: {host: "*.a.com", method: GET}, action: allow, tag: reads}
  - {name: all-a, match: {host: "*.a.com"}, action: deny}
  - {name: catch-b, match: {host: [b.com, "~^b"]}, action: allow}
"#);
    let c = conn(None, 443);
    let d = req(&p, &c, "GET", "https://x.a.com/");
    assert_eq!(
        (d.rule, d.action, d.tag),
        ("get-only", RequestAction::Allow, Some("reads"))
    );
    let d = req(&p, &c, "POST", "https://x.a.com/");
    assert_eq!(d.rule, "all-a");
    let RequestAction::Deny(resp) = d.action else {
        panic!()
    };
    assert_eq!((resp.status, resp.body.as_str()), (418, DENY_BODY));
    assert_eq!(rule_of(&p, "https://b.com/"), "catch-b");
    assert_eq!(
        rule_of(&p, "https://bee.org/"),
        "catch-b",
        "regex candidates merged in order"
    );
    let d = req(&p, &c, "GET", "https://z.org/");
    assert_eq!(d.rule, "default");
    let RequestAction::Deny(resp) = d.action else {
        panic!()
    };
    assert_eq!(resp.status, 403);
    assert_eq!(resp.body, "nope");
    assert_eq!(
        resp.headers,
        vec![("x-why".to_owned(), "policy".to_owned())]
    );
}

#[test]
fn edits_redact_and_tag_accompany_allow() {
    let p = pol(r#"
default: deny
rules:
  - name: s3
    match: {host: s3.amazonaws.com}
    action: allow
    request_headers: {set: {X-Proxy: tproxy}, remove: [X-Debug]}
    response_headers: {remove: [server]}
    redact: [X-Amz-Security-Token]
    tag: s3
"#);
    let d = req(&p, &conn(None, 443), "GET", "https://s3.amazonaws.com/b/k");
    assert_eq!(
        d.request_headers.set,
        vec![("x-proxy".to_owned(), "tproxy".to_owned())]
    );
    assert_eq!(d.request_headers.remove, vec!["x-debug".to_owned()]);
    assert_eq!(d.response_headers.remove, vec!["server".to_owned()]);
    assert_eq!(d.redact, ["x-amz-security-token".to_owned()]);
    assert_eq!(d.tag, Some("s3"));
    assert!(
        req(&p, &conn(None, 443), "GET", "https://x.com/")
            .request_headers
            .is_empty()
    );
}

#[test]
fn decide_connection_decidability() {
    let p = pol(r#"
default: deny
rules:
  - {name: meta, match: {host: 169.254.169.254}, action: deny, deny: {connection: reset}}
  - {name: pinned, match: {sni: "*.pinned.com"}, action: passthrough}
  - {name: alert, match: {sni: bad.com}, action: deny, deny: {connection: alert}}
  - {name: bucket-path, match: {host: s3.amazonaws.com, path_prefix: /my-bucket/}, action: allow}
  - {name: api, match: {host: api.com, port: 443}, action: allow}
  - {name: internal, match: {port: 8080}, action: intercept}
"#);
    let c = |sni, host, port| ConnFacts {
        host,
        ..conn(sni, port)
    };
    let d = |f: ConnFacts<'_>| format!("{:?}", p.decide_connection(&f));
    assert_eq!(
        d(c(None, Some("169.254.169.254"), 80)),
        "Deny { how: Reset, rule: \"meta\" }"
    );
    assert_eq!(
        d(c(Some("x.pinned.com"), None, 443)),
        "Passthrough { rule: \"pinned\" }"
    );
    assert_eq!(
        d(c(Some("bad.com"), None, 443)),
        "Deny { how: TlsAlert, rule: \"alert\" }"
    );
    // Request-level matcher on the first rule that could match: undecided.
    assert_eq!(d(c(Some("s3.amazonaws.com"), None, 443)), "Undecided");
    // All conditions connection-level: decided.
    assert_eq!(
        d(c(Some("api.com"), None, 443)),
        "Intercept { rule: \"api\" }"
    );
    assert_eq!(
        d(c(Some("api.com"), None, 8443)),
        "Intercept { rule: \"default\" }",
        "default deny responds with 418 → intercept"
    );
    assert_eq!(
        d(c(Some("x.org"), None, 8080)),
        "Intercept { rule: \"internal\" }"
    );
    // No SNI, no host: `meta` (host rule) might match once the Host header is known.
    assert_eq!(d(c(None, None, 80)), "Undecided");
    // A deny that answers 418 is an Intercept at connection level.
    let q = pol(
        "default: {action: deny, deny: {connection: reset}}\nrules:\n  - {name: ok, match: {sni: ok.com}, action: allow}\n",
    );
    assert_eq!(
        format!("{:?}", q.decide_connection(&c(Some("no.com"), None, 443))),
        "Deny { how: Reset, rule: \"default\" }"
    );
    assert_eq!(
        format!("{:?}", q.decide_connection(&c(Some("ok.com"), None, 443))),
        "Intercept { rule: \"ok\" }"
    );
    let r = pol("default: passthrough\n");
    assert_eq!(
        format!("{:?}", r.decide_connection(&c(None, None, 443))),
        "Passthrough { rule: \"default\" }"
    );
}

#[test]
fn index_agrees_with_linear_walk() {
    // Many rules of all host kinds; the indexed lookup must equal a plain
    // first-match walk for many hosts.
    let mut y = String::from("default: deny\nrules:\n");
    for i in 0..80 {
        let host = match i % 5 {
            0 => format!("host: h{i}.com"),
            1 => format!("host: \"*.d{}.com\"", i % 7),
            2 => format!("host: \"~^r{}\"", (i / 5) % 4),
            3 => "host: [\"x.com\", \"*.com\"]".to_owned(),
            _ => format!("url: \"^https://u{}\\\\.\"", i % 3),
        };
        let extra = if i % 3 == 0 { ", method: POST" } else { "" };
        y.push_str(&format!(
            "  - {{name: r{i}, match: {{{host}{extra}}}, action: allow}}\n"
        ));
    }
    let p = pol(&y);
    assert!(y.contains(r#"url: "^https://u1\\.""#), "{y}");
    let c = conn(None, 443);
    for host in [
        "h0.com",
        "h4.com",
        "a.d1.com",
        "a.b.d3.com",
        "r3x.org",
        "x.com",
        "y.com",
        "zzz.net",
        "d1.com",
        "u1.net",
        "u2.com",
        "r2.d6.com",
    ] {
        for method in ["GET", "POST"] {
            let url = format!("https://{host}/");
            let got = req(&p, &c, method, &url).rule;
            let i = matcher::Inputs {
                host: Some(host),
                sni: None,
                port: 443,
                client: c.client,
                source: None,
                host_pre: None,
            };
            let no_prefilter = matcher::Prefilter::default();
            let r = matcher::ReqInputs {
                scheme: Scheme::Https,
                method,
                path: "/",
                url: &url,
                url_pre: &no_prefilter.url(&url),
            };
            let want = p
                .rules
                .iter()
                .find(|r2| r2.matcher.request(&i, &r))
                .map_or("default", |r2| r2.name.as_str());
            assert_eq!(got, want, "{method} {host}");
        }
    }
}

#[test]
fn fail_open_counts_and_expires() {
    let now = Arc::new(Mutex::new(Instant::now()));
    let n2 = Arc::clone(&now);
    let clock: Clock = Arc::new(move || *n2.lock().unwrap());
    let cfg = FailOpenConfig {
        after: 3,
        ttl: Duration::from_secs(600),
    };
    let f = FailOpen::with_clock(Some(cfg), clock);
    let advance = |d: Duration| *now.lock().unwrap() += d;
    assert!(!f.record_client_reject("pinned.com"));
    assert!(!f.record_client_reject("PINNED.com"));
    assert!(!f.is_open("pinned.com"));
    assert!(f.record_client_reject("pinned.com"), "third reject opens");
    assert!(f.is_open("pinned.com"));
    assert!(f.is_open("Pinned.COM"));
    assert!(!f.is_open("other.com"));
    assert_eq!(f.opened_total.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        f.rejects_total.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    advance(Duration::from_secs(599));
    assert!(f.is_open("pinned.com"));
    advance(Duration::from_secs(1));
    assert!(!f.is_open("pinned.com"), "closed after the TTL");
    // Counting starts again; old rejects outside the TTL window are forgotten.
    assert!(!f.record_client_reject("pinned.com"));
    advance(Duration::from_secs(601));
    assert!(!f.record_client_reject("pinned.com"));
    assert!(!f.record_client_reject("pinned.com"));
    assert!(!f.is_open("pinned.com"));
    assert!(f.record_client_reject("pinned.com"));
    // Disabled tracker never opens.
    let off = FailOpen::new(None);
    for _ in 0..10 {
        assert!(!off.record_client_reject("x.com"));
    }
    assert!(!off.is_open("x.com"));
}

#[test]
fn examples_parse_and_behave() {
    let p = Policy::load(&examples().join("allow-bucket.yaml")).unwrap();
    let c = conn(None, 443);
    let d = |m, u| req(&p, &c, m, u);
    assert_eq!(
        d("GET", "https://my-bucket.s3.amazonaws.com/a/b.txt").action,
        RequestAction::Allow
    );
    assert_eq!(
        d("PUT", "https://s3.amazonaws.com/my-bucket/a/b.txt").action,
        RequestAction::Allow
    );
    for denied in [
        "https://other.s3.amazonaws.com/x",
        "https://s3.amazonaws.com/other-bucket/x",
        "https://example.com/",
        "http://my-bucket.s3.amazonaws.com/x",
    ] {
        let RequestAction::Deny(r) = d("GET", denied).action else {
            panic!("{denied} should be denied")
        };
        assert_eq!(
            (r.status, r.body.as_str()),
            (418, "Access Denied by Administrator"),
            "{denied}"
        );
    }
    let mut out = String::new();
    for f in [
        "allow-bucket.yaml",
        "deny-metadata.yaml",
        "passthrough-pinned.yaml",
    ] {
        out.push_str(&format!(
            "## {f}\n{}",
            check_file(&examples().join(f)).unwrap()
        ));
    }
    golden("examples.txt", &out);
    let m = Policy::load(&examples().join("deny-metadata.yaml")).unwrap();
    let f = ConnFacts {
        host: Some("169.254.169.254"),
        ..conn(None, 80)
    };
    assert!(matches!(
        m.decide_connection(&f),
        ConnDecision::Deny { .. } | ConnDecision::Intercept { .. }
    ));
    assert_eq!(
        req(
            &m,
            &conn(None, 80),
            "GET",
            "http://169.254.169.254/latest/meta-data/"
        )
        .rule,
        "metadata-server"
    );
    let t = Policy::load(&examples().join("passthrough-pinned.yaml")).unwrap();
    assert!(matches!(
        t.decide_connection(&conn(Some("api.pinned-app.example"), 443)),
        ConnDecision::Passthrough { .. }
    ));
    assert!(t.fail_open().is_some());
}

#[test]
fn missing_file_is_an_error_naming_the_flag() {
    let e = check_file(Path::new("/nonexistent/rules.yaml")).unwrap_err();
    assert!(e.to_string().contains("--rules"), "{e}");
}

/// Cost of `decide_request` for 1, 100 and 1000 rules (printed, not
/// asserted; run with `--nocapture`).
#[test]
fn measure_decide_request_cost() {
    for n in [1usize, 100, 1000] {
        let mut y = String::from("default: deny\nrules:\n");
        for i in 0..n {
            match i % 3 {
                0 => y.push_str(&format!("  - {{name: r{i}, match: {{host: h{i}.example.com, method: GET}}, action: allow}}\n")),
                1 => y.push_str(&format!("  - {{name: r{i}, match: {{host: \"*.w{i}.example.com\"}}, action: allow}}\n")),
                _ => y.push_str(&format!("  - {{name: r{i}, match: {{url: \"^https://u{i}\\\\.example\\\\.com/\"}}, action: allow}}\n")),
            }
        }
        let p = pol(&y);
        let c = conn(Some("miss.example.org"), 443);
        let hit_host = format!("h{}.example.com", (n - 1) / 3 * 3);
        let hit_url = format!("https://{hit_host}/x");
        let last = |k: usize| (0..n).rev().find(|i| i % 3 == k).unwrap_or(k);
        let wild_host = format!("a.b.w{}.example.com", last(1));
        let wild_url = format!("https://{wild_host}/x");
        let url_host = format!("u{}.example.com", last(2));
        let url_url = format!("https://{url_host}/x");
        for (label, host, url) in [
            ("miss", "miss.example.org", "https://miss.example.org/x"),
            ("last-exact-hit", hit_host.as_str(), hit_url.as_str()),
            ("last-wild-hit", wild_host.as_str(), wild_url.as_str()),
            ("last-url-hit", url_host.as_str(), url_url.as_str()),
        ] {
            let iters = 20_000u32;
            let t0 = Instant::now();
            let mut hits = 0usize;
            for _ in 0..iters {
                let d = p.decide_request(&RequestFacts {
                    conn: &c,
                    scheme: Scheme::Https,
                    method: "GET",
                    host,
                    path: "/x",
                    url,
                });
                hits += usize::from(d.rule != "default");
            }
            let per = t0.elapsed() / iters;
            eprintln!("decide_request rules={n:5} case={label:15} {per:?}/request (hits {hits})");
        }
    }
}

#[test]
fn check_output_warns_about_shadowed_rules() {
    let p = pol(
        "default: deny\nrules:\n  - {name: all, action: allow}\n  - {name: never, match: {host: a.com}, action: deny}\n",
    );
    let text = p.to_string();
    assert!(
        text.contains("# warning: rule `all` matches everything; the 1 rule(s) after it"),
        "{text}"
    );
    let q = pol(
        "default: deny\nrules:\n  - {name: a, match: {host: a.com}, action: allow}\n  - {name: last, action: allow}\n",
    );
    assert!(
        !q.to_string().contains("warning"),
        "a final catch-all shadows only the default"
    );
}

#[test]
fn ipv6_hosts_compare_canonically() {
    let p = pol(
        "default: allow\nrules:\n  - {name: meta6, match: {host: \"FD00:EC2:0:0::254\"}, action: deny}\n",
    );
    assert_eq!(rule_of(&p, "http://[fd00:ec2::254]/latest"), "meta6");
    assert_eq!(rule_of(&p, "http://[FD00:0EC2:0::0254]/latest"), "meta6");
    assert_eq!(rule_of(&p, "http://[fd00:ec2::255]/"), "default");
    let f = ConnFacts {
        host: Some("fd00:ec2:0::254"),
        ..conn(None, 80)
    };
    assert!(matches!(
        p.decide_connection(&f),
        ConnDecision::Intercept { rule: "meta6" }
    ));
}
