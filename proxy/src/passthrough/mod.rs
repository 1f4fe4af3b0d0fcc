//! Passthrough: relay bytes between two TCP connections untouched.
//! STUB — replaced by the passthrough work item. Signatures are the contract.

use monoio::net::TcpStream;

/// `--passthrough`: how bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RelayMode {
    /// splice(2) through pooled 1 MiB pipes (zero-copy).
    #[default]
    Splice,
    /// A 256 KiB userspace copy loop.
    Copy,
}

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// Relay until both directions reach EOF (half-close propagated with
/// `shutdown(Write)`), or an error. Never panics on peer resets.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    mode: RelayMode,
) -> std::io::Result<RelayStats> {
    let _ = (client, server, mode);
    Ok(RelayStats::default())
}
