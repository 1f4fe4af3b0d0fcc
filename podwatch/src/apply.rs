//! Appliers: put a rendered [`RuleSet`] into the kernel atomically.
//!
//! [`CommandApplier`] runs the netfilter tools as child processes (`nft -f -`,
//! `iptables-restore --noflush`). They are synchronous: call them from a blocking
//! context. Child processes inherit the calling thread's network namespace.

use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::desired::RuleSet;
use crate::render::{self, Family};

/// The one hook between reconcile and the kernel (a fake records rule sets in tests).
pub trait RuleApplier: Send {
    /// Replaces the owned rules with exactly `rules`.
    fn apply(&mut self, rules: &RuleSet) -> Result<(), ApplyError>;
    /// Short backend name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Which netfilter front end writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Native nftables: owned `inet` table `tproxy_podwatch`.
    Nft,
    /// `iptables-nft-restore` / `ip6tables-nft-restore`.
    IptablesNft,
    /// `iptables-legacy-restore` / `ip6tables-legacy-restore`.
    IptablesLegacy,
}

/// `--backend` value: a backend or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Detect at start (see [`detect`]).
    Auto,
    /// Use this one.
    Fixed(Backend),
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "nft" => Ok(BackendChoice::Fixed(Backend::Nft)),
            "iptables-nft" => Ok(BackendChoice::Fixed(Backend::IptablesNft)),
            "iptables-legacy" => Ok(BackendChoice::Fixed(Backend::IptablesLegacy)),
            other => Err(format!(
                "unknown backend {other:?}: use nft, iptables-nft, iptables-legacy or auto"
            )),
        }
    }
}

impl Backend {
    /// Name as given to `--backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    fn tool(self, family: Family, save: bool) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Backend::IptablesLegacy => "legacy",
            _ => "nft",
        };
        let verb = if save { "save" } else { "restore" };
        format!("{base}-{variant}-{verb}")
    }
}

/// Failure applying rules.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tool could not be started.
    #[error("{tool}: cannot run: {source} (install it or choose another --backend)")]
    Spawn {
        /// Program name.
        tool: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed; nothing was changed (the input is one transaction).
    #[error("{tool} exited with {status}: {stderr}")]
    Failed {
        /// Program name.
        tool: String,
        /// Exit status text.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Runs `program args` with `input` on stdin; returns stdout.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, ApplyError> {
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
            tool: program.to_owned(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error means the tool exited early; its status says why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            tool: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ApplyError::Failed {
            tool: program.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Applier that drives the netfilter command-line tools.
#[derive(Debug, Clone)]
pub struct CommandApplier {
    backend: Backend,
    ipv6: bool,
}

impl CommandApplier {
    /// `ipv6: false` leaves ip6tables alone (iptables backends only; the nft
    /// table is `inet` and always carries whatever v6 rules the set has).
    pub fn new(backend: Backend, ipv6: bool) -> CommandApplier {
        CommandApplier { backend, ipv6 }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }

    fn iptables_apply(&self, rules: &RuleSet, family: Family) -> Result<(), ApplyError> {
        let save = run(&self.backend.tool(family, true), &["-t", "nat"], None)?;
        let text = render::iptables(rules, family, &render::existing_jumps(&save));
        run(
            &self.backend.tool(family, false),
            &["-w", "5", "--noflush"],
            Some(&text),
        )
        .map(drop)
    }

    /// Removes everything podwatch owns (table, chain, jumps). Idempotent.
    pub fn cleanup(&self) -> Result<(), ApplyError> {
        match self.backend {
            Backend::Nft => run("nft", &["-f", "-"], Some(&render::nft_cleanup())).map(drop),
            _ => {
                for &family in self.families() {
                    let save = run(&self.backend.tool(family, true), &["-t", "nat"], None)?;
                    if render::chain_exists(&save) {
                        let text = render::iptables_cleanup(&render::existing_jumps(&save));
                        run(
                            &self.backend.tool(family, false),
                            &["-w", "5", "--noflush"],
                            Some(&text),
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl RuleApplier for CommandApplier {
    fn apply(&mut self, rules: &RuleSet) -> Result<(), ApplyError> {
        match self.backend {
            Backend::Nft => run("nft", &["-f", "-"], Some(&render::nft(rules))).map(drop),
            _ => {
                for &family in self.families() {
                    self.iptables_apply(rules, family)?;
                }
                Ok(())
            }
        }
    }

    fn name(&self) -> &'static str {
        self.backend.as_str()
    }
}

/// Number of rules in an `*-save` dump (lines starting with `-A`), or 0 when the
/// tool is missing or fails.
fn rule_count(tool: &str) -> usize {
    run(tool, &[], None)
        .map(|out| out.lines().filter(|l| l.starts_with("-A ")).count())
        .unwrap_or(0)
}

/// `auto`: follow the node. When `iptables-legacy-save` shows more rules than
/// `iptables-nft-save` (kube-proxy and CNI on legacy iptables), use
/// `iptables-legacy`; otherwise `nft` when `nft list tables` works, else
/// `iptables-nft`.
pub fn detect() -> Backend {
    let legacy = rule_count("iptables-legacy-save");
    let nft_rules = rule_count("iptables-nft-save");
    if legacy > nft_rules {
        return Backend::IptablesLegacy;
    }
    if run("nft", &["list", "tables"], None).is_ok() {
        Backend::Nft
    } else {
        Backend::IptablesNft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_tools_are_named() {
        assert_eq!(
            "iptables-legacy".parse::<BackendChoice>(),
            Ok(BackendChoice::Fixed(Backend::IptablesLegacy))
        );
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert!("ipfw".parse::<BackendChoice>().unwrap_err().contains("nft"));
        assert_eq!(
            Backend::IptablesNft.tool(Family::V6, false),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::IptablesLegacy.tool(Family::V4, true),
            "iptables-legacy-save"
        );
    }

    #[test]
    fn missing_tool_error_says_what_to_do() {
        let err = run("/nonexistent/nft", &[], None).unwrap_err();
        assert!(err.to_string().contains("--backend"), "{err}");
    }
}
