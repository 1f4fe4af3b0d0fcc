//! Cache behaviour: mint once, coalescing, bounds, expiry, leaf contents.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::tls::ca::{CertificateAuthority, KeyKind};

fn ca(kind: KeyKind) -> Arc<CertificateAuthority> {
    let dir = tempfile::tempdir().unwrap();
    Arc::new(CertificateAuthority::create(dir.path(), kind, false).unwrap())
}

/// One P-256 CA shared by the tests (creating CAs is not what they test).
fn shared_ca() -> Arc<CertificateAuthority> {
    static CA: OnceLock<Arc<CertificateAuthority>> = OnceLock::new();
    Arc::clone(CA.get_or_init(|| ca(KeyKind::EcdsaP256)))
}

fn dns(name: &str) -> LeafName {
    LeafName::Dns(name.to_string())
}

fn serial(leaf: &CertifiedKey) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    cert.raw_serial().to_vec()
}

#[test]
fn miss_then_hit_returns_the_same_leaf_for_equivalent_names() {
    let cache = CertCache::new(shared_ca(), 10).unwrap();
    let (a, o1) = cache.get(&dns("example.test")).unwrap();
    assert!(matches!(o1, Outcome::Miss { .. }), "{o1:?}");
    let (b, o2) = cache.get(&dns("example.test")).unwrap();
    assert_eq!(o2, Outcome::Hit);
    assert!(Arc::ptr_eq(&a, &b));
    // DNS names are case-insensitive; a trailing dot names the same host.
    let (c, o3) = cache.get(&dns("Example.TEST.")).unwrap();
    assert_eq!(o3, Outcome::Hit);
    assert!(Arc::ptr_eq(&a, &c));
    assert_eq!(cache.len(), 1);
    // Chain is [leaf, CA].
    assert_eq!(a.cert.len(), 2);
    assert_eq!(a.cert[1], *shared_ca().cert_der());
}

#[test]
fn concurrent_misses_for_one_name_mint_once() {
    const THREADS: usize = 8;
    for round in 0..5 {
        let cache = Arc::new(CertCache::new(shared_ca(), 10).unwrap());
        let barrier = Arc::new(Barrier::new(THREADS));
        let name = dns(&format!("round{round}.example.test"));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (cache, barrier, name) = (cache.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.get(&name).unwrap()
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let misses = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Miss { .. }))
            .count();
        assert_eq!(
            misses,
            1,
            "round {round}: {:?}",
            results.iter().map(|r| r.1).collect::<Vec<_>>()
        );
        assert!(results.iter().all(|(l, _)| Arc::ptr_eq(l, &results[0].0)));
        assert_eq!(cache.len(), 1);
    }
}

#[test]
fn failed_mint_is_not_cached_and_reaches_every_waiter() {
    let cache = Arc::new(CertCache::new(shared_ca(), 10).unwrap());
    let bad = dns("bücher.example"); // not ASCII: not a DNS name in a certificate
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (cache, barrier, bad) = (cache.clone(), barrier.clone(), bad.clone());
            std::thread::spawn(move || {
                barrier.wait();
                cache.get(&bad).map(|(_, o)| o)
            })
        })
        .collect();
    for h in handles {
        let err = h.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("bücher.example"), "{err}");
    }
    assert_eq!(cache.len(), 0);
    assert!(
        cache.get(&bad).is_err(),
        "a failure is not cached as a success"
    );
    // The cache still works for good names.
    assert!(cache.get(&dns("good.example")).is_ok());
}

#[test]
fn capacity_bound_holds_and_recently_used_entries_survive() {
    let cache = CertCache::new(shared_ca(), 16).unwrap();
    let hot = dns("hot.example.test");
    cache.get(&hot).unwrap();
    for i in 0..100 {
        cache.get(&dns(&format!("n{i}.example.test"))).unwrap();
        assert!(cache.len() <= 16, "len {} after {i}", cache.len());
        assert_eq!(
            cache.get(&hot).unwrap().1,
            Outcome::Hit,
            "hot entry evicted at {i}"
        );
    }
    assert!(
        cache.len() >= 14,
        "evicts in small batches, len {}",
        cache.len()
    );
    // The oldest cold entries are gone.
    assert!(matches!(
        cache.get(&dns("n0.example.test")).unwrap().1,
        Outcome::Miss { .. }
    ));
    // Capacity 1 works too.
    let tiny = CertCache::new(shared_ca(), 1).unwrap();
    for i in 0..5 {
        tiny.get(&dns(&format!("t{i}.example.test"))).unwrap();
        assert_eq!(tiny.len(), 1);
    }
}

#[test]
fn near_expiry_entry_is_minted_again() {
    let cache = CertCache::new(shared_ca(), 10).unwrap();
    let name = dns("renew.example.test");
    let (first, _) = cache.get(&name).unwrap();
    // Fresh leaves are renewed a day before they expire.
    let (_, leaf) = x509_parser::parse_x509_certificate(&first.cert[0]).unwrap();
    let not_after = leaf.validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (not_after - now - 365 * 86400).abs() < 120,
        "leaf lives 365 days"
    );
    // Pretend the renewal point has passed.
    cache.set_renew_at(&name, SystemTime::now() - Duration::from_secs(1));
    let (second, outcome) = cache.get(&name).unwrap();
    assert!(matches!(outcome, Outcome::Miss { .. }), "{outcome:?}");
    assert!(!Arc::ptr_eq(&first, &second));
    assert_ne!(
        serial(&first),
        serial(&second),
        "a new certificate, new serial"
    );
    assert_eq!(cache.len(), 1, "replaced, not added");
    assert_eq!(cache.get(&name).unwrap().1, Outcome::Hit);
}

#[test]
fn leaf_names_validity_and_extensions() {
    let ca = shared_ca();
    let cache = CertCache::new(ca.clone(), 10).unwrap();
    let long = format!("{}.{}.example.test", "a".repeat(60), "b".repeat(60));
    let (leaf, _) = cache.get(&dns(&long)).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cn.len(), 64, "CN truncated to 64 characters");
    assert!(long.starts_with(&cn));
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    assert_eq!(cert.issuer().to_string(), ca_cert.subject().to_string());
    let mut ca_ski = None;
    for ext in ca_cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(k) = ext.parsed_extension() {
            ca_ski = Some(k.0.to_vec());
        }
    }
    let (mut san_dns, mut aki, mut server_auth) = (Vec::new(), None, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::DNSName(d) = n {
                        san_dns.push(d.to_string());
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => server_auth = eku.server_auth,
            _ => {}
        }
    }
    assert_eq!(san_dns, vec![long.clone()], "SAN carries the full name");
    assert!(ca_ski.is_some());
    assert_eq!(aki, ca_ski, "AKI is the CA's SKI");
    assert!(server_auth);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let nb = cert.validity().not_before.timestamp();
    assert!((now - 2 * 86400 - nb).abs() < 120, "backdated two days");

    let ip: std::net::IpAddr = "198.18.0.7".parse().unwrap();
    let (leaf, _) = cache.get(&LeafName::Ip(ip)).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        matches!(san.value.general_names[..], [GeneralName::IPAddress(b)] if b == [198, 18, 0, 7])
    );

    // All leaves of one cache share one key.
    let (a, _) = cache.get(&dns("one.example.test")).unwrap();
    let (b, _) = cache.get(&dns("two.example.test")).unwrap();
    assert!(Arc::ptr_eq(&a.key, &b.key));
}

#[test]
fn leaf_never_outlives_its_ca() {
    // A CA expiring in 100 days (made by hand, loaded from its PEM file).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "short-lived CA");
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(100);
    params.not_after = not_after;
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mitmproxy-ca.pem"),
        key.serialize_pem() + &cert.pem(),
    )
    .unwrap();
    let ca = Arc::new(CertificateAuthority::load(dir.path()).unwrap());
    let cache = CertCache::new(ca, 10).unwrap();
    let (leaf, _) = cache.get(&dns("example.test")).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        not_after.unix_timestamp()
    );
}

/// Not an assertion: prints the figures for the lead's notes
/// (`cargo test -p tproxy mint_and_hit_cost -- --nocapture`).
#[test]
fn mint_and_hit_cost() {
    let start = Instant::now();
    let rsa_ca = ca(KeyKind::Rsa2048);
    eprintln!(
        "creating an RSA-2048 CA (pure-Rust keygen + files): {:?}",
        start.elapsed()
    );
    for (label, ca) in [("P-256 CA", shared_ca()), ("RSA-2048 CA", rsa_ca)] {
        let cache = CertCache::new(ca, 1000).unwrap();
        const MINTS: u32 = 100;
        let mut total = Duration::ZERO;
        for i in 0..MINTS {
            match cache.get(&dns(&format!("m{i}.example.test"))).unwrap().1 {
                Outcome::Miss { mint } => total += mint,
                o => panic!("expected a miss, got {o:?}"),
            }
        }
        let name = dns("m0.example.test");
        const HITS: u32 = 200_000;
        let start = Instant::now();
        for _ in 0..HITS {
            let (leaf, _) = cache.get(&name).unwrap();
            std::hint::black_box(leaf);
        }
        let hit = start.elapsed() / HITS;
        // Two threads hitting the same name: the shared mutex under contention.
        let cache = Arc::new(cache);
        let start = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (cache, name) = (cache.clone(), name.clone());
                std::thread::spawn(move || {
                    for _ in 0..HITS / 2 {
                        std::hint::black_box(cache.get(&name).unwrap());
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let contended = start.elapsed() / HITS;
        eprintln!(
            "certcache {label}: mint {:?} per leaf (mean of {MINTS}), hit {:?} per lookup (1 thread), \
             {contended:?} per lookup of wall time with 2 threads",
            total / MINTS,
            hit
        );
    }
}
