//! Detection tests: committed ClientHello captures (curl, openssl, Python),
//! hellos captured live from the same clients, every split point,
//! re-fragmented multi-record hellos, malformed variants, and plaintext
//! first bytes.

use super::*;

mod capture;

pub(crate) const CURL: &[u8] = include_bytes!("../../tests/fixtures/clienthello/curl.bin");
pub(crate) const OPENSSL: &[u8] = include_bytes!("../../tests/fixtures/clienthello/openssl.bin");
pub(crate) const PYTHON: &[u8] = include_bytes!("../../tests/fixtures/clienthello/python.bin");

fn alpn(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

fn tls(buf: &[u8]) -> ClientHello {
    match sniff(buf) {
        Sniff::Tls(hello) => hello,
        other => panic!("expected Tls, got {other:?}"),
    }
}

/// A committed capture and what it must yield.
pub(crate) struct Fixture {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub sni: &'static str,
    pub alpn: Vec<Vec<u8>>,
}

/// The committed captures; `capture.rs` produces them with the same client
/// invocations.
pub(crate) fn fixtures() -> [Fixture; 3] {
    let f = |name, bytes, sni, protocols: &[&str]| Fixture {
        name,
        bytes,
        sni,
        alpn: alpn(protocols),
    };
    [
        f("curl", CURL, "example.test", &["h2", "http/1.1"]),
        f(
            "openssl",
            OPENSSL,
            "openssl.example.test",
            &["h2", "http/1.1"],
        ),
        f("python", PYTHON, "python.example.test", &["http/1.1"]),
    ]
}

#[test]
fn fixtures_yield_sni_and_alpn() {
    for Fixture {
        name,
        bytes,
        sni,
        alpn,
    } in fixtures()
    {
        let hello = tls(bytes);
        assert_eq!(hello.sni.as_deref(), Some(sni), "{name}");
        assert_eq!(hello.alpn, alpn, "{name}");
    }
}

#[test]
fn every_split_is_need_more_until_complete() {
    for Fixture { name, bytes, .. } in fixtures() {
        for cut in 0..bytes.len() {
            assert_eq!(sniff(&bytes[..cut]), Sniff::NeedMore, "{name} cut at {cut}");
        }
        // Bytes after the hello (e.g. a pipelined record) do not matter.
        let mut more = bytes.to_vec();
        more.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(tls(&more), tls(bytes), "{name}");
    }
}

/// Re-fragment the handshake message of a single-record capture into
/// records carrying at most `size` bytes each.
pub(crate) fn refragment(capture: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([capture[3], capture[4]]));
    let msg = &capture[5..5 + len];
    let mut out = Vec::new();
    for piece in msg.chunks(size) {
        out.extend_from_slice(&[0x16, capture[1], capture[2]]);
        out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

#[test]
fn multi_record_hello_is_reassembled() {
    for Fixture { name, bytes, .. } in fixtures() {
        let expected = tls(bytes);
        for size in [1, 7, 100, 1000] {
            let multi = refragment(bytes, size);
            assert_eq!(tls(&multi), expected, "{name} in {size}-byte records");
        }
        let multi = refragment(bytes, 100);
        for cut in 0..multi.len() {
            assert_eq!(sniff(&multi[..cut]), Sniff::NeedMore, "{name} cut at {cut}");
        }
        // A non-handshake record in the middle of the hello is not a hello.
        let mut broken = multi.clone();
        broken[105] = 0x17;
        assert_eq!(sniff(&broken), Sniff::Other, "{name}");
        let mut zero = multi[..105].to_vec();
        zero.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x00]);
        zero.extend_from_slice(&multi[105..]);
        assert_eq!(sniff(&zero), Sniff::Other, "{name} zero-length record");
    }
}

/// A ClientHello record built from parts, for malformed and edge-case variants.
fn build_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    record(&hello_msg(extensions))
}

/// The handshake message (header included) of a minimal TLS 1.3 hello.
fn hello_msg(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut exts = Vec::new();
    for (ty, data) in extensions {
        exts.extend_from_slice(&ty.to_be_bytes());
        exts.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        exts.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&u16::try_from(exts.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![0x01];
    msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

/// One handshake record around `msg`.
fn record(msg: &[u8]) -> Vec<u8> {
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(msg);
    rec
}

fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (ty, name) in names {
        list.push(*ty);
        list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    (0, data)
}

fn alpn_ext(names: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for name in names {
        list.push(u8::try_from(name.len()).unwrap());
        list.extend_from_slice(name);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    (16, data)
}

#[test]
fn sni_names_are_validated_and_lower_cased() {
    let sni_of = |name: &[u8]| tls(&build_hello(&[sni_ext(&[(0, name)])])).sni;
    assert_eq!(sni_of(b"Example.TEST"), Some("example.test".to_owned()));
    assert_eq!(
        sni_of(b"a_b.internal-1.svc"),
        Some("a_b.internal-1.svc".to_owned())
    );
    assert_eq!(sni_of(b"localhost"), Some("localhost".to_owned()));
    for bad in [
        &b""[..],
        b"example.test.",
        b".example.test",
        b"a..b",
        b"-a.test",
        b"a-.test",
        b"exa mple.test",
        b"ex\x00ample.test",
        b"b\xc3\xa4r.test",
        b"192.0.2.1",
        b"[::1]",
        b"a:443",
    ] {
        assert_eq!(sni_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
    let long_label = [b'a'; 64];
    assert_eq!(sni_of(&long_label), None);
    let long_name = [b'a'; 254];
    assert_eq!(sni_of(&long_name), None);
    // Unknown name types are skipped; no extension at all means no SNI.
    let other_type = build_hello(&[sni_ext(&[(7, b"x"), (0, b"h.test")])]);
    assert_eq!(tls(&other_type).sni.as_deref(), Some("h.test"));
    assert_eq!(tls(&build_hello(&[])), ClientHello::default());
}

#[test]
fn alpn_order_is_kept() {
    let hello = build_hello(&[
        alpn_ext(&[b"http/1.1", b"h2", b"acme-tls/1"]),
        sni_ext(&[(0, b"x.test")]),
    ]);
    assert_eq!(tls(&hello).alpn, alpn(&["http/1.1", "h2", "acme-tls/1"]));
}

#[test]
fn malformed_hellos_are_other() {
    let dup_ext = build_hello(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])]);
    let dup_host = build_hello(&[sni_ext(&[(0, b"a.test"), (0, b"b.test")])]);
    let empty_alpn = build_hello(&[alpn_ext(&[])]);
    let empty_proto = build_hello(&[alpn_ext(&[b"h2", b""])]);
    let empty_sni_list = build_hello(&[(0, vec![0, 0])]);
    let sni_trailing = build_hello(&[(0, vec![0, 4, 0, 0, 1, b'a', 9])]);
    let ext_overrun = build_hello(&[(0, vec![0, 9, 0, 0, 1, b'a'])]);
    for (name, bytes) in [
        ("duplicate extension", dup_ext),
        ("two host names", dup_host),
        ("empty ALPN list", empty_alpn),
        ("empty ALPN name", empty_proto),
        ("empty server_name list", empty_sni_list),
        ("bytes after server_name list", sni_trailing),
        ("server_name list overruns", ext_overrun),
    ] {
        assert_eq!(sniff(&bytes), Sniff::Other, "{name}");
    }
    // Damage the structure of a real capture in specific places.
    let damage = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = CURL.to_vec();
        f(&mut v);
        sniff(&v)
    };
    assert_eq!(damage(&|v| v[5] = 2), Sniff::Other, "not a ClientHello");
    assert_eq!(damage(&|v| v[9] = 2), Sniff::Other, "legacy_version major");
    assert_eq!(damage(&|v| v[1] = 2), Sniff::Other, "record version major");
    assert_eq!(damage(&|v| v[43] = 33), Sniff::Other, "session id > 32");
    // Record header claims more than 2^14 bytes.
    assert_eq!(damage(&|v| v[3] = 0x41), Sniff::Other, "oversized record");
    // One byte more in record and handshake, after the extensions block.
    assert_eq!(
        damage(&|v| {
            let n = u16::from_be_bytes([v[3], v[4]]) + 1;
            v[3..5].copy_from_slice(&n.to_be_bytes());
            let m = u32::from_be_bytes([0, v[6], v[7], v[8]]) + 1;
            v[6..9].copy_from_slice(&m.to_be_bytes()[1..]);
            v.push(0xff);
        }),
        Sniff::Other,
        "bytes after extensions"
    );
    // Handshake message over the 64 KiB cap.
    let mut big = record(&[1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    big[6..9].copy_from_slice(&[0x01, 0x00, 0x00]);
    assert_eq!(sniff(&big), Sniff::Other, "64 KiB cap");
}

#[test]
fn hello_at_the_size_cap_is_accepted_and_one_more_byte_is_not() {
    // A padding extension (type 21) brings the message to exactly
    // MAX_HELLO_BYTES, spread over five full-size records.
    let sni = || sni_ext(&[(0, b"big.test")]);
    let pad = MAX_HELLO_BYTES - hello_msg(&[sni()]).len() - 4;
    let records = |pad: usize| {
        let msg = hello_msg(&[sni(), (21, vec![0; pad])]);
        let out: Vec<u8> = msg.chunks(1 << 14).flat_map(record).collect();
        (msg.len(), out)
    };
    let (len, at_cap) = records(pad);
    assert_eq!(len, MAX_HELLO_BYTES);
    assert_eq!(tls(&at_cap).sni.as_deref(), Some("big.test"));
    let (len, over) = records(pad + 1);
    assert_eq!(len, MAX_HELLO_BYTES + 1);
    assert_eq!(sniff(&over), Sniff::Other);
    assert_eq!(
        sniff(&over[..100]),
        Sniff::Other,
        "rejected from the header alone"
    );
}

#[test]
fn tls_prefix_bytes() {
    assert_eq!(sniff(b""), Sniff::NeedMore);
    assert_eq!(sniff(b"\x16"), Sniff::NeedMore);
    assert_eq!(sniff(b"\x16\x03"), Sniff::NeedMore);
    assert_eq!(sniff(b"\x16\x03\x01\x00"), Sniff::NeedMore);
    assert_eq!(sniff(b"\x16\x02"), Sniff::Other);
    assert_eq!(sniff(b"\x16\x03\x01\x00\x00"), Sniff::Other);
    assert_eq!(sniff(b"\x16\x03\x01\x00\x05\x02"), Sniff::Other);
    // SSLv2-style hello and other binary protocols.
    assert_eq!(sniff(b"\x80\x2e\x01\x03\x01"), Sniff::Other);
    assert_eq!(sniff(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Sniff::Other);
}

#[test]
fn plaintext_first_bytes() {
    let cases: &[(&[u8], Sniff)] = &[
        (b"GET / HTTP/1.1\r\n", Sniff::Http1),
        (b"GET ", Sniff::Http1),
        (b"POST /upload HTTP/1.1", Sniff::Http1),
        (b"CONNECT example.test:443 HTTP/1.1\r\n", Sniff::Http1),
        (b"OPTIONS * HTTP/1.1", Sniff::Http1),
        (b"PROPFIND /dav HTTP/1.1", Sniff::Http1),
        (b"M-SEARCH * HTTP/1.1", Sniff::Http1),
        (b"PURGE http://example.test/ HTTP/1.1", Sniff::Http1),
        (b"PURGE HTTPS://example.test/ HTTP/1.1", Sniff::Http1),
        (b"BREW example.test:8080 HTTP/1.1", Sniff::Http1),
        (b"BREW [::1]:8080 HTTP/1.1", Sniff::Http1),
        (b"PRI * HTTP/1.1\r\n", Sniff::Http1),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Sniff::H2Preface),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            Sniff::H2Preface,
        ),
        (b"G", Sniff::NeedMore),
        (b"GET", Sniff::NeedMore),
        (b"PURGE", Sniff::NeedMore),
        (b"PURGE ", Sniff::NeedMore),
        (b"PURGE ht", Sniff::NeedMore),
        (b"PURGE example.test:80", Sniff::NeedMore),
        (b"get / HTTP/1.1", Sniff::Other),
        (b"GET\t/", Sniff::Other),
        (b"EHLO mail.example.test\r\n", Sniff::Other),
        (b"FOO bar baz", Sniff::Other),
        (b"BREW :80 ", Sniff::Other),
        (b"BREW host: ", Sniff::Other),
        (b"ABCDEFGHIJKLMNOPQ /", Sniff::Other),
        (b"SSH-2.0-OpenSSH_9.2p1\r\n", Sniff::Other),
        (b"\r\nGET / HTTP/1.1", Sniff::Other),
        (b" GET /", Sniff::Other),
        (b"{\"json\":1}", Sniff::Other),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            &sniff(bytes),
            expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for cut in 1..preface.len() {
        assert_eq!(sniff(&preface[..cut]), Sniff::NeedMore, "preface cut {cut}");
    }
    // Sixteen-byte methods are the longest accepted.
    assert_eq!(sniff(b"ABCDEFGHIJKLMNOP /"), Sniff::Http1);
}
