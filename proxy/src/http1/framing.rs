//! Body framing (RFC 9112 §6.3): which of Content-Length / Transfer-Encoding
//! delimits a message, with every ambiguous combination rejected. Re-exported
//! from [`super::codec`], where the types live.

use super::codec::{BodyKind, FramingError, Headers, RequestHead, ResponseHead, trim_ows};

/// All Content-Length values agreed on, or `None` when the field is absent.
fn content_length(headers: &Headers) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    let mut conflict = false;
    for value in headers.get_all("content-length") {
        // Empty elements ("5,,5", "") are invalid here: the list must be exactly
        // a repetition of one number.
        for element in value.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(element)).ok_or(FramingError::InvalidLength)?;
            match found {
                Some(prev) if prev != n => conflict = true,
                _ => found = Some(n),
            }
        }
    }
    if conflict {
        return Err(FramingError::ConflictingLength);
    }
    Ok(found)
}

/// `1*DIGIT` into u64; anything else (sign, space, overflow, empty) is `None`.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// How a Transfer-Encoding list ends.
enum Codings {
    /// Exactly one `chunked`, and it is last.
    ChunkedLast,
    /// Valid codings, none of them `chunked`.
    NoChunked,
}

/// Classify every Transfer-Encoding field line taken together.
fn transfer_codings(headers: &Headers) -> Result<Codings, FramingError> {
    let mut chunked_at: Option<usize> = None;
    let mut count = 0usize;
    for value in headers.get_all("transfer-encoding") {
        for element in value.split(|&b| b == b',') {
            let element = trim_ows(element);
            // Empty list elements are tolerated by RFC 9110 §5.6.1 but never
            // sent by real clients; parameters (`;`) are not allowed at all.
            if element.is_empty() || !element.iter().all(|&b| is_tchar(b)) {
                return Err(FramingError::BadTransferEncoding);
            }
            if element.eq_ignore_ascii_case(b"chunked") {
                if chunked_at.is_some() {
                    return Err(FramingError::BadTransferEncoding);
                }
                chunked_at = Some(count);
            }
            count += 1;
        }
    }
    match chunked_at {
        Some(i) if i + 1 == count => Ok(Codings::ChunkedLast),
        Some(_) => Err(FramingError::BadTransferEncoding),
        None if count == 0 => Err(FramingError::BadTransferEncoding),
        None => Ok(Codings::NoChunked),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Body framing of a request (RFC 9112 §6.3), rejecting ambiguity.
///
/// * Transfer-Encoding with Content-Length → `LengthAndChunked`.
/// * Transfer-Encoding in an HTTP/1.0 request, or one that is not a list of
///   tokens ending in a single `chunked` → `BadTransferEncoding`.
/// * Content-Length values that differ → `ConflictingLength`; that are not
///   plain decimals → `InvalidLength`; identical repeats are accepted.
/// * Neither → `Empty`.
pub fn request_body_kind(head: &RequestHead) -> Result<BodyKind, FramingError> {
    let has_te = head.headers.get("transfer-encoding").is_some();
    let has_cl = head.headers.get("content-length").is_some();
    if has_te {
        if has_cl {
            return Err(FramingError::LengthAndChunked);
        }
        if head.minor_version == 0 {
            return Err(FramingError::BadTransferEncoding);
        }
        return match transfer_codings(&head.headers)? {
            Codings::ChunkedLast => Ok(BodyKind::Chunked),
            Codings::NoChunked => Err(FramingError::BadTransferEncoding),
        };
    }
    Ok(match content_length(&head.headers)? {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::Empty,
    })
}

/// Body framing of a response to a request with `request_method`.
///
/// * HEAD requests, 1xx/204/304, and 2xx to CONNECT (the tunnel starts) →
///   `Empty`, whatever the fields say.
/// * Transfer-Encoding with Content-Length → `LengthAndChunked` (stricter than
///   RFC 9112, see the module docs); Transfer-Encoding in an HTTP/1.0 response
///   → `BadTransferEncoding` (RFC 9112 §6.1: faulty framing).
/// * Transfer-Encoding ending in `chunked` → `Chunked`; without any `chunked`
///   → `UntilClose`; `chunked` twice or not last → `BadTransferEncoding`.
/// * Content-Length → `Length` (same validation as requests); else `UntilClose`.
pub fn response_body_kind(
    head: &ResponseHead,
    request_method: &str,
) -> Result<BodyKind, FramingError> {
    let status = head.status;
    if request_method == "HEAD"
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request_method == "CONNECT" && (200..300).contains(&status))
    {
        return Ok(BodyKind::Empty);
    }
    let has_te = head.headers.get("transfer-encoding").is_some();
    let has_cl = head.headers.get("content-length").is_some();
    if has_te {
        if has_cl {
            return Err(FramingError::LengthAndChunked);
        }
        if head.minor_version == 0 {
            return Err(FramingError::BadTransferEncoding);
        }
        return Ok(match transfer_codings(&head.headers)? {
            Codings::ChunkedLast => BodyKind::Chunked,
            Codings::NoChunked => BodyKind::UntilClose,
        });
    }
    Ok(match content_length(&head.headers)? {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::UntilClose,
    })
}
