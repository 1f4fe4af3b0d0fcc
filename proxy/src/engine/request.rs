//! Request routing: where a request goes, its pretty URL, and the head sent
//! upstream (origin-form, hop-by-hop fields removed).

use crate::http1::codec::{self, BodyKind, RequestHead};
use crate::upstream::Target;

/// Which requests a connection carries.
#[derive(Debug, Clone)]
pub enum Scope {
    /// A regular-mode connection: absolute-form requests and CONNECT.
    Proxy,
    /// Everything goes to `target` (a tunnel or a transparent connection);
    /// `tls` = the client side is TLS we terminated (scheme https).
    Fixed { target: Target, tls: bool },
}

/// A routed request.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Target,
    /// mitmproxy's pretty URL: `scheme://host[:port]/path?query`.
    pub url: String,
    /// Host header value to send upstream.
    pub host_header: String,
    /// Request target in origin-form (`/path?query`).
    pub path: String,
    /// Host of the URL (no port), for policy matching.
    pub host: String,
}

/// Route `head` within `scope`. Errors are messages for a 400.
pub fn route(scope: &Scope, head: &RequestHead) -> Result<Route, String> {
    match scope {
        Scope::Proxy => {
            let (scheme, rest) = if let Some(r) = strip_prefix_ci(&head.target, "http://") {
                ("http", r)
            } else if let Some(r) = strip_prefix_ci(&head.target, "https://") {
                ("https", r)
            } else {
                return Err(format!(
                    "`{}` is not an absolute URL: tproxy on this port is an explicit proxy; \
                     set HTTP_PROXY/HTTPS_PROXY to it, or use a transparent-mode listener",
                    head.target
                ));
            };
            let (auth, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let auth = auth.rsplit_once('@').map_or(auth, |(_, a)| a);
            let default_port = if scheme == "https" { 443 } else { 80 };
            let (host, port) = split_authority(auth, default_port)
                .ok_or_else(|| format!("bad host in `{}`", head.target))?;
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_owned()
            };
            let target = Target {
                host: host.clone(),
                port,
                addr: None,
                tls: (scheme == "https").then(|| (!is_ip(&host)).then(|| host.clone())),
            };
            Ok(Route {
                url: pretty_url(scheme, &host, port, &path),
                host_header: auth.to_owned(),
                target,
                path,
                host,
            })
        }
        Scope::Fixed { target, tls } => {
            let scheme = if *tls { "https" } else { "http" };
            let default_port = if *tls { 443 } else { 80 };
            let host_header = head
                .headers
                .get("host")
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_else(|| crate::upstream::authority(&target.host, target.port));
            let (url_host, url_port) = split_authority(&host_header, default_port)
                .unwrap_or((target.host.clone(), target.port));
            let path = if head.target.starts_with('/') {
                head.target.clone()
            } else if let Some(i) = head.target.find("://") {
                // Absolute-form inside a tunnel: keep only the path.
                let rest = &head.target[i + 3..];
                rest.find('/')
                    .map_or_else(|| "/".to_owned(), |j| rest[j..].to_owned())
            } else if head.target == "*" {
                "*".to_owned()
            } else {
                return Err(format!("bad request target `{}`", head.target));
            };
            Ok(Route {
                url: pretty_url(scheme, &url_host, url_port, &path),
                host_header,
                target: target.clone(),
                path,
                host: url_host,
            })
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

/// `host[:port]` / `[v6][:port]` → (host without brackets, lower-cased; port).
pub fn split_authority(auth: &str, default_port: u16) -> Option<(String, u16)> {
    if auth.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h, port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (auth, default_port),
        }
    };
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == b'/' || b == b'@') {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// `scheme://host[:port]path`, port omitted when default.
pub fn pretty_url(scheme: &str, host: &str, port: u16, path: &str) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == default {
        format!("{scheme}://{h}{path}")
    } else {
        format!("{scheme}://{h}:{port}{path}")
    }
}

/// Whether the client asked to close after this request.
pub fn wants_close(head: &RequestHead) -> bool {
    if head.minor_version == 0 {
        !head.headers.has_token("connection", "keep-alive")
            && !head.headers.has_token("proxy-connection", "keep-alive")
    } else {
        head.headers.has_token("connection", "close")
            || head.headers.has_token("proxy-connection", "close")
    }
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade`).
pub fn upgrade_token(head: &RequestHead) -> Option<Vec<u8>> {
    if head.headers.has_token("connection", "upgrade") {
        head.headers.get("upgrade").map(<[u8]>::to_vec)
    } else {
        None
    }
}

/// The head sent upstream: origin-form target, Host set, hop-by-hop fields
/// removed (chunked framing kept: the body is forwarded as-is), Expect
/// dropped (tproxy answers 100-continue itself), upgrade fields restored.
pub fn upstream_head(
    mut head: RequestHead,
    route: &Route,
    kind: BodyKind,
    upgrade: Option<&[u8]>,
) -> RequestHead {
    codec::remove_hop_by_hop(&mut head.headers, kind == BodyKind::Chunked);
    head.headers.remove("expect");
    // For absolute-form requests the URL's authority wins over any Host
    // field (RFC 9112 §3.2.2); inside tunnels this is the client's own Host.
    if head.headers.get("host") != Some(route.host_header.as_bytes()) {
        head.headers.set("Host", route.host_header.clone());
    }
    if let Some(u) = upgrade {
        head.headers.set("Connection", "Upgrade");
        head.headers.set("Upgrade", u.to_vec());
    }
    head.target = route.path.clone();
    // We speak HTTP/1.1 upstream whatever the client spoke.
    head.minor_version = 1;
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        assert_eq!(
            split_authority("Example.com", 80),
            Some(("example.com".into(), 80))
        );
        assert_eq!(split_authority("a:8443", 80), Some(("a".into(), 8443)));
        assert_eq!(split_authority("[::1]:9", 80), Some(("::1".into(), 9)));
        assert_eq!(split_authority("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_authority("a:b", 80), None);
        assert_eq!(split_authority("", 80), None);
        assert_eq!(split_authority("a b:1", 80), None);
    }

    #[test]
    fn absolute_form_replaces_host_and_becomes_origin_form() {
        let mut headers = crate::http1::codec::Headers::new();
        headers.append("Host", "proxy.local:8080");
        headers.append("Proxy-Connection", "keep-alive");
        let head = RequestHead {
            method: "GET".into(),
            target: "http://user:pw@Example.com:81/a?b".into(),
            minor_version: 0,
            headers,
        };
        let route = route(&Scope::Proxy, &head).unwrap();
        assert_eq!(route.url, "http://example.com:81/a?b");
        assert_eq!(route.target.port, 81);
        let up = upstream_head(head, &route, BodyKind::Empty, None);
        assert_eq!(up.target, "/a?b");
        assert_eq!(up.minor_version, 1);
        assert_eq!(up.headers.get("host"), Some(&b"Example.com:81"[..]));
        assert!(up.headers.get("proxy-connection").is_none());
    }

    #[test]
    fn origin_form_is_refused_on_an_explicit_proxy_listener() {
        let head = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: crate::http1::codec::Headers::new(),
        };
        assert!(
            route(&Scope::Proxy, &head)
                .unwrap_err()
                .contains("HTTP_PROXY")
        );
    }

    #[test]
    fn urls() {
        assert_eq!(pretty_url("https", "h", 443, "/x"), "https://h/x");
        assert_eq!(pretty_url("http", "h", 8080, "/"), "http://h:8080/");
        assert_eq!(pretty_url("http", "::1", 81, "/"), "http://[::1]:81/");
    }
}
