//! Request heads: no panic, limits respected, and a parsed head written back
//! out parses to the same head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::http1::codec::{
    Limits, parse_request, remove_hop_by_hop, request_body_kind, write_request_head,
};

fuzz_target!(|data: &[u8]| {
    let small = Limits {
        max_head_bytes: 256,
        max_headers: 4,
    };
    for limits in [Limits::default(), small] {
        let Ok(Some((head, len))) = parse_request(data, &limits) else {
            continue;
        };
        assert!(len <= data.len() && len <= limits.max_head_bytes);
        let _ = request_body_kind(&head);
        let mut out = Vec::new();
        write_request_head(&head, &mut out);
        let again = parse_request(&out, &Limits::default());
        assert_eq!(again, Ok(Some((head.clone(), out.len()))));
        let mut headers = head.headers.clone();
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("connection").is_none());
    }
});
