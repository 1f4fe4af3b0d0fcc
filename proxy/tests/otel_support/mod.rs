//! Fixtures of `tests/otel.rs`: an OTLP/HTTP(S) receiver that decodes every
//! export with the `opentelemetry-proto` types, an upstream that records the
//! `traceparent` each request carried, and attribute lookups.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a test failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

use crate::support::pki::TestPki;
use crate::support::proxy::Proxy;
use crate::support::{CurlResult, curl, hex, wait_until};

/// Bound of every wait here.
const T: Duration = Duration::from_secs(15);

/// A request handler: (path, lower-cased headers, body) → (status, body).
pub type Handler = dyn Fn(&str, &[(String, String)], &[u8]) -> (u16, Vec<u8>) + Send + Sync;

/// Reads HTTP/1.1 requests (keep-alive) on one connection and hands each
/// (head, body) to `on_request`, which returns the response status and body.
pub fn serve_http(mut s: impl Read + Write, on_request: &Handler) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    // Bounded: at most 10 000 requests per connection.
    for _ in 0..10_000 {
        // Head.
        let (path, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (req.path.unwrap_or("").to_owned(), headers, n);
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_len);
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.trim().parse().unwrap());
        while buf.len() < len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let (status, resp) = on_request(&path, &headers, &body);
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            resp.len()
        );
        if s.write_all(head.as_bytes()).is_err() || s.write_all(&resp).is_err() {
            return;
        }
    }
}

/// Accepts connections on `l` forever (a thread per connection), over TLS
/// when `tls` is given.
pub fn accept_loop<F>(l: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, f: Arc<F>)
where
    F: Fn(&str, &[(String, String)], &[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
{
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let f = f.clone();
            match &tls {
                None => {
                    std::thread::spawn(move || serve_http(s, &*f));
                }
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                    let tls = rustls::StreamOwned::new(conn, s);
                    std::thread::spawn(move || serve_http(tls, &*f));
                }
            }
        }
    });
}

/// An OTLP/HTTP traces receiver: decodes every POSTed
/// `ExportTraceServiceRequest`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_with(None)
    }

    /// An HTTPS receiver with the test PKI's server certificate.
    pub fn start_tls(pki: &TestPki) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(pki.server_key()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_with(Some(Arc::new(cfg)))
    }

    pub fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let g = got.clone();
        accept_loop(
            l,
            tls,
            Arc::new(
                move |path: &str, headers: &[(String, String)], body: &[u8]| {
                    let ct = headers.iter().find(|(k, _)| k == "content-type");
                    if path != "/v1/traces"
                        || ct.map(|(_, v)| v.as_str()) != Some("application/x-protobuf")
                    {
                        return (404, Vec::new());
                    }
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            g.lock().unwrap().push(req);
                            (200, Vec::new())
                        }
                        Err(_) => (400, Vec::new()),
                    }
                },
            ),
        );
        Receiver { addr, got }
    }

    /// Every span received so far, with its resource's attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for req in got.iter() {
            for rs in &req.resource_spans {
                let res = rs.resource.clone().unwrap_or_default().attributes;
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((res.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }

    /// Waits (bounded) until `pred` holds for the spans received.
    pub fn wait(&self, what: &str, pred: impl Fn(&[(Vec<KeyValue>, Span)]) -> bool) {
        let ok = wait_until(T, || pred(&self.spans()).then_some(())).is_some();
        assert!(
            ok,
            "timed out waiting for {what}; spans: {:#?}",
            self.spans()
        );
    }
}

/// An upstream that records the `traceparent` each request carried, by path.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<HashMap<String, Option<String>>>> = Arc::default();
        let s = seen.clone();
        accept_loop(
            l,
            None,
            Arc::new(move |path: &str, headers: &[(String, String)], _: &[u8]| {
                let tp = headers
                    .iter()
                    .find(|(k, _)| k == "traceparent")
                    .map(|(_, v)| v.clone());
                s.lock().unwrap().insert(path.to_owned(), tp);
                (200, b"recorded\n".to_vec())
            }),
        );
        Recorder { addr, seen }
    }

    pub fn traceparent(&self, path: &str) -> Option<String> {
        self.seen
            .lock()
            .unwrap()
            .get(path)
            .unwrap_or_else(|| panic!("{path} never reached the upstream"))
            .clone()
    }
}

pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub fn s_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

pub fn i_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

pub fn hex_of(b: &[u8]) -> String {
    hex(b)
}

/// curl through the proxy from client address `from`.
pub fn curl_from(p: &Proxy, from: &str, extra: &[&str], url: &str) -> CurlResult {
    let proxy = p.proxy_url();
    let mut args = vec!["--interface", from, "-x", proxy.as_str()];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args)
}

/// The span whose `url.full` ends with `suffix` and whose kind is `kind`.
pub fn find<'a>(
    spans: &'a [(Vec<KeyValue>, Span)],
    kind: SpanKind,
    suffix: &str,
) -> Option<&'a (Vec<KeyValue>, Span)> {
    spans.iter().find(|(_, s)| {
        s.kind == kind as i32
            && s_attr(&s.attributes, "url.full").is_some_and(|u| u.ends_with(suffix))
    })
}

pub fn metric(p: &Proxy, name_and_labels: &str) -> f64 {
    let r = curl(&[&format!("http://{}/metrics", p.addr("admin"))]);
    r.text()
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}
