//! `net.ipv4.tcp_migrate_req=1` for the node's network namespace: when a
//! listening socket closes, the connections queued on it move to another
//! socket of its SO_REUSEPORT group instead of being reset. With it, the old
//! proxy of a DaemonSet rollout exits beside the new one without failing a
//! request (docs/restarts.md). podwatch sets it because it is the privileged
//! container of the node pod (on the host network, so it is the node's
//! namespace); the proxy itself runs unprivileged.

use std::path::Path;

/// The sysctl file (Linux ≥ 5.14).
pub const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// What [`ensure_migrate_req`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateReq {
    /// It was 1 already.
    AlreadyOn,
    /// It was 0 and is 1 now.
    Enabled,
    /// The kernel has no such sysctl (before 5.14).
    Unsupported,
    /// It could not be written (read-only /proc/sys: not privileged).
    Failed(String),
}

/// Make the sysctl at `path` read 1.
pub fn ensure_migrate_req(path: &Path) -> MigrateReq {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MigrateReq::Unsupported,
        Err(e) => MigrateReq::Failed(format!("reading {}: {e}", path.display())),
        Ok(v) if v.trim() != "0" => MigrateReq::AlreadyOn,
        Ok(_) => match std::fs::write(path, "1\n") {
            Ok(()) => MigrateReq::Enabled,
            Err(e) => MigrateReq::Failed(format!("writing {}: {e}", path.display())),
        },
    }
}

/// [`ensure_migrate_req`] on the real sysctl, logged.
pub fn enable_and_log() {
    match ensure_migrate_req(Path::new(TCP_MIGRATE_REQ)) {
        MigrateReq::AlreadyOn => tracing::info!("net.ipv4.tcp_migrate_req is 1"),
        MigrateReq::Enabled => tracing::info!(
            "net.ipv4.tcp_migrate_req set to 1: proxy restarts hand queued connections over"
        ),
        MigrateReq::Unsupported => tracing::warn!(
            "net.ipv4.tcp_migrate_req missing (Linux < 5.14): a proxy restart can reset queued connections"
        ),
        MigrateReq::Failed(why) => tracing::warn!(
            error = %why,
            "cannot set net.ipv4.tcp_migrate_req=1 (needs a privileged container); a proxy restart can \
             reset queued connections — set it on the node, or pass --tcp-migrate-req=false to stop trying"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_zero_to_one_and_leaves_one_alone() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tcp_migrate_req");
        std::fs::write(&f, "0\n").unwrap();
        assert_eq!(ensure_migrate_req(&f), MigrateReq::Enabled);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1\n");
        assert_eq!(ensure_migrate_req(&f), MigrateReq::AlreadyOn);
        assert_eq!(
            ensure_migrate_req(&d.path().join("missing")),
            MigrateReq::Unsupported
        );
    }
}
