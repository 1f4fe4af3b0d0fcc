//! Golden-file tests of the pure pipeline: PodList → pod infos → desired state →
//! nft / iptables text (v4 and v6) and pod directory JSON.
//!
//! Regenerate after an intended change with `PODWATCH_REGEN_GOLDEN=1 cargo test
//! -p tproxy-podwatch --test golden` and review the diff.

// Helpers outside #[test] functions unwrap too: in a test a panic with a
// location is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use tproxy_podwatch::cli::pods_from_file;
use tproxy_podwatch::desired::{Desired, Settings, desired};
use tproxy_podwatch::directory::{DEFAULT_LABELS, PodDirectory, SCHEMA_VERSION};
use tproxy_podwatch::reconcile::pod_infos;
use tproxy_podwatch::render::{self, Family};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn check(name: &str, actual: &str) {
    let path = dir().join("golden").join(name);
    if std::env::var_os("PODWATCH_REGEN_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with PODWATCH_REGEN_GOLDEN=1)",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{name} differs from golden file (PODWATCH_REGEN_GOLDEN=1 regenerates)"
    );
}

fn fixture(ipv6: bool) -> Desired {
    let pods = pods_from_file(&dir().join("fixtures/pods.json"), "node-a").unwrap();
    let settings = Settings {
        proxy_port: 1080,
        ports: vec![80, 443],
        ipv6,
        directory_labels: DEFAULT_LABELS.split(',').map(str::to_owned).collect(),
    };
    desired(&pod_infos(&pods), &settings)
}

#[test]
fn golden_nft() {
    check("nft.txt", &render::nft(&fixture(true).rules));
    check("nft-ipv6-off.txt", &render::nft(&fixture(false).rules));
}

#[test]
fn golden_iptables_v4_v6() {
    let d = fixture(true);
    check(
        "iptables-v4.txt",
        &render::iptables(&d.rules, Family::V4, &[]),
    );
    check(
        "iptables-v6.txt",
        &render::iptables(&d.rules, Family::V6, &[]),
    );
    // Existing jump (and a duplicate) from a previous run: keep one, delete the rest.
    let save = "*nat\n:TPROXY-REDIRECT - [0:0]\n\
        -A PREROUTING -m comment --comment tproxy-podwatch -j TPROXY-REDIRECT\n\
        -A PREROUTING -j TPROXY-REDIRECT\nCOMMIT\n";
    check(
        "iptables-v4-existing-jumps.txt",
        &render::iptables(&d.rules, Family::V4, &render::existing_jumps(save)),
    );
}

#[test]
fn golden_cleanup() {
    check("nft-cleanup.txt", &render::nft_cleanup());
    check(
        "iptables-cleanup.txt",
        &render::iptables_cleanup(&[
            "-m comment --comment tproxy-podwatch -j TPROXY-REDIRECT".into()
        ]),
    );
}

#[test]
fn golden_directory() {
    let d = fixture(true);
    let file = PodDirectory {
        version: SCHEMA_VERSION,
        generated_at: "2026-11-21T12:00:00Z".into(),
        node: "node-a".into(),
        pods: d.directory,
    };
    let mut json = serde_json::to_string_pretty(&file).unwrap();
    json.push('\n');
    check("directory.json", &json);
}
