//! Path normaliser: no panic; the normal form is a fixed point (normalising
//! it again changes nothing) and has no dot or empty segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::engine::path::normalise;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let target = format!("/{s}");
    let Ok(once) = normalise(&target) else {
        return;
    };
    assert_eq!(normalise(&once).as_deref(), Ok(once.as_str()), "{target:?}");
    let path = once.split('?').next().unwrap_or_default();
    assert!(path.starts_with('/'), "{target:?} -> {once:?}");
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    if let Some((last, inner)) = segs.split_last() {
        assert!(!matches!(*last, "." | ".."), "{target:?} -> {once:?}");
        for seg in inner {
            assert!(!matches!(*seg, "" | "." | ".."), "{target:?} -> {once:?}");
        }
    }
});
