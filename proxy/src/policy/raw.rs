//! The rules file as written (serde, `deny_unknown_fields`).
//!
//! Leaf values (regexes, CIDRs, header names, durations…) are validated while
//! they are deserialised, so a bad one is reported by serde_yaml_ng with its
//! path (`rules[3].match.host`) and line/column. Cross-field checks run per
//! rule (`try_from`), so they are reported at the end of that rule.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};

/// Top level of a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Ordered rules; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// What happens when no rule matches.
    pub default: RawDefault,
    /// Pass hosts through after clients repeatedly reject our certificate.
    #[serde(default)]
    pub tls_fail_open: Option<RawFailOpen>,
}

/// `tls_fail_open: {after: N, ttl: 10m}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailOpen {
    /// Client certificate rejections before a host is passed through.
    pub after: u32,
    /// How long the host stays passed through.
    pub ttl: Ttl,
}

/// The four actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Forward the request (intercepting TLS).
    Allow,
    /// Refuse (HTTP response, TLS alert or reset).
    Deny,
    /// Do not intercept TLS: splice bytes through.
    Passthrough,
    /// Intercept TLS; requests are forwarded like `allow`.
    Intercept,
}

impl ActionKind {
    /// Lower-case name as written in rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Passthrough => "passthrough",
            Self::Intercept => "intercept",
        }
    }
}

/// How a `deny` is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyConnection {
    /// Intercept and answer every request with the deny response (default).
    #[default]
    Respond,
    /// Fatal TLS alert (`access_denied`) before interception.
    Alert,
    /// TCP reset.
    Reset,
}

/// `deny: {status, body, headers, connection}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeny {
    /// Response status (default 418).
    #[serde(default)]
    pub status: Option<Status>,
    /// Response body (default "Access Denied by Administrator").
    #[serde(default)]
    pub body: Option<String>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<HeaderName, HeaderValue>,
    /// Delivery: respond (default) | alert | reset.
    #[serde(default)]
    pub connection: DenyConnection,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdit {
    /// Headers set (replacing any present).
    #[serde(default)]
    pub set: BTreeMap<HeaderName, HeaderValue>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<HeaderName>,
}

/// Everything a rule does (also the shape of `default`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActionSpec {
    /// allow | deny | passthrough | intercept.
    pub action: ActionKind,
    /// Deny response (only with `action: deny`).
    #[serde(default)]
    pub deny: Option<RawDeny>,
    /// Edits to the request sent upstream.
    #[serde(default)]
    pub request_headers: Option<RawHeaderEdit>,
    /// Edits to the response sent to the client.
    #[serde(default)]
    pub response_headers: Option<RawHeaderEdit>,
    /// Extra headers redacted in logs.
    #[serde(default)]
    pub redact: Vec<HeaderName>,
    /// Label carried to logs and metrics.
    #[serde(default)]
    pub tag: Option<String>,
}

/// `default:` — an action name or a full action spec.
#[derive(Debug)]
pub struct RawDefault(pub RawActionSpec);

impl<'de> Deserialize<'de> for RawDefault {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDefault;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an action name (allow, deny, passthrough, intercept) or a mapping with `action:`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDefault, E> {
                let action = ActionKind::deserialize(v.into_deserializer())?;
                Ok(RawDefault(RawActionSpec {
                    action,
                    deny: None,
                    request_headers: None,
                    response_headers: None,
                    redact: Vec::new(),
                    tag: None,
                }))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<RawDefault, A::Error> {
                let spec = RawActionSpec::deserialize(de::value::MapAccessDeserializer::new(m))?;
                check_spec(&spec, false).map_err(de::Error::custom)?;
                Ok(RawDefault(spec))
            }
        }
        d.deserialize_any(V)
    }
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RuleFields")]
pub struct RawRule {
    /// Shown in logs and metrics.
    pub name: String,
    /// Conditions (all must hold); empty = always.
    pub matcher: RawMatch,
    /// What the rule does.
    pub spec: RawActionSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    action: ActionKind,
    #[serde(default)]
    deny: Option<RawDeny>,
    #[serde(default)]
    request_headers: Option<RawHeaderEdit>,
    #[serde(default)]
    response_headers: Option<RawHeaderEdit>,
    #[serde(default)]
    redact: Vec<HeaderName>,
    #[serde(default)]
    tag: Option<String>,
}

impl TryFrom<RuleFields> for RawRule {
    type Error = String;
    fn try_from(f: RuleFields) -> Result<Self, String> {
        if f.name.trim().is_empty() {
            return Err("rule `name` must not be empty".into());
        }
        let spec = RawActionSpec {
            action: f.action,
            deny: f.deny,
            request_headers: f.request_headers,
            response_headers: f.response_headers,
            redact: f.redact,
            tag: f.tag,
        };
        let prefix = |e: String| format!("rule `{}`: {e}", f.name);
        check_spec(&spec, f.matcher.has_request_level()).map_err(prefix)?;
        Ok(RawRule {
            name: f.name,
            matcher: f.matcher,
            spec,
        })
    }
}

/// Cross-field checks of an action spec.
fn check_spec(s: &RawActionSpec, request_matchers: bool) -> Result<(), String> {
    if s.deny.is_some() && s.action != ActionKind::Deny {
        return Err(format!(
            "`deny:` options given but the action is `{}`; remove them or use `action: deny`",
            s.action.as_str()
        ));
    }
    let edits = s.request_headers.is_some() || s.response_headers.is_some();
    if s.action == ActionKind::Passthrough {
        if edits {
            return Err(
                "header edits need interception; they cannot go with `action: passthrough`".into(),
            );
        }
        if request_matchers {
            return Err("`action: passthrough` is decided before TLS: it cannot use request matchers (url, method, path_prefix, scheme)".into());
        }
    }
    if let Some(d) = &s.deny
        && d.connection != DenyConnection::Respond
        && request_matchers
    {
        return Err("`deny.connection: alert|reset` is decided before TLS: it cannot use request matchers (url, method, path_prefix, scheme)".into());
    }
    if s.action == ActionKind::Deny && edits {
        return Err(
            "header edits cannot go with `action: deny` (use deny.headers for the response)".into(),
        );
    }
    Ok(())
}

/// `source:` — conditions on the client pod (from the pod directory).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Pod namespace (`prefix*` allowed).
    #[serde(default)]
    pub namespace: OneOrMany<NamePat>,
    /// Pod name (`prefix*` allowed).
    #[serde(default)]
    pub pod: OneOrMany<NamePat>,
    /// Owning workload: `name` or `Kind/name` (`prefix*` allowed).
    #[serde(default)]
    pub workload: OneOrMany<NamePat>,
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `match:` — all given conditions must hold; a list means any of.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Request host (connection: CONNECT host, else SNI).
    #[serde(default)]
    pub host: OneOrMany<HostPat>,
    /// TLS server name.
    #[serde(default)]
    pub sni: OneOrMany<HostPat>,
    /// Regex on `scheme://host[:port]/path?query`.
    #[serde(default)]
    pub url: OneOrMany<UrlRegex>,
    /// HTTP method.
    #[serde(default)]
    pub method: OneOrMany<Method>,
    /// Path starts with.
    #[serde(default)]
    pub path_prefix: OneOrMany<PathPrefix>,
    /// Destination port or `lo-hi`.
    #[serde(default)]
    pub port: OneOrMany<PortRange>,
    /// http | https.
    #[serde(default)]
    pub scheme: OneOrMany<Scheme>,
    /// Client address in one of these networks.
    #[serde(default)]
    pub client_cidr: OneOrMany<Cidr>,
    /// Client pod.
    #[serde(default)]
    pub source: Option<RawSource>,
}

impl RawMatch {
    /// Any matcher that needs a request (not decidable before TLS).
    pub fn has_request_level(&self) -> bool {
        !self.url.0.is_empty()
            || !self.method.0.is_empty()
            || !self.path_prefix.0.is_empty()
            || !self.scheme.0.is_empty()
    }
}

/// A single value or a list of values.
#[derive(Debug, Clone)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![T::deserialize(v.into_deserializer())?]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![T::deserialize(v.into_deserializer())?]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![T::deserialize(v.into_deserializer())?]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element()? {
                    out.push(v);
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "empty list: remove the matcher to match anything",
                    ));
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

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
        Ok(Self::Exact(lower))
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
