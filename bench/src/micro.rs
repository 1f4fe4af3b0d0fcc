//! Micro-benchmarks against the tproxy library: leaf certificate mint (cache
//! miss and hit) and the policy decision with 1 / 100 / 1000 rules.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use tproxy::policy::{ConnFacts, Policy, RequestFacts, Scheme};
use tproxy::tls::ca::{CertificateAuthority, KeyKind};
use tproxy::tls::certcache::{CertCache, LeafName};

use crate::loadgen::{Measure, percentiles};

/// Per-operation timings → a Measure (ops/s from the total).
fn measure(samples_us: Vec<f64>, total_secs: f64) -> Measure {
    let ops = samples_us.len() as u64;
    let (p50, p99, p999) = percentiles(samples_us);
    Measure {
        ops,
        secs: total_secs,
        errors: 0,
        bytes: 0,
        p50_us: p50,
        p99_us: p99,
        p999_us: p999,
    }
}

/// Leaf mint with a CA of `kind`: `(miss, hit)`; `n` operations each.
pub fn mint(kind: KeyKind, n: usize) -> Result<(Measure, Measure), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let ca = CertificateAuthority::create(dir.path(), kind, false).map_err(|e| e.to_string())?;
    let cache = CertCache::new(Arc::new(ca), n + 16).map_err(|e| e.to_string())?;
    // Warm-up (first use of the signing code paths).
    for i in 0..8 {
        cache
            .get(&LeafName::Dns(format!("warm{i}.bench.test")))
            .map_err(|e| e.to_string())?;
    }
    let mut miss = Vec::with_capacity(n);
    let t_all = Instant::now();
    for i in 0..n {
        let name = LeafName::Dns(format!("m{i}.bench.test"));
        let t0 = Instant::now();
        cache.get(&name).map_err(|e| e.to_string())?;
        miss.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let miss_total = t_all.elapsed().as_secs_f64();
    let hit_name = LeafName::Dns("m0.bench.test".into());
    let hits = n * 50;
    let mut hit = Vec::with_capacity(hits);
    let t_all = Instant::now();
    for _ in 0..hits {
        let t0 = Instant::now();
        cache.get(&hit_name).map_err(|e| e.to_string())?;
        hit.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let hit_total = t_all.elapsed().as_secs_f64();
    Ok((measure(miss, miss_total), measure(hit, hit_total)))
}

/// A rules file with `n` rules (exact hosts, wildcards, url regexes, as in
/// the policy tests) that does not match `upstream.test`, then a last rule
/// allowing it.
pub fn rules_yaml(n: usize) -> String {
    let mut y = String::from("default: deny\nrules:\n");
    for i in 0..n.saturating_sub(1) {
        match i % 3 {
            0 => y.push_str(&format!(
                "  - {{name: r{i}, match: {{host: h{i}.example.com, method: GET}}, action: allow}}\n"
            )),
            1 => y.push_str(&format!(
                "  - {{name: r{i}, match: {{host: \"*.w{i}.example.com\"}}, action: allow}}\n"
            )),
            _ => y.push_str(&format!(
                "  - {{name: r{i}, match: {{url: \"^https://u{i}\\\\.example\\\\.com/\"}}, action: allow}}\n"
            )),
        }
    }
    y.push_str("  - {name: bench-upstream, match: {host: upstream.test}, action: allow}\n");
    y
}

/// `decide_request` cost with `n` rules: `(miss, last-rule hit)`; timed in
/// batches of 100 calls (a call is far below the clock's resolution).
pub fn policy(n: usize, iters: usize) -> Result<(Measure, Measure), String> {
    let p = Policy::from_yaml(&rules_yaml(n)).map_err(|e| e.to_string())?;
    let conn = ConnFacts {
        client: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
        dst_port: 443,
        sni: Some("upstream.test"),
        host: None,
        source: None,
    };
    let run = |host: &str, url: &str, expect_hit: bool| -> Result<Measure, String> {
        let batch = 100;
        let mut samples = Vec::with_capacity(iters / batch + 1);
        let t_all = Instant::now();
        let mut hits = 0usize;
        for _ in 0..(iters / batch).max(1) {
            let t0 = Instant::now();
            for _ in 0..batch {
                let d = p.decide_request(&RequestFacts {
                    conn: &conn,
                    scheme: Scheme::Https,
                    method: "GET",
                    host,
                    path: "/64.txt",
                    url,
                });
                hits += usize::from(d.rule != "default");
            }
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / batch as f64);
        }
        let total = t_all.elapsed().as_secs_f64();
        if (hits > 0) != expect_hit {
            return Err(format!("policy {n} rules: unexpected decision for {host}"));
        }
        let mut m = measure(samples, total);
        m.ops = ((iters / batch).max(1) * batch) as u64;
        Ok(m)
    };
    let miss = run("miss.example.org", "https://miss.example.org/64.txt", false)?;
    let hit = run("upstream.test", "https://upstream.test/64.txt", true)?;
    Ok((miss, hit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rules_parse_and_only_the_last_one_allows_the_upstream() {
        for n in [1, 100, 1000] {
            let p = Policy::from_yaml(&rules_yaml(n)).unwrap();
            assert_eq!(p.len(), n);
        }
        let (miss, hit) = policy(100, 200).unwrap();
        assert_eq!((miss.ops, hit.ops), (200, 200));
    }

    #[test]
    fn mint_measures_misses_and_hits() {
        let (miss, hit) = mint(KeyKind::EcdsaP256, 5).unwrap();
        assert_eq!((miss.ops, hit.ops), (5, 250));
        assert!(miss.p50_us.is_some() && hit.p999_us.is_some());
    }
}
