//! Leaf certificate cache shared by all workers.
//!
//! One P-256 leaf key pair per cache (like mitmproxy, which also reuses one
//! key): a miss costs one CA signature, not a key generation. Leaves carry the
//! name as SAN and CN, EKU serverAuth, the CA's key identifier as AKI, a
//! random serial, and are valid from 2 days ago for 365 days (never past the
//! CA's own expiry).
//!
//! Concurrency: one `Mutex<HashMap>`. A hit is a lookup + `Arc` clone under
//! the lock. A miss inserts a pending slot and signs *outside* the lock; other
//! threads asking for the same name meanwhile block on that slot's condvar
//! (one signature per name, however many workers miss at once). A failed mint
//! is not cached: the slot is removed and the waiters get the error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::ca::{CaError, CertificateAuthority, random_serial};

/// Leaves are valid from this long before minting (clock skew on clients).
const LEAF_BACKDATE_DAYS: i64 = 2;
/// Leaf lifetime from the moment of minting.
const LEAF_VALIDITY_DAYS: i64 = 365;
/// An entry this close to its expiry is minted again.
const RENEW_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// A waiter gives up after this long (a mint takes milliseconds).
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// X.520 upper bound for a common name.
const CN_MAX_CHARS: usize = 64;

/// The name a leaf is minted for: the client's SNI, or the destination IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl std::fmt::Display for LeafName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafName::Dns(d) => f.write_str(d),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
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

/// Minting a leaf failed (the name is not a valid DNS name, the CA expired…).
#[derive(Debug, Clone, thiserror::Error)]
#[error("minting a certificate for {name}: {reason}")]
pub struct CertError {
    pub name: String,
    pub reason: String,
}

/// The result every waiter of one mint receives.
type MintResult = Result<Arc<CertifiedKey>, CertError>;

/// A mint in progress: waiters block on `done` until the minter fills it.
#[derive(Debug, Default)]
struct Pending {
    result: Mutex<Option<MintResult>>,
    done: Condvar,
}

#[derive(Debug)]
enum Slot {
    Ready {
        leaf: Arc<CertifiedKey>,
        /// Served until then; minted again afterwards.
        renew_at: SystemTime,
        /// Recency stamp for LRU eviction.
        last_used: u64,
    },
    Pending(Arc<Pending>),
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<LeafName, Slot>,
    /// `Ready` slots in `map` (the capacity bound counts these).
    ready: usize,
    clock: u64,
}

/// Bounded, expiry-aware, mint-once cache of leaf certificates.
pub struct CertCache {
    ca: Arc<CertificateAuthority>,
    /// The one leaf key pair, as rcgen needs it (public key in every leaf).
    leaf_key: KeyPair,
    /// The same key as rustls signs with.
    signer: Arc<dyn rustls::sign::SigningKey>,
    capacity: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for CertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertCache")
            .field("ca", &self.ca)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl CertCache {
    /// `capacity` entries at most (oldest/least-recent evicted).
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> Result<Self, CaError> {
        let generate = |reason: String| CaError::Generate { reason };
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| generate(format!("generating the leaf key: {e}")))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = super::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| generate(format!("loading the leaf key into rustls: {e}")))?;
        Ok(Self {
            ca,
            leaf_key,
            signer,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// The CA leaves are signed by.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The leaf for `name`, minted on miss (once, even when several workers
    /// miss at the same time).
    pub fn get(&self, name: &LeafName) -> Result<(Arc<CertifiedKey>, Outcome), CertError> {
        let normalized;
        let name = match normalize(name) {
            Some(n) => {
                normalized = n;
                &normalized
            }
            None => name,
        };
        let now = SystemTime::now();
        let pending = {
            let mut st = self.lock();
            st.clock += 1;
            let clock = st.clock;
            match st.map.get_mut(name) {
                Some(Slot::Ready {
                    leaf,
                    renew_at,
                    last_used,
                }) if now < *renew_at => {
                    *last_used = clock;
                    return Ok((Arc::clone(leaf), Outcome::Hit));
                }
                Some(Slot::Pending(p)) => {
                    let p = Arc::clone(p);
                    drop(st);
                    return wait(&p, name).map(|leaf| (leaf, Outcome::Coalesced));
                }
                _ => {}
            }
            let p = Arc::new(Pending::default());
            if let Some(Slot::Ready { .. }) = st.map.insert(name.clone(), Slot::Pending(p.clone()))
            {
                // A stale entry is being replaced.
                st.ready -= 1;
            }
            p
        };

        // Mint outside the lock. The guard publishes an error to the waiters
        // and clears the slot should minting panic.
        let mut guard = MintGuard {
            cache: self,
            name,
            pending: &pending,
            finished: false,
        };
        let started = Instant::now();
        let minted = self.mint(name, OffsetDateTime::now_utc());
        let mint = started.elapsed();
        let result = guard.finish(minted);
        result.map(|leaf| (leaf, Outcome::Miss { mint }))
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        self.lock().ready
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured bound on cached entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sign a leaf for `name`; returns it with the time to renew it.
    fn mint(
        &self,
        name: &LeafName,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), CertError> {
        let fail = |reason: String| CertError {
            name: name.to_string(),
            reason,
        };
        let ca_not_after = self.ca.not_after();
        if ca_not_after <= now {
            return Err(fail(
                "the CA certificate has expired; create a new CA".into(),
            ));
        }
        let mut params = CertificateParams::default();
        let cn = match name {
            LeafName::Dns(dns) => {
                let ia5: rcgen::string::Ia5String = dns
                    .as_str()
                    .try_into()
                    .map_err(|e| fail(format!("not a valid DNS name: {e}")))?;
                params.subject_alt_names.push(SanType::DnsName(ia5));
                dns.chars().take(CN_MAX_CHARS).collect::<String>()
            }
            LeafName::Ip(ip) => {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
                ip.to_string()
            }
        };
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = now - time::Duration::days(LEAF_BACKDATE_DAYS);
        params.not_after = (now + time::Duration::days(LEAF_VALIDITY_DAYS)).min(ca_not_after);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = self.ca.has_ski();
        params.serial_number = Some(random_serial().map_err(fail)?);
        let cert = params
            .signed_by(&self.leaf_key, self.ca.issuer())
            .map_err(|e| fail(format!("signing: {e}")))?;
        let chain = vec![cert.der().clone(), self.ca.cert_der().clone()];
        let leaf = Arc::new(CertifiedKey::new(chain, Arc::clone(&self.signer)));

        let not_after = SystemTime::from(params.not_after);
        let renew_at = not_after
            .checked_sub(RENEW_MARGIN)
            .filter(|r| *r > SystemTime::from(now))
            // A CA about to expire: serve the leaf until it really expires
            // rather than minting on every request.
            .unwrap_or(not_after);
        Ok((leaf, renew_at))
    }

    /// Evict least-recently-used ready entries so one more fits. Evicts an
    /// eighth of the capacity at once, so the O(n) scan is amortised.
    fn make_room(&self, st: &mut State) {
        if st.ready < self.capacity {
            return;
        }
        let evict = st.ready + 1 - self.capacity + (self.capacity / 8);
        let mut stamps: Vec<u64> = st
            .map
            .values()
            .filter_map(|s| match s {
                Slot::Ready { last_used, .. } => Some(*last_used),
                Slot::Pending(_) => None,
            })
            .collect();
        let evict = evict.min(stamps.len());
        if evict == 0 {
            return;
        }
        let (_, threshold, _) = stamps.select_nth_unstable(evict - 1);
        let threshold = *threshold;
        let mut removed = 0;
        st.map.retain(|_, s| match s {
            Slot::Ready { last_used, .. } if *last_used <= threshold && removed < evict => {
                removed += 1;
                false
            }
            _ => true,
        });
        st.ready -= removed;
        tracing::debug!(removed, "certificate cache evicted entries");
    }

    #[cfg(test)]
    fn set_renew_at(&self, name: &LeafName, at: SystemTime) {
        if let Some(Slot::Ready { renew_at, .. }) = self.lock().map.get_mut(name) {
            *renew_at = at;
        }
    }
}

/// Lower-case a DNS name and drop a trailing dot, allocating only if needed.
fn normalize(name: &LeafName) -> Option<LeafName> {
    match name {
        LeafName::Dns(d) if d.ends_with('.') || d.bytes().any(|b| b.is_ascii_uppercase()) => {
            Some(LeafName::Dns(d.trim_end_matches('.').to_ascii_lowercase()))
        }
        _ => None,
    }
}

/// Block until the pending mint finishes (bounded by [`WAIT_LIMIT`]).
fn wait(p: &Pending, name: &LeafName) -> MintResult {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut result = p.result.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(r) = result.as_ref() {
            return r.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CertError {
                name: name.to_string(),
                reason: "timed out waiting for another worker to mint it".into(),
            });
        }
        result = p
            .done
            .wait_timeout(result, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Publishes a mint's outcome: into the map (success) or out of it
/// (failure), then to the waiters. Runs on drop too, so a panic while
/// minting still wakes them with an error.
struct MintGuard<'a> {
    cache: &'a CertCache,
    name: &'a LeafName,
    pending: &'a Arc<Pending>,
    finished: bool,
}

impl MintGuard<'_> {
    fn finish(&mut self, minted: Result<(Arc<CertifiedKey>, SystemTime), CertError>) -> MintResult {
        self.finished = true;
        {
            let mut st = self.cache.lock();
            let ours = matches!(st.map.get(self.name), Some(Slot::Pending(p)) if Arc::ptr_eq(p, self.pending));
            if ours {
                match &minted {
                    Ok((leaf, renew_at)) => {
                        self.cache.make_room(&mut st);
                        let last_used = st.clock;
                        st.map.insert(
                            self.name.clone(),
                            Slot::Ready {
                                leaf: Arc::clone(leaf),
                                renew_at: *renew_at,
                                last_used,
                            },
                        );
                        st.ready += 1;
                    }
                    Err(_) => {
                        st.map.remove(self.name);
                    }
                }
            }
        }
        let result = minted.map(|(leaf, _)| leaf);
        *self
            .pending
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(result.clone());
        self.pending.done.notify_all();
        result
    }
}

impl Drop for MintGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish(Err(CertError {
                name: self.name.to_string(),
                reason: "minting panicked".into(),
            }));
        }
    }
}

#[cfg(test)]
#[path = "certcache_tests.rs"]
mod tests;
