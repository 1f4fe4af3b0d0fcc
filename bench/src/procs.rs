//! Child processes (started inside a network namespace, stopped by PID) and
//! what /proc says about them: CPU time, resident memory, peak memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A process started by the bench; SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    child: Child,
    /// File holding its stderr (and stdout when not discarded).
    pub log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// `ip netns exec <ns> <prog> <args>`; `ip` execs the program, so the
    /// child's PID is the program's. stdout goes to /dev/null (`quiet`) or
    /// to the log; stderr always to `log`.
    pub fn spawn_in(
        ns: &str,
        prog: &Path,
        args: &[String],
        envs: &[(String, String)],
        quiet_stdout: bool,
        log: &Path,
    ) -> Result<Proc, String> {
        let err = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let out = if quiet_stdout {
            Stdio::null()
        } else {
            Stdio::from(
                err.try_clone()
                    .map_err(|e| format!("duplicating a log handle: {e}"))?,
            )
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(prog).args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting {} in {ns}: {e}", prog.display()))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    /// The PID (the program's own, see [`Proc::spawn_in`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status when it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, up to 3 s grace, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.exited().is_some() {
            return;
        }
        signal(self.pid(), libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `sig` to one process by PID.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        // SAFETY: kill(2) on a PID of a child we spawned and have not reaped
        // yet (so the PID cannot have been reused); no memory is involved.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// User + system CPU seconds of a process so far (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime = field 14, stime = field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A `Vm*:` field of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Samples a process's RSS every 100 ms on a thread until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(u64, u64)>>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            // Bounded: at most one hour of samples.
            while !s.load(Ordering::Relaxed) && out.len() < 36_000 {
                if let Some(kib) = status_kib(pid, "VmRSS") {
                    out.push((t0.elapsed().as_millis() as u64, kib));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns `(ms since start, RSS KiB)` samples.
    pub fn finish(mut self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs a command to completion with a time limit; returns stdout, or an
/// error with stderr.
pub fn run_capture(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    let out = File::create(&out_p).map_err(|e| e.to_string())?;
    let err = File::create(&err_p).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if t0.elapsed() > limit || crate::topo::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: killed after {:?}", t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_p).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = std::fs::read_to_string(&err_p).unwrap_or_default();
        Err(format!(
            "{what}: {status}: {}{}",
            stderr.trim(),
            stdout.trim()
        ))
    }
}
