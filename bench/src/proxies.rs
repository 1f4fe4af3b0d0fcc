//! The things measured between client and upstream ("subjects"): tproxy,
//! mitmdump, haproxy; each started fresh in the node namespace per
//! measurement (so peak RSS is per scenario), with the REDIRECT rule
//! installed while it runs (transparent) or listening on the node's client
//! side address (regular).
//!
//! Fairness: tproxy and mitmdump both run with their default flow log
//! (detail 1) written to /dev/null — both format every flow, neither pays for
//! a terminal; diagnostics (stderr) go to a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::Proc;
use crate::topo::{NODE_CLIENT_IP, Redirect, Topology, interrupted, wait_listening};

/// Transparent listener port in the node namespace.
pub const TRANSPARENT_PORT: u16 = 15001;
/// Regular (explicit) listener port on the node's client-side address.
pub const REGULAR_PORT: u16 = 8080;

/// Which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The proxy under test.
    Tproxy,
    /// mitmproxy's mitmdump (the original project's proxy).
    Mitmdump,
    /// haproxy in TCP mode (passthrough only).
    Haproxy,
}

/// One subject configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Row label ("tproxy", "tproxy copy", "mitmdump").
    pub label: String,
    /// Program.
    pub kind: Kind,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Regular (explicit proxy) mode instead of transparent.
    pub regular: bool,
}

impl Spec {
    /// A transparent subject with extra arguments.
    pub fn new(label: &str, kind: Kind, args: &[&str]) -> Spec {
        Spec {
            label: label.to_owned(),
            kind,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            regular: false,
        }
    }
}

/// Programs found by setup.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The tproxy binary.
    pub tproxy: PathBuf,
    /// mitmdump, when installed (and peers are wanted).
    pub mitmdump: Option<PathBuf>,
    /// haproxy, when installed (and peers are wanted).
    pub haproxy: Option<PathBuf>,
}

/// Why a subject could not run.
#[derive(Debug)]
pub enum StartError {
    /// The program rejected an option (tproxy exit 2): reported as n/a.
    Unsupported(String),
    /// Not installed: reported as n/a.
    Missing(String),
    /// It failed to come up.
    Failed(String),
}

/// A started subject; stopped (and its REDIRECT removed) on drop.
pub struct Running<'t> {
    /// The process.
    pub proc: Proc,
    _redirect: Option<Redirect<'t>>,
    _dir: tempfile::TempDir,
}

/// Starts `spec` in the node namespace and waits until it listens.
pub fn start<'t>(
    topo: &'t Topology,
    progs: &Programs,
    upstream_ca: &Path,
    confdir: &Path,
    spec: &Spec,
) -> Result<Running<'t>, StartError> {
    let dir = tempfile::Builder::new()
        .prefix("tproxy-bench-subject")
        .tempdir()
        .map_err(|e| StartError::Failed(format!("tempdir: {e}")))?;
    let log = dir.path().join("stderr.log");
    let listen: SocketAddr = if spec.regular {
        SocketAddr::new(
            NODE_CLIENT_IP
                .parse()
                .map_err(|_| StartError::Failed("ip".into()))?,
            REGULAR_PORT,
        )
    } else {
        SocketAddr::from(([127, 0, 0, 1], TRANSPARENT_PORT))
    };
    let (prog, mut args): (PathBuf, Vec<String>) = match spec.kind {
        Kind::Tproxy => {
            let mode = if spec.regular {
                format!("regular@{NODE_CLIENT_IP}:{REGULAR_PORT}")
            } else {
                format!("transparent@0.0.0.0:{TRANSPARENT_PORT}")
            };
            let args = vec![
                "--mode".into(),
                mode,
                "--confdir".into(),
                confdir.display().to_string(),
                "--upstream-ca".into(),
                upstream_ca.display().to_string(),
                // The load client is in the client namespace, not loopback.
                "--allow-client".into(),
                "198.18.0.0/15".into(),
            ];
            (progs.tproxy.clone(), args)
        }
        Kind::Mitmdump => {
            let prog = progs
                .mitmdump
                .clone()
                .ok_or_else(|| StartError::Missing("mitmdump not installed".into()))?;
            let (mode, host, port) = if spec.regular {
                ("regular", NODE_CLIENT_IP, REGULAR_PORT)
            } else {
                ("transparent", "0.0.0.0", TRANSPARENT_PORT)
            };
            let args = vec![
                "--mode".into(),
                mode.into(),
                "--listen-host".into(),
                host.into(),
                "--listen-port".into(),
                port.to_string(),
                "--set".into(),
                format!("confdir={}", confdir.display()),
                "--set".into(),
                format!("ssl_verify_upstream_trusted_ca={}", upstream_ca.display()),
            ];
            (prog, args)
        }
        Kind::Haproxy => {
            let prog = progs
                .haproxy
                .clone()
                .ok_or_else(|| StartError::Missing("haproxy not installed".into()))?;
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 10s\n  \
                     timeout client 600s\n  timeout server 600s\nlisten pass\n  \
                     bind 0.0.0.0:{TRANSPARENT_PORT}\n  server up {}:443\n",
                    crate::topo::UPSTREAM_IP
                ),
            )
            .map_err(|e| StartError::Failed(format!("haproxy.cfg: {e}")))?;
            (
                prog,
                vec!["-db".into(), "-f".into(), cfg.display().to_string()],
            )
        }
    };
    args.extend(spec.args.iter().cloned());
    let mut proc = Proc::spawn_in(&topo.node, &prog, &args, &spec.env, true, &log)
        .map_err(StartError::Failed)?;
    // Ready: tproxy prints `listening` on stderr; the others are probed.
    let t0 = Instant::now();
    let limit = Duration::from_secs(40);
    loop {
        if let Some(status) = proc.exited() {
            let tail = proc.log_tail(6);
            return Err(if spec.kind == Kind::Tproxy && status.code() == Some(2) {
                StartError::Unsupported(tail)
            } else {
                StartError::Failed(format!("{} exited at start ({status}): {tail}", spec.label))
            });
        }
        let up = match spec.kind {
            Kind::Tproxy => std::fs::read_to_string(&log)
                .map(|s| s.contains("listening"))
                .unwrap_or(false),
            _ => wait_listening(&topo.node, listen, Duration::from_millis(200)),
        };
        if up {
            break;
        }
        if t0.elapsed() > limit || interrupted() {
            let tail = proc.log_tail(6);
            proc.stop();
            return Err(StartError::Failed(format!(
                "{} not listening after {limit:?}: {tail}",
                spec.label
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let redirect = if spec.regular {
        None
    } else {
        Some(
            topo.redirect(TRANSPARENT_PORT)
                .map_err(|e| StartError::Failed(format!("iptables: {e}")))?,
        )
    };
    Ok(Running {
        proc,
        _redirect: redirect,
        _dir: dir,
    })
}
