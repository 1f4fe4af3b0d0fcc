//! Chunked scanner tests: real body shapes, every split point, and the
//! malformed shapes two parsers could disagree on.

use super::*;

/// Body as nginx sends it for three proxied chunks, then a pipelined response.
const BODY: &[u8] = b"7\r\nMozilla\r\n9\r\nDeveloper\r\n7\r\nNetwork\r\n0\r\n\r\n";
const PAYLOAD: &[u8] = b"MozillaDeveloperNetwork";

/// Feed `parts` in order; returns (payload, total consumed, done).
fn feed(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), FramingError> {
    let mut dec = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for part in parts {
        let p = dec.decode(part, &mut |d| payload.extend_from_slice(d))?;
        assert!(!done || p.consumed == 0, "consumed after done");
        consumed += p.consumed;
        done = p.done;
        if !done {
            assert_eq!(p.consumed, part.len(), "unfinished decoder left bytes");
        }
    }
    Ok((payload, consumed, done))
}

fn whole(body: &[u8]) -> Result<(Vec<u8>, usize, bool), FramingError> {
    feed(&[body])
}

#[test]
fn decodes_body_and_stops_before_pipelined_bytes() {
    let mut buf = BODY.to_vec();
    buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let (payload, consumed, done) = whole(&buf).unwrap();
    assert_eq!(payload, PAYLOAD);
    assert_eq!(consumed, BODY.len());
    assert!(done);
}

#[test]
fn one_byte_feeds_and_every_two_way_split() {
    let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
    let (payload, consumed, done) = feed(&bytes).unwrap();
    assert_eq!(
        (payload.as_slice(), consumed, done),
        (PAYLOAD, BODY.len(), true)
    );
    for cut in 0..=BODY.len() {
        let (a, b) = BODY.split_at(cut);
        let (payload, consumed, done) = feed(&[a, b]).unwrap();
        assert_eq!(
            (payload.as_slice(), consumed, done),
            (PAYLOAD, BODY.len(), true),
            "cut {cut}"
        );
    }
    // Not done on any strict prefix.
    for cut in 0..BODY.len() {
        assert!(!whole(&BODY[..cut]).unwrap().2, "done early at {cut}");
    }
}

#[test]
fn large_chunk_across_reads_reaches_callback_in_pieces() {
    let mut body = b"10000\r\n".to_vec();
    body.extend((0..0x10000u32).map(|i| (i % 251) as u8));
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let parts: Vec<&[u8]> = body.chunks(1000).collect();
    let (payload, consumed, done) = feed(&parts).unwrap();
    assert_eq!(payload.len(), 0x10000);
    assert_eq!(payload, body[7..7 + 0x10000].to_vec());
    assert_eq!((consumed, done), (body.len(), true));
}

#[test]
fn accepts_extensions_trailers_and_case() {
    let ok: &[&[u8]] = &[
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        b"5;a;b=\"quoted; str\"\r\nhello\r\n0;last\r\n\r\n",
        b"5 ;ext\r\nhello\r\n0\r\n\r\n",
        b"5\t ;ext\r\nhello\r\n0\r\n\r\n",
        b"000005\r\nhello\r\n0\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\n\r\n",
        b"a\r\n0123456789\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Checksum:abc\r\nEmpty:\r\n\r\n",
        b"0\r\n\r\n",
    ];
    for body in ok {
        let (_, consumed, done) =
            whole(body).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(body)));
        assert_eq!(
            (consumed, done),
            (body.len(), true),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn rejects_malformed_chunks() {
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
    let long_trailer = format!("0\r\nX-Big: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
    let bad: &[&[u8]] = &[
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b";x\r\n0\r\n\r\n",
        b"g\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
        b"10000000000000000\r\n",
        b"4000000000000001\r\n",
        b"ffffffffffffffffff\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\nhello\r\n0\r\n\r\n",
        b"5;a\rhello\r\n0\r\n\r\n",
        b"0\r\n\n",
        b"0\r\n\rX",
        b"0\r\nA: b\r\n c\r\n\r\n",
        b"0\r\n c\r\n\r\n",
        b"0\r\nfoo\r\n\r\n",
        b"0\r\nA : b\r\n\r\n",
        b"0\r\nA: b\n\r\n",
        b"0\r\nA: b\x00\r\n\r\n",
        b"0\r\nA: b\r\r\n",
        long_ext.as_bytes(),
        long_trailer.as_bytes(),
    ];
    for body in bad {
        let r = whole(body);
        assert!(
            matches!(r, Err(FramingError::BadChunk(_))),
            "accepted {:?}: {r:?}",
            String::from_utf8_lossy(body)
        );
        // And the same when fed byte by byte.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert!(
            feed(&bytes).is_err(),
            "accepted split {:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn size_limit_boundary() {
    // 2^62 is the largest size accepted; the scanner then waits for data.
    let mut dec = ChunkedDecoder::new();
    let p = dec.decode(b"4000000000000000\r\nabc", &mut |_| {}).unwrap();
    assert_eq!((p.consumed, p.done), (21, false));
    assert!(!dec.is_done());
}

#[test]
fn done_decoder_consumes_nothing_more() {
    let mut dec = ChunkedDecoder::new();
    let p = dec.decode(b"0\r\n\r\n", &mut |_| {}).unwrap();
    assert_eq!((p.consumed, p.done), (5, true));
    let mut called = false;
    let p = dec.decode(b"1\r\nx\r\n", &mut |_| called = true).unwrap();
    assert_eq!((p.consumed, p.done, called), (0, true, false));
}
