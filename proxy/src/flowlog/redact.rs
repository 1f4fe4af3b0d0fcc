//! Credential redaction for header values and URLs.
//!
//! Used by both log formats unless `--show-secrets` is given, and meant for
//! reuse by metrics and traces. The lists are documented in `docs/flow-log.md`;
//! keep the two in step.

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "...";

/// Headers whose value is `<scheme> <credentials>`: the scheme word is kept.
const SCHEME_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-ms-authorization-auxiliary",
];

/// Headers whose whole value is a secret.
const SECRET_HEADERS: &[&str] = &[
    "x-amz-security-token",
    "x-api-key",
    "x-auth-token",
    "api-key",
    "apikey",
    "x-goog-api-key",
    "private-token",
    "x-amz-server-side-encryption-customer-key",
    "x-amz-copy-source-server-side-encryption-customer-key",
    "x-goog-encryption-key",
    "x-goog-copy-source-encryption-key",
    "x-ms-encryption-key",
    "x-functions-key",
    "ocp-apim-subscription-key",
];

/// Header name suffixes that mark a whole value as secret
/// (`x-vault-token`, `x-shopify-access-token`, `x-client-secret`, ...).
const SECRET_SUFFIXES: &[&str] = &["-token", "-api-key", "-apikey", "-secret", "-password"];

/// Headers whose value is a URL: redacted with [`redact_url`].
const URL_HEADERS: &[&str] = &["referer", "location", "content-location"];

/// Query parameters whose value is a secret (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "signature",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "client_secret",
    "password",
    "passwd",
    "secret",
];

fn eq_any(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Redacts the value of header `name`, returning it unchanged (borrowed) when
/// the header carries no credentials.
///
/// * `authorization`, `proxy-authorization` (and any `*-authorization`):
///   the scheme word stays — `Bearer ...`, `AWS4-HMAC-SHA256 ...`; a value
///   without a scheme becomes `...`.
/// * `cookie`: names stay, values go — `session=...; theme=...`.
/// * `set-cookie`: the cookie value goes, attributes stay —
///   `session=...; Path=/; HttpOnly`.
/// * API-key and token headers (see the module lists) become `...`.
/// * `referer`, `location`, `content-location`: [`redact_url`].
pub fn redact_header<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    if value.is_empty() {
        return Cow::Borrowed(value);
    }
    if eq_any(name, SCHEME_HEADERS) || ends_with_ignore_case(name, "-authorization") {
        return Cow::Owned(keep_scheme(value));
    }
    if name.eq_ignore_ascii_case("cookie") {
        return Cow::Owned(redact_cookie(value));
    }
    if name.eq_ignore_ascii_case("set-cookie") {
        return Cow::Owned(redact_set_cookie(value));
    }
    if eq_any(name, SECRET_HEADERS)
        || SECRET_SUFFIXES
            .iter()
            .any(|s| ends_with_ignore_case(name, s))
    {
        return Cow::Borrowed(MASK);
    }
    if eq_any(name, URL_HEADERS) {
        return redact_url(value);
    }
    Cow::Borrowed(value)
}

/// `Bearer abc` → `Bearer ...`; a bare credential → `...`. The scheme must
/// look like an auth-scheme token (RFC 9110) of at most 32 characters, so a
/// secret without a scheme is never echoed as one.
fn keep_scheme(value: &str) -> String {
    let value = value.trim_start();
    if let Some((scheme, rest)) = value.split_once([' ', '\t']) {
        let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if !scheme.is_empty()
            && scheme.len() <= 32
            && scheme.chars().all(is_token)
            && !rest.trim().is_empty()
        {
            return format!("{scheme} {MASK}");
        }
    }
    MASK.to_string()
}

/// `a=1; b=2` → `a=...; b=...`.
fn redact_cookie(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(256));
    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if let Some((name, _)) = pair.split_once('=') {
            out.push_str(name.trim());
            out.push('=');
        }
        out.push_str(MASK);
    }
    out
}

/// `id=abc; Path=/; Secure` → `id=...; Path=/; Secure`.
fn redact_set_cookie(value: &str) -> String {
    let (first, attrs) = match value.split_once(';') {
        Some((first, attrs)) => (first, Some(attrs)),
        None => (value, None),
    };
    let mut out = match first.split_once('=') {
        Some((name, _)) => format!("{}={MASK}", name.trim()),
        None => MASK.to_string(),
    };
    if let Some(attrs) = attrs {
        out.push(';');
        out.push_str(attrs);
    }
    out
}

/// Redacts credentials in a URL (absolute or origin-form), returning it
/// unchanged (borrowed) when there are none.
///
/// * user info: `https://user:pass@host/` → `https://user:...@host/`; a lone
///   user name (often a token: `https://ghp_x@github.com/`) → `https://...@host/`.
/// * query parameters named like a secret (`X-Amz-Signature`,
///   `X-Amz-Credential`, `X-Amz-Security-Token`, `sig`, `signature`, `token`,
///   `access_token`, `api_key`, ... — see `docs/flow-log.md`): the value
///   becomes `...`, the name stays.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;

    // Authority user info.
    let mut pos = 0;
    if let Some(scheme_end) = url.find("://") {
        let auth_start = scheme_end + 3;
        let auth_len = url[auth_start..]
            .find(['/', '?', '#'])
            .unwrap_or(url.len() - auth_start);
        let authority = &url[auth_start..auth_start + auth_len];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let mut s = String::with_capacity(url.len());
            s.push_str(&url[..auth_start]);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    s.push_str(user);
                    s.push(':');
                    s.push_str(MASK);
                }
                None => s.push_str(MASK),
            }
            s.push_str(&authority[at..]);
            out = Some(s);
        }
        pos = auth_start + auth_len;
    }

    // Query parameters.
    if let Some(q) = url[pos..].find('?') {
        let q_start = pos + q + 1;
        let q_end = url[q_start..].find('#').map_or(url.len(), |f| q_start + f);
        let query = &url[q_start..q_end];
        let secret = |param: &str| {
            let name = param.split_once('=').map_or(param, |(n, _)| n);
            param.contains('=') && eq_any(name, SECRET_PARAMS)
        };
        if query.split('&').any(secret) {
            let s = out.get_or_insert_with(|| url[..pos].to_string());
            s.push_str(&url[pos..q_start]);
            for (i, param) in query.split('&').enumerate() {
                if i > 0 {
                    s.push('&');
                }
                match param.split_once('=') {
                    Some((name, _)) if secret(param) => {
                        s.push_str(name);
                        s.push('=');
                        s.push_str(MASK);
                    }
                    _ => s.push_str(param),
                }
            }
            pos = q_end;
        }
    }

    match out {
        Some(mut s) => {
            s.push_str(&url[pos..]);
            Cow::Owned(s)
        }
        None => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261121/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc",
                "AWS4-HMAC-SHA256 ...",
            ),
            ("authorization", "Bearer eyJhbGciOi.x.y", "Bearer ..."),
            ("authorization", "Basic dXNlcjpwYXNz", "Basic ..."),
            ("authorization", "sk-live-abcdef", "..."),
            ("authorization", "Bearer", "..."),
            ("authorization", "Bearer   ", "..."),
            ("authorization", "s3cr3t=/== tail", "..."),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg==", "Basic ..."),
            ("x-ms-authorization-auxiliary", "Bearer t", "Bearer ..."),
            (
                "cookie",
                "session=abc123; theme=dark",
                "session=...; theme=...",
            ),
            ("cookie", "lonely", "..."),
            ("cookie", "a=1;b=2;", "a=...; b=..."),
            (
                "set-cookie",
                "id=a3fWa; Expires=Thu, 21 Oct 2027 07:28:00 GMT; Secure; HttpOnly",
                "id=...; Expires=Thu, 21 Oct 2027 07:28:00 GMT; Secure; HttpOnly",
            ),
            ("Set-Cookie", "novalue", "..."),
            ("x-amz-security-token", "FwoGZXIvYXdzE", "..."),
            ("X-Api-Key", "k", "..."),
            ("x-auth-token", "t", "..."),
            ("api-key", "k", "..."),
            ("x-goog-api-key", "AIza", "..."),
            ("private-token", "glpat-x", "..."),
            ("x-vault-token", "hvs.x", "..."),
            ("x-shopify-access-token", "shpat", "..."),
            ("x-client-secret", "s", "..."),
            ("x-amz-server-side-encryption-customer-key", "a2V5", "..."),
            (
                "referer",
                "https://u:p@h/x?token=abc&page=2",
                "https://u:...@h/x?token=...&page=2",
            ),
            ("location", "/next?page=2", "/next?page=2"),
            ("content-type", "text/html", "text/html"),
            ("user-agent", "curl/8.5.0", "curl/8.5.0"),
            (
                "www-authenticate",
                "Bearer realm=\"x\"",
                "Bearer realm=\"x\"",
            ),
            ("authorization", "", ""),
        ];
        for &(name, value, want) in cases {
            assert_eq!(redact_header(name, value), want, "{name}: {value}");
        }
    }

    #[test]
    fn unchanged_values_are_borrowed() {
        assert!(matches!(redact_header("accept", "*/*"), Cow::Borrowed(_)));
        assert!(matches!(
            redact_url("https://example.com/a?b=c"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn url_table() {
        let cases: &[(&str, &str)] = &[
            ("https://example.com/", "https://example.com/"),
            ("https://user:pass@host/", "https://user:...@host/"),
            (
                "https://user:pa:ss@host:8443/p",
                "https://user:...@host:8443/p",
            ),
            (
                "https://ghp_token@github.com/o/r.git",
                "https://...@github.com/o/r.git",
            ),
            ("https://host/p@q", "https://host/p@q"),
            (
                "https://bucket.s3.amazonaws.com/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261121&X-Amz-Date=20261121T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef",
                "https://bucket.s3.amazonaws.com/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Date=20261121T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=...",
            ),
            (
                "https://h/?x-amz-security-token=abc",
                "https://h/?x-amz-security-token=...",
            ),
            (
                "https://a.blob.core.windows.net/c/b?sv=2022&sig=abc%3D",
                "https://a.blob.core.windows.net/c/b?sv=2022&sig=...",
            ),
            (
                "http://h/cb?access_token=a&state=s#frag",
                "http://h/cb?access_token=...&state=s#frag",
            ),
            (
                "http://h/?api_key=1&signature=2&token=3",
                "http://h/?api_key=...&signature=...&token=...",
            ),
            ("/search?q=token&token", "/search?q=token&token"),
            ("/x?token=", "/x?token=..."),
            ("https://u:p@h/?sig=1", "https://u:...@h/?sig=..."),
            ("https://u:p@h?sig=1", "https://u:...@h?sig=..."),
            ("", ""),
            ("?", "?"),
            ("://@", "://...@"),
            ("https://h/é?token=ü&x=ÿ", "https://h/é?token=...&x=ÿ"),
        ];
        for &(input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in [
            "://",
            ":///?#",
            "a://b@c@d/?=&&==",
            "@@@",
            "?&=",
            "h://\u{1F600}@\u{1F600}?\u{1F600}=1",
        ] {
            let _ = redact_url(s);
            let _ = redact_header("authorization", s);
            let _ = redact_header("cookie", s);
            let _ = redact_header("set-cookie", s);
        }
    }
}
