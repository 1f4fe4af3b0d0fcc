//! Stable, bounded stand-in for the cargo-fuzz targets in `fuzz/`: 50 000
//! deterministic pseudo-random and mutated-capture inputs go through every
//! parser that sees network bytes. Besides "no panic", each iteration checks
//! properties a caller relies on:
//! * a parsed head, written back out, parses to the same head;
//! * the chunked scanner gives the same result however the input is split;
//! * `sniff` never changes its mind: a decision on a prefix is the decision
//!   on the whole buffer.

use super::codec::{
    ChunkedDecoder, Limits, parse_request, parse_response, remove_hop_by_hop, request_body_kind,
    response_body_kind, write_request_head, write_response_head,
};
use crate::detect::{Sniff, sniff};

const ITERATIONS: usize = 50_000;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET /path?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
    b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nProxy-Connection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nMozilla\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"7\r\nMozilla\r\n9\r\nDeveloper\r\n7\r\nNetwork\r\n0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    include_bytes!("../../tests/fixtures/clienthello/curl.bin"),
    include_bytes!("../../tests/fixtures/clienthello/openssl.bin"),
    include_bytes!("../../tests/fixtures/clienthello/python.bin"),
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\0",
    b";",
    b",",
    b"\r\n\r\n",
    b"chunked",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Connection: content-length\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff",
    b"4000000000000000",
    b"\x16\x03\x01",
    b"\xff\xff",
    b"\x00\x00",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => input[at.min(len - 1)] = rng.next() as u8,
            1 => input.insert(at, rng.next() as u8),
            2 if len > 0 => {
                let end = (at + rng.below(16)).min(len);
                input.drain(at.min(len)..end);
            }
            3 => {
                let token = rng.pick(TOKENS);
                input.splice(at..at, token.iter().copied());
            }
            4 => input.truncate(at),
            5 if len > 0 => {
                let end = (at + rng.below(32)).min(len);
                let copy = input[at.min(len)..end].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, copy);
            }
            6 => {
                // TLS length fields live in the first few dozen bytes.
                if len > 0 {
                    let pos = rng.below(len.min(64));
                    input[pos] = *rng.pick(&[0x00, 0x01, 0x7f, 0x80, 0xff]);
                }
            }
            _ => {
                let other = rng.pick(SEEDS);
                let from = rng.below(other.len());
                input.extend_from_slice(&other[from..]);
            }
        }
    }
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300);
    let alphabet: &[u8] = b"GET /HTP1.0\r\n:;, chunked0123456789abcdefxX\t\0\x16\x03\xff";
    (0..len)
        .map(|_| {
            if rng.below(4) == 0 {
                rng.next() as u8
            } else {
                *rng.pick(alphabet)
            }
        })
        .collect()
}

fn check_request(input: &[u8], limits: &Limits) {
    let Ok(Some((head, len))) = parse_request(input, limits) else {
        return;
    };
    assert!(len <= input.len() && len <= limits.max_head_bytes);
    let _ = request_body_kind(&head);
    let mut out = Vec::new();
    write_request_head(&head, &mut out);
    let reparsed = parse_request(&out, &Limits::default());
    assert_eq!(
        reparsed,
        Ok(Some((head.clone(), out.len()))),
        "round trip of {input:?}"
    );
    for keep_framing in [false, true] {
        let mut stripped = head.headers.clone();
        remove_hop_by_hop(&mut stripped, keep_framing);
        assert!(stripped.get("connection").is_none());
        // Framing fields the proxy relied on survive whatever Connection says.
        let count = |h: &super::codec::Headers, n| h.get_all(n).count();
        assert_eq!(
            count(&stripped, "content-length"),
            count(&head.headers, "content-length")
        );
        if keep_framing {
            assert_eq!(
                count(&stripped, "transfer-encoding"),
                count(&head.headers, "transfer-encoding")
            );
        }
    }
}

fn check_response(input: &[u8], limits: &Limits) {
    let Ok(Some((head, len))) = parse_response(input, limits) else {
        return;
    };
    assert!(len <= input.len() && len <= limits.max_head_bytes);
    for method in ["GET", "HEAD", "CONNECT"] {
        let _ = response_body_kind(&head, method);
    }
    let mut out = Vec::new();
    write_response_head(&head, &mut out);
    let reparsed = parse_response(&out, &Limits::default());
    assert_eq!(
        reparsed,
        Ok(Some((head.clone(), out.len()))),
        "round trip of {input:?}"
    );
}

/// Run the chunked scanner over `parts`; `Err(())` on a framing error.
fn chunked(parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ()> {
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

fn check_chunked(rng: &mut Rng, input: &[u8]) {
    let whole = chunked(&[input]);
    let cut = rng.below(input.len() + 1);
    let (a, b) = input.split_at(cut);
    assert_eq!(chunked(&[a, b]), whole, "split at {cut} of {input:?}");
    if let Ok((payload, consumed, _)) = &whole {
        assert!(payload.len() <= *consumed);
    }
}

fn check_sniff(rng: &mut Rng, input: &[u8]) {
    let full = sniff(input);
    let cut = rng.below(input.len() + 1);
    let early = sniff(&input[..cut]);
    if early != Sniff::NeedMore {
        assert_eq!(
            early, full,
            "decision changed after {cut} bytes of {input:?}"
        );
    }
}

#[test]
fn parsers_survive_random_and_mutated_input() {
    let mut rng = Rng(0x7470_726f_7879_2121);
    let small = Limits {
        max_head_bytes: 200,
        max_headers: 4,
    };
    let default = Limits::default();
    let mut parsed_heads = 0;
    let mut tls = 0;
    for i in 0..ITERATIONS {
        let input = if i % 5 == 0 {
            random_bytes(&mut rng)
        } else {
            let mut v = rng.pick(SEEDS).to_vec();
            mutate(&mut rng, &mut v);
            v
        };
        check_request(&input, &small);
        check_request(&input, &default);
        check_response(&input, &small);
        check_response(&input, &default);
        if matches!(parse_request(&input, &default), Ok(Some(_))) {
            parsed_heads += 1;
        }
        check_chunked(&mut rng, &input);
        check_sniff(&mut rng, &input);
        if matches!(sniff(&input), Sniff::Tls(_)) {
            tls += 1;
        }
    }
    eprintln!(
        "robustness: {parsed_heads} request heads and {tls} ClientHellos parsed of {ITERATIONS} inputs"
    );
    // The mutations must leave enough inputs valid to exercise the deeper
    // paths (round trips, ClientHello extension parsing), not only errors.
    assert!(
        parsed_heads > ITERATIONS / 20,
        "only {parsed_heads} heads parsed"
    );
    assert!(tls > ITERATIONS / 50, "only {tls} hellos parsed");
}
