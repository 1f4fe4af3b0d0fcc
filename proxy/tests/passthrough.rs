//! Passthrough relay over real 127.0.0.1 sockets, on both monoio drivers
//! (io_uring and epoll) and both modes (splice, copy).
//!
//! Topology: client (std thread) ↔ relay (monoio runtime on the test thread)
//! ↔ server (std thread). Tests hold one lock so fd counts and throughput
//! figures are not disturbed by each other. Throughput lines are printed only
//! (`cargo test -p tproxy --test passthrough -- --nocapture` shows them).

// Helpers outside #[test] fns unwrap too: a panic here is a test failure
// with a location (clippy's allow-unwrap-in-tests covers only #[test] fns).
#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd},
    sync::{Mutex, MutexGuard, OnceLock},
    thread,
    time::{Duration, Instant},
};

use monoio::{
    IoUringDriver, LegacyDriver, RuntimeBuilder,
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    net::{TcpListener, TcpStream},
};
use sha2::{Digest, Sha256};
use tproxy::passthrough::{
    RelayError, RelayMode, RelayOptions, RelayOutcome, Side, drain_pipe_pool, pooled_pipes, relay,
    relay_with,
};

const MODES: [RelayMode; 2] = [RelayMode::Splice, RelayMode::Copy];
/// Bound for every wait in these tests: a hang fails instead of blocking CI.
const BOUND: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the file-wide lock; on drop closes the pipes this test thread pooled
/// (before the lock is released, so a later fd count does not race with this
/// thread's exit closing them).
struct Serial(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Drop for Serial {
    fn drop(&mut self) {
        drain_pipe_pool();
    }
}

fn serial() -> Serial {
    Serial(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

#[derive(Debug, Clone, Copy)]
enum Drv {
    IoUring,
    Legacy,
}

const DRIVERS: [Drv; 2] = [Drv::IoUring, Drv::Legacy];

/// Run `f` on a fresh runtime of the given driver; `None` when io_uring
/// cannot start here (printed).
fn on_driver<F, Fut>(drv: Drv, f: F) -> Option<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match drv {
        Drv::IoUring => match RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => Some(rt.block_on(f())),
            Err(e) => {
                eprintln!("skipping io_uring run: the io_uring runtime failed to start: {e}");
                None
            }
        },
        Drv::Legacy => {
            let mut rt = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            Some(rt.block_on(f()))
        }
    }
}

fn std_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn front_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn bounded(s: &std::net::TcpStream) {
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.set_write_timeout(Some(BOUND)).unwrap();
}

/// Accept one client on `front`, connect to `backend`, relay (bounded).
async fn relay_one(
    front: &TcpListener,
    backend: SocketAddr,
    options: RelayOptions,
) -> RelayOutcome {
    let (client, _) = front.accept().await.unwrap();
    let server = TcpStream::connect(backend).await.unwrap();
    monoio::time::timeout(BOUND, relay_with(client, server, options))
        .await
        .expect("relay hung: did not return within the bound")
}

fn options(mode: RelayMode) -> RelayOptions {
    RelayOptions {
        mode,
        idle_timeout: None,
    }
}

/// A deterministic pattern whose length is not a power of two, so pattern
/// repeats never line up with socket or pipe chunk boundaries.
fn pattern(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity((1 << 20) + 13 * 8);
    for _ in 0..((1 << 17) + 13) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

const BULK: u64 = 100 << 20;

fn send_pattern(s: &mut std::net::TcpStream, pat: &[u8], total: u64) {
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left.min(pat.len() as u64)).unwrap();
        s.write_all(&pat[..n]).unwrap();
        left -= n as u64;
    }
}

fn expected(seed: u64) -> [u8; 32] {
    type Digests = Mutex<Vec<(u64, [u8; 32])>>;
    static CACHE: OnceLock<Digests> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    if let Some((_, h)) = cache.lock().unwrap().iter().find(|(s, _)| *s == seed) {
        return *h;
    }
    let pat = pattern(seed);
    let mut h = Sha256::new();
    let mut left = BULK;
    while left > 0 {
        let n = usize::try_from(left.min(pat.len() as u64)).unwrap();
        h.update(&pat[..n]);
        left -= n as u64;
    }
    let h: [u8; 32] = h.finalize().into();
    cache.lock().unwrap().push((seed, h));
    h
}

/// Read to EOF, returning (sha256, bytes).
fn hash_to_eof(s: &mut std::net::TcpStream) -> ([u8; 32], u64) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return (h.finalize().into(), total);
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Send `BULK` bytes of pattern `seed_out` while hashing everything received.
fn full_duplex_peer(mut s: std::net::TcpStream, seed_out: u64) -> ([u8; 32], u64) {
    bounded(&s);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        send_pattern(&mut w, &pattern(seed_out), BULK);
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = hash_to_eof(&mut s);
    writer.join().unwrap();
    got
}

#[test]
fn bulk_100mib_each_way_is_byte_exact() {
    let _g = serial();
    let (want_c2s, want_s2c) = (expected(1), expected(2));
    for drv in DRIVERS {
        for mode in MODES {
            let (backend, backend_addr) = std_listener();
            let server = thread::spawn(move || {
                let (s, _) = backend.accept().unwrap();
                full_duplex_peer(s, 2)
            });
            let ran = on_driver(drv, || async move {
                let (front, front_addr) = front_listener();
                let client = thread::spawn(move || {
                    let s = std::net::TcpStream::connect(front_addr).unwrap();
                    full_duplex_peer(s, 1)
                });
                let start = Instant::now();
                let outcome = relay_one(&front, backend_addr, options(mode)).await;
                let secs = start.elapsed().as_secs_f64();
                (outcome, secs, client)
            });
            let Some((outcome, secs, client)) = ran else {
                // Unblock the server thread's accept, then move on.
                drop(std::net::TcpStream::connect(backend_addr));
                let _ = server.join();
                continue;
            };
            let (client_hash, client_got) = client.join().unwrap();
            let (server_hash, server_got) = server.join().unwrap();
            let ctx = format!("driver {drv:?} mode {mode:?}");
            assert!(outcome.error.is_none(), "{ctx}: {:?}", outcome.error);
            assert_eq!(outcome.stats.client_to_server, BULK, "{ctx}");
            assert_eq!(outcome.stats.server_to_client, BULK, "{ctx}");
            assert_eq!(server_got, BULK, "{ctx}");
            assert_eq!(client_got, BULK, "{ctx}");
            assert_eq!(server_hash, want_c2s, "{ctx}: client→server bytes differ");
            assert_eq!(client_hash, want_s2c, "{ctx}: server→client bytes differ");
            println!(
                "passthrough bulk (sha256 at both ends) driver={drv:?} mode={mode:?}: {:.0} MB/s (2×100 MiB in {secs:.2}s)",
                (2 * BULK) as f64 / 1e6 / secs
            );
        }
    }
}

#[test]
fn half_close_request_then_response() {
    let _g = serial();
    let request: Vec<u8> = pattern(3)[..300_000].to_vec();
    let response: Vec<u8> = pattern(4).repeat(3); // > 3 MiB: more than one pipe-full
    for drv in DRIVERS {
        for mode in MODES {
            let (backend, backend_addr) = std_listener();
            let (req, resp) = (request.clone(), response.clone());
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                bounded(&s);
                let mut got = Vec::new();
                // Returns only once the client's FIN came through the relay.
                s.read_to_end(&mut got).unwrap();
                s.write_all(&resp).unwrap();
                got == req
            });
            let (req, resp) = (request.clone(), response.clone());
            let ran = on_driver(drv, || async move {
                let (front, front_addr) = front_listener();
                let client = thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(front_addr).unwrap();
                    bounded(&s);
                    s.write_all(&req).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    got == resp
                });
                (relay_one(&front, backend_addr, options(mode)).await, client)
            });
            let Some((outcome, client)) = ran else {
                drop(std::net::TcpStream::connect(backend_addr));
                let _ = server.join();
                continue;
            };
            let ctx = format!("driver {drv:?} mode {mode:?}");
            assert!(server.join().unwrap(), "{ctx}: server got a wrong request");
            assert!(client.join().unwrap(), "{ctx}: client got a wrong response");
            assert!(outcome.error.is_none(), "{ctx}: {:?}", outcome.error);
            assert_eq!(
                outcome.stats.client_to_server,
                request.len() as u64,
                "{ctx}"
            );
            assert_eq!(
                outcome.stats.server_to_client,
                response.len() as u64,
                "{ctx}"
            );
        }
    }
}

fn reset(s: std::net::TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// The peer facing a resetting side: reads until EOF or an error (panics,
/// failing the test, only if it would have hung); when `streaming`, it also
/// writes until the relay goes away.
fn surviving_peer(mut s: std::net::TcpStream, streaming: bool) -> u64 {
    bounded(&s);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        if !streaming {
            // A hello that proves the relay is up, then silence.
            let _ = w.write_all(&[0x17; HELLO]);
            return;
        }
        let pat = pattern(5);
        for _ in 0..200 {
            if w.write_all(&pat).is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "peer hung waiting for EOF after the other side reset"
                );
                break;
            }
        }
    }
    // The writer ends on the relay's reset (EPIPE/ECONNRESET) or after 200 MiB.
    writer.join().unwrap();
    total
}

/// What a quiet surviving peer sends before going silent.
const HELLO: usize = 1024;

/// The resetting side: sends 64 KiB, reads 64 KiB from a streaming peer (or
/// the quiet peer's hello) so the reset lands mid-stream on an established
/// relay, then closes with SO_LINGER 0 (RST).
fn resetting_peer(mut s: std::net::TcpStream, other_streams: bool) -> u64 {
    bounded(&s);
    let mut buf = vec![0x42u8; 64 * 1024];
    s.write_all(&buf).unwrap();
    let expect = if other_streams { buf.len() } else { HELLO };
    s.read_exact(&mut buf[..expect]).unwrap();
    reset(s);
    0
}

/// One side resets mid-stream. The other side either streams too (both
/// directions fail on their own) or stays quiet, so the relay's direction
/// reading from it only ends because the relay aborts it.
fn reset_mid_stream(resetting: Side) {
    let _g = serial();
    for drv in DRIVERS {
        for mode in MODES {
            for streaming in [true, false] {
                let (backend, backend_addr) = std_listener();
                let server = thread::spawn(move || {
                    let (s, _) = backend.accept().unwrap();
                    if resetting == Side::Server {
                        resetting_peer(s, streaming)
                    } else {
                        surviving_peer(s, streaming)
                    }
                });
                let ran = on_driver(drv, || async move {
                    let (front, front_addr) = front_listener();
                    let client = thread::spawn(move || {
                        let s = std::net::TcpStream::connect(front_addr).unwrap();
                        if resetting == Side::Client {
                            resetting_peer(s, streaming)
                        } else {
                            surviving_peer(s, streaming)
                        }
                    });
                    (relay_one(&front, backend_addr, options(mode)).await, client)
                });
                let Some((outcome, client)) = ran else {
                    drop(std::net::TcpStream::connect(backend_addr));
                    let _ = server.join();
                    continue;
                };
                let ctx = format!(
                    "driver {drv:?} mode {mode:?} {resetting:?} resets, other side streaming: {streaming}"
                );
                client.join().unwrap();
                server.join().unwrap();
                let err = outcome
                    .error
                    .unwrap_or_else(|| panic!("{ctx}: a reset must end the relay with an error"));
                assert_eq!(err.side(), Some(resetting), "{ctx}: {err}");
                assert!(
                    matches!(
                        err.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                    ),
                    "{ctx}: {err}"
                );
                assert!(matches!(
                    err,
                    RelayError::Read { .. } | RelayError::Write { .. }
                ));
            }
        }
    }
}

#[test]
fn server_reset_mid_stream_ends_relay() {
    reset_mid_stream(Side::Server);
}

#[test]
fn client_reset_mid_stream_ends_relay() {
    reset_mid_stream(Side::Client);
}

#[test]
fn idle_timeout_closes_a_silent_relay() {
    let _g = serial();
    for drv in DRIVERS {
        for mode in MODES {
            let (backend, backend_addr) = std_listener();
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                bounded(&s);
                let mut rest = Vec::new();
                // Silent until the relay gives up; then sees EOF.
                s.read_to_end(&mut rest).unwrap();
                rest.len()
            });
            let ran = on_driver(drv, || async move {
                let (front, front_addr) = front_listener();
                let client = std::net::TcpStream::connect(front_addr).unwrap();
                let opts = RelayOptions {
                    mode,
                    idle_timeout: Some(Duration::from_millis(200)),
                };
                let outcome = relay_one(&front, backend_addr, opts).await;
                drop(client);
                outcome
            });
            let Some(outcome) = ran else {
                drop(std::net::TcpStream::connect(backend_addr));
                let _ = server.join();
                continue;
            };
            assert_eq!(server.join().unwrap(), 0);
            let err = outcome.error.expect("an idle relay must time out");
            assert!(
                matches!(err, RelayError::Idle(_)),
                "{drv:?} {mode:?}: {err}"
            );
            assert_eq!(std::io::Error::from(err).kind(), ErrorKind::TimedOut);
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let (res, buf) = s.read(Vec::with_capacity(64 * 1024)).await;
        match res {
            Ok(0) | Err(_) => return all,
            Ok(_) => all.extend_from_slice(&buf),
        }
    }
}

#[test]
fn no_fd_leak_after_many_short_relays() {
    let _g = serial();
    for drv in DRIVERS {
        for mode in MODES {
            on_driver(drv, || async move {
                let (front, front_addr) = front_listener();
                let (back, back_addr) = front_listener();
                let before = open_fds();
                for i in 0..150u32 {
                    let mut c = TcpStream::connect(front_addr).await.unwrap();
                    let (fc, _) = front.accept().await.unwrap();
                    let s = TcpStream::connect(back_addr).await.unwrap();
                    let (mut b, _) = back.accept().await.unwrap();
                    let task = monoio::spawn(relay(fc, s, mode));
                    let (r, _) = c.write_all(b"ping".to_vec()).await;
                    r.unwrap();
                    c.shutdown().await.unwrap();
                    assert_eq!(read_to_eof(&mut b).await, b"ping");
                    if i % 3 == 0 {
                        // Every third server resets instead of answering.
                        // SAFETY: `b` owns the fd and outlives this borrow.
                        let fd = unsafe { BorrowedFd::borrow_raw(b.as_raw_fd()) };
                        socket2::SockRef::from(&fd)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(b);
                        let _ = read_to_eof(&mut c).await;
                    } else {
                        let (r, _) = b.write_all(b"pong".to_vec()).await;
                        r.unwrap();
                        drop(b);
                        assert_eq!(read_to_eof(&mut c).await, b"pong");
                    }
                    drop(c);
                    let _ = monoio::time::timeout(BOUND, task)
                        .await
                        .expect("relay hung");
                }
                if mode == RelayMode::Splice {
                    // Sequential relays reuse pooled pipes: two directions at a time.
                    assert!(pooled_pipes() <= 2, "pool holds {}", pooled_pipes());
                }
                drain_pipe_pool();
                // io_uring closes fds asynchronously: give the driver a bounded moment.
                let mut after = open_fds();
                for _ in 0..100 {
                    if after <= before {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    after = open_fds();
                }
                assert_eq!(after, before, "{drv:?} {mode:?}: fds leaked");
            });
        }
    }
}

/// One direction of `total` bytes from a std peer, discarded at the other end.
fn blast(mut s: std::net::TcpStream, total: u64) -> u64 {
    bounded(&s);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let buf = vec![0x5au8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap();
            w.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer.join().unwrap();
    got
}

#[test]
fn throughput_splice_vs_copy_printed() {
    let _g = serial();
    const EACH_WAY: u64 = 256 << 20;
    for drv in DRIVERS {
        for mode in MODES {
            let (backend, backend_addr) = std_listener();
            let server = thread::spawn(move || blast(backend.accept().unwrap().0, EACH_WAY));
            let ran = on_driver(drv, || async move {
                let (front, front_addr) = front_listener();
                let client = thread::spawn(move || {
                    blast(std::net::TcpStream::connect(front_addr).unwrap(), EACH_WAY)
                });
                let start = Instant::now();
                let outcome = relay_one(&front, backend_addr, options(mode)).await;
                (outcome, start.elapsed().as_secs_f64(), client)
            });
            let Some((outcome, secs, client)) = ran else {
                drop(std::net::TcpStream::connect(backend_addr));
                let _ = server.join();
                continue;
            };
            assert_eq!(client.join().unwrap(), EACH_WAY);
            assert_eq!(server.join().unwrap(), EACH_WAY);
            assert!(outcome.error.is_none(), "{:?}", outcome.error);
            println!(
                "passthrough throughput driver={drv:?} mode={mode:?}: {:.0} MB/s (2×256 MiB in {secs:.2}s)",
                (2 * EACH_WAY) as f64 / 1e6 / secs
            );
        }
    }
}
