//! Pod-directory parser (the file podwatch writes and the proxy reloads):
//! any bytes are an error or a directory, never a panic; every pod address a
//! parsed file lists is found again by lookup, and nothing else is.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tproxy::poddir::PodDirectory;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = PodDirectory::from_json(data) else {
        return;
    };
    // serde skips unknown fields without checking their strings' UTF-8, so
    // an accepted file is not always a valid `Value`: check what is.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let listed: Vec<IpAddr> = value["pods"]
        .as_object()
        .map(|pods| pods.keys().map(|k| k.parse().expect("accepted key is an IP")).collect())
        .unwrap_or_default();
    for ip in &listed {
        assert!(dir.lookup(*ip).is_some(), "{ip} listed but not found");
    }
    assert!(dir.len() <= listed.len());
    assert_eq!(dir.is_empty(), listed.is_empty());
    let probe: IpAddr = "203.0.113.77".parse().expect("literal");
    let probe_listed = listed.iter().any(|ip| ip.to_canonical() == probe);
    assert_eq!(dir.lookup(probe).is_some(), probe_listed);
});
