//! W3C Trace Context: trace and span ids, the `traceparent` header (parse
//! and format), and id generation.

use std::cell::Cell;

/// A 16-byte trace id (never all zero when valid).
pub type TraceId = [u8; 16];
/// An 8-byte span id (never all zero when valid).
pub type SpanId = [u8; 8];

/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// What a client's `traceparent` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace to continue.
    pub trace_id: TraceId,
    /// The caller's span: the parent of our SERVER span.
    pub span_id: SpanId,
    /// Trace flags (bit 0: the caller sampled).
    pub flags: u8,
}

impl Parent {
    /// Whether the caller recorded its span.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Parse a `traceparent` header value (W3C Trace Context, level 1).
///
/// Version `00` must be exactly `00-<32 hex>-<16 hex>-<2 hex>`. A higher
/// version is read by the version 00 layout, and may carry more fields
/// after a `-` (forward compatibility, as the spec asks). Version `ff`,
/// upper-case hex, all-zero ids and any other deviation give `None`: the
/// header is then treated as absent.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let v = value.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

/// `00-<trace id>-<span id>-<flags>`, lower-case hex.
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex(&mut s, trace_id);
    s.push('-');
    push_hex(&mut s, span_id);
    s.push('-');
    push_hex(&mut s, &[flags]);
    s
}

/// Append `bytes` as lower-case hex.
pub fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Lower-case hex only (the spec forbids upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

thread_local! {
    /// Per-thread generator state (ids need uniqueness, not secrecy). Seeded
    /// from the OS once per thread; no cross-thread sharing, no locks.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No OS randomness: fall back to time and a per-thread address.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        return t ^ (&raw const local as u64).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

/// wyrand: one multiply per 64 random bits.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let m = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (m as u64) ^ ((m >> 64) as u64)
    })
}

/// A fresh random trace id (never all zero).
pub fn new_trace_id() -> TraceId {
    loop {
        let (a, b) = (next_u64(), next_u64());
        if a | b != 0 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&a.to_be_bytes());
            id[8..].copy_from_slice(&b.to_be_bytes());
            return id;
        }
    }
}

/// A fresh random span id (never all zero).
pub fn new_span_id() -> SpanId {
    loop {
        let a = next_u64();
        if a != 0 {
            return a.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_the_spec_example() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(p.trace_id[0], 0x0a);
        assert_eq!(p.trace_id[15], 0x9c);
        assert_eq!(p.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert!(p.sampled());
        assert_eq!(format_traceparent(&p.trace_id, &p.span_id, p.flags), TP);
        let unsampled = parse_traceparent(
            &TP.as_bytes()[..54]
                .iter()
                .chain(b"0")
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn tolerates_surrounding_whitespace() {
        assert!(parse_traceparent(format!("  {TP}\t").as_bytes()).is_some());
    }

    #[test]
    fn rejects_malformed() {
        let bad = [
            "",
            "00",
            // Too short / too long for version 00.
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            // Upper case.
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            // Wrong separators, non-hex.
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333x-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            // All-zero ids.
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // Forbidden version.
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // Future version whose extra part is not separated by '-'.
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn future_versions_are_read_by_the_00_layout() {
        let p = parse_traceparent(
            b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
        )
        .unwrap();
        assert_eq!(p.span_id[0], 0xb7);
        assert!(parse_traceparent(&TP.replace("00-", "01-").into_bytes()).is_some());
    }

    #[test]
    fn every_single_byte_mutation_is_handled() {
        // 55 positions x 256 values, plus truncations: never a panic, and
        // whatever is accepted prints back to the same ids and flags.
        let base = TP.as_bytes();
        for i in 0..base.len() {
            for v in 0..=255u8 {
                let mut m = base.to_vec();
                m[i] = v;
                if let Some(p) = parse_traceparent(&m) {
                    // Future versions are read by the 00 layout and printed as 00.
                    let again = format_traceparent(&p.trace_id, &p.span_id, p.flags);
                    assert_eq!(&again.as_bytes()[2..], &m[2..], "{i} {v}");
                }
            }
            assert_eq!(parse_traceparent(&base[..i]), None);
        }
    }

    #[test]
    fn generated_ids_are_non_zero_and_distinct() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, [0; 16]);
        assert_ne!(a, b);
        assert_ne!(new_span_id(), new_span_id());
        let s = format_traceparent(&a, &new_span_id(), 1);
        assert_eq!(parse_traceparent(s.as_bytes()).unwrap().trace_id, a);
    }
}
