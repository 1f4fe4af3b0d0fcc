//! Choosing the netfilter front end and finding its tools.
//!
//! Auto detection, in the spirit of Istio's: prefer native nftables when the `nft` binary
//! runs and the kernel accepts the very script we would apply (`nft --check`, which runs
//! the transaction in the kernel and aborts it). Otherwise use iptables: the legacy
//! variant when it already holds rules and the nf_tables variant holds none, else the
//! nf_tables variant (the default of current distributions).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cli::BackendChoice;
use crate::net::Family;

/// The iptables kernel API flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptVariant {
    /// iptables on nf_tables (`iptables-nft`).
    Nft,
    /// iptables on x_tables (`iptables-legacy`).
    Legacy,
}

/// A concrete front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Native nftables.
    Nft,
    /// iptables-restore / ip6tables-restore of one variant.
    Iptables(IptVariant),
}

impl Backend {
    /// Name as accepted by `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables(IptVariant::Nft) => "iptables-nft",
            Backend::Iptables(IptVariant::Legacy) => "iptables-legacy",
        }
    }
}

/// Which iptables program of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptTool {
    /// `*-restore`.
    Restore,
    /// `*-save`.
    Save,
}

/// Why no backend could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Neither nft nor any iptables variant is usable.
    #[error(
        "no usable netfilter tool: nft failed ({nft}) and neither iptables-nft-restore nor iptables-legacy-restore is installed; install nftables or iptables in the sidecar image"
    )]
    NoneUsable {
        /// Why nft was not usable.
        nft: String,
    },
    /// The requested tool is not installed.
    #[error(
        "{tool} not found in PATH (needed by --backend {backend}); install it or choose another --backend"
    )]
    Missing {
        /// Program name.
        tool: String,
        /// The backend asking for it.
        backend: &'static str,
    },
}

/// Finds `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The program implementing `tool` for `variant` and `family`: the variant-specific name
/// (`ip6tables-legacy-restore`), else the plain name (`ip6tables-restore`) when its
/// `--version` reports the same variant.
pub fn ipt_program(variant: IptVariant, family: Family, tool: IptTool) -> Option<PathBuf> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let (v, marker) = match variant {
        IptVariant::Nft => ("nft", "nf_tables"),
        IptVariant::Legacy => ("legacy", "legacy"),
    };
    let t = match tool {
        IptTool::Restore => "restore",
        IptTool::Save => "save",
    };
    if let Some(p) = which(&format!("{base}-{v}-{t}")) {
        return Some(p);
    }
    let plain = which(&format!("{base}-{t}"))?;
    let out = Command::new(&plain)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Legacy builds print "(legacy)"; older ones print no variant at all.
    let matches =
        text.contains(marker) || (variant == IptVariant::Legacy && !text.contains("nf_tables"));
    matches.then_some(plain)
}

/// Runs `nft --check -f -` on `script`: Ok when the kernel would accept it.
pub fn nft_check(script: &str) -> Result<(), String> {
    let nft = which("nft").ok_or_else(|| "nft not found in PATH".to_owned())?;
    let mut child = Command::new(nft)
        .args(["--check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft --check exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Number of rules (`-A` lines) an iptables variant holds, both families; 0 when its
/// tools are missing or fail.
fn rule_count(variant: IptVariant) -> usize {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| ipt_program(variant, f, IptTool::Save))
        .filter_map(|p| {
            Command::new(p)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .sum()
}

/// Resolves `choice` to a backend; `nft_script` is the script a native apply would run.
pub fn choose(choice: BackendChoice, nft_script: &str) -> Result<Backend, BackendError> {
    let requested = match choice {
        BackendChoice::Nft => Some(Backend::Nft),
        BackendChoice::IptablesNft => Some(Backend::Iptables(IptVariant::Nft)),
        BackendChoice::IptablesLegacy => Some(Backend::Iptables(IptVariant::Legacy)),
        BackendChoice::Auto => None,
    };
    if let Some(b) = requested {
        require_tools(b)?;
        return Ok(b);
    }
    let nft_reason = match nft_check(nft_script) {
        Ok(()) => {
            tracing::info!(
                backend = "nft",
                "backend detected: nft works and the kernel accepts the rules"
            );
            return Ok(Backend::Nft);
        }
        Err(reason) => reason,
    };
    tracing::info!(reason = %nft_reason, "nft not usable, falling back to iptables");
    let has_nft = ipt_program(IptVariant::Nft, Family::V4, IptTool::Restore).is_some();
    let has_legacy = ipt_program(IptVariant::Legacy, Family::V4, IptTool::Restore).is_some();
    let variant = match (has_nft, has_legacy) {
        (false, false) => return Err(BackendError::NoneUsable { nft: nft_reason }),
        (true, false) => IptVariant::Nft,
        (false, true) => IptVariant::Legacy,
        (true, true) => {
            let legacy = rule_count(IptVariant::Legacy);
            let nft = rule_count(IptVariant::Nft);
            tracing::info!(
                legacy_rules = legacy,
                nft_rules = nft,
                "existing iptables rules counted"
            );
            if legacy > 0 && nft == 0 {
                IptVariant::Legacy
            } else {
                IptVariant::Nft
            }
        }
    };
    let b = Backend::Iptables(variant);
    tracing::info!(backend = b.name(), "backend detected");
    Ok(b)
}

fn require_tools(b: Backend) -> Result<(), BackendError> {
    match b {
        Backend::Nft => {
            if which("nft").is_none() {
                return Err(BackendError::Missing {
                    tool: "nft".to_owned(),
                    backend: b.name(),
                });
            }
        }
        Backend::Iptables(v) => {
            if ipt_program(v, Family::V4, IptTool::Restore).is_none() {
                let name = match v {
                    IptVariant::Nft => "iptables-nft-restore",
                    IptVariant::Legacy => "iptables-legacy-restore",
                };
                return Err(BackendError::Missing {
                    tool: name.to_owned(),
                    backend: b.name(),
                });
            }
        }
    }
    Ok(())
}
