//! Just enough protobuf writing for the OTLP trace messages: varints,
//! fixed64/fixed32, length-delimited fields and nested messages, appended
//! to one buffer (no per-field allocation). The field numbers live in
//! `encode`; tests decode the output with the `opentelemetry-proto` types.

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A varint field (uint32/uint64/int64/enum). Zero is the default and is
/// left out, as proto3 encoders do.
pub fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

/// An int64 field (two's complement varint; always written).
pub fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    key(buf, field, VARINT);
    varint(buf, v as u64);
}

/// A fixed64 field.
pub fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A fixed32 field (left out when zero).
pub fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A bytes or string field (written even when empty: callers skip empty
/// optional values themselves).
pub fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(buf, field, LEN);
    varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// A nested message: `f` appends its fields, then the length prefix is
/// filled in. One byte is reserved up front, which is all a message under
/// 128 bytes needs (most attributes); longer ones shift their bytes right
/// by the extra prefix bytes. No scratch buffer, no allocation.
pub fn message(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    f(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    let end = buf.len();
    buf.resize(end + n - 1, 0);
    buf.copy_within(at + 1..end, at + n);
    buf[at..at + n].copy_from_slice(&prefix[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_nesting() {
        let mut b = Vec::new();
        uint(&mut b, 1, 300);
        assert_eq!(b, [0x08, 0xac, 0x02]);
        b.clear();
        uint(&mut b, 1, 0);
        assert!(b.is_empty(), "proto3 default left out");
        int64(&mut b, 3, -1);
        assert_eq!(b.len(), 11, "negative int64 is a 10-byte varint");
        b.clear();
        message(&mut b, 2, |b| bytes(b, 1, &[7u8; 200]));
        // key, 2-byte length (203), inner key, 2-byte length (200), payload.
        assert_eq!(&b[..3], &[0x12, 0xcb, 0x01]);
        assert_eq!(&b[3..6], &[0x0a, 0xc8, 0x01]);
        assert_eq!(b.len(), 3 + 3 + 200);
        assert!(b[6..].iter().all(|&x| x == 7));
        // Lengths at the one-byte boundary.
        for n in [126usize, 127, 128, 16_383, 16_384] {
            let mut b = vec![0xee];
            message(&mut b, 1, |b| b.extend(std::iter::repeat_n(5u8, n)));
            let mut len = 0usize;
            let mut i = 2;
            let mut shift = 0;
            loop {
                len |= usize::from(b[i] & 0x7f) << shift;
                shift += 7;
                i += 1;
                if b[i - 1] < 0x80 {
                    break;
                }
            }
            assert_eq!((b[0], b[1], len, b.len() - i), (0xee, 0x0a, n, n), "{n}");
            assert!(b[i..].iter().all(|&x| x == 5));
        }
    }
}
