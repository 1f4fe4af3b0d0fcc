//! Chunked scanner: no panic, and the same outcome however the input is
//! split (the first byte picks the split point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tproxy::http1::codec::ChunkedDecoder;

fn run(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ()> {
    let mut dec = ChunkedDecoder::new();
    let (mut payload, mut consumed, mut done) = (Vec::new(), 0, false);
    for part in parts {
        let p = dec
            .decode(part, &mut |d| payload.extend_from_slice(d))
            .map_err(|_| ())?;
        assert!(p.consumed <= part.len());
        consumed += p.consumed;
        done = p.done;
    }
    Ok((payload, consumed, done))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let whole = run(&[body]);
    let cut = usize::from(first).min(body.len());
    let (a, b) = body.split_at(cut);
    assert_eq!(run(&[a, b]), whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(run(&bytes), whole);
});
