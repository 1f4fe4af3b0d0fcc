//! Request paths in one normal form: what rules match and what is forwarded.
//!
//! An upstream normalises the path before it picks a resource (nginx merges
//! slashes, decodes escapes and resolves dot segments; most frameworks do
//! some of it). A rule compared with the raw bytes can therefore be talked
//! around (`/public/../secret`, `/%73ecret`, `//secret`). tproxy computes
//! one normal form, matches rules on it and forwards *it*, so the upstream
//! sees exactly the path the rules decided on:
//!
//! 1. percent escapes are checked (`%` + two hex digits, else refused);
//!    escapes of unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`)
//!    are decoded, every other escape is kept with upper-case hex digits;
//! 2. an encoded `/` or `\` (`%2F`, `%5C`), a raw `\` and an encoded NUL are
//!    refused: servers disagree on whether they separate segments, so no
//!    normal form is safe for them;
//! 3. empty segments are removed (`//` → `/`), then dot segments
//!    (RFC 3986 §5.2.4: `.` dropped, `..` removes the segment before it,
//!    never climbing above the root); a path that ended in `/`, `.` or `..`
//!    keeps its trailing `/`.
//!
//! The query is not touched (`?` and everything after it is kept as sent).
//! The result is idempotent (normalising it again changes nothing) and has
//! no `.`/`..` segment and no empty segment.

/// Why a path has no safe normal form (answered with `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "invalid percent escape in the request path (a `%` must be followed by two hex digits)"
    )]
    BadEscape,
    #[error(
        "the request path contains an encoded slash or a backslash (`%2F`, `%5C` or `\\`): \
         servers disagree on whether it separates path segments, so tproxy refuses it; \
         send `/` unencoded"
    )]
    AmbiguousSeparator,
    #[error("the request path contains an encoded NUL (`%00`)")]
    Nul,
    #[error("the request path does not start with `/`")]
    NotAbsolute,
}

/// The unreserved characters of RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Step 1 and 2: escapes checked, unreserved ones decoded, the rest upper-cased.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = (hi << 4) | lo;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => return Err(PathError::AmbiguousSeparator),
                    v if is_unreserved(v) => out.push(v),
                    v => out.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(v >> 4)],
                        HEX_UPPER[usize::from(v & 0xf)],
                    ]),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::AmbiguousSeparator),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were inserted or replaced ASCII escapes; every other
    // byte was copied from valid UTF-8 in order.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// Step 3: empty and dot segments removed.
fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing = false;
    // The path starts with `/`: the first split item is the empty root.
    for seg in path.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// The normal form of an origin-form request target (`/path?query`); `*`
/// (`OPTIONS *`) is returned as is.
pub fn normalise(target: &str) -> Result<String, PathError> {
    if target == "*" {
        return Ok(target.to_owned());
    }
    if !target.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i..])),
        None => (target, None),
    };
    let mut out = remove_dot_segments(&decode_unreserved(path)?);
    if let Some(q) = query {
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalise(p).unwrap()
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/public/../secret/"), "/secret/");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/."), "/");
        assert_eq!(n("/"), "/");
        // Not dot segments: dots inside a name.
        assert_eq!(n("/a/..b/.c/..."), "/a/..b/.c/...");
    }

    #[test]
    fn encoded_dots_and_unreserved_characters_are_decoded_first() {
        assert_eq!(n("/public/%2e%2e/secret"), "/secret");
        assert_eq!(n("/public/%2E./secret"), "/secret");
        assert_eq!(n("/%73ecret"), "/secret");
        assert_eq!(n("/%7euser/%41-%5F"), "/~user/A-_");
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(n("/a%20b/%e2%82%ac"), "/a%20b/%E2%82%AC");
        assert_eq!(n("/%25"), "/%25");
        // `%2541` is `%25` then `41`: never decoded twice.
        assert_eq!(n("/%2541"), "/%2541");
    }

    #[test]
    fn duplicate_slashes_merge() {
        assert_eq!(n("//secret"), "/secret");
        assert_eq!(n("/a//b///c//"), "/a/b/c/");
        assert_eq!(n("/a//..//b"), "/b");
    }

    #[test]
    fn query_is_kept_as_sent() {
        assert_eq!(n("/a/../b?x=/../%2f&y"), "/b?x=/../%2f&y");
        assert_eq!(n("/?"), "/?");
        assert_eq!(n("*"), "*");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalise("/a%2Fb"), Err(PathError::AmbiguousSeparator));
        assert_eq!(normalise("/a%2f..%2fb"), Err(PathError::AmbiguousSeparator));
        assert_eq!(normalise("/a%5cb"), Err(PathError::AmbiguousSeparator));
        assert_eq!(normalise("/a\\..\\b"), Err(PathError::AmbiguousSeparator));
        assert_eq!(normalise("/a%00"), Err(PathError::Nul));
        assert_eq!(normalise("/a%"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalise("a"), Err(PathError::NotAbsolute));
    }

    /// A small deterministic generator (xorshift): no dependency, the same
    /// cases on every run.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// Property: for random paths built from the pieces attacks are made
    /// of, normalising twice equals normalising once, and the output has no
    /// dot or empty segment and only upper-case escapes of reserved bytes.
    #[test]
    fn property_idempotent_and_free_of_dot_segments() {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2e",
            "a",
            "B",
            "%41",
            "%7e",
            "~",
            "%20",
            "%e2%82%ac",
            "%25",
            "%2541",
            "?",
            "=",
            "&",
            ";",
            "x.y",
            "...",
            "é",
            "%3A",
            ":",
            "@",
            "%2f",
            "%5c",
            "%",
        ];
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..(g.next() % 12) {
                p.push_str(g.pick(PIECES));
            }
            let Ok(once) = normalise(&p) else { continue };
            checked += 1;
            assert_eq!(normalise(&once).as_ref(), Ok(&once), "input {p:?}");
            let path = once.split('?').next().unwrap_or_default();
            assert!(path.starts_with('/'), "{p:?} → {once:?}");
            for seg in path
                .split('/')
                .skip(1)
                .collect::<Vec<_>>()
                .split_last()
                .map_or(&[][..], |(_, rest)| rest)
            {
                assert!(
                    !matches!(*seg, "" | "." | ".."),
                    "{p:?} → {once:?} has segment {seg:?}"
                );
            }
            let last = path.rsplit('/').next().unwrap_or_default();
            assert!(!matches!(last, "." | ".."), "{p:?} → {once:?}");
            let bytes = path.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'%' {
                    let esc = &path[i + 1..i + 3];
                    assert_eq!(esc, esc.to_ascii_uppercase(), "{p:?} → {once:?}");
                    let v = u8::from_str_radix(esc, 16).unwrap();
                    assert!(!is_unreserved(v), "{p:?} → {once:?} kept %{esc}");
                }
            }
        }
        assert!(checked > 5_000, "only {checked} generated paths were valid");
    }
}
