//! Root tests: the real `tproxy-sidecar` binary locks a pod namespace's egress, proven with
//! real traffic to a world namespace, for every backend.

// Helpers outside #[test] fns may unwrap too: a panic is a test failure with a location.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use support::*;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every probe run from the pod, with what it must give once the lock is on.
fn probe_all() -> Vec<(&'static str, Probe, Probe)> {
    use std::io::ErrorKind::{ConnectionRefused as Refused, HostUnreachable, PermissionDenied};
    vec![
        ("tcp 80 node", tcp_probe(sa(NODE_V4, 80)), Ok(())),
        ("tcp 443 node", tcp_probe(sa(NODE_V4, 443)), Ok(())),
        ("tcp 443 v6 world", tcp_probe(sa(WORLD_V6, 443)), Ok(())),
        ("tcp 80 v6 world", tcp_probe(sa(WORLD_V6, 80)), Ok(())),
        ("tcp 1080 node proxy", tcp_probe(sa(NODE_V4, 1080)), Ok(())),
        ("udp dns allowed", udp_dns_probe(ip(DNS_ALLOWED)), Ok(())),
        ("tcp dns allowed", tcp_dns_probe(ip(DNS_ALLOWED)), Ok(())),
        ("tcp 22", tcp_probe(sa(NODE_V4, 22)), Err(Refused)),
        ("tcp 8080", tcp_probe(sa(NODE_V4, 8080)), Err(Refused)),
        (
            "tcp 1080 not node",
            tcp_probe(sa(DNS_OTHER, 1080)),
            Err(Refused),
        ),
        (
            "tcp 80 service cidr",
            tcp_probe(sa(SVC_V4, 80)),
            Err(Refused),
        ),
        (
            "tcp 443 service cidr",
            tcp_probe(sa(SVC_V4, 443)),
            Err(Refused),
        ),
        (
            "tcp 80 v6 service cidr",
            tcp_probe(sa(SVC_V6, 80)),
            Err(Refused),
        ),
        ("tcp 22 v6", tcp_probe(sa(WORLD_V6, 22)), Err(Refused)),
        ("tcp 8080 v6", tcp_probe(sa(WORLD_V6, 8080)), Err(Refused)),
        ("tcp 1080 v6", tcp_probe(sa(WORLD_V6, 1080)), Err(Refused)),
        ("udp dns other", udp_dns_probe(ip(DNS_OTHER)), Err(Refused)),
        // ICMP admin-prohibited: EHOSTUNREACH (v4), EACCES (v6) from the queued error.
        ("ping node", ping_probe(ip(NODE_V4)), Err(HostUnreachable)),
        (
            "ping v6 world",
            ping_probe(ip(WORLD_V6)),
            Err(PermissionDenied),
        ),
        ("tcp dns other", tcp_dns_probe(ip(DNS_OTHER)), Err(Refused)),
    ]
}

/// The rules a backend holds in `ns`, in a form stable across runs.
fn dump(backend: &str, ns: &str) -> String {
    match backend {
        "nft" => ns_out(ns, &["nft", "list", "table", "inet", "tproxy_sidecar"]),
        "iptables-nft" | "iptables-legacy" => {
            let v = backend.trim_start_matches("iptables-");
            let mut all = String::new();
            for base in ["iptables", "ip6tables"] {
                let save = ns_out(ns, &[&format!("{base}-{v}-save"), "-t", "filter"]);
                let hooks = save
                    .lines()
                    .filter(|l| *l == "-A OUTPUT -j TPROXY-EGRESS")
                    .count();
                assert_eq!(
                    hooks, 1,
                    "{base}: OUTPUT hook must exist exactly once:\n{save}"
                );
                for l in save.lines().filter(|l| l.contains("TPROXY-EGRESS")) {
                    all.push_str(l);
                    all.push('\n');
                }
            }
            all
        }
        other => panic!("unknown backend {other}"),
    }
}

fn lock_matrix(backend: &str) {
    let t = Topology::new();
    // Control: before the lock every probe succeeds, so a refusal later is the lock's doing.
    let before = t.pod.run(probe_all);
    for (name, got, _) in &before {
        assert_eq!(got, &Ok(()), "before the lock, `{name}` must work");
    }

    let out = t.sidecar(&["--backend", backend]);
    assert!(
        out.status.success(),
        "sidecar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = dump(backend, &t.pod.name);
    assert!(first.contains("tproxy-sidecar"), "no rules found:\n{first}");

    // Forget learnt neighbours so the IPv6 probes below need fresh neighbour discovery
    // through the lock (the control probes above filled the cache).
    t.pod.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
    t.world.ip(&["-6", "neigh", "flush", "dev", "w0"]);
    let after = t.pod.run(probe_all);
    let wrong: Vec<String> = after
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(n, got, want)| format!("{n}: got {got:?}, want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "{backend}: {wrong:#?}\nrules:\n{first}");

    // Idempotent: init containers are retried.
    let out = t.sidecar(&["--backend", backend]);
    assert!(
        out.status.success(),
        "second run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = dump(backend, &t.pod.name);
    assert_eq!(first, second, "{backend}: second run changed the rules");
}

#[test]
fn lock_nft() {
    if can_run() {
        lock_matrix("nft");
    }
}

#[test]
fn lock_iptables_nft() {
    if can_run() {
        lock_matrix("iptables-nft");
    }
}

#[test]
fn lock_iptables_legacy() {
    if !can_run() {
        return;
    }
    if tproxy_sidecar::backend::which("iptables-legacy-restore").is_none() {
        eprintln!("skipping: iptables-legacy-restore is not installed");
        return;
    }
    lock_matrix("iptables-legacy");
}

/// Everything netfilter holds in `ns`, all front ends.
fn everything(ns: &str) -> String {
    let mut s = ns_out(ns, &["nft", "list", "ruleset"]);
    for tool in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        if tproxy_sidecar::backend::which(tool).is_some() {
            s.push_str(&ns_out(ns, &[tool]));
        }
    }
    // Drop the save tools' timestamp comments.
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn invalid_cidr_fails_with_message_and_applies_nothing() {
    if !can_run() {
        return;
    }
    let pod = Netns::new("bad");
    let before = everything(&pod.name);
    for backend in ["auto", "nft", "iptables-nft", "iptables-legacy"] {
        let out = sidecar_in(
            &pod.name,
            &[("BLOCK_SVC_CIDR", "10.96.0.0/12,10.300.0.0/16")],
            &["--backend", backend],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains("BLOCK_SVC_CIDR") && err.contains("10.300.0.0/16"),
            "{backend}: message must name the variable and the bad item: {err}"
        );
        assert!(err.contains("no rules applied"), "{err}");
    }
    assert_eq!(before, everything(&pod.name), "rules changed");
    assert!(!before.contains("tproxy"), "{before}");
}

#[test]
fn dry_run_prints_rules_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let pod = Netns::new("dry");
    let before = everything(&pod.name);
    for (backend, expect) in [
        ("auto", "table inet tproxy_sidecar"),
        ("nft", "reject with tcp reset"),
        ("iptables-nft", "-I OUTPUT 1 -j TPROXY-EGRESS"),
        ("iptables-legacy", "--reject-with icmp6-adm-prohibited"),
    ] {
        let out = sidecar_in(
            &pod.name,
            &[("BLOCK_SVC_CIDR", SVC_CIDRS), ("ALLOW_DNS", DNS_ALLOWED)],
            &["--backend", backend, "--dry-run"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{backend}: {stdout}");
        assert!(stdout.contains("198.18.2.0/24"), "{backend}: {stdout}");
    }
    assert_eq!(before, everything(&pod.name), "--dry-run changed rules");
}

#[test]
fn auto_backend_prefers_nft() {
    if !can_run() {
        return;
    }
    let pod = Netns::new("auto");
    let out = sidecar_in(&pod.name, &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = ns_out(
        &pod.name,
        &["nft", "list", "table", "inet", "tproxy_sidecar"],
    );
    assert!(table.contains("udp dport 53 accept"), "{table}");
}

/// Writes an executable shell script `name` into `dir`.
fn fake_tool(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn failing_tool_fails_closed_with_its_stderr() {
    if !can_run() {
        return;
    }
    // Run in a throwaway namespace even though the tools are fakes.
    let pod = Netns::new("fail");
    let dir = tempfile::tempdir().unwrap();
    fake_tool(
        dir.path(),
        "nft",
        "cat >/dev/null; echo 'Error: simulated kernel refusal' >&2; exit 1",
    );
    fake_tool(
        dir.path(),
        "iptables-nft-restore",
        "cat >/dev/null; echo 'iptables-restore: line 5 failed' >&2; exit 1",
    );
    fake_tool(dir.path(), "iptables-nft-save", "exit 0");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );

    let out = sidecar_in(&pod.name, &[("PATH", &path)], &["--backend", "nft"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("simulated kernel refusal"), "{err}");
    assert!(err.contains("nft -f -"), "{err}");

    let out = sidecar_in(
        &pod.name,
        &[("PATH", &path), ("ALLOW_DNS", DNS_ALLOWED)],
        &["--backend", "iptables-nft"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 5 failed"), "{err}");
    // Line 5 of the v4 restore input is the first rule after the header and flush.
    assert!(err.contains("rule: -A TPROXY-EGRESS"), "{err}");
    assert!(!everything(&pod.name).contains("tproxy"));
}

/// Auto detection without a working nft: iptables, legacy when only legacy holds rules.
#[test]
fn auto_backend_falls_back_to_iptables_by_existing_rules() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fake_tool(
        dir.path(),
        "nft",
        "cat >/dev/null; echo 'Error: Could not process rule: Operation not supported' >&2; exit 1",
    );
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let has = |ns: &str, tool: &str| ns_out(ns, &[tool]).contains("-A OUTPUT -j TPROXY-EGRESS");

    // Nothing anywhere: the nf_tables variant.
    let pod = Netns::new("fbnft");
    let out = sidecar_in(&pod.name, &[("PATH", &path)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has(&pod.name, "iptables-nft-save"));
    assert!(has(&pod.name, "ip6tables-nft-save"));
    if tproxy_sidecar::backend::which("iptables-legacy-save").is_none() {
        eprintln!("skipping the legacy half: iptables-legacy is not installed");
        return;
    }
    assert!(!has(&pod.name, "iptables-legacy-save"));

    // Legacy rules already present (e.g. another init container used legacy): legacy.
    let pod = Netns::new("fblegacy");
    ns_out(
        &pod.name,
        &[
            "iptables-legacy",
            "-A",
            "OUTPUT",
            "-p",
            "icmp",
            "-j",
            "ACCEPT",
        ],
    );
    let out = sidecar_in(&pod.name, &[("PATH", &path)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has(&pod.name, "iptables-legacy-save"));
    assert!(has(&pod.name, "ip6tables-legacy-save"));
    assert!(!has(&pod.name, "iptables-nft-save"));
}

#[test]
fn unresolvable_node_name_fails_and_applies_nothing() {
    if !can_run() {
        return;
    }
    // Only loopback in here: no resolver query can leave the namespace.
    let pod = Netns::new("noname");
    let before = everything(&pod.name);
    let out = sidecar_in(&pod.name, &[("NODE_NAME", "no-such-node.invalid")], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("NODE_NAME") && err.contains("no-such-node.invalid"),
        "{err}"
    );
    assert_eq!(before, everything(&pod.name));
}
