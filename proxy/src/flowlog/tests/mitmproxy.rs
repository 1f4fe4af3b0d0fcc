//! Oracle tests: the same input through mitmproxy's own code (from the test
//! venv, see `scripts/install-test-deps.sh`) and through ours.

use std::io::Write;
use std::path::PathBuf;

use super::*;
use crate::flowlog::*;

/// The test venv's python, or None (with a note) when there is no venv
/// outside CI. In CI a missing venv fails the test.
fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("TPROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv")
        });
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no test venv at {} (run scripts/install-test-deps.sh)",
        venv.display()
    );
    eprintln!("skipping: no test venv at {}", venv.display());
    None
}

/// Runs `script` with `input` on stdin; returns its stdout.
fn run_python(python: &std::path::Path, script: &str, input: String) -> String {
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// mitmproxy's dumper over flows described in JSON, outputs separated by
/// a line `=====`.
const DUMPER: &str = r#"
import io, json, sys
from mitmproxy.test import taddons, tflow
from mitmproxy.addons import dumper
from mitmproxy import http
for spec in json.load(sys.stdin):
    sio = io.StringIO()
    d = dumper.Dumper(sio)
    with taddons.context(d) as ctx:
        ctx.configure(d, flow_detail=spec["detail"])
        f = tflow.tflow(resp=True)
        f.client_conn.peername = tuple(spec["client"])
        f.request = http.Request.make(spec["method"], spec["url"], spec["req_body"].encode())
        f.request.http_version = spec["req_version"]
        f.request.headers = http.Headers([(k.encode(), v.encode()) for k, v in spec["req_headers"]])
        r = spec["resp"]
        f.response = http.Response.make(r["status"], r["body"].encode())
        f.response.http_version = r["version"]
        f.response.reason = r["reason"]
        f.response.headers = http.Headers([(k.encode(), v.encode()) for k, v in r["headers"]])
        d.echo_flow(f)
    sys.stdout.write(sio.getvalue().replace("\r\n", "\n"))
    sys.stdout.write("=====\n")
"#;

struct Case {
    detail: u8,
    client: &'static str,
    method: &'static str,
    url: &'static str,
    req: HttpVersion,
    resp: HttpVersion,
    reason: &'static str,
    req_body: String,
    resp_body: String,
}

fn case(detail: u8) -> Case {
    Case {
        detail,
        client: "10.0.0.7:51234",
        method: "GET",
        url: "https://example.com/index.html",
        req: HttpVersion::Http11,
        resp: HttpVersion::Http11,
        reason: "OK",
        req_body: String::new(),
        resp_body: "x".repeat(1234),
    }
}

/// Our text output equals mitmdump's for the same flows, at detail 1 to 4,
/// across versions, IPv6 clients, bodies and the 512-line cutoff (the one
/// deliberate difference: body lines end in `\n`, mitmproxy joins them with
/// `\r\n`; normalised above).
#[test]
fn text_matches_mitmproxy_dumper() {
    let Some(python) = venv_python() else {
        return;
    };
    let long: String = (0..600).map(|i| format!("line {i}\n")).collect();
    let cases = vec![
        case(1),
        Case {
            req: HttpVersion::Http2,
            resp: HttpVersion::Http2,
            reason: "",
            ..case(1)
        },
        Case {
            req: HttpVersion::Http10,
            ..case(1)
        },
        Case {
            req: HttpVersion::Http10,
            resp: HttpVersion::Http10,
            ..case(1)
        },
        Case {
            client: "[2001:db8::7]:443",
            ..case(1)
        },
        Case {
            client: "[::ffff:198.18.0.1]:80",
            url: "http://198.18.0.1:8080/a?b=c",
            ..case(1)
        },
        Case {
            method: "DELETE",
            reason: "Not Found",
            ..case(1)
        },
        case(2),
        Case {
            req: HttpVersion::Http2,
            resp: HttpVersion::Http2,
            reason: "",
            ..case(2)
        },
        Case {
            method: "POST",
            req_body: "a\tb\r\nline2\n".into(),
            resp_body: "hello\nworld".into(),
            ..case(3)
        },
        Case {
            resp_body: long.clone(),
            ..case(3)
        },
        Case {
            resp_body: long,
            ..case(4)
        },
    ];
    let headers = |body: &str| {
        vec![
            ("content-type".to_string(), "text/plain".to_string()),
            ("content-length".to_string(), body.len().to_string()),
        ]
    };
    let mut specs = Vec::new();
    let mut ours = Vec::new();
    for c in &cases {
        let client: SocketAddr = c.client.parse().unwrap();
        specs.push(serde_json::json!({
            "detail": c.detail,
            "client": [client.ip().to_string(), client.port()],
            "method": c.method,
            "url": c.url,
            "req_version": c.req.as_str(),
            "req_headers": headers(&c.req_body),
            "req_body": c.req_body,
            "resp": {
                "status": if c.reason == "Not Found" { 404 } else { 200 },
                "reason": c.reason,
                "version": c.resp.as_str(),
                "headers": headers(&c.resp_body),
                "body": c.resp_body,
            },
        }));
        let mut f = flow();
        f.client = client;
        f.method = c.method.into();
        f.url = c.url.into();
        f.request_version = c.req;
        f.request_headers = headers(&c.req_body);
        f.request_body = Some(BodyCapture {
            bytes: c.req_body.clone().into_bytes(),
            truncated: false,
        });
        f.response_bytes = c.resp_body.len() as u64;
        f.response = Some(ResponseSummary {
            status: if c.reason == "Not Found" { 404 } else { 200 },
            reason: c.reason.into(),
            version: c.resp,
            headers: headers(&c.resp_body),
            body: Some(BodyCapture {
                bytes: c.resp_body.clone().into_bytes(),
                truncated: false,
            }),
        });
        let mut out = String::new();
        text::http(
            &mut out,
            &f,
            &Opts {
                detail: c.detail,
                show_secrets: true,
            },
        );
        ours.push(out);
    }
    let theirs = run_python(&python, DUMPER, serde_json::Value::from(specs).to_string());
    let theirs: Vec<&str> = theirs.split("=====\n").collect();
    assert_eq!(theirs.len(), cases.len() + 1);
    for (i, (ours, theirs)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(ours, theirs, "case {i}");
    }
}

/// Compares [`pretty_size`] with mitmproxy's own `human.pretty_size` over
/// the unit boundaries and a spread of values.
#[test]
fn pretty_size_matches_real_mitmproxy() {
    let Some(python) = venv_python() else {
        return;
    };
    let mut sizes: Vec<u64> = (0..2100).collect();
    for k in 1..=4u32 {
        let unit = 1024u64.pow(k);
        for m in [1u64, 2, 9, 10, 99, 100, 101, 500, 1000, 1023, 1024, 1025] {
            for d in [0i64, -1, 1, -51, 51, -52, 52] {
                sizes.push((m * unit).saturating_add_signed(d * (unit as i64 / 1024)));
                sizes.push((m * unit).saturating_add_signed(d));
            }
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push(x >> (x % 60));
    }
    let input: String = sizes.iter().map(|s| format!("{s}\n")).collect();
    let theirs = run_python(
        &python,
        "import sys\nfrom mitmproxy.utils.human import pretty_size\n\
         for l in sys.stdin: print(pretty_size(int(l)))",
        input,
    );
    let theirs: Vec<&str> = theirs.lines().collect();
    assert_eq!(theirs.len(), sizes.len());
    for (size, want) in sizes.iter().zip(theirs) {
        assert_eq!(pretty_size(*size), want, "pretty_size({size})");
    }
}
