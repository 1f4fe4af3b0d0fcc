//! Response heads: no panic, limits respected, framing decided for every
//! method shape, and a written head parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::http1::codec::{Limits, parse_response, response_body_kind, write_response_head};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, len))) = parse_response(data, &Limits::default()) else {
        return;
    };
    assert!(len <= data.len());
    for method in ["GET", "HEAD", "CONNECT"] {
        let _ = response_body_kind(&head, method);
    }
    let mut out = Vec::new();
    write_response_head(&head, &mut out);
    assert_eq!(
        parse_response(&out, &Limits::default()),
        Ok(Some((head.clone(), out.len())))
    );
});
