//! Normalised one-line-per-rule rendering (`tproxy rules check FILE`).

use std::fmt::{self, Display, Write as _};
use std::path::Path;

use super::raw::{ActionKind, DenyConnection, RawMatch, Scheme};
use super::{DENY_BODY, DENY_STATUS, HeaderEdits, Policy, PolicyError, Rule};

/// Load `path` and render it (errors as [`Policy::load`]).
pub fn check_file(path: &Path) -> Result<String, PolicyError> {
    Ok(Policy::load(path)?.to_string())
}

impl Display for Policy {
    /// One rule per line: `name: match host=*.a.com method=GET → allow`,
    /// then `default → …` and the fail-open line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            write!(f, "{}: match ", r.name)?;
            write_match(f, &r.raw_match)?;
            f.write_str(" → ")?;
            write_action(f, r)?;
            f.write_char('\n')?;
        }
        f.write_str("default → ")?;
        write_action(f, &self.default)?;
        f.write_char('\n')?;
        if let Some(fo) = self.fail_open {
            writeln!(
                f,
                "tls_fail_open: after={} ttl={}s",
                fo.after,
                fo.ttl.as_secs()
            )?;
        }
        let catch_all = self.rules.iter().position(|r| is_catch_all(&r.raw_match));
        if let Some(i) = catch_all.filter(|&i| i + 1 < self.rules.len()) {
            writeln!(
                f,
                "# warning: rule `{}` matches everything; the {} rule(s) after it and the default never apply",
                self.rules[i].name,
                self.rules.len() - i - 1
            )?;
        }
        Ok(())
    }
}

fn list<T: Display>(
    f: &mut fmt::Formatter<'_>,
    first: &mut bool,
    key: &str,
    v: &[T],
) -> fmt::Result {
    if v.is_empty() {
        return Ok(());
    }
    if !*first {
        f.write_char(' ')?;
    }
    *first = false;
    write!(f, "{key}=")?;
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write!(f, "{x}")?;
    }
    Ok(())
}

struct Q<'a>(&'a str);
impl Display for Q<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() || self.0.contains([' ', ',', '"', '=']) {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str(self.0)
        }
    }
}

fn write_match(f: &mut fmt::Formatter<'_>, m: &RawMatch) -> fmt::Result {
    let mut first = true;
    list(f, &mut first, "host", &m.host.0)?;
    list(f, &mut first, "sni", &m.sni.0)?;
    list(
        f,
        &mut first,
        "url",
        &q(m.url.0.iter().map(|x| x.0.as_str()).collect()),
    )?;
    list(
        f,
        &mut first,
        "method",
        &q(m.method.0.iter().map(|x| x.0.as_str()).collect()),
    )?;
    list(
        f,
        &mut first,
        "path_prefix",
        &q(m.path_prefix.0.iter().map(|x| x.0.as_str()).collect()),
    )?;
    list(f, &mut first, "port", &m.port.0)?;
    let schemes: Vec<&str> = m
        .scheme
        .0
        .iter()
        .map(|s| match s {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
        .collect();
    list(f, &mut first, "scheme", &schemes)?;
    list(f, &mut first, "client_cidr", &m.client_cidr.0)?;
    if let Some(s) = &m.source {
        list(f, &mut first, "source.namespace", &names(&s.namespace.0))?;
        list(f, &mut first, "source.pod", &names(&s.pod.0))?;
        list(f, &mut first, "source.workload", &names(&s.workload.0))?;
        for (k, v) in &s.labels {
            list(f, &mut first, &format!("source.labels.{k}"), &[Q(v)])?;
        }
    }
    if first {
        f.write_char('*')?;
    }
    Ok(())
}

fn q(v: Vec<&str>) -> Vec<Q<'_>> {
    v.into_iter().map(Q).collect()
}

fn names(v: &[super::raw::NamePat]) -> Vec<Q<'_>> {
    v.iter().map(|x| Q(x.0.as_str())).collect()
}

fn is_catch_all(m: &RawMatch) -> bool {
    m.host.0.is_empty()
        && m.sni.0.is_empty()
        && m.url.0.is_empty()
        && m.method.0.is_empty()
        && m.path_prefix.0.is_empty()
        && m.port.0.is_empty()
        && m.scheme.0.is_empty()
        && m.client_cidr.0.is_empty()
        && m.source.is_none()
}

fn write_edits(f: &mut fmt::Formatter<'_>, dir: &str, e: &HeaderEdits) -> fmt::Result {
    for (k, v) in &e.set {
        write!(f, " {dir}.set.{k}={}", Q(v))?;
    }
    for k in &e.remove {
        write!(f, " {dir}.remove={k}")?;
    }
    Ok(())
}

fn write_action(f: &mut fmt::Formatter<'_>, r: &Rule) -> fmt::Result {
    f.write_str(r.kind.as_str())?;
    if r.kind == ActionKind::Deny {
        let d = &r.deny;
        match d.connection {
            DenyConnection::Alert => f.write_str(" tls-alert")?,
            DenyConnection::Reset => f.write_str(" reset")?,
            DenyConnection::Respond => {}
        }
        if d.connection == DenyConnection::Respond || d.status != DENY_STATUS || d.body != DENY_BODY
        {
            write!(f, " {} {:?}", d.status, d.body)?;
        }
        for (k, v) in &d.headers {
            write!(f, " header.{k}={}", Q(v))?;
        }
    }
    write_edits(f, "request_headers", &r.request_headers)?;
    write_edits(f, "response_headers", &r.response_headers)?;
    if !r.redact.is_empty() {
        write!(f, " redact={}", r.redact.join(","))?;
    }
    if let Some(t) = &r.tag {
        write!(f, " tag={}", Q(t))?;
    }
    Ok(())
}
