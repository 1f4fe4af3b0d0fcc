//! 100 MiB bodies through the proxy, both directions: intercepted HTTPS,
//! plain HTTP and spliced passthrough, with sha256 checked end to end and
//! the proxy's RSS sampled during the transfer (bodies must stream).
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::pyup::{Kind, PyUpstream};
use support::*;

const T: Duration = Duration::from_secs(10);
/// Allowed RSS growth while 100 MiB flows (KiB): far below the body size.
const MAX_RSS_GROWTH_KIB: u64 = 48 * 1024;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Samples the proxy's VmRSS every 50 ms until `done`; returns the maximum.
fn sample_rss(p: &Proxy, done: &AtomicBool) -> u64 {
    let mut max = 0;
    for _ in 0..(180_000 / 50) {
        if let Some(r) = p.rss() {
            max = max.max(r.rss_kib);
        }
        if done.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    max
}

/// Runs curl with `args` (stdout = body), hashing the body while sampling the
/// proxy's RSS. Returns (sha256, length, rss growth KiB).
fn download(p: &Proxy, args: &[&str]) -> (String, u64, u64) {
    // Callers warm up first, so lazily built state (certs, pools) exists.
    let before = p.rss().expect("proxy running").rss_kib;
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "150"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let hasher = std::thread::spawn(move || {
        let r = sha256_reader(out);
        d.store(true, Ordering::Relaxed);
        r
    });
    let max = sample_rss(p, &done);
    let (sha, n) = hasher.join().unwrap().unwrap();
    let st = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten())
        .expect("curl did not exit");
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    assert!(st.success(), "curl {st}: {err}\n{}", p.dump());
    (sha, n, max.saturating_sub(before))
}

fn warm_up(p: &Proxy, url: &str, ca: &std::path::Path) {
    let r = curl(&["-x", &p.proxy_url(), "--cacert", s(ca), url]);
    assert_eq!(r.status, 200, "{r:?}\n{}", p.dump());
}

#[test]
fn download_100mib_intercepted_https() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    warm_up(&p, &format!("{}/small.txt", ng.https_base()), &p.ca_cert());
    let url = format!("{}/big.bin", ng.https_base());
    let (sha, n, growth) = download(
        &p,
        &["-x", &p.proxy_url(), "--cacert", s(&p.ca_cert()), &url],
    );
    let (_, want) = big_file();
    assert_eq!((sha.as_str(), n), (want.as_str(), BIG_LEN));
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "RSS grew {growth} KiB during the transfer"
    );
    let re = format!(r": GET {}( HTTP/2\.0)?$", regex::escape(&url));
    assert!(p.wait_for_stdout(&re, T).is_some(), "{}", p.dump());
    assert!(
        p.wait_for_stdout(r"^\s+<< (HTTP/2\.0 )?200 OK 100m$", T)
            .is_some(),
        "{}",
        p.dump()
    );
    eprintln!("download_100mib_intercepted_https: RSS growth {growth} KiB");
}

#[test]
fn download_100mib_plain_http() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().spawn();
    let r = curl(&[
        "-x",
        &p.proxy_url(),
        &format!("{}/small.txt", ng.http_base()),
    ]);
    assert_eq!(r.status, 200);
    let url = format!("{}/big.bin", ng.http_base());
    let (sha, n, growth) = download(&p, &["-x", &p.proxy_url(), &url]);
    let (_, want) = big_file();
    assert_eq!((sha.as_str(), n), (want.as_str(), BIG_LEN));
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "RSS grew {growth} KiB during the transfer"
    );
    eprintln!("download_100mib_plain_http: RSS growth {growth} KiB");
}

#[test]
fn download_100mib_spliced_passthrough() {
    for mode in ["splice", "copy"] {
        let pki = TestPki::new();
        let ng = Nginx::start(&pki);
        let p = ProxyBuilder::new()
            .args(&["--ignore-hosts", "^localhost:", "--passthrough", mode])
            .spawn();
        // Not intercepted: the client trusts the upstream's own CA.
        warm_up(&p, &format!("{}/small.txt", ng.https_base()), &pki.ca_pem());
        let url = format!("{}/big.bin", ng.https_base());
        let (sha, n, growth) = download(
            &p,
            &["-x", &p.proxy_url(), "--cacert", s(&pki.ca_pem()), &url],
        );
        let (_, want) = big_file();
        assert_eq!((sha.as_str(), n), (want.as_str(), BIG_LEN), "{mode}");
        assert!(growth < MAX_RSS_GROWTH_KIB, "{mode}: RSS grew {growth} KiB");
        let pt = wait_until(T, || {
            p.flow_lines()
                .into_iter()
                .filter(|l| l.contains(": passthrough "))
                .count()
                .ge(&2)
                .then_some(())
        });
        assert!(
            pt.is_some(),
            "{mode}: passthrough lines missing\n{}",
            p.dump()
        );
        assert!(
            !p.flow_lines().iter().any(|l| l.contains(": GET ")),
            "{}",
            p.dump()
        );
        eprintln!("download_100mib_spliced_passthrough ({mode}): RSS growth {growth} KiB");
    }
}

/// Uploads the big file with `curl -T` through the proxy to a Python sink
/// and checks the sink's size/sha256 report; returns RSS growth (KiB).
fn upload(p: &Proxy, url: &str, extra: &[&str]) -> u64 {
    let (path, want) = big_file();
    let before = p.rss().expect("proxy running").rss_kib;
    let done = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let proxy_url = p.proxy_url();
    let out = std::thread::scope(|sc| {
        let d = done.clone();
        let h = sc.spawn(move || {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "150", "-x", &proxy_url])
                .args(extra)
                .arg("-T")
                .arg(path)
                .arg(url);
            let out = run_bounded(&mut cmd, Duration::from_secs(170));
            d.store(true, Ordering::Relaxed);
            out
        });
        max.store(sample_rss(p, &done), Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(
        out.status.success(),
        "curl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.dump()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sink reply not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["size"], BIG_LEN, "{v}");
    assert_eq!(v["sha256"], want.as_str(), "{v}");
    max.load(Ordering::Relaxed).saturating_sub(before)
}

#[test]
fn upload_100mib_intercepted_https() {
    let pki = TestPki::new();
    let sink = PyUpstream::local(Kind::Sink, Some(&pki));
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let base = format!("https://localhost:{}", sink.addr.port());
    warm_up(&p, &format!("{base}/"), &p.ca_cert());
    let growth = upload(&p, &format!("{base}/up"), &["--cacert", s(&p.ca_cert())]);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "RSS grew {growth} KiB during the upload"
    );
    assert!(
        p.wait_for_stdout(r": PUT https://localhost:\d+/up( HTTP/2\.0)?$", T)
            .is_some(),
        "{}",
        p.dump()
    );
    eprintln!("upload_100mib_intercepted_https: RSS growth {growth} KiB");
}

#[test]
fn upload_100mib_plain_http() {
    let sink = PyUpstream::local(Kind::Sink, None);
    let p = ProxyBuilder::new().spawn();
    let growth = upload(&p, &format!("http://{}/up", sink.addr), &[]);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "RSS grew {growth} KiB during the upload"
    );
    eprintln!("upload_100mib_plain_http: RSS growth {growth} KiB");
}
