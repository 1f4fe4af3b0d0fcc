//! Fixtures shared by the black-box tests of the `tproxy` binary.
//!
//! Every integration test file pulls this in with `mod support;` and uses a
//! subset of it, hence the crate-level `dead_code` allowance below.
//!
//! * [`pki`] — a test CA and a server certificate (openssl CLI).
//! * [`nginx`] — an nginx upstream (HTTP + HTTPS/h2) with an access log.
//! * [`pyup`] — small Python upstreams where nginx cannot do the job
//!   (upload sink, WebSocket echo, raw TCP echo, request recorder).
//! * [`proxy`] — the proxy process guard (log capture, RSS, SIGTERM on drop).
//! * [`netns`] — the client → node → upstream namespace topology.
#![allow(dead_code)] // Each test binary uses only part of the fixtures.

pub mod h2up;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod proxy;
pub mod pyup;
pub mod rawlog;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Root of the cargo workspace (parent of `proxy/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

/// The test virtualenv: `$TPROXY_TEST_VENV`, else `<workspace>/target/test-venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("TPROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-venv"))
}

/// The venv's Python; panics with what to run when it is missing.
pub fn venv_python() -> PathBuf {
    let py = venv_dir().join("bin/python");
    assert!(
        py.exists(),
        "test venv missing at {} — run ./scripts/install-test-deps.sh (or set TPROXY_TEST_VENV)",
        py.display()
    );
    py
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root gating for namespace/netfilter tests. Returns `true` when the test may
/// run. Without root it skips (prints why, returns `false`) only when `CI` is
/// unset; in CI a missing root is a failure.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let reason = format!("{test}: needs root (network namespaces, iptables)");
    if std::env::var_os("CI").is_some() {
        panic!("{reason}, and CI is set: refusing to skip");
    }
    eprintln!("SKIP {reason}; not root and CI unset");
    false
}

/// A port that was free on 127.0.0.1 a moment ago. Racy by nature: callers
/// that bind it themselves must retry on `EADDRINUSE` (see nginx fixture).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `f` every 20 ms until it returns `Some`, at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr` (bounded).
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
    .is_some()
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Hex sha256 and length of everything `r` yields.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((hex(&h.finalize()), n))
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Size of the deterministic big body.
pub const BIG_LEN: u64 = 100 * 1024 * 1024;

/// A 100 MiB file whose every 8-byte word is its own little-endian index, so
/// a lost, duplicated or reordered chunk changes the digest. Generated once
/// under `target/itests-data/` and shared by all tests. Returns (path, sha256).
pub fn big_file() -> &'static (PathBuf, String) {
    static BIG: OnceLock<(PathBuf, String)> = OnceLock::new();
    BIG.get_or_init(|| {
        let dir = workspace_root().join("target/itests-data");
        std::fs::create_dir_all(&dir).expect("create target/itests-data");
        let path = dir.join("big-100m.bin");
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 1024 * 1024];
        let words_per_chunk = chunk.len() / 8;
        let mut contents_ok = path.metadata().map(|m| m.len() == BIG_LEN).unwrap_or(false);
        let tmp = dir.join(format!("big-100m.bin.{}", std::process::id()));
        let mut out = if contents_ok {
            None
        } else {
            Some(std::fs::File::create(&tmp).expect("create big file"))
        };
        for c in 0..(BIG_LEN as usize / chunk.len()) {
            for w in 0..words_per_chunk {
                let idx = (c * words_per_chunk + w) as u64;
                chunk[w * 8..w * 8 + 8].copy_from_slice(&idx.to_le_bytes());
            }
            h.update(&chunk);
            if let Some(f) = out.as_mut() {
                std::io::Write::write_all(f, &chunk).expect("write big file");
            }
        }
        if out.take().is_some() {
            std::fs::rename(&tmp, &path).expect("rename big file");
            contents_ok = true;
        }
        assert!(contents_ok);
        (path, hex(&h.finalize()))
    })
}

/// Runs a command to completion with a bound, returning its output. The
/// command gets no stdin. Panics (with stderr) when it cannot be started or
/// runs past `timeout` (it is killed then).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait {desc}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv_timeout(Duration::from_secs(5));
            let stderr = out
                .ok()
                .and_then(|o| o.ok())
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{desc} ran past {timeout:?} and was killed; stderr:\n{stderr}");
        }
    }
}

/// Like [`run_bounded`] but also asserts success and returns stdout as text.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    let out = run_bounded(cmd, timeout);
    assert!(
        out.status.success(),
        "{desc} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Result of a curl transfer made by [`curl`].
#[derive(Debug)]
pub struct CurlResult {
    /// HTTP status curl saw (`%{http_code}`), 0 when none.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
    /// curl's stderr (with `-v` when asked).
    pub stderr: String,
    /// curl's exit code.
    pub exit: i32,
}

impl CurlResult {
    /// Body as lossy UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs `curl -sS <args>` (bounded), writing the body to a temp file and the
/// status to stdout, so bodies of any content survive intact.
pub fn curl(args: &[&str]) -> CurlResult {
    curl_in(None, args)
}

/// [`curl`] run inside network namespace `ns` when given.
pub fn curl_in(ns: Option<&str>, args: &[&str]) -> CurlResult {
    let body = tempfile::NamedTempFile::new().expect("tempfile");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "60", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code}"])
        .args(args);
    let out = run_bounded(&mut cmd, Duration::from_secs(90));
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    CurlResult {
        status,
        body: std::fs::read(body.path()).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs and reaps it.
pub fn terminate_child(child: &mut std::process::Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exited = wait_until(grace, || child.try_wait().ok().flatten()).is_some();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}
