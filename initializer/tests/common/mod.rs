//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The Python venv built by scripts/install-test-deps.sh.
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("TPROXY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("target/test-venv")
        });
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} missing: run scripts/install-test-deps.sh (or set TPROXY_TEST_VENV)",
        bin.display()
    );
    bin
}

/// Runs `kubernetes-validate --strict -k 1.33.0` on manifests; any failure
/// or warning fails the test.
pub fn kubernetes_validate(objects: &[(&str, &Value)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, obj) in objects {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(obj).unwrap()).unwrap();
        files.push(path);
    }
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    let passed = text.lines().filter(|l| l.contains("passed")).count();
    assert_eq!(passed, objects.len(), "kubernetes-validate output:\n{text}");
    for line in text.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.contains("warn") && !lower.contains("error"),
            "kubernetes-validate complained:\n{text}"
        );
    }
}

/// Decodes the response's base64 JSON Patch, checking the wire form.
pub fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    match (response.get("patchType"), response.get("patch")) {
        (None, None) => None,
        (Some(t), Some(Value::String(b64))) => {
            assert_eq!(t, "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is base64");
            Some(serde_json::from_slice(&bytes).expect("patch is a JSON Patch"))
        }
        other => panic!("patch/patchType must come together, patch as a string: {other:?}"),
    }
}

/// A review with `request.object` replaced (for the second pass).
pub fn with_object(review: &Value, object: &Value) -> Vec<u8> {
    let mut r = review.clone();
    r["request"]["object"] = object.clone();
    serde_json::to_vec(&r).unwrap()
}

/// Env var names of a container (JSON).
pub fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount paths of a container (JSON).
pub fn mount_paths(container: &Value) -> Vec<String> {
    container["volumeMounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["mountPath"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
