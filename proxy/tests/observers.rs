//! The data plane never waits on its observers: a flow-log reader that stops
//! reading (drop mode: served, counted, a gap line on recovery; block mode:
//! lossless), a stdout that breaks (EPIPE), SIGTERM with a stuck log, a
//! wedged worker turning /healthz unhealthy, and scrapers that never read.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::nginx::Nginx;
use support::pki::TestPki;
use support::proxy::{Proxy, ProxyBuilder};
use support::*;

/// Bound on any single read in these tests (a stalled proxy fails them).
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `n` keep-alive `GET url` requests through the proxy on one
/// connection; returns how many were answered 200 (stops at the first
/// failure).
fn keepalive_gets(proxy: SocketAddr, url: &str, n: usize, done: &AtomicUsize) -> usize {
    let Ok(stream) = TcpStream::connect(proxy) else {
        return 0;
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut ok = 0;
    for _ in 0..n {
        let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if w.write_all(req.as_bytes()).is_err() {
            break;
        }
        let mut status_line = String::new();
        if r.read_line(&mut status_line).unwrap_or(0) == 0 {
            break;
        }
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return ok;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            break;
        }
        if !status_line.starts_with("HTTP/1.1 200") {
            break;
        }
        ok += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// `requests` GETs on `conns` parallel keep-alive connections, in threads.
fn load(
    p: &Proxy,
    url: &str,
    conns: usize,
    requests: usize,
) -> (Arc<AtomicUsize>, Vec<std::thread::JoinHandle<usize>>) {
    let done = Arc::new(AtomicUsize::new(0));
    let addr = p.addr("regular");
    let handles = (0..conns)
        .map(|_| {
            let (url, done) = (url.to_owned(), done.clone());
            std::thread::spawn(move || keepalive_gets(addr, &url, requests / conns, &done))
        })
        .collect();
    (done, handles)
}

/// The value of one sample of the exposition (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn scrape(p: &Proxy) -> String {
    curl(&[
        "-sS",
        "--max-time",
        "10",
        &format!("http://{}/metrics", p.addr("admin")),
    ])
    .text()
}

fn metric(p: &Proxy, series: &str) -> f64 {
    sample(&scrape(p), series).unwrap_or_else(|| panic!("{series} not exported"))
}

const DROPPED_FULL: &str = "tproxy_flowlog_records_dropped_total{reason=\"queue_full\"}";
const WRITTEN: &str = "tproxy_flowlog_records_written_total";
const PENDING: &str = "tproxy_flowlog_records_pending";

/// The flow log's JSON lines of one type.
fn json_lines(p: &Proxy, kind: &str) -> Vec<serde_json::Value> {
    p.flow_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == kind)
        .collect()
}

#[test]
fn stuck_stdout_reader_drops_and_counts_and_the_log_says_so() {
    const REQUESTS: usize = 3000;
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .hold_stdout()
        .args(&[
            "--log-format",
            "json",
            "--flow-log-queue",
            "64",
            "--workers",
            "2",
        ])
        .spawn();
    let url = format!("{}/small.txt", ng.http_base());
    let (done, handles) = load(&p, &url, 4, REQUESTS);
    // Generous bound; an implementation that blocks on the log stalls here
    // after the pipe buffer and the queue are full (~200 records).
    let all = wait_until(Duration::from_secs(180), || {
        handles.iter().all(|h| h.is_finished()).then_some(())
    });
    assert!(
        all.is_some(),
        "requests stalled behind the unread flow log: {} of {REQUESTS} answered\n{}",
        done.load(Ordering::Relaxed),
        p.dump()
    );
    let served: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(served, REQUESTS, "every request answered 200");
    // Every flow is either written, waiting, or dropped (records are made
    // just after the response: poll).
    let accounted = wait_until(Duration::from_secs(20), || {
        let m = scrape(&p);
        let n = sample(&m, DROPPED_FULL)? + sample(&m, WRITTEN)? + sample(&m, PENDING)?;
        (n as usize == REQUESTS).then_some(m)
    });
    let m = accounted.unwrap_or_else(|| panic!("flow records unaccounted:\n{}", scrape(&p)));
    let dropped = sample(&m, DROPPED_FULL).unwrap() as u64;
    assert!(dropped > 0, "nothing dropped: the pipe never filled?\n{m}");
    assert!(
        p.wait_for_stderr("flow log output is not keeping up", Duration::from_secs(5))
            .is_some(),
        "no stderr warning"
    );
    let warnings = p
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("flow log output is not keeping up"))
        .count();
    assert!(
        warnings < 10,
        "{warnings} warnings for {dropped} drops: not rate-limited"
    );

    // The reader wakes up: the log drains and says what it lost.
    p.release_stdout();
    let gaps = wait_until(Duration::from_secs(30), || {
        let gaps = json_lines(&p, "flowlog_gap");
        let lost: u64 = gaps.iter().map(|g| g["lost"].as_u64().unwrap()).sum();
        (lost == dropped).then_some(gaps)
    })
    .unwrap_or_else(|| panic!("no gap line accounting for {dropped} drops\n{}", p.dump()));
    for g in &gaps {
        assert_eq!(g["reason"], "queue_full", "{g}");
        assert!(g["first_lost"].as_str().unwrap() <= g["last_lost"].as_str().unwrap());
    }
    let flows = wait_until(Duration::from_secs(30), || {
        let n = json_lines(&p, "http").len();
        (n as u64 + dropped == REQUESTS as u64).then_some(n)
    });
    assert!(
        flows.is_some(),
        "{} flows logged + {dropped} dropped != {REQUESTS}",
        json_lines(&p, "http").len()
    );
}

#[test]
fn block_mode_waits_for_the_reader_and_loses_nothing() {
    const REQUESTS: usize = 600;
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new()
        .hold_stdout()
        .args(&[
            "--log-format",
            "json",
            "--flow-log-queue",
            "16",
            "--flow-log-full",
            "block",
        ])
        .spawn();
    let url = format!("{}/small.txt", ng.http_base());
    let (done, handles) = load(&p, &url, 1, REQUESTS);
    // The queue fills (the pipe buffer holds ~150 records of 600) ...
    let full = wait_until(Duration::from_secs(60), || {
        (metric(&p, PENDING) as usize >= 16).then_some(())
    });
    assert!(full.is_some(), "queue never filled\n{}", scrape(&p));
    // ... and traffic waits for the log: that is what block means.
    assert!(
        !handles.iter().all(|h| h.is_finished()),
        "all requests finished with the log stuck: not blocking"
    );
    p.release_stdout();
    let all = wait_until(Duration::from_secs(120), || {
        handles.iter().all(|h| h.is_finished()).then_some(())
    });
    assert!(
        all.is_some(),
        "stalled after the reader came back: {done:?}"
    );
    let served: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(served, REQUESTS);
    let logged = p.wait_for_stdout_n("\"type\":\"http\"", REQUESTS, Duration::from_secs(30));
    assert_eq!(logged.len(), REQUESTS, "every flow logged");
    let m = scrape(&p);
    assert_eq!(sample(&m, DROPPED_FULL), Some(0.0), "{m}");
    assert!(json_lines(&p, "flowlog_gap").is_empty());
}

#[test]
fn sigterm_with_a_stuck_log_exits_within_the_timeout_saying_records_were_lost() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let mut p = ProxyBuilder::new()
        .hold_stdout()
        .args(&[
            "--flow-detail",
            "4",
            "--flow-log-queue",
            "32",
            "--shutdown-timeout",
            "2",
        ])
        .spawn();
    let url = format!("{}/small.txt", ng.http_base());
    let (_, handles) = load(&p, &url, 2, 1000);
    for h in handles {
        assert_eq!(h.join().unwrap(), 500);
    }
    assert!(metric(&p, DROPPED_FULL) > 0.0);
    p.signal(libc::SIGTERM);
    // --shutdown-timeout 2: a generous bound, not a timing assertion.
    let exit = p.wait_exit(Duration::from_secs(20));
    let exit =
        exit.unwrap_or_else(|| panic!("no exit after SIGTERM with a stuck log\n{}", p.dump()));
    assert_eq!(
        exit.code(),
        Some(3),
        "exit status 3 = flow log incomplete\n{}",
        p.dump()
    );
    assert!(
        p.stderr_lines()
            .iter()
            .any(|l| l.contains("flow log incomplete")),
        "{}",
        p.dump()
    );
}

#[test]
fn clean_shutdown_exits_zero_with_everything_logged() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let mut p = ProxyBuilder::new().args(&["--log-format", "json"]).spawn();
    let url = format!("{}/small.txt", ng.http_base());
    let (_, handles) = load(&p, &url, 1, 50);
    assert_eq!(
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>(),
        50
    );
    p.signal(libc::SIGTERM);
    let exit = p
        .wait_exit(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", p.dump());
    assert_eq!(json_lines(&p, "http").len(), 50);
}

#[test]
fn broken_stdout_keeps_serving_and_fails_readyz_in_drop_mode() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().hold_stdout().spawn();
    p.close_stdout();
    let url = format!("{}/small.txt", ng.http_base());
    let admin = p.addr("admin");
    // The first write after the close fails with EPIPE.
    let broken = wait_until(Duration::from_secs(20), || {
        let r = curl(&["-x", &p.proxy_url(), &url]);
        assert_eq!(r.status, 200, "served without a log: {r:?}");
        let r = curl(&[&format!("http://{admin}/readyz")]);
        (r.status == 503).then_some(r)
    });
    let r = broken.unwrap_or_else(|| panic!("/readyz never failed\n{}", p.dump()));
    assert!(r.text().contains("flow log output failed"), "{r:?}");
    let m = scrape(&p);
    assert_eq!(sample(&m, "tproxy_flowlog_output_ok"), Some(0.0), "{m}");
    let lost = sample(
        &m,
        "tproxy_flowlog_records_dropped_total{reason=\"output_error\"}",
    );
    assert!(lost.is_some_and(|n| n >= 1.0), "{m}");
    // Liveness is about the data plane, which still serves.
    let r = curl(&[&format!("http://{admin}/healthz")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["-x", &p.proxy_url(), &url]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn broken_stdout_ends_the_process_in_block_mode() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let mut p = ProxyBuilder::new()
        .hold_stdout()
        .args(&["--flow-log-full", "block", "--shutdown-timeout", "2"])
        .spawn();
    p.close_stdout();
    let url = format!("{}/small.txt", ng.http_base());
    let exit = wait_until(Duration::from_secs(30), || {
        if let Some(st) = p.wait_exit(Duration::from_millis(1)) {
            return Some(st);
        }
        let _ = curl(&["-x", &p.proxy_url(), "--max-time", "5", &url]);
        None
    });
    let exit = exit.unwrap_or_else(|| panic!("still running with a broken stdout\n{}", p.dump()));
    assert_eq!(
        exit.code(),
        Some(4),
        "exit status 4 = flow log output failed\n{}",
        p.dump()
    );
}

#[test]
fn a_wedged_worker_makes_healthz_fail_with_a_reason() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIP: TPROXY_DEBUG_STALL_WORKER exists in debug builds only");
        return;
    }
    let p = ProxyBuilder::new()
        .args(&["--workers", "2", "--worker-stall-timeout", "1"])
        .env("TPROXY_DEBUG_STALL_WORKER", "1:6")
        .spawn();
    let health = format!("http://{}/healthz", p.addr("admin"));
    let sick = wait_until(Duration::from_secs(15), || {
        let r = curl(&["--max-time", "5", &health]);
        (r.status == 503).then_some(r)
    });
    let r = sick.unwrap_or_else(|| panic!("/healthz never failed\n{}", p.dump()));
    let text = r.text();
    assert!(
        text.contains("worker 1: event loop has not run for"),
        "{text}"
    );
    assert!(
        !text.contains("worker 0"),
        "only the wedged worker is named: {text}"
    );
    // The stall ends after 6 s: the worker beats again and /healthz recovers.
    let well = wait_until(Duration::from_secs(20), || {
        let r = curl(&["--max-time", "5", &health]);
        (r.status == 200).then_some(r)
    });
    assert!(well.is_some(), "/healthz did not recover\n{}", p.dump());
}

/// Connects with a tiny receive buffer, so a response bigger than a few
/// KiB cannot be delivered while the client does not read.
fn tiny_rcvbuf_connect(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(1024).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

#[test]
fn scrapers_that_never_read_stall_neither_traffic_nor_the_admin_server() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    let p = ProxyBuilder::new().spawn();
    let url = format!("{}/small.txt", ng.http_base());
    // Traffic first so the exposition has per-request families.
    assert_eq!(curl(&["-x", &p.proxy_url(), &url]).status, 200);
    let admin = p.addr("admin");
    let stuck: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = tiny_rcvbuf_connect(admin);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let (_, handles) = load(&p, &url, 2, 400);
    assert_eq!(
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>(),
        400
    );
    let r = curl(&["--max-time", "10", &format!("http://{admin}/healthz")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["--max-time", "10", &format!("http://{admin}/metrics")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("tproxy_requests_total"));
    drop(stuck);
}

#[test]
fn a_stderr_nobody_reads_never_stalls_traffic() {
    let pki = TestPki::new();
    let ng = Nginx::start(&pki);
    // h2 at trace level: dozens of diagnostic lines per request.
    let p = ProxyBuilder::new()
        .upstream_ca(&pki.ca_pem())
        .env("RUST_LOG", "info,h2=trace")
        .spawn();
    p.pause_stderr();
    let ca = p.ca_cert();
    let url = format!("{}/small.txt", ng.https_base());
    let mut args: Vec<String> = ["-sS", "--http2", "-x", &p.proxy_url(), "--cacert"]
        .map(str::to_owned)
        .to_vec();
    args.push(ca.to_str().unwrap().to_owned());
    args.extend(["--max-time", "60", "-w", "%{http_code}\\n"].map(str::to_owned));
    for _ in 0..200 {
        args.extend(["-o", "/dev/null", &url].map(str::to_owned));
    }
    let out = run_bounded(Command::new("curl").args(&args), Duration::from_secs(120));
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        200,
        "requests stalled behind an unread stderr: {codes}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = metric(&p, "tproxy_stderr_lines_dropped_total");
    assert!(
        dropped > 0.0,
        "no diagnostic line dropped: the pipe never filled?"
    );
    p.resume_stderr();
    // The next diagnostic line is preceded by the count of those lost.
    assert_eq!(
        curl(&[
            "-x",
            &p.proxy_url(),
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            &url
        ])
        .status,
        200
    );
    assert!(
        p.wait_for_stderr("diagnostic lines were dropped", Duration::from_secs(20))
            .is_some(),
        "no line about the dropped diagnostics"
    );
}
