//! The writer thread: ordering, flush, backpressure, broken pipes, clock.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::flowlog::writer::{self, Clock};
use crate::flowlog::*;

/// A shared in-memory sink that counts flushes.
#[derive(Clone, Default)]
struct Sink {
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn detail_levels_set_capture() {
    let cases = [
        (0, false, 0),
        (1, false, 0),
        (2, true, 0),
        (3, true, BODY_CAPTURE_DETAIL3),
        (4, true, BODY_CAPTURE_DETAIL4),
        (9, true, BODY_CAPTURE_DETAIL4),
    ];
    for (detail, headers, limit) in cases {
        let log = FlowLog::to_writer(cfg(LogFormat::Text, detail), Box::new(io::sink()));
        assert_eq!(log.wants_headers(), headers, "detail {detail}");
        assert_eq!(log.body_capture_limit(), limit, "detail {detail}");
    }
}

#[test]
fn detail0_writes_nothing() {
    for format in [LogFormat::Text, LogFormat::Json] {
        let sink = Sink::default();
        let log = FlowLog::to_writer(cfg(format, 0), Box::new(sink.clone()));
        log.conn_event(ConnEvent {
            at: t0(),
            client: addr("10.0.0.7:1"),
            kind: ConnEventKind::ClientConnect,
        });
        log.http(flow());
        log.tcp(tcp_flow());
        log.flush();
        drop(log);
        assert!(sink.text().is_empty());
    }
}

#[test]
fn text_and_json_through_the_writer() {
    let sink = Sink::default();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Text, 1),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        16,
    );
    log.conn_event(ConnEvent {
        at: t0(),
        client: addr("10.0.0.7:51234"),
        kind: ConnEventKind::ClientConnect,
    });
    log.http(flow());
    log.tcp(tcp_flow());
    log.flush();
    assert_eq!(
        sink.text(),
        "[14:32:48.123][10.0.0.7:51234] client connect\n\
         10.0.0.7:51234: GET https://example.com/index.html\n\
         \x20            << 200 OK 1.2k\n\
         10.0.0.7:51235: passthrough db.internal:5432 (not http) >> 517b << 4.2k\n"
    );

    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Json, 1), Box::new(sink.clone()));
    log.conn_event(ConnEvent {
        at: t0(),
        client: addr("10.0.0.7:51234"),
        kind: ConnEventKind::ClientConnect,
    });
    log.http(flow());
    log.tcp(tcp_flow());
    log.flush();
    let text = sink.text();
    let types: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(
        types,
        ["\"http\"", "\"tcp\""],
        "no connection events in JSON"
    );
}

#[test]
fn ten_thousand_records_from_four_threads_in_order() {
    let sink = Sink::default();
    // A small queue so senders really block and wait.
    let log = FlowLog::spawn(
        &cfg(LogFormat::Json, 1),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        8,
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..2500 {
                    let mut f = tcp_flow();
                    f.destination = format!("t{t}:{i}");
                    log.tcp(f);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let text = sink.text();
    let mut next = [0u32; 4];
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let dest = v["destination"].as_str().unwrap();
        let (t, i) = dest[1..].split_once(':').unwrap();
        let (t, i): (usize, u32) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [2500; 4]);
}

#[test]
fn flush_waits_for_everything_queued_before_it() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    for round in 1..=20 {
        for _ in 0..50 {
            log.tcp(tcp_flow());
        }
        let flushes_before = *sink.flushes.lock().unwrap();
        log.flush();
        assert_eq!(sink.text().lines().count(), round * 50);
        assert!(
            *sink.flushes.lock().unwrap() > flushes_before,
            "underlying flush called"
        );
    }
}

#[test]
fn records_appear_without_flush_when_queue_is_idle() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    log.tcp(tcp_flow());
    // No flush(): the writer must flush on its own once the queue is empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *sink.flushes.lock().unwrap() == 0 || sink.text().is_empty() {
        assert!(Instant::now() < deadline, "record never flushed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sink.text().contains("passthrough"));
}

#[test]
fn dropping_the_last_handle_writes_everything() {
    let sink = Sink::default();
    let log = FlowLog::to_writer(cfg(LogFormat::Text, 1), Box::new(sink.clone()));
    let clone = log.clone();
    for _ in 0..1000 {
        clone.tcp(tcp_flow());
    }
    drop(clone);
    drop(log);
    assert_eq!(sink.text().lines().count(), 1000);
}

/// A writer that fails with EPIPE and counts how often it was asked.
#[derive(Clone, Default)]
struct Epipe(Arc<Mutex<usize>>);

impl Write for Epipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        *self.0.lock().unwrap() += 1;
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn broken_pipe_stops_writing_and_keeps_draining() {
    let sink = Epipe::default();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Text, 4),
        Box::new(sink.clone()),
        Clock::Fixed(0),
        4,
    );
    for _ in 0..10_000 {
        log.http(flow());
    }
    log.flush();
    log.flush();
    drop(log);
    assert_eq!(
        *sink.0.lock().unwrap(),
        1,
        "one failed write, then no more attempts"
    );
}

#[test]
fn real_pipe_closed_by_reader() {
    let (mut reader, writer) = io::pipe().unwrap();
    let log = FlowLog::spawn(
        &cfg(LogFormat::Json, 1),
        Box::new(writer),
        Clock::Fixed(0),
        4,
    );
    log.tcp(tcp_flow());
    log.flush();
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first[0], b'{');
    drop(reader);
    // More than a pipe buffer's worth after the reader went away: EPIPE.
    for _ in 0..5000 {
        log.tcp(tcp_flow());
    }
    log.flush();
    drop(log);
}

const TZ_CHILD: &str = "TPROXY_FLOWLOG_TZ_CHILD";

/// Runs one test of this binary in a child process with extra environment.
fn run_child_test(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The text clock's UTC offset follows `TZ` including daylight saving and
/// half-hour zones. Each zone runs in a child process (setting `TZ` in this
/// multi-threaded one would be unsound); the child checks the offsets in
/// January and July against the expected values and against `date(1)`.
#[test]
fn local_offset_follows_tz_and_dst() {
    const JAN: i64 = 1_768_478_400; // 2026-01-15T12:00:00Z
    const JUL: i64 = 1_784_116_800; // 2026-07-15T12:00:00Z
    if let Ok(expect) = std::env::var(TZ_CHILD) {
        let (jan, jul) = expect.split_once(',').unwrap();
        for (ts, want) in [(JAN, jan), (JUL, jul)] {
            let want: i32 = want.parse().unwrap();
            assert_eq!(writer::local_offset_secs(ts), Some(want), "at {ts}");
            let date = std::process::Command::new("date")
                .arg("-d")
                .arg(format!("@{ts}"))
                .arg("+%z")
                .output()
                .unwrap();
            let z = String::from_utf8(date.stdout).unwrap();
            let z = z.trim();
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let secs = sign
                * (z[1..3].parse::<i32>().unwrap() * 3600 + z[3..5].parse::<i32>().unwrap() * 60);
            assert_eq!(secs, want, "date(1) says {z}");
        }
        return;
    }
    let zones = [
        ("UTC", "0,0"),
        ("America/New_York", "-18000,-14400"),
        ("Asia/Kolkata", "19800,19800"),
        ("Australia/Lord_Howe", "39600,37800"),
    ];
    for (tz, expect) in zones {
        if tz != "UTC"
            && !std::path::Path::new("/usr/share/zoneinfo")
                .join(tz)
                .exists()
        {
            assert!(std::env::var_os("CI").is_none(), "tzdata missing for {tz}");
            eprintln!("skipping {tz}: no tzdata");
            continue;
        }
        let out = run_child_test(
            "flowlog::tests::writer::local_offset_follows_tz_and_dst",
            &[("TZ", tz), (TZ_CHILD, expect)],
        );
        assert!(
            out.status.success(),
            "TZ={tz}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child ran"
        );
    }
}

const STDOUT_CHILD: &str = "TPROXY_FLOWLOG_STDOUT_CHILD";

/// The real `FlowLog::stdout` in a child process whose stdout reader goes
/// away mid-stream: no panic, no SIGPIPE death, `flush()` still returns.
#[test]
fn stdout_reader_going_away() {
    if std::env::var_os(STDOUT_CHILD).is_some() {
        let log = FlowLog::stdout(cfg(LogFormat::Json, 1));
        // ~1.3 MB: far more than a pipe buffer, so writes hit EPIPE.
        for _ in 0..5000 {
            log.tcp(tcp_flow());
        }
        log.flush();
        drop(log);
        eprintln!("CHILD-DONE");
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "flowlog::tests::writer::stdout_reader_going_away",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STDOUT_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read until the first flow record arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.contains(&b'{') {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "child closed stdout early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CHILD-DONE"),
        "child did not finish: {stderr}"
    );
    assert!(!stderr.contains("'flowlog' panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
}
