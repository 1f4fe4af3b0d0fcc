//! Policy glue: evaluate the live rules for a connection (before TLS) or a
//! request, and turn the borrowed decision into what the data path needs.

use crate::http1::codec::Headers;
use crate::policy::{
    ConnDecision, ConnFacts, DenyHow, DenyResponse, HeaderEdits, RequestAction, RequestFacts,
    Scheme,
};
use crate::worker::Worker;

use super::ConnCtx;
use super::request::Route;

/// What the rules say about one request (owned: no borrow of the policy
/// survives an await).
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Answer with this instead of forwarding.
    pub deny: Option<DenyResponse>,
    /// Flow-log decision: intercept (no rules), allow, deny, intercept.
    pub decision: &'static str,
    /// Deciding rule; None without a rules file.
    pub rule: Option<String>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// The rule's tag, for logs (and later metrics).
    pub tag: Option<String>,
    /// Extra header names (lower-case) the rule wants redacted in logs.
    pub redact: Vec<String>,
}

impl Verdict {
    fn no_rules() -> Self {
        Verdict {
            deny: None,
            decision: "intercept",
            rule: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            tag: None,
            redact: Vec::new(),
        }
    }

    /// Replace the values of the rule's `redact` headers in a logged header
    /// copy (the built-in credential redaction happens in the flow log).
    pub fn redact_logged(&self, headers: &mut [(String, String)], show_secrets: bool) {
        if show_secrets || self.redact.is_empty() {
            return;
        }
        for (name, value) in headers.iter_mut() {
            if self.redact.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                *value = "...".to_owned();
            }
        }
    }
}

fn conn_facts<'a>(ctx: &'a ConnCtx, dst_port: u16) -> ConnFacts<'a> {
    ConnFacts {
        client: ctx.client.ip(),
        dst_port,
        sni: ctx.sni.as_deref(),
        host: ctx.conn_host.as_deref(),
        source: ctx.source.as_deref(),
    }
}

/// Evaluate the rules in force now for one request.
pub fn for_request(
    worker: &Worker,
    ctx: &ConnCtx,
    tls: bool,
    route: &Route,
    method: &str,
) -> Verdict {
    if !worker.shared.policy_configured() {
        return Verdict::no_rules();
    }
    let mut snap = worker.policy.borrow_mut();
    let policy = snap.get();
    let conn = conn_facts(ctx, route.target.port);
    let facts = RequestFacts {
        conn: &conn,
        scheme: if tls { Scheme::Https } else { Scheme::Http },
        method,
        host: &route.host,
        path: &route.path,
        url: &route.url,
    };
    let d = policy.decide_request(&facts);
    Verdict {
        deny: match d.action {
            RequestAction::Deny(r) => Some(r.clone()),
            RequestAction::Allow => None,
        },
        decision: d.kind.as_str(),
        rule: Some(d.rule.to_owned()),
        request_headers: d.request_headers.clone(),
        response_headers: d.response_headers.clone(),
        tag: d.tag.map(str::to_owned),
        redact: d.redact.to_vec(),
    }
}

/// The rules' say on a connection before any TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnVerdict {
    /// Continue: intercept (requests are decided one by one).
    Intercept,
    Passthrough {
        rule: String,
    },
    Deny {
        how: DenyHow,
        rule: String,
    },
}

/// Evaluate connection-level rules (SNI, destination, client, source pod).
pub fn for_connection(worker: &Worker, ctx: &ConnCtx, dst_port: u16) -> ConnVerdict {
    if !worker.shared.policy_configured() {
        return ConnVerdict::Intercept;
    }
    let mut snap = worker.policy.borrow_mut();
    let facts = conn_facts(ctx, dst_port);
    match snap.get().decide_connection(&facts) {
        ConnDecision::Passthrough { rule } => ConnVerdict::Passthrough {
            rule: rule.to_owned(),
        },
        ConnDecision::Deny { how, rule } => ConnVerdict::Deny {
            how,
            rule: rule.to_owned(),
        },
        ConnDecision::Intercept { .. } | ConnDecision::Undecided => ConnVerdict::Intercept,
    }
}

/// Fields a rule may not edit: they frame the message on the wire.
fn is_framing(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

/// Apply header edits (removals first, then sets); framing fields are never
/// touched, whatever the rule says.
pub fn apply(edits: &HeaderEdits, headers: &mut Headers) {
    for name in edits.remove.iter().filter(|n| !is_framing(n)) {
        headers.remove(name);
    }
    for (name, value) in edits.set.iter().filter(|(n, _)| !is_framing(n)) {
        headers.set(name, value.as_bytes());
    }
}

/// A complete deny response; `keep_alive` decides the Connection field.
pub fn deny_response(d: &DenyResponse, keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        d.status,
        super::respond::reason(d.status)
    );
    let mut has_ctype = false;
    for (k, v) in &d.headers {
        has_ctype |= k.eq_ignore_ascii_case("content-type");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_ctype {
        out.push_str("content-type: text/plain; charset=utf-8\r\n");
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: {}\r\n\r\n",
        d.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    ));
    out.push_str(&d.body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_but_never_touch_framing() {
        let mut h = Headers::new();
        h.append("Content-Length", "5");
        h.append("X-Drop", "1");
        h.append("X-Keep", "old");
        let edits = HeaderEdits {
            set: vec![
                ("x-keep".into(), "new".into()),
                ("content-length".into(), "999".into()),
            ],
            remove: vec!["x-drop".into(), "transfer-encoding".into()],
        };
        apply(&edits, &mut h);
        assert_eq!(h.get("x-keep"), Some(&b"new"[..]));
        assert!(h.get("x-drop").is_none());
        assert_eq!(h.get("content-length"), Some(&b"5"[..]));
    }

    #[test]
    fn deny_response_is_well_formed() {
        let d = DenyResponse {
            status: 418,
            body: "Access Denied by Administrator".into(),
            headers: vec![("x-why".into(), "policy".into())],
            connection: crate::policy::DenyConnection::Respond,
        };
        let r = String::from_utf8(deny_response(&d, true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 418 I'm a teapot\r\n"), "{r}");
        assert!(r.contains("x-why: policy\r\n") && r.contains("connection: keep-alive\r\n"));
        assert!(r.ends_with("\r\n\r\nAccess Denied by Administrator"));
    }
}
