//! `--proxyauth USER:PASS`: HTTP Basic proxy authentication for explicit-mode
//! clients (like mitmproxy's `--proxyauth user:pass`). Every request on a
//! regular listener (absolute-form or CONNECT) must carry
//! `Proxy-Authorization: Basic base64(USER:PASS)`; otherwise tproxy answers
//! `407` with `Proxy-Authenticate: Basic realm="tproxy"` and nothing goes
//! upstream. The header is hop-by-hop: it is never forwarded.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// The realm named in the challenge.
pub const REALM: &str = "tproxy";

/// The expected credentials (never printed: `Debug` hides the password).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    user: String,
    /// `USER:PASS`, as a client's decoded Basic credentials must read.
    expected: Vec<u8>,
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl FromStr for ProxyAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((user, pass)) if !user.is_empty() && !pass.is_empty() => Ok(ProxyAuth {
                user: user.to_owned(),
                expected: s.as_bytes().to_vec(),
            }),
            _ => Err(
                "--proxyauth expects USER:PASS (both non-empty; the user name cannot contain `:`)"
                    .into(),
            ),
        }
    }
}

/// The outcome of checking one request's `Proxy-Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    /// The right credentials.
    Ok,
    /// No `Proxy-Authorization` header.
    Missing,
    /// A header that is not Basic, not base64, or the wrong user or password.
    Wrong,
}

impl ProxyAuth {
    /// The configured user name (for logs).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Check a request's `Proxy-Authorization` value.
    pub fn check(&self, header: Option<&[u8]>) -> AuthCheck {
        let Some(value) = header else {
            return AuthCheck::Missing;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return AuthCheck::Wrong;
        };
        let value = value.trim();
        let Some((scheme, token)) = value.split_once(' ') else {
            return AuthCheck::Wrong;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return AuthCheck::Wrong;
        }
        match base64::engine::general_purpose::STANDARD.decode(token.trim()) {
            Ok(given) if constant_time_eq(&given, &self.expected) => AuthCheck::Ok,
            _ => AuthCheck::Wrong,
        }
    }
}

/// Compare without an early exit on the first differing byte (the length
/// still shows; the password's bytes do not).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `407` answer: a challenge and a body that says what to send.
pub fn challenge_response(check: AuthCheck) -> Vec<u8> {
    let why = match check {
        AuthCheck::Wrong => "wrong proxy credentials",
        _ => "proxy authentication required",
    };
    let body = format!(
        "tproxy: {why}: send Proxy-Authorization: Basic (curl --proxy-user USER:PASS, or \
         HTTP_PROXY=http://USER:PASS@host:port)\n"
    );
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"{REALM}\"\r\n\
         content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(creds: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
        .into_bytes()
    }

    #[test]
    fn parses_user_pass_and_hides_the_password() {
        let a: ProxyAuth = "alice:s3:cret".parse().unwrap();
        assert_eq!(a.user(), "alice");
        assert!(!format!("{a:?}").contains("s3:cret"));
        for bad in ["alice", ":pw", "alice:", ""] {
            let e = bad.parse::<ProxyAuth>().unwrap_err();
            assert!(e.contains("USER:PASS"), "{bad}: {e}");
        }
    }

    #[test]
    fn checks_basic_credentials() {
        let a: ProxyAuth = "alice:s3:cret".parse().unwrap();
        assert_eq!(a.check(Some(&basic("alice:s3:cret"))), AuthCheck::Ok);
        assert_eq!(
            a.check(Some(b"basic  YWxpY2U6czM6Y3JldA== ")),
            AuthCheck::Ok
        );
        assert_eq!(a.check(None), AuthCheck::Missing);
        assert_eq!(a.check(Some(&basic("alice:wrong"))), AuthCheck::Wrong);
        assert_eq!(a.check(Some(&basic("bob:s3:cret"))), AuthCheck::Wrong);
        assert_eq!(a.check(Some(b"Bearer abc")), AuthCheck::Wrong);
        assert_eq!(a.check(Some(b"Basic !!!")), AuthCheck::Wrong);
        assert_eq!(a.check(Some(b"Basic")), AuthCheck::Wrong);
        assert_eq!(a.check(Some(&[0xff, 0xfe])), AuthCheck::Wrong);
    }

    #[test]
    fn challenge_is_a_well_formed_407() {
        let r = String::from_utf8(challenge_response(AuthCheck::Missing)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"));
        assert!(head.contains("proxy-authenticate: Basic realm=\"tproxy\"\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("--proxy-user"));
    }
}
