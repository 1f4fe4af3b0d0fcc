//! HTTP/2 and gRPC fixtures in Python: a multi-stream h2 client
//! (`h2client.py`) and a grpcio service + client (`grpcsvc.py`). See each
//! script's docstring. (The h2-only upstream is `h2_support::PyH2`.)

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use super::pki::TestPki;
use super::pyup::spawn_ready;
use super::{run_ok, terminate_child, venv_python};

pub const H2CLIENT_PY: &str = include_str!("h2client.py");
pub const GRPCSVC_PY: &str = include_str!("grpcsvc.py");

/// A Python server that prints `READY <port>`; killed on drop.
pub struct PyServer {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
}

impl PyServer {
    /// Runs `script` (its source) with `args` on 127.0.0.1, TLS from `pki`.
    fn start(name: &str, script: &str, args: &[&str], pki: &TestPki) -> PyServer {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-h2up")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, script).expect("write script");
        let (child, port) = spawn_ready(
            Command::new(venv_python())
                .arg("-u")
                .arg(&path)
                .args(args)
                .args(["--host", "127.0.0.1", "--port", "0", "--tls"])
                .arg(pki.server_cert())
                .arg(pki.server_key()),
            name,
        );
        PyServer {
            child,
            _dir: dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The gRPC service (`grpcsvc.py serve`).
    pub fn grpc(pki: &TestPki) -> PyServer {
        Self::start("grpcsvc.py", GRPCSVC_PY, &["serve"], pki)
    }

    /// The gRPC service ending every connection with GOAWAY after about
    /// `ms` milliseconds (`grpc.max_connection_age_ms`).
    pub fn grpc_max_age(pki: &TestPki, ms: u32) -> PyServer {
        let ms = ms.to_string();
        Self::start(
            "grpcsvc.py",
            GRPCSVC_PY,
            &["serve", "--max-age-ms", &ms],
            pki,
        )
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Runs one of the client scripts with `args` (bounded), returning its JSON.
pub fn run_client(script: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    let f = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("tempfile");
    std::fs::write(f.path(), script).expect("write script");
    let out = run_ok(
        Command::new(venv_python()).arg(f.path()).args(args),
        timeout,
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {out}"))
}
