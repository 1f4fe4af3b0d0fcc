//! Rules-file parser: any bytes are either refused with an error or compile
//! into a policy, never a panic; a compiled policy renders (the output of
//! `tproxy rules check`) deterministically, and deciding a connection for an
//! arbitrary name does not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = Policy::from_bytes(data) else {
        return;
    };
    let once = policy.to_string();
    let again = Policy::from_bytes(data).expect("parsed once, parses again");
    assert_eq!(once, again.to_string());
});
