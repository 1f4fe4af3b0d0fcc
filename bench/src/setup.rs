//! Fresh-machine setup: Debian packages (like scripts/install-test-deps.sh),
//! the mitmdump venv, the tproxy binary, the fd limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::run_capture;

/// Debian packages the bench runs (command → package).
const APT: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("curl", "curl"),
    ("openssl", "openssl"),
];

/// The workspace root (where Cargo.toml with the members is).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Effective UID 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `prog` found on PATH (or as given when it contains a slash).
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Path::new(prog).is_file().then(|| PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Installs missing Debian packages (root only).
pub fn ensure_packages() -> Result<(), String> {
    let missing: Vec<&str> = APT
        .iter()
        .filter(|(cmd, _)| which(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing programs from Debian packages {}: install them (apt-get install {}) or run as root",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    let long = Duration::from_secs(900);
    run_capture(Command::new("apt-get").args(["update", "-qq"]), long)?;
    run_capture(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        long,
    )?;
    // Debian starts nginx on install; the bench runs its own instance.
    let _ = run_capture(
        Command::new("service").args(["nginx", "stop"]),
        Duration::from_secs(30),
    );
    Ok(())
}

/// mitmdump: `$TPROXY_TEST_VENV` (the tests' venv) when it has it, else
/// `target/bench-venv`, created with `pip install mitmproxy` when `install`.
pub fn mitmdump(install: bool) -> Result<Option<PathBuf>, String> {
    if let Some(v) = std::env::var_os("TPROXY_TEST_VENV") {
        let p = PathBuf::from(v).join("bin/mitmdump");
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    let ws = workspace();
    for venv in ["target/bench-venv", "target/test-venv"] {
        let p = ws.join(venv).join("bin/mitmdump");
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    if !install {
        return Ok(None);
    }
    let venv = ws.join("target/bench-venv");
    eprintln!("setup: creating {} with mitmproxy (pip)", venv.display());
    let long = Duration::from_secs(900);
    run_capture(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        long,
    )
    .map_err(|e| format!("python3 -m venv (apt-get install python3-venv?): {e}"))?;
    run_capture(
        Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "mitmproxy",
        ]),
        long,
    )?;
    let p = venv.join("bin/mitmdump");
    Ok(p.is_file().then_some(p))
}

/// The tproxy binary: `--tproxy PATH`, else `target/release/tproxy` of
/// this workspace, built with `cargo build --release -p tproxy` when missing.
pub fn tproxy(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
        } else {
            Err(format!("--tproxy {}: no such file", p.display()))
        };
    }
    let ws = workspace();
    let p = ws.join("target/release/tproxy");
    if !p.is_file() {
        eprintln!(
            "setup: building {} (cargo build --release -p tproxy)",
            p.display()
        );
        run_capture(
            Command::new("cargo")
                .current_dir(&ws)
                .args(["build", "--release", "-p", "tproxy"]),
            Duration::from_secs(3600),
        )?;
    }
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} missing after the build", p.display()))
    }
}

/// Raises the soft fd limit to the hard one (10,000 idle connections);
/// returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max.min(1 << 20);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// One line about the machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|k| format!("{:.1} GiB RAM", k as f64 / (1u64 << 20) as f64))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{n} × {cpu}, {mem}, Linux {}, load average at start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
