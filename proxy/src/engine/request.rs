//! Request routing: where a request goes, its pretty URL, and the head sent
//! upstream (origin-form, hop-by-hop fields removed).

use super::path::{PathError, normalise};
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

/// Why a request cannot be routed; decides the status answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Malformed target or Host: `400`.
    #[error("{0}")]
    Bad(String),
    /// The path has no safe normal form: `400`.
    #[error("{0}")]
    Path(#[from] PathError),
    /// The request names another host than the one this connection goes
    /// to: `421 Misdirected Request` (RFC 9110 §15.5.20).
    #[error(
        "the request names `{claimed}` but this connection goes to `{identity}` ({why}); \
         open a new connection (or CONNECT tunnel) to `{claimed}` for it"
    )]
    Misdirected {
        claimed: String,
        identity: String,
        why: &'static str,
    },
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::Bad(_) | RouteError::Path(_) => 400,
            RouteError::Misdirected { .. } => 421,
        }
    }
}

/// Route `head` within `scope`.
///
/// The request's identity (the host rules, the flow log, metrics and
/// traces see) is the host tproxy connects to, never a name the client
/// merely claims: the absolute-form authority (explicit proxy), the CONNECT
/// target, the TLS server name the upstream certificate is verified
/// against, or the original destination address. A `Host` / `:authority`
/// naming another host is answered `421`; when the connection's identity
/// is an address with no verified name, the `Host` field is forwarded as
/// sent and the request is labelled by the address.
pub fn route(scope: &Scope, head: &RequestHead) -> Result<Route, RouteError> {
    match scope {
        Scope::Proxy => {
            let (scheme, auth, path) = split_absolute(&head.target)?.ok_or_else(|| {
                RouteError::Bad(format!(
                    "`{}` is not an absolute URL: tproxy on this port is an explicit proxy; \
                     set HTTP_PROXY/HTTPS_PROXY to it, or use a transparent-mode listener",
                    head.target
                ))
            })?;
            let default_port = if scheme == "https" { 443 } else { 80 };
            let (host, port) = split_authority(auth, default_port)
                .ok_or_else(|| RouteError::Bad(format!("bad host in `{}`", head.target)))?;
            let path = normalise(&path)?;
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
            let (claim, path) = match split_absolute(&head.target)? {
                // Absolute-form inside a tunnel: its authority is the claim.
                Some((_, auth, path)) => (Some(auth.to_owned()), path),
                None if head.target.starts_with('/') || head.target == "*" => (
                    head.headers
                        .get("host")
                        .map(|h| String::from_utf8_lossy(h).into_owned()),
                    head.target.clone(),
                ),
                None => {
                    return Err(RouteError::Bad(format!(
                        "bad request target `{}`",
                        head.target
                    )));
                }
            };
            let path = normalise(&path)?;
            let (mut identity, why) = identity(target);
            if let Some(claim) = &claim {
                let (claimed, _) = split_authority(claim, default_port).ok_or_else(|| {
                    RouteError::Bad(format!(
                        "invalid Host `{claim}` (expected host or host:port, no userinfo)"
                    ))
                })?;
                if is_connection_address(&claimed, target) {
                    // The request names the address the bytes go to: a true
                    // name of the destination, used as such.
                    identity = claimed;
                } else if !is_ip(&identity) && !same_host(&claimed, &identity) {
                    return Err(RouteError::Misdirected {
                        claimed,
                        identity,
                        why,
                    });
                }
            }
            let host_header =
                claim.unwrap_or_else(|| crate::upstream::authority(&identity, target.port));
            Ok(Route {
                url: pretty_url(scheme, &identity, target.port, &path),
                host_header,
                target: target.clone(),
                path,
                host: identity,
            })
        }
    }
}

/// The host a fixed-target connection goes to, and how it was established:
/// the TLS name the upstream certificate is verified against, else the
/// CONNECT target or the original destination address.
fn identity(target: &Target) -> (String, &'static str) {
    let (host, why) = match &target.tls {
        Some(Some(name)) => (name.as_str(), "the TLS server name verified upstream"),
        _ if target.addr.is_some() => (target.host.as_str(), "the original destination"),
        _ => (target.host.as_str(), "the CONNECT target"),
    };
    (canonical_host(host), why)
}

/// Whether `claimed` is the address the connection goes to (a client that
/// names the IP it reached: not another host).
fn is_connection_address(claimed: &str, target: &Target) -> bool {
    let Ok(ip) = claimed.parse::<std::net::IpAddr>() else {
        return false;
    };
    target.addr.is_some_and(|a| a.ip() == ip)
        || target
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|h| h == ip)
}

/// Lower-case, no trailing dot.
fn canonical_host(h: &str) -> String {
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

/// The same host name: case-insensitive, trailing dot ignored.
pub fn same_host(a: &str, b: &str) -> bool {
    canonical_host(a) == canonical_host(b)
}

/// `scheme://authority/path?query` → (scheme, authority, origin-form path);
/// None when `target` is not absolute-form. Userinfo is refused: RFC 9110
/// §4.2.4 forbids it in http(s) URIs, and `allowed@evil` is a classic way
/// to make a name read as another.
fn split_absolute(target: &str) -> Result<Option<(&'static str, &str, String)>, RouteError> {
    let (scheme, rest) = if let Some(r) = strip_prefix_ci(target, "http://") {
        ("http", r)
    } else if let Some(r) = strip_prefix_ci(target, "https://") {
        ("https", r)
    } else {
        return Ok(None);
    };
    let (auth, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.contains('@') {
        return Err(RouteError::Bad(format!(
            "`{target}` carries credentials in the URL (userinfo): refused; \
             send them in an Authorization header"
        )));
    }
    if path.starts_with('#') {
        return Err(RouteError::Bad(format!("`{target}` has a fragment")));
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok(Some((scheme, auth, path)))
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

/// The only protocol a connection may switch to: after a `101` the
/// connection is relayed as raw bytes, so the switch must be to something
/// whose later messages cannot be requests the rules never saw. WebSocket
/// frames are not HTTP requests; `h2c` (every later request unruled) and
/// anything else are not offered upstream.
const UPGRADABLE: &str = "websocket";

/// The upgrade a client asks for (`Connection: upgrade` + `Upgrade`), when
/// tproxy forwards it: WebSocket only. Any other offer (`h2c`, `TLS/1.0`,
/// …) is dropped with the other hop-by-hop fields, and the request is
/// answered as an ordinary one (RFC 9110 §7.8: a server may ignore Upgrade).
pub fn upgrade_token(head: &RequestHead) -> Option<Vec<u8>> {
    if !head.headers.has_token("connection", "upgrade") {
        return None;
    }
    let value = head.headers.get("upgrade")?;
    let only_ws = value
        .split(|&b| b == b',')
        .map(codec_trim)
        .all(|t| t.eq_ignore_ascii_case(UPGRADABLE.as_bytes()));
    only_ws.then(|| UPGRADABLE.as_bytes().to_vec())
}

/// Whether a `101` answers the upgrade tproxy forwarded.
pub fn upgrade_accepted(resp: &codec::ResponseHead) -> bool {
    resp.headers
        .get("upgrade")
        .is_some_and(|u| codec_trim(u).eq_ignore_ascii_case(UPGRADABLE.as_bytes()))
}

fn codec_trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The head sent upstream: origin-form target, Host set, hop-by-hop fields
/// removed (chunked framing kept: the body is forwarded as-is), Expect kept
/// only as `100-continue` with a body, upgrade fields restored.
pub fn upstream_head(
    mut head: RequestHead,
    route: &Route,
    kind: BodyKind,
    upgrade: Option<&[u8]>,
) -> RequestHead {
    let expect_continue = head
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    codec::remove_hop_by_hop(&mut head.headers, kind == BodyKind::Chunked);
    // `Expect: 100-continue` is forwarded with a body (the upstream may
    // refuse it before it is sent); any other expectation is dropped.
    if !(expect_continue && kind != BodyKind::Empty) {
        head.headers.remove("expect");
    }
    head.headers.remove("http2-settings");
    let cl_fields = head.headers.get_all("content-length").count();
    let listed = head
        .headers
        .get("content-length")
        .is_some_and(|v| v.contains(&b','));
    if cl_fields > 1 || listed {
        // Repeated or list-valued Content-Length whose values agreed (else
        // the framing check refused it): forwarded as one value.
        let n = match kind {
            BodyKind::Length(n) => n,
            _ => 0,
        };
        head.headers.set("Content-Length", n.to_string());
    }
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
            target: "http://Example.com:81/a?b".into(),
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
                .to_string()
                .contains("HTTP_PROXY")
        );
    }

    fn get(target: &str, host: Option<&str>) -> RequestHead {
        let mut headers = crate::http1::codec::Headers::new();
        if let Some(h) = host {
            headers.append("Host", h);
        }
        RequestHead {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers,
        }
    }

    fn fixed(host: &str, port: u16, addr: bool, tls: Option<Option<&str>>) -> Scope {
        Scope::Fixed {
            target: Target {
                host: host.into(),
                port,
                addr: addr.then(|| format!("{host}:{port}").parse().unwrap()),
                tls: tls.map(|n| n.map(str::to_owned)),
            },
            tls: tls.is_some(),
        }
    }

    #[test]
    fn userinfo_is_refused() {
        let e = route(&Scope::Proxy, &get("http://allowed@evil.com/", None)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("userinfo"), "{e}");
        let tunnel = fixed("evil.com", 80, false, None);
        let e = route(&tunnel, &get("/", Some("allowed@evil.com"))).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }

    #[test]
    fn identity_is_where_the_connection_goes() {
        // CONNECT evil.com:8080 + Host: allowed.com → 421.
        let tunnel = fixed("evil.com", 8080, false, None);
        let e = route(&tunnel, &get("/", Some("allowed.com"))).unwrap_err();
        assert_eq!(e.status(), 421, "{e}");
        let e = route(&tunnel, &get("http://allowed.com/x", Some("evil.com"))).unwrap_err();
        assert_eq!(e.status(), 421, "{e}");
        // Same host, any case, trailing dot, other port in Host: accepted,
        // labelled by the connection's port.
        let r = route(&tunnel, &get("/a/../b", Some("EVIL.com.:1"))).unwrap();
        assert_eq!(
            (r.host.as_str(), r.url.as_str()),
            ("evil.com", "http://evil.com:8080/b")
        );
        assert_eq!(r.path, "/b");
        // TLS: the verified server name.
        let tls = fixed("10.0.0.1", 443, true, Some(Some("api.example")));
        assert_eq!(
            route(&tls, &get("/", Some("other.example")))
                .unwrap_err()
                .status(),
            421
        );
        let r = route(&tls, &get("/", Some("api.example"))).unwrap();
        assert_eq!(r.url, "https://api.example/");
        // Naming the address the connection goes to is not another host.
        let r = route(&tls, &get("/", Some("10.0.0.1:443"))).unwrap();
        assert_eq!(r.url, "https://10.0.0.1/");
        assert_eq!(
            route(&tls, &get("/", Some("10.0.0.2")))
                .unwrap_err()
                .status(),
            421
        );
        // Plain HTTP to an address: the Host is a claim, labelled by the address.
        let plain = fixed("10.0.0.1", 80, true, None);
        let r = route(&plain, &get("/x", Some("allowed.com"))).unwrap();
        assert_eq!(
            (r.host.as_str(), r.url.as_str()),
            ("10.0.0.1", "http://10.0.0.1/x")
        );
        assert_eq!(r.host_header, "allowed.com");
        // No Host (HTTP/1.0): the identity.
        let r = route(&tunnel, &get("/", None)).unwrap();
        assert_eq!(r.host_header, "evil.com:8080");
    }

    #[test]
    fn only_websocket_upgrades_are_forwarded() {
        let mut h = get("/", Some("a"));
        h.headers.append("Connection", "Upgrade, HTTP2-Settings");
        h.headers.append("Upgrade", "h2c");
        h.headers
            .append("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA");
        assert_eq!(upgrade_token(&h), None);
        let r = route(&Scope::Proxy, &get("http://a/", None)).unwrap();
        let up = upstream_head(h, &r, BodyKind::Empty, None);
        assert!(up.headers.get("upgrade").is_none());
        assert!(up.headers.get("http2-settings").is_none());
        let mut ws = get("/", Some("a"));
        ws.headers.append("Connection", "upgrade");
        ws.headers.append("Upgrade", "WebSocket");
        assert_eq!(upgrade_token(&ws).as_deref(), Some(&b"websocket"[..]));
    }

    #[test]
    fn agreeing_content_lengths_are_forwarded_as_one() {
        let mut h = get("http://a/", None);
        h.method = "POST".into();
        h.headers.append("Content-Length", "5, 5");
        h.headers.append("Content-Length", "5");
        let kind = codec::request_body_kind(&h).unwrap();
        let r = route(&Scope::Proxy, &h).unwrap();
        let up = upstream_head(h, &r, kind, None);
        let all: Vec<&[u8]> = up.headers.get_all("content-length").collect();
        assert_eq!(all, [&b"5"[..]]);
    }

    #[test]
    fn urls() {
        assert_eq!(pretty_url("https", "h", 443, "/x"), "https://h/x");
        assert_eq!(pretty_url("http", "h", 8080, "/"), "http://h:8080/");
        assert_eq!(pretty_url("http", "::1", 81, "/"), "http://[::1]:81/");
    }
}
