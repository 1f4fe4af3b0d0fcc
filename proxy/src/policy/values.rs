//! Leaf values of the rules file, validated while deserialised (so serde
//! reports a bad one with its path, line and column).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Implements `Deserialize` for a string-parsed type via `FromStr`-like fn.
macro_rules! from_str_de {
    ($ty:ty, $what:expr, $parse:path) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $parse(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        $parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        $parse(&v.to_string()).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// Host pattern: exact, `*.suffix` (any depth ≥ 1) or `~regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPat {
    /// Exact host (lower-case, no trailing dot).
    Exact(String),
    /// `*.suffix`: stores `suffix`.
    Wildcard(String),
    /// `~regex` (searched, use `^…$` to anchor): stores the regex source.
    Regex(String),
}

impl HostPat {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(re) = s.strip_prefix('~') {
            check_regex(re)?;
            return Ok(Self::Regex(re.to_owned()));
        }
        let lower = normalize_host(s);
        if let Some(suffix) = lower.strip_prefix("*.") {
            check_hostname(suffix, s)?;
            return Ok(Self::Wildcard(suffix.to_owned()));
        }
        check_hostname(&lower, s)?;
        // IPv6 literals in canonical form (requests are canonicalised too).
        match lower.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Ok(Self::Exact(v6.to_string())),
            Err(_) => Ok(Self::Exact(lower)),
        }
    }
}
from_str_de!(
    HostPat,
    "a host: name, `*.suffix` or `~regex`",
    HostPat::parse
);

impl fmt::Display for HostPat {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*.{s}"),
            Self::Regex(r) => write!(f, "~{r}"),
        }
    }
}

/// Lower-case, without a trailing dot, brackets stripped from IPv6.
pub fn normalize_host(s: &str) -> String {
    let s = s.trim_end_matches('.');
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.to_ascii_lowercase()
}

fn check_hostname(h: &str, orig: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host `{orig}`: expected a host name, an IP, `*.suffix` or `~regex`"
        ))
    }
}

fn check_regex(re: &str) -> Result<(), String> {
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let why = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(text.lines().last().unwrap_or("invalid"));
            Err(format!("invalid regex `{re}`: {why}"))
        }
    }
}

/// Regex over the pretty URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRegex(pub String);
fn parse_url_regex(s: &str) -> Result<UrlRegex, String> {
    check_regex(s)?;
    Ok(UrlRegex(s.to_owned()))
}
from_str_de!(UrlRegex, "a regex", parse_url_regex);

/// An HTTP method (upper-case token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method(pub String);
fn parse_method(s: &str) -> Result<Method, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err(format!("invalid method `{s}`: expected e.g. GET, POST"));
    }
    Ok(Method(s.to_ascii_uppercase()))
}
from_str_de!(Method, "an HTTP method", parse_method);

/// A path prefix starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix(pub String);
fn parse_path_prefix(s: &str) -> Result<PathPrefix, String> {
    if !s.starts_with('/') {
        return Err(format!("invalid path_prefix `{s}`: must start with `/`"));
    }
    Ok(PathPrefix(s.to_owned()))
}
from_str_de!(PathPrefix, "a path prefix", parse_path_prefix);

/// Inclusive port range (a single port is `p-p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);
fn parse_port(s: &str) -> Result<PortRange, String> {
    let bad = || format!("invalid port `{s}`: expected 1-65535 or `lo-hi`");
    let p = |x: &str| x.trim().parse::<u16>().ok().filter(|&v| v != 0);
    match s.split_once('-') {
        Some((a, b)) => match (p(a), p(b)) {
            (Some(lo), Some(hi)) if lo <= hi => Ok(PortRange(lo, hi)),
            _ => Err(bad()),
        },
        None => p(s).map(|v| PortRange(v, v)).ok_or_else(bad),
    }
}
from_str_de!(PortRange, "a port or `lo-hi`", parse_port);

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

/// URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside (IPv4-mapped IPv6 is treated as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask32(u32::from(a), self.len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask128(u128::from(a), self.len) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(v: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(len)))
    }
}
fn mask128(v: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(len)))
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || format!("invalid CIDR `{s}`: expected e.g. 10.0.0.0/8 or fd00::/8");
    let (a, l) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
    let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
    let addr = addr.to_canonical();
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&v| v <= max)
            .ok_or_else(bad)?,
    };
    let addr = match addr {
        IpAddr::V4(v) => IpAddr::V4(mask32(u32::from(v), len).into()),
        IpAddr::V6(v) => IpAddr::V6(mask128(u128::from(v), len).into()),
    };
    Ok(Cidr { addr, len })
}
from_str_de!(Cidr, "a CIDR", parse_cidr);

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cidr(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A name, or a prefix when it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePat(pub String);
fn parse_name_pat(s: &str) -> Result<NamePat, String> {
    if s.is_empty() || s[..s.len() - 1].contains('*') {
        return Err(format!("invalid name `{s}`: expected a name or `prefix*`"));
    }
    Ok(NamePat(s.to_owned()))
}
from_str_de!(NamePat, "a name or `prefix*`", parse_name_pat);

impl NamePat {
    /// Exact or prefix match.
    pub fn matches(&self, v: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(p) => v.starts_with(p),
            None => self.0 == v,
        }
    }
}

/// A header name (lower-case token).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderName(pub String);
fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if s.is_empty() || !s.bytes().all(tchar) {
        return Err(format!("invalid header name `{s}`"));
    }
    Ok(HeaderName(s.to_ascii_lowercase()))
}
from_str_de!(HeaderName, "a header name", parse_header_name);

/// A header value (no CR, LF or NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValue(pub String);
fn parse_header_value(s: &str) -> Result<HeaderValue, String> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("invalid header value: must not contain CR, LF or NUL".into());
    }
    Ok(HeaderValue(s.to_owned()))
}
from_str_de!(HeaderValue, "a header value", parse_header_value);

/// HTTP status 100–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);
fn parse_status(s: &str) -> Result<Status, String> {
    match s.parse::<u16>() {
        Ok(v) if (100..=599).contains(&v) => Ok(Status(v)),
        _ => Err(format!("invalid status `{s}`: expected 100-599")),
    }
}
from_str_de!(Status, "an HTTP status", parse_status);

/// Duration: `90s`, `10m`, `1h`, `500ms` or plain seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);
fn parse_ttl(s: &str) -> Result<Ttl, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid duration `{s}`: expected e.g. 30s, 10m, 1h"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration `{s}`: unit must be ms, s, m or h"
            ));
        }
    };
    Ok(Ttl(d))
}
from_str_de!(Ttl, "a duration like 10m", parse_ttl);
