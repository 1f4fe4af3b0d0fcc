//! A small blocking OTLP/HTTP client: POST one protobuf body per export over
//! a kept-alive connection (plain TCP or rustls), with timeouts. Runs only
//! on the exporter thread.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::settings::Endpoint;

/// Why an export request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Name resolution or TCP/TLS connection failed.
    #[error("cannot connect to the OTLP endpoint {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    /// The connection broke.
    #[error("OTLP export I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The receiver answered, but not with success.
    #[error("OTLP endpoint answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// Not an HTTP response.
    #[error("OTLP endpoint sent an invalid HTTP response: {0}")]
    BadResponse(String),
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Largest response head + body read from the receiver.
const MAX_RESPONSE: usize = 64 * 1024;

/// The client; keeps one connection open between exports.
pub struct OtlpClient {
    endpoint: Endpoint,
    head: Vec<u8>,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Conn>,
}

impl OtlpClient {
    /// A client for `endpoint`; `tls` is required for `https://`.
    pub fn new(
        endpoint: Endpoint,
        headers: &[(String, String)],
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let host = if endpoint.host.contains(':') {
            format!("[{}]", endpoint.host)
        } else {
            endpoint.host.clone()
        };
        let default_port = if endpoint.tls { 443 } else { 80 };
        let mut head = format!("POST {} HTTP/1.1\r\nhost: {host}", endpoint.path);
        if endpoint.port != default_port {
            head.push_str(&format!(":{}", endpoint.port));
        }
        head.push_str("\r\ncontent-type: application/x-protobuf\r\nuser-agent: tproxy/");
        head.push_str(env!("CARGO_PKG_VERSION"));
        head.push_str("\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        Self {
            endpoint,
            head: head.into_bytes(),
            timeout,
            tls,
            conn: None,
        }
    }

    /// POST `body`. A kept-alive connection that turns out closed by the
    /// receiver is replaced once; nothing else is retried.
    pub fn post(&mut self, body: &[u8]) -> Result<(), ExportError> {
        let reused = self.conn.is_some();
        match self.try_post(body) {
            Err(f) if f.stale && reused => self.try_post(body).map_err(|f| f.error),
            r => r.map_err(|f| f.error),
        }
    }

    fn try_post(&mut self, body: &[u8]) -> Result<(), Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().map_err(Failure::fatal)?,
        };
        let mut req = Vec::with_capacity(self.head.len() + 40 + body.len());
        req.extend_from_slice(&self.head);
        req.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        if let Err(e) = conn.write_all(&req).and_then(|()| conn.flush()) {
            return Err(Failure::io(e, true));
        }
        let (status, keep, text) = read_response(&mut conn)?;
        if keep {
            self.conn = Some(conn);
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Failure::fatal(ExportError::Status { status, body: text }))
        }
    }

    fn connect(&self) -> Result<Conn, ExportError> {
        let err = |reason: String| ExportError::Connect {
            endpoint: self.endpoint.url.clone(),
            reason,
        };
        let addrs = (self.endpoint.host.as_str(), self.endpoint.port)
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?;
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            err(last.map_or_else(|| "the name has no address".to_owned(), |e| e.to_string()))
        })?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(self.timeout))
            .and_then(|()| tcp.set_write_timeout(Some(self.timeout)))
            .map_err(|e| err(e.to_string()))?;
        if !self.endpoint.tls {
            return Ok(Conn::Plain(tcp));
        }
        let config = self
            .tls
            .clone()
            .ok_or_else(|| err("no TLS configuration".into()))?;
        let name = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| err(e.to_string()))?;
        let tls = rustls::ClientConnection::new(config, name).map_err(|e| err(e.to_string()))?;
        Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))))
    }
}

/// A failed attempt; `stale` when nothing at all came back on a connection
/// (a kept-alive connection the receiver had closed: worth one retry).
struct Failure {
    error: ExportError,
    stale: bool,
}

impl Failure {
    fn fatal(error: ExportError) -> Self {
        Self {
            error,
            stale: false,
        }
    }

    fn io(e: std::io::Error, nothing_received: bool) -> Self {
        use std::io::ErrorKind::*;
        let stale = nothing_received
            && matches!(
                e.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            );
        Self {
            error: ExportError::Io(e),
            stale,
        }
    }
}

/// Read one response: (status, connection reusable, body text for errors).
fn read_response(conn: &mut Conn) -> Result<(u16, bool, String), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (status, head_len, length, close) = loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) => {
                return Err(Failure::io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                    buf.is_empty(),
                ));
            }
            Ok(n) => n,
            Err(e) => return Err(Failure::io(e, buf.is_empty())),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close |= h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        // Not worth decoding: read what came, then close.
                        close = true;
                    }
                }
                break (status, len, length, close);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => {}
            Ok(httparse::Status::Partial) => {
                return Err(Failure::fatal(ExportError::BadResponse(
                    "response head too large".into(),
                )));
            }
            Err(e) => return Err(Failure::fatal(ExportError::BadResponse(e.to_string()))),
        }
    };
    // The body: read it so the connection can carry the next export.
    let mut body = buf.split_off(head_len);
    let reusable = match length {
        Some(len) if len <= MAX_RESPONSE && !close => {
            while body.len() < len {
                match conn.read(&mut chunk) {
                    Ok(0) => {
                        return Err(Failure::io(std::io::ErrorKind::UnexpectedEof.into(), false));
                    }
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(Failure::io(e, false)),
                }
            }
            true
        }
        _ => false,
    };
    let text = if (200..300).contains(&status) {
        String::new()
    } else {
        // Error bodies are a protobuf Status or text: keep the printable part.
        let printable: String = String::from_utf8_lossy(&body[..body.len().min(300)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        printable
    };
    Ok((status, reusable, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            url: format!("http://127.0.0.1:{port}/v1/traces"),
            tls: false,
            host: "127.0.0.1".into(),
            port,
            path: "/v1/traces".into(),
        }
    }

    /// Serves one request per connection with `status`/`body`, then closes
    /// the connection without announcing it (as an idle timeout would).
    /// Returns the port and a connection counter.
    fn one_shot_server(status: u16, body: &'static str) -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming().take(20) {
                let mut s = s.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then the body by Content-Length.
                let total = loop {
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                    let mut hs = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut hs);
                    if let httparse::Status::Complete(h) = req.parse(&buf).unwrap() {
                        assert_eq!(req.path, Some("/v1/traces"));
                        let len: usize = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                            .unwrap();
                        break h + len;
                    }
                };
                while buf.len() < total {
                    let n = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).unwrap();
                // Dropped: closed with no `connection: close` header.
            }
        });
        (port, conns)
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_once() {
        let (port, conns) = one_shot_server(200, "");
        let mut c = OtlpClient::new(endpoint(port), &[], Duration::from_secs(5), None);
        for _ in 0..3 {
            c.post(b"payload").unwrap();
            // Let the server's close arrive before the next export.
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn non_2xx_is_an_error_with_the_body() {
        let (port, _) = one_shot_server(503, "collector overloaded");
        let mut c = OtlpClient::new(endpoint(port), &[], Duration::from_secs(5), None);
        match c.post(b"x") {
            Err(ExportError::Status { status, body }) => {
                assert_eq!((status, body.as_str()), (503, "collector overloaded"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = OtlpClient::new(endpoint(port), &[], Duration::from_secs(2), None);
        let e = c.post(b"x").unwrap_err();
        assert!(matches!(e, ExportError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
