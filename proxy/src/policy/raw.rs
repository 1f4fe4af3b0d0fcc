//! The rules file as written (serde, `deny_unknown_fields`).
//!
//! Leaf values (regexes, CIDRs, header names, durations…) are validated while
//! they are deserialised, so a bad one is reported by serde_yaml_ng with its
//! path (`rules[3].match.host`) and line/column. Cross-field checks run per
//! rule (`try_from`), so they are reported at the end of that rule.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};

pub use super::values::{
    Cidr, HeaderName, HeaderValue, HostPat, Method, NamePat, PathPrefix, PortRange, Scheme, Status,
    Ttl, UrlRegex, normalize_host,
};

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
