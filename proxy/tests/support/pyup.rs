//! Python upstreams (see `upstream.py`): an upload sink that reports size and
//! sha256, a WebSocket echo server, a raw TCP echo server and the keep-alive
//! race simulator (`oneshot`).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pki::TestPki;
use super::{terminate_child, venv_python};

/// The upstream script, written next to each instance.
pub const UPSTREAM_PY: &str = include_str!("upstream.py");
/// The raw WebSocket client script (see its docstring for arguments).
pub const WSCLIENT_PY: &str = include_str!("wsclient.py");

/// What the Python upstream serves.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// PUT/POST → JSON `{"size", "sha256"}`.
    Sink,
    /// WebSocket echo.
    Ws,
    /// Raw TCP echo.
    TcpEcho,
    /// HTTP/1.1 that answers one request per connection and closes the
    /// connection on the next one without an answer (the keep-alive race).
    OneShot,
}

/// A running Python upstream; killed on drop.
pub struct PyUpstream {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl PyUpstream {
    /// Starts `kind` on `host:port` (port 0 = ephemeral), with TLS from
    /// `pki`'s server cert when `tls` is given, inside `ns` when given.
    pub fn start(
        kind: Kind,
        host: &str,
        port: u16,
        tls: Option<&TestPki>,
        ns: Option<&str>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-pyup")
            .tempdir()
            .expect("tempdir");
        let script = dir.path().join("upstream.py");
        std::fs::write(&script, UPSTREAM_PY).expect("write upstream.py");
        let py = venv_python();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&py);
                c
            }
            None => Command::new(&py),
        };
        let kind_s = match kind {
            Kind::Sink => "sink",
            Kind::Ws => "ws",
            Kind::TcpEcho => "tcpecho",
            Kind::OneShot => "oneshot",
        };
        cmd.arg("-u")
            .arg(&script)
            .arg(kind_s)
            .args(["--host", host, "--port", &port.to_string()]);
        if let Some(p) = tls {
            cmd.arg("--tls").arg(p.server_cert()).arg(p.server_key());
        }
        let (child, port) = spawn_ready(&mut cmd, &format!("python upstream {kind_s}"));
        let ip: IpAddr = host.parse().expect("host ip");
        PyUpstream {
            child,
            _dir: dir,
            addr: SocketAddr::new(ip, port),
        }
    }

    /// Loopback instance on an ephemeral port.
    pub fn local(kind: Kind, tls: Option<&TestPki>) -> Self {
        Self::start(kind, "127.0.0.1", 0, tls, None)
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Spawns `cmd` (stdout piped) and waits for its `READY <port>` line; the
/// rest of its stdout is drained so it never blocks. Panics naming `what`
/// when no such line comes within 30 s.
pub fn spawn_ready(cmd: &mut Command, what: &str) -> (Child, u16) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        terminate_child(&mut child, Duration::from_secs(1));
        panic!("{what} did not report READY within 30 s");
    };
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad READY line {line:?}"));
    (child, port)
}

/// Writes a Python client script to a temp file and runs it with the venv
/// Python (bounded), returning stdout; panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> String {
    let f = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("tempfile");
    std::fs::write(f.path(), script).expect("write script");
    super::run_ok(
        Command::new(venv_python()).arg(f.path()).args(args),
        timeout,
    )
}

/// Path helper for scripts that want a file argument.
pub fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
