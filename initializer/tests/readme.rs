//! The README's examples are real: the config file example loads, and the
//! webhook configuration passes `kubernetes-validate --strict`.

// Helpers outside #[test] fns unwrap too: a panic is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use tproxy_initializer::config::{Config, ProxyMode};

fn yaml_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn readme_config_example_loads() {
    let block = yaml_blocks()
        .into_iter()
        .find(|b| b.contains("proxyMode: standard") && b.contains("caBundle:"))
        .expect("config example in README");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, block).unwrap();
    let cfg = Config::from_file(&path).unwrap();
    assert_eq!(cfg.proxy_mode, ProxyMode::Standard);
    assert!(cfg.excluded_namespaces.contains("monitoring"));
    assert_eq!(
        cfg.init_containers[0]["image"],
        "registry.example.com/tproxy/tproxy-sidecar:0.1.0"
    );
}

#[test]
fn readme_webhook_configuration_is_valid() {
    let block = yaml_blocks()
        .into_iter()
        .find(|b| b.contains("kind: MutatingWebhookConfiguration"))
        .expect("webhook configuration in README");
    let value: serde_json::Value = serde_yaml_ng::from_str(&block).unwrap();
    let hook = &value["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["initializer.kubernetes.io/tproxy"],
        "true"
    );
    assert_eq!(hook["sideEffects"], "None");
    common::kubernetes_validate(&[("webhook", &value)]);
}
