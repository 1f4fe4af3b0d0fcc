//! The queue's policies: drop-and-count with a gap line where the records
//! are missing, block, and a shutdown bounded by a deadline.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::flowlog::writer::Clock;
use crate::flowlog::*;

/// An output that blocks every write until the test lets it go: a stdout
/// whose reader stopped reading.
#[derive(Clone)]
struct Valve {
    data: Arc<Mutex<Vec<u8>>>,
    open: Arc<Mutex<Receiver<()>>>,
    opened: Arc<Mutex<bool>>,
}

impl Valve {
    fn new() -> (Self, Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let v = Self {
            data: Arc::default(),
            open: Arc::new(Mutex::new(rx)),
            opened: Arc::default(),
        };
        (v, tx)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.data.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Valve {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !*self.opened.lock().unwrap() {
            // Wait until released (a closed sender also releases).
            let _ = self.open.lock().unwrap().recv();
            *self.opened.lock().unwrap() = true;
        }
        self.data.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn dropping(capacity: usize, out: Valve) -> FlowLog {
    FlowLog::spawn_with(
        &cfg(LogFormat::Json, 1),
        Box::new(out),
        Clock::Fixed(0),
        OutputOptions {
            capacity,
            on_full: OnFull::Drop,
            on_failure: None,
        },
    )
}

fn numbered(i: usize) -> TcpFlow {
    let mut f = tcp_flow();
    f.destination = format!("n:{i}");
    f
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_stuck_output_drops_counts_and_marks_the_gap_where_records_are_missing() {
    let (valve, open) = Valve::new();
    let log = dropping(8, valve.clone());
    let stats = || log.stats().unwrap();
    // The first record reaches the writer, which then hangs in write(2).
    log.tcp(numbered(0));
    wait_for("the writer to take record 0", || log.pending() == 1);
    let start = Instant::now();
    for i in 1..=100 {
        log.tcp(numbered(i));
    }
    // Never waited: 100 pushes against a stuck output returned.
    assert!(start.elapsed() < Duration::from_secs(5));
    // 1 in the writer's hand + 7 queued fit; 93 dropped.
    assert_eq!(stats().dropped(DropReason::QueueFull), 93);
    assert_eq!(log.pending(), 8);
    open.send(()).unwrap();
    wait_for("the queue to drain", || log.pending() == 0);
    // Records after the gap come after its line.
    log.tcp(numbered(101));
    log.flush();
    let lines = valve.lines();
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v["type"].as_str().unwrap() {
                "tcp" => v["destination"].as_str().unwrap().to_owned(),
                "flowlog_gap" => format!("gap {}", v["lost"]),
                other => panic!("unexpected {other}"),
            }
        })
        .collect();
    let want: Vec<String> = (0..=7)
        .map(|i| format!("n:{i}"))
        .chain(["gap 93".to_owned(), "n:101".to_owned()])
        .collect();
    assert_eq!(kinds, want);
    let gap: serde_json::Value = serde_json::from_str(&lines[8]).unwrap();
    assert_eq!(gap["reason"], "queue_full");
    assert!(gap["first_lost"].as_str() <= gap["last_lost"].as_str());
    assert_eq!(
        stats().written.load(std::sync::atomic::Ordering::Relaxed),
        9
    );
}

#[test]
fn a_gap_with_no_record_after_it_is_written_when_the_output_drains() {
    let (valve, open) = Valve::new();
    let log = FlowLog::spawn_with(
        &cfg(LogFormat::Text, 1),
        Box::new(valve.clone()),
        Clock::Fixed(0),
        OutputOptions {
            capacity: 2,
            on_full: OnFull::Drop,
            on_failure: None,
        },
    );
    log.tcp(numbered(0));
    wait_for("the writer to take record 0", || log.pending() == 1);
    for i in 1..=5 {
        log.tcp(numbered(i));
    }
    open.send(()).unwrap();
    wait_for("the gap line", || {
        valve
            .lines()
            .iter()
            .any(|l| l.contains("flow log: 4 records lost from "))
    });
    let lines = valve.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[2].starts_with('[')
            && lines[2].ends_with("see tproxy_flowlog_records_dropped_total)"),
        "{lines:?}"
    );
}

#[test]
fn finish_gives_up_at_the_deadline_and_counts_what_is_left() {
    let (valve, open) = Valve::new();
    let log = dropping(16, valve);
    for i in 0..10 {
        log.tcp(numbered(i));
    }
    let start = Instant::now();
    let done = log.finish(Instant::now() + Duration::from_millis(200));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "finish is bounded"
    );
    assert_eq!(done.lost_at_deadline, 10);
    assert_eq!(done.lost_total, 10);
    assert!(!done.complete());
    assert_eq!(log.stats().unwrap().dropped(DropReason::Shutdown), 10);
    // Later records are dropped as well; dropping the handle does not hang.
    log.tcp(numbered(11));
    assert_eq!(log.stats().unwrap().dropped(DropReason::Shutdown), 11);
    drop(log);
    drop(open);
}

#[test]
fn finish_with_a_live_output_writes_everything() {
    let (valve, open) = Valve::new();
    open.send(()).unwrap();
    let log = dropping(4096, valve.clone());
    for i in 0..1000 {
        log.tcp(numbered(i));
    }
    let done = log.finish(Instant::now() + Duration::from_secs(30));
    assert!(done.complete(), "{done:?}");
    assert_eq!(valve.lines().len(), 1000);
}

#[test]
fn block_mode_waits_and_loses_nothing() {
    let (valve, open) = Valve::new();
    let log = FlowLog::spawn_with(
        &cfg(LogFormat::Json, 1),
        Box::new(valve.clone()),
        Clock::Fixed(0),
        OutputOptions::blocking(4),
    );
    let sender = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                log.tcp(numbered(i));
            }
        })
    };
    wait_for("the queue to fill", || log.pending() == 4);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!sender.is_finished(), "block mode did not wait");
    open.send(()).unwrap();
    sender.join().unwrap();
    log.flush();
    assert_eq!(valve.lines().len(), 100);
    assert_eq!(log.stats().unwrap().dropped_total(), 0);
}

#[test]
fn block_mode_is_released_by_the_shutdown_deadline() {
    let (valve, open) = Valve::new();
    let log = FlowLog::spawn_with(
        &cfg(LogFormat::Json, 1),
        Box::new(valve),
        Clock::Fixed(0),
        OutputOptions::blocking(2),
    );
    let sender = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                log.tcp(numbered(i));
            }
        })
    };
    wait_for("the queue to fill", || log.pending() == 2);
    let done = log.finish(Instant::now() + Duration::from_millis(100));
    assert_eq!(done.lost_at_deadline, 2);
    sender.join().unwrap();
    // 2 pending + the 8 the sender still had: all counted.
    assert_eq!(log.stats().unwrap().dropped(DropReason::Shutdown), 10);
    drop(log);
    drop(open);
}
