//! First-bytes detection and the ClientHello parser: no panic, and a
//! decision made on a prefix never changes when more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::detect::{Sniff, sniff};

fuzz_target!(|data: &[u8]| {
    let full = sniff(data);
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let early = sniff(&data[..cut]);
        if early != Sniff::NeedMore {
            assert_eq!(early, full);
        }
    }
});
