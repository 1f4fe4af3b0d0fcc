//! Leaf certificate cache shared by all workers.
//! STUB — replaced by the tls work item. Signatures are the contract.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

use super::ca::{CaError, CertificateAuthority};

/// The name a leaf is minted for: the client's SNI, or the destination IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

/// How a lookup was served (the caller records metrics from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Minted by this call; `mint` is the signing time.
    Miss {
        mint: Duration,
    },
    /// Another worker was minting the same name; this call waited for it.
    Coalesced,
}

#[derive(Debug, thiserror::Error)]
#[error("minting a certificate for {name}: {reason}")]
pub struct CertError {
    pub name: String,
    pub reason: String,
}

/// Bounded, expiry-aware, mint-once cache of leaf certificates.
#[derive(Debug)]
pub struct CertCache {
    _ca: Arc<CertificateAuthority>,
}

impl CertCache {
    /// `capacity` entries at most (oldest/least-recent evicted).
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> Result<Self, CaError> {
        let _ = capacity;
        Ok(Self { _ca: ca })
    }

    /// The leaf for `name`, minted on miss (once, even when several workers
    /// miss at the same time).
    pub fn get(&self, name: &LeafName) -> Result<(Arc<CertifiedKey>, Outcome), CertError> {
        Err(CertError {
            name: format!("{name:?}"),
            reason: "stub".into(),
        })
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
