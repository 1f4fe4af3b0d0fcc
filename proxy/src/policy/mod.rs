//! Policy rules: allow / deny / passthrough / intercept plus header edits,
//! loaded from a YAML file and hot-reloaded (see `docs/policy.md`).
//!
//! Raw file (`raw`, serde) → compiled [`Policy`] (matchers, host index) →
//! decisions: [`Policy::decide_connection`] before TLS, and
//! [`Policy::decide_request`] per request. [`LivePolicy`] keeps the current
//! policy and reloads it; [`FailOpen`] tracks hosts whose clients reject our
//! certificate.

mod failopen;
mod live;
mod matcher;
mod print;
pub mod raw;
mod values;
pub mod watch;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alloc;
#[cfg(test)]
mod tests_live;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use failopen::{Clock, FailOpen, FailOpenConfig};
pub use live::LivePolicy;
pub use print::check_file;
pub use raw::{ActionKind, DenyConnection, Scheme};
pub use values::Cidr;

use matcher::{HostIndex, Inputs, Matcher, Prefilter, ReqInputs, Tri, with_normalized};
use raw::{RawActionSpec, RawHeaderEdit, RawMatch, RawPolicy};

use crate::poddir::PodInfo;

/// Default deny status (the original project's answer).
pub const DENY_STATUS: u16 = 418;
/// Default deny body.
pub const DENY_BODY: &str = "Access Denied by Administrator";

/// Errors loading or compiling a rules file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not exist.
    #[error("rules file {0} does not exist; pass an existing file with --rules")]
    Missing(PathBuf),
    /// YAML syntax, unknown field or invalid value. `message` names the
    /// field path and ends with "at line L column C".
    #[error("invalid rules file: {message}")]
    Parse {
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong, with path and position.
        message: String,
    },
    /// A whole-file problem found after parsing (duplicate names, …).
    #[error("invalid rules file: {0}")]
    Invalid(String),
}

/// What the client's connection is, before any request is read.
#[derive(Debug, Clone, Copy)]
pub struct ConnFacts<'a> {
    /// Client address.
    pub client: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// TLS server name, when the client sent one.
    pub sni: Option<&'a str>,
    /// Destination host when known before TLS (CONNECT target); for
    /// transparent connections usually `None`.
    pub host: Option<&'a str>,
    /// Client pod from the pod directory.
    pub source: Option<&'a PodInfo>,
}

/// One request on a connection.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Its connection.
    pub conn: &'a ConnFacts<'a>,
    /// http or https.
    pub scheme: Scheme,
    /// Method as received.
    pub method: &'a str,
    /// Host (authority or Host header, without port).
    pub host: &'a str,
    /// Path with query.
    pub path: &'a str,
    /// mitmproxy's pretty URL `scheme://host[:port]/path?query`.
    pub url: &'a str,
}

/// How a connection-level deny is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyHow {
    /// Fatal TLS alert (`access_denied`).
    TlsAlert,
    /// TCP reset.
    Reset,
}

/// The decision before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnDecision<'p> {
    /// Do not intercept: splice bytes.
    Passthrough {
        /// Deciding rule (`default` for the default action).
        rule: &'p str,
    },
    /// Refuse the connection.
    Deny {
        /// Alert or reset.
        how: DenyHow,
        /// Deciding rule.
        rule: &'p str,
    },
    /// Intercept; `decide_request` will answer the same rule for requests
    /// (allow, intercept, or a deny delivered as an HTTP response).
    Intercept {
        /// Deciding rule.
        rule: &'p str,
    },
    /// A rule that may match needs request facts: intercept and call
    /// `decide_request` per request.
    Undecided,
}

/// Header edits for one direction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set (replace) these, lower-case names.
    pub set: Vec<(String, String)>,
    /// Remove these, lower-case names.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    fn compile(raw: Option<&RawHeaderEdit>) -> Self {
        raw.map_or_else(Self::default, |r| Self {
            set: r
                .set
                .iter()
                .map(|(k, v)| (k.0.clone(), v.0.clone()))
                .collect(),
            remove: r.remove.iter().map(|k| k.0.clone()).collect(),
        })
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// The response a deny sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyResponse {
    /// Status (default 418).
    pub status: u16,
    /// Body (default "Access Denied by Administrator").
    pub body: String,
    /// Extra headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Delivery before TLS.
    pub connection: DenyConnection,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAction<'p> {
    /// Forward it (allow, intercept, or passthrough reached after interception).
    Allow,
    /// Answer with this response.
    Deny(&'p DenyResponse),
}

/// The decision for one request, borrowed from the policy.
#[derive(Debug, Clone, Copy)]
pub struct RequestDecision<'p> {
    /// Forward or answer.
    pub action: RequestAction<'p>,
    /// The rule's action as written.
    pub kind: ActionKind,
    /// Deciding rule (`default` for the default action).
    pub rule: &'p str,
    /// Edits to the request sent upstream.
    pub request_headers: &'p HeaderEdits,
    /// Edits to the response sent to the client.
    pub response_headers: &'p HeaderEdits,
    /// Extra header names (lower-case) to redact in logs.
    pub redact: &'p [String],
    /// Label for logs and metrics.
    pub tag: Option<&'p str>,
}

/// A compiled rule (or the default).
#[derive(Debug)]
struct Rule {
    name: String,
    matcher: Matcher,
    kind: ActionKind,
    deny: DenyResponse,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
    redact: Vec<String>,
    tag: Option<String>,
    /// Kept for printing (`check_file`).
    raw_match: RawMatch,
}

impl Rule {
    fn compile(
        where_: &str,
        name: String,
        m: RawMatch,
        s: RawActionSpec,
    ) -> Result<Self, PolicyError> {
        let d = s.deny.unwrap_or_default();
        Ok(Self {
            matcher: Matcher::compile(where_, &m)?,
            name,
            kind: s.action,
            deny: DenyResponse {
                status: d.status.map_or(DENY_STATUS, |x| x.0),
                body: d.body.unwrap_or_else(|| DENY_BODY.to_owned()),
                headers: d.headers.into_iter().map(|(k, v)| (k.0, v.0)).collect(),
                connection: d.connection,
            },
            request_headers: HeaderEdits::compile(s.request_headers.as_ref()),
            response_headers: HeaderEdits::compile(s.response_headers.as_ref()),
            redact: s.redact.into_iter().map(|h| h.0).collect(),
            tag: s.tag,
            raw_match: m,
        })
    }

    fn conn_decision(&self) -> ConnDecision<'_> {
        let rule = self.name.as_str();
        match (self.kind, self.deny.connection) {
            (ActionKind::Passthrough, _) => ConnDecision::Passthrough { rule },
            (ActionKind::Deny, DenyConnection::Alert) => ConnDecision::Deny {
                how: DenyHow::TlsAlert,
                rule,
            },
            (ActionKind::Deny, DenyConnection::Reset) => ConnDecision::Deny {
                how: DenyHow::Reset,
                rule,
            },
            _ => ConnDecision::Intercept { rule },
        }
    }

    fn request_decision(&self) -> RequestDecision<'_> {
        RequestDecision {
            action: match self.kind {
                ActionKind::Deny => RequestAction::Deny(&self.deny),
                _ => RequestAction::Allow,
            },
            kind: self.kind,
            rule: &self.name,
            request_headers: &self.request_headers,
            response_headers: &self.response_headers,
            redact: &self.redact,
            tag: self.tag.as_deref(),
        }
    }
}

/// A compiled, immutable rule set.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Rule,
    index: HostIndex,
    prefilter: Prefilter,
    fail_open: Option<FailOpenConfig>,
}

impl TryFrom<RawPolicy> for Policy {
    type Error = PolicyError;

    fn try_from(raw: RawPolicy) -> Result<Self, PolicyError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            if let Some(prev) = seen.insert(r.name.clone(), i) {
                return Err(PolicyError::Invalid(format!(
                    "rules[{i}]: duplicate rule name `{}` (also rules[{prev}]); names label logs and metrics and must be unique",
                    r.name
                )));
            }
            if r.name == "default" {
                return Err(PolicyError::Invalid(format!(
                    "rules[{i}]: the name `default` is reserved for the default action"
                )));
            }
            rules.push(Rule::compile(
                &format!("rules[{i}]"),
                r.name,
                r.matcher,
                r.spec,
            )?);
        }
        let default = Rule::compile(
            "default",
            "default".to_owned(),
            RawMatch::default(),
            raw.default.0,
        )?;
        let index = HostIndex::build(rules.iter().map(|r| &r.matcher));
        let prefilter = Prefilter::build(rules.iter().map(|r| &r.raw_match));
        // Url patterns are numbered in rule order by `Prefilter::build`.
        let mut next = 0;
        for r in &mut rules {
            let n = r.raw_match.url.0.len();
            r.matcher.set_url_ids(next..next + n);
            next += n;
        }
        Ok(Self {
            rules,
            default,
            index,
            prefilter,
            fail_open: raw.tls_fail_open.map(|f| FailOpenConfig {
                after: f.after,
                ttl: f.ttl.0,
            }),
        })
    }
}

impl Policy {
    /// Parse and compile YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            PolicyError::Parse {
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?;
        Self::try_from(raw)
    }

    /// Read, parse and compile a rules file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        match std::fs::read(path) {
            Ok(b) => Self::from_bytes(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(PolicyError::Missing(path.to_owned()))
            }
            Err(source) => Err(PolicyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parse and compile file contents.
    pub fn from_bytes(b: &[u8]) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(b)
            .map_err(|e| PolicyError::Invalid(format!("rules file is not UTF-8: {e}")))?;
        Self::from_yaml(text)
    }

    /// No rules, default `allow` (the behaviour without `--rules`).
    pub fn allow_all() -> Self {
        Self {
            rules: Vec::new(),
            default: Rule {
                name: "default".to_owned(),
                matcher: Matcher::empty(),
                kind: ActionKind::Allow,
                deny: DenyResponse {
                    status: DENY_STATUS,
                    body: DENY_BODY.to_owned(),
                    headers: Vec::new(),
                    connection: DenyConnection::Respond,
                },
                request_headers: HeaderEdits::default(),
                response_headers: HeaderEdits::default(),
                redact: Vec::new(),
                tag: None,
                raw_match: RawMatch::default(),
            },
            index: HostIndex::default(),
            prefilter: Prefilter::default(),
            fail_open: None,
        }
    }

    /// Number of rules (without the default).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules (only the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names in order (for pre-registering metric labels).
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The `tls_fail_open` block, if any.
    pub fn fail_open(&self) -> Option<FailOpenConfig> {
        self.fail_open
    }

    /// Decide before TLS / before reading a request.
    ///
    /// Walk the rules in order. Each rule's connection-level conditions
    /// (`host`, `sni`, `port`, `client_cidr`, `source`) are checked against
    /// the facts; `host` is compared with `facts.host`, else the SNI, and is
    /// unknown when neither is known. A rule whose conditions fail is
    /// skipped. The first rule that is not skipped decides **only if** all
    /// its conditions are connection-level and known; otherwise the answer
    /// is [`ConnDecision::Undecided`]. When every rule is skipped, the
    /// default action decides.
    pub fn decide_connection(&self, facts: &ConnFacts<'_>) -> ConnDecision<'_> {
        let mut hb = [0u8; matcher::HOST_BUF];
        let mut sb = [0u8; matcher::HOST_BUF];
        let host_raw = facts.host.or(facts.sni);
        with_opt(host_raw, &mut hb, |host| {
            with_opt(facts.sni, &mut sb, |sni| {
                let host_pre = host.map(|h| self.prefilter.host(h));
                let i = Inputs {
                    host,
                    sni,
                    port: facts.dst_port,
                    client: facts.client,
                    source: facts.source,
                    host_pre: host_pre.as_ref(),
                };
                let mut verdict = Tri::No;
                let check = |idx: usize, verdict: &mut Tri| {
                    *verdict = self.rules[idx].matcher.conn(&i);
                    *verdict != Tri::No
                };
                let hit = match host.and_then(|h| {
                    let host_re = || host_pre.as_ref().is_none_or(matcher::Lazy::possible);
                    self.index
                        .first(h, &|| true, &host_re, |idx| check(idx, &mut verdict))
                }) {
                    Some(hit) => hit,
                    None => (0..self.rules.len()).find(|&idx| check(idx, &mut verdict)),
                };
                match hit {
                    None => self.default.conn_decision(),
                    Some(idx) if verdict == Tri::Yes => self.rules[idx].conn_decision(),
                    Some(_) => ConnDecision::Undecided,
                }
            })
        })
    }

    /// Decide one request: the first rule whose conditions all hold, else
    /// the default. Allocation-free for hosts up to 256 bytes.
    pub fn decide_request(&self, facts: &RequestFacts<'_>) -> RequestDecision<'_> {
        let mut hb = [0u8; matcher::HOST_BUF];
        let mut sb = [0u8; matcher::HOST_BUF];
        with_normalized(facts.host, &mut hb, |host| {
            with_opt(facts.conn.sni, &mut sb, |sni| {
                let host_pre = self.prefilter.host(host);
                let url_pre = self.prefilter.url(facts.url);
                let i = Inputs {
                    host: Some(host),
                    sni,
                    port: facts.conn.dst_port,
                    client: facts.conn.client,
                    source: facts.conn.source,
                    host_pre: Some(&host_pre),
                };
                let r = ReqInputs {
                    scheme: facts.scheme,
                    method: facts.method,
                    path: facts.path,
                    url: facts.url,
                    url_pre: &url_pre,
                };
                let check = |idx: usize| self.rules[idx].matcher.request(&i, &r);
                let hit = match self.index.first(
                    host,
                    &|| url_pre.possible(),
                    &|| host_pre.possible(),
                    check,
                ) {
                    Some(hit) => hit,
                    None => (0..self.rules.len()).find(|&idx| check(idx)),
                };
                hit.map_or(&self.default, |idx| &self.rules[idx])
                    .request_decision()
            })
        })
    }
}

fn with_opt<R>(
    v: Option<&str>,
    buf: &mut [u8; matcher::HOST_BUF],
    f: impl FnOnce(Option<&str>) -> R,
) -> R {
    match v {
        Some(s) => with_normalized(s, buf, |n| f(Some(n))),
        None => f(None),
    }
}
