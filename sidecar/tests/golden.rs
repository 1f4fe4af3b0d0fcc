//! Golden-file tests for the pure renderers. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p tproxy-sidecar --test golden` and review the diff.

// Helpers outside #[test] fns may unwrap too: a panic is a test failure with a location.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser as _;
use tproxy_sidecar::cli::Args;
use tproxy_sidecar::config::Config;
use tproxy_sidecar::net::Family;
use tproxy_sidecar::render;
use tproxy_sidecar::rules;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs from the renderer output; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

fn fake_resolver(name: &str) -> Result<Vec<IpAddr>, String> {
    assert_eq!(name, "node-a");
    Ok(vec![
        "2001:db8::10".parse().unwrap(),
        "192.0.2.10".parse().unwrap(),
    ])
}

fn full() -> rules::RuleSet {
    let args = Args::try_parse_from([
        "tproxy-sidecar",
        "--block-svc-cidr",
        "10.96.0.0/12,fd00:10:96::/112",
        "--allow-dns",
        "10.96.0.10,fd00:10:96::a",
        "--node-name",
        "node-a",
    ])
    .unwrap();
    rules::build(&Config::from_args(&args, &fake_resolver).unwrap())
}

fn minimal() -> rules::RuleSet {
    let args = Args::try_parse_from(["tproxy-sidecar", "--web-ports", "80,443"]).unwrap();
    rules::build(&Config::from_args(&args, &fake_resolver).unwrap())
}

#[test]
fn nft_full() {
    golden("full.nft", &render::nft(&full()));
}

#[test]
fn nft_minimal() {
    golden("minimal.nft", &render::nft(&minimal()));
}

#[test]
fn iptables_v4_full() {
    golden(
        "full.v4.iptables",
        &render::iptables(&full(), Family::V4, false),
    );
}

#[test]
fn iptables_v6_full() {
    golden(
        "full.v6.iptables",
        &render::iptables(&full(), Family::V6, false),
    );
}

#[test]
fn iptables_v4_minimal() {
    golden(
        "minimal.v4.iptables",
        &render::iptables(&minimal(), Family::V4, false),
    );
}

#[test]
fn iptables_hooked_differs_only_by_the_hook() {
    let rs = full();
    for fam in [Family::V4, Family::V6] {
        let unhooked = render::iptables(&rs, fam, false);
        let hooked = render::iptables(&rs, fam, true);
        let hook = format!("-I OUTPUT 1 -j {}\n", render::IPT_CHAIN);
        assert_eq!(unhooked.matches(&hook).count(), 1);
        assert_eq!(hooked.matches(&hook).count(), 0);
        assert_eq!(unhooked.replace(&hook, ""), hooked);
    }
}

#[test]
fn output_hook_is_detected_in_save_output() {
    let save = "*filter\n:OUTPUT ACCEPT [0:0]\n:TPROXY-EGRESS - [0:0]\n-A OUTPUT -j TPROXY-EGRESS\nCOMMIT\n";
    assert!(render::output_hooked(save));
    assert!(!render::output_hooked(
        "*filter\n-A OUTPUT -j OTHER\nCOMMIT\n"
    ));
}
