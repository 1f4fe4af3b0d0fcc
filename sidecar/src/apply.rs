//! The only impure step: build, render and apply the rule set with nft or iptables-restore.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::backend::{self, Backend, BackendError, IptTool, IptVariant};
use crate::cli::Args;
use crate::config::{self, Config, ConfigError};
use crate::net::Family;
use crate::render;
use crate::rules::{self, RuleSet};

/// A command that could not be run or that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The program could not be started or fed.
    #[error("`{cmd}` could not be run: {source}")]
    Spawn {
        /// Command line.
        cmd: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The program ran and failed; the egress lock is NOT (fully) in place.
    #[error("`{cmd}` failed ({status}){rule}: {stderr}")]
    Failed {
        /// Command line.
        cmd: String,
        /// Exit status.
        status: ExitStatus,
        /// `; rule: <line>` when the tool named the failing input line, else empty.
        rule: String,
        /// The tool's stderr.
        stderr: String,
    },
    /// A tool of the chosen backend is missing.
    #[error("{0} not found in PATH; install it in the sidecar image or choose another --backend")]
    Missing(String),
}

/// Anything that stops the sidecar. Exit status is non-zero for all of them.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad flags or environment; nothing was applied.
    #[error("invalid configuration, no rules applied: {0}")]
    Config(#[from] ConfigError),
    /// No backend; nothing was applied.
    #[error("no rules applied: {0}")]
    Backend(#[from] BackendError),
    /// Applying failed: the pod must not start.
    #[error("egress lock not applied: {0}")]
    Apply(#[from] ApplyError),
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The backend used.
    pub backend: Backend,
    /// The rule set.
    pub rules: RuleSet,
    /// In dry-run mode: the text that would be applied. Empty otherwise.
    pub dry_run_text: String,
}

/// The whole sidecar: validate, build, choose a backend, then apply (or render for `--dry-run`).
pub fn run(args: &Args) -> Result<Outcome, RunError> {
    let cfg = Config::from_args(args, &config::resolve_system)?;
    tracing::info!(
        block_cidrs = cfg.block_cidrs.len(),
        allow_dns = cfg.allow_dns.len(),
        node_addrs = ?cfg.node_addrs,
        proxy_port = cfg.proxy_port,
        "configuration validated"
    );
    let rs = rules::build(&cfg);
    let nft_script = render::nft(&rs);
    let backend = backend::choose(args.backend, &nft_script)?;
    if args.dry_run {
        let text = match backend {
            Backend::Nft => nft_script,
            Backend::Iptables(v) => {
                let mut t = String::new();
                for fam in [Family::V4, Family::V6] {
                    // Read-only probe; when it fails the hook is shown as it would be added.
                    let hooked = ipt_save(v, fam)
                        .map(|s| render::output_hooked(&s))
                        .unwrap_or(false);
                    t.push_str(&render::iptables(&rs, fam, hooked));
                }
                t
            }
        };
        return Ok(Outcome {
            backend,
            rules: rs,
            dry_run_text: text,
        });
    }
    match backend {
        Backend::Nft => apply_nft(&nft_script)?,
        Backend::Iptables(v) => apply_iptables(v, &rs)?,
    }
    tracing::info!(
        backend = backend.name(),
        rules = rs.rules.len(),
        "egress lock applied"
    );
    Ok(Outcome {
        backend,
        rules: rs,
        dry_run_text: String::new(),
    })
}

/// Runs `program args` with `input` on stdin; returns stdout or a [`ApplyError`] naming the
/// failed input line when the tool reports one.
fn run_tool(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, ApplyError> {
    let cmd = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| ApplyError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let rule = input
        .and_then(|text| failed_line(&stderr).and_then(|n| text.lines().nth(n.checked_sub(1)?)))
        .map(|l| format!("; rule: {}", l.trim()))
        .unwrap_or_default();
    Err(ApplyError::Failed {
        cmd,
        status: out.status,
        rule,
        stderr,
    })
}

/// The 1-based input line a tool's error names: iptables-restore says `line N failed`,
/// nft says `/dev/stdin:N:COL-COL: Error`.
fn failed_line(stderr: &str) -> Option<usize> {
    if let Some(rest) = stderr.split("line ").nth(1) {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = n.parse() {
            return Some(n);
        }
    }
    let rest = stderr.split("stdin:").nth(1)?;
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    n.parse().ok()
}

fn tool(name: &str) -> Result<PathBuf, ApplyError> {
    backend::which(name).ok_or_else(|| ApplyError::Missing(name.to_owned()))
}

/// Replaces the sidecar's nft table in one transaction.
pub fn apply_nft(script: &str) -> Result<(), ApplyError> {
    run_tool(&tool("nft")?, &["-f", "-"], Some(script)).map(drop)
}

fn ipt_tool(v: IptVariant, fam: Family, t: IptTool) -> Result<PathBuf, ApplyError> {
    backend::ipt_program(v, fam, t).ok_or_else(|| {
        let base = if fam == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        let var = if v == IptVariant::Nft {
            "nft"
        } else {
            "legacy"
        };
        let t = if t == IptTool::Save {
            "save"
        } else {
            "restore"
        };
        ApplyError::Missing(format!("{base}-{var}-{t}"))
    })
}

/// `iptables-save` of a variant and family. Without `-t`: naming a table would make the
/// legacy variant create it, and `--dry-run` must change nothing.
pub fn ipt_save(v: IptVariant, fam: Family) -> Result<String, ApplyError> {
    run_tool(&ipt_tool(v, fam, IptTool::Save)?, &[], None)
}

/// True when this network namespace has IPv6 (no v6 rules are possible or needed otherwise).
fn ipv6_enabled() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// Flushes and refills the owned chain for IPv4 and IPv6, hooking it from OUTPUT once.
pub fn apply_iptables(v: IptVariant, rs: &RuleSet) -> Result<(), ApplyError> {
    for fam in [Family::V4, Family::V6] {
        if fam == Family::V6 && !ipv6_enabled() {
            tracing::warn!("IPv6 is disabled in this network namespace: no IPv6 rules needed");
            continue;
        }
        let hooked = render::output_hooked(&ipt_save(v, fam)?);
        let text = render::iptables(rs, fam, hooked);
        let restore = ipt_tool(v, fam, IptTool::Restore)?;
        run_tool(&restore, &["--noflush", "-w", "10"], Some(&text))?;
        tracing::info!(family = %fam, hooked_before = hooked, "iptables rules applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_line_parses_both_tools() {
        assert_eq!(failed_line("iptables-restore: line 7 failed"), Some(7));
        assert_eq!(
            failed_line("/dev/stdin:5:3-9: Error: syntax error, unexpected junk"),
            Some(5)
        );
        assert_eq!(failed_line("something else"), None);
    }
}
