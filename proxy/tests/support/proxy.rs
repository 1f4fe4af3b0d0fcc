//! The proxy process guard: spawns the real `tproxy` binary (optionally in a
//! network namespace), captures stdout (flow log) and stderr (diagnostics)
//! line by line, learns listener addresses from the `listening mode=… addr=…`
//! lines, samples RSS, and stops the process (SIGTERM, then SIGKILL) on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::Regex;

use super::{terminate_child, wait_until};

/// Path of the binary under test.
pub fn tproxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tproxy")
}

/// How long the proxy may take to print its listening lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Builder for a [`Proxy`]. Defaults differ from the binary's on purpose:
/// `--mode regular@127.0.0.1:0`, `--admin 127.0.0.1:0` and a fresh temp
/// `--confdir`, so parallel tests never collide.
#[derive(Default)]
pub struct ProxyBuilder {
    modes: Vec<String>,
    admin: Option<String>,
    confdir: Option<PathBuf>,
    args: Vec<String>,
    netns: Option<String>,
    env: Vec<(String, String)>,
    program: Option<PathBuf>,
    hold_stdout: bool,
}

impl ProxyBuilder {
    /// A builder with the test defaults.
    pub fn new() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// Adds a `--mode` (replaces the default regular listener).
    pub fn mode(mut self, m: &str) -> Self {
        self.modes.push(m.to_owned());
        self
    }

    /// Sets `--admin` (`off` disables it).
    pub fn admin(mut self, a: &str) -> Self {
        self.admin = Some(a.to_owned());
        self
    }

    /// Uses this confdir instead of a fresh temporary one.
    pub fn confdir(mut self, d: &Path) -> Self {
        self.confdir = Some(d.to_path_buf());
        self
    }

    /// Adds raw arguments.
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }

    /// Adds `--upstream-ca FILE`.
    pub fn upstream_ca(self, f: &Path) -> Self {
        let f = f.to_str().expect("utf-8 path").to_owned();
        self.args(&["--upstream-ca", &f])
    }

    /// Runs the proxy via `ip netns exec NS`.
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_owned());
        self
    }

    /// Runs `prog` instead of the tproxy binary (for testing this guard).
    pub fn program(mut self, prog: &Path) -> Self {
        self.program = Some(prog.to_path_buf());
        self
    }

    /// Sets an environment variable for the proxy.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Leaves the proxy's stdout pipe unread (a stuck log reader) until
    /// [`Proxy::release_stdout`] or [`Proxy::close_stdout`].
    pub fn hold_stdout(mut self) -> Self {
        self.hold_stdout = true;
        self
    }

    /// Starts the proxy and waits until every listener (and the admin one,
    /// unless `off`) is reported on stderr. Panics with the captured output
    /// when it exits or stays silent past [`START_TIMEOUT`].
    pub fn spawn(self) -> Proxy {
        let (confdir_tmp, confdir) = match self.confdir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("tproxy-confdir")
                    .tempdir()
                    .expect("tempdir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let modes = if self.modes.is_empty() {
            vec!["regular@127.0.0.1:0".to_owned()]
        } else {
            self.modes
        };
        let admin = self.admin.unwrap_or_else(|| "127.0.0.1:0".to_owned());
        // TPROXY_TEST_PROXY_BIN: run the tests against another implementation
        // of the CLI (e.g. a mitmdump wrapper, to check the tests themselves).
        let prog = self
            .program
            .clone()
            .or_else(|| std::env::var_os("TPROXY_TEST_PROXY_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(tproxy_bin()));
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&prog);
                c
            }
            None => Command::new(&prog),
        };
        for m in &modes {
            cmd.args(["--mode", m]);
        }
        cmd.args(["--admin", &admin]).arg("--confdir").arg(&confdir);
        cmd.args(&self.args).env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let stdout_gate = Gate::new(if self.hold_stdout {
            GateState::Hold
        } else {
            GateState::Read
        });
        let stdout = capture_gated(
            child.stdout.take().expect("stdout piped"),
            stdout_gate.clone(),
        );
        let stderr_gate = Gate::new(GateState::Read);
        let stderr = capture_gated(
            child.stderr.take().expect("stderr piped"),
            stderr_gate.clone(),
        );
        let mut p = Proxy {
            child,
            stdout,
            stdout_gate,
            stderr,
            stderr_gate,
            confdir,
            _confdir_tmp: confdir_tmp,
            listeners: Vec::new(),
            desc,
        };
        let want_admin = admin != "off";
        let ready = wait_until(START_TIMEOUT, || {
            let ls = parse_listeners(&p.stderr);
            let data = ls.iter().filter(|(m, _)| m != "admin").count();
            let adm = ls.iter().any(|(m, _)| m == "admin");
            if data >= modes.len() && (adm || !want_admin) {
                return Some(Ok(ls));
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                return Some(Err(st));
            }
            None
        });
        match ready {
            Some(Ok(ls)) => p.listeners = ls,
            Some(Err(st)) => panic!(
                "{} exited at start ({st}) before reporting its listeners\n{}",
                p.desc,
                p.dump()
            ),
            None => panic!(
                "{} did not report its listeners within {START_TIMEOUT:?}\n{}",
                p.desc,
                p.dump()
            ),
        }
        p
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

/// Whether a captured pipe is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    /// Not read (yet): the writer's pipe fills up.
    Hold,
    /// Read line by line.
    Read,
    /// Closed unread: the writer gets EPIPE.
    Close,
}

/// Lets a test decide when a pipe is read.
#[derive(Clone)]
struct Gate(Arc<(Mutex<GateState>, std::sync::Condvar)>);

impl Gate {
    fn new(state: GateState) -> Self {
        Self(Arc::new((Mutex::new(state), std::sync::Condvar::new())))
    }

    fn set(&self, state: GateState) {
        *self.0.0.lock().expect("gate lock") = state;
        self.0.1.notify_all();
    }

    fn wait_open(&self) -> GateState {
        let mut st = self.0.0.lock().expect("gate lock");
        while *st == GateState::Hold {
            st = self.0.1.wait(st).expect("gate lock");
        }
        *st
    }
}

/// Reads `r` line by line into a shared buffer (ANSI colour codes removed,
/// so patterns match whatever the tracing formatter decides).
fn capture(r: impl std::io::Read + Send + 'static) -> Lines {
    capture_gated(r, Gate::new(GateState::Read))
}

/// [`capture`], starting only when `gate` opens (or dropping `r` unread
/// when it closes).
fn capture_gated(r: impl std::io::Read + Send + 'static, gate: Gate) -> Lines {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    let ansi = Regex::new("\x1b\\[[0-9;]*m").expect("regex");
    std::thread::spawn(move || {
        if gate.wait_open() == GateState::Close {
            drop(r);
            return;
        }
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            // Paused between lines (a stuck reader) until the test resumes.
            if gate.wait_open() == GateState::Close {
                return;
            }
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    let s = ansi.replace_all(s.trim_end_matches(['\n', '\r']), "");
                    let s = s.into_owned();
                    l.lock().expect("lines lock").push(s);
                }
            }
        }
    });
    lines
}

/// Resident-set figures from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    /// Current resident set (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`).
    pub hwm_kib: u64,
}

/// A running proxy; stopped on drop. On a panicking test its output is
/// dumped to stderr.
pub struct Proxy {
    child: Child,
    stdout: Lines,
    stdout_gate: Gate,
    stderr: Lines,
    stderr_gate: Gate,
    confdir: PathBuf,
    _confdir_tmp: Option<tempfile::TempDir>,
    listeners: Vec<(String, SocketAddr)>,
    desc: String,
}

/// Matches a listener line on stderr.
pub fn listening_re() -> Regex {
    Regex::new(r"listening mode=(\w+) addr=(\S+)").expect("regex")
}

/// Listener (mode, address) pairs announced in the captured stderr lines.
fn parse_listeners(stderr: &Lines) -> Vec<(String, SocketAddr)> {
    let re = listening_re();
    let lines = stderr.lock().expect("lock").clone();
    lines
        .iter()
        .filter_map(|l| {
            let c = re.captures(l)?;
            // Tolerate quoting / trailing punctuation around the address.
            let a = c[2].trim_matches(|ch: char| ch == '"' || ch == ',');
            Some((c[1].to_owned(), a.parse().ok()?))
        })
        .collect()
}

impl Proxy {
    /// Every (mode, address) the proxy reported at start.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// First listener of `mode` (`regular`, `transparent`, `admin`).
    pub fn addr(&self, mode: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(m, _)| m == mode)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {mode} listener in {:?}", self.listeners))
    }

    /// `http://ADDR` of the first regular listener, for `curl -x`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr("regular"))
    }

    /// The confdir the proxy was given.
    pub fn confdir(&self) -> &Path {
        &self.confdir
    }

    /// `<confdir>/mitmproxy-ca-cert.pem`: the CA clients must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.confdir.join("mitmproxy-ca-cert.pem")
    }

    /// PID of the proxy.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts reading a stdout held by [`ProxyBuilder::hold_stdout`].
    pub fn release_stdout(&self) {
        self.stdout_gate.set(GateState::Read);
    }

    /// Closes a stdout held by [`ProxyBuilder::hold_stdout`] without
    /// reading it: the proxy's next write fails with EPIPE.
    pub fn close_stdout(&self) {
        self.stdout_gate.set(GateState::Close);
    }

    /// Stops reading stderr (after the line being read): a stuck reader.
    pub fn pause_stderr(&self) {
        self.stderr_gate.set(GateState::Hold);
    }

    /// Reads stderr again after [`Proxy::pause_stderr`].
    pub fn resume_stderr(&self) {
        self.stderr_gate.set(GateState::Read);
    }

    /// Snapshot of stdout lines (the flow log).
    pub fn flow_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// Snapshot of stderr lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits (bounded) for a stderr line matching `re`; returns it.
    pub fn wait_for_stderr(&self, re: &str, timeout: Duration) -> Option<String> {
        let re = Regex::new(re).expect("regex");
        wait_until(timeout, || {
            self.stderr_lines().into_iter().find(|l| re.is_match(l))
        })
    }

    /// Waits (bounded) for a stdout line matching `re`; returns it.
    pub fn wait_for_stdout(&self, re: &str, timeout: Duration) -> Option<String> {
        let re = Regex::new(re).expect("regex");
        wait_until(timeout, || {
            self.flow_lines().into_iter().find(|l| re.is_match(l))
        })
    }

    /// Waits (bounded) until `n` stdout lines match `re`; returns all matches.
    pub fn wait_for_stdout_n(&self, re: &str, n: usize, timeout: Duration) -> Vec<String> {
        let re = Regex::new(re).expect("regex");
        let pick = |lines: Vec<String>| -> Vec<String> {
            lines.into_iter().filter(|l| re.is_match(l)).collect()
        };
        wait_until(timeout, || {
            let m = pick(self.flow_lines());
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| pick(self.flow_lines()))
    }

    /// VmRSS / VmHWM of the proxy process, `None` once it is gone.
    pub fn rss(&self) -> Option<Rss> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| -> Option<u64> {
            let l = s.lines().find(|l| l.starts_with(name))?;
            l.split_whitespace().nth(1)?.parse().ok()
        };
        Some(Rss {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Sends a signal to the proxy.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped before drop.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits (bounded) for the proxy to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Captured stdout and stderr, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- tproxy stdout ---\n{}\n--- tproxy stderr ---\n{}\n---",
            self.flow_lines().join("\n"),
            self.stderr_lines().join("\n")
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A held stdout would keep the capture thread waiting forever.
        for gate in [&self.stdout_gate, &self.stderr_gate] {
            if *gate.0.0.lock().expect("gate lock") == GateState::Hold {
                gate.set(GateState::Read);
            }
        }
        terminate_child(&mut self.child, Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("{}\n{}", self.desc, self.dump());
        }
    }
}
