//! The codec against a real client: curl talks to a tiny server built only
//! from this codec on 127.0.0.1 (chunked upload with `Expect: 100-continue`,
//! keep-alive reuse over HTTP/1.1 and HTTP/1.0).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::codec::{
    BodyKind, ChunkedDecoder, Headers, Limits, RequestHead, ResponseHead, parse_request,
    request_body_kind, write_response_head,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Kills and reaps curl if the test fails half-way.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn accept(listener: &TcpListener, deadline: Instant) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "curl did not connect");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Read more bytes into `buf`; `false` when the peer closed.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        assert!(Instant::now() < deadline, "timed out reading from curl");
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn respond(stream: &mut TcpStream, minor: u8, status: u16, fields: &[(&str, &str)], body: &[u8]) {
    let mut headers = Headers::new();
    for (n, v) in fields {
        headers.append(n, v.as_bytes());
    }
    let head = ResponseHead {
        minor_version: minor,
        status,
        reason: if status == 100 { "Continue" } else { "OK" }.to_owned(),
        headers,
    };
    let mut out = Vec::new();
    write_response_head(&head, &mut out);
    out.extend_from_slice(body);
    stream.write_all(&out).unwrap();
}

/// Serve requests on one connection until curl closes it; returns each
/// request head with its decoded body.
fn serve(stream: &mut TcpStream, deadline: Instant) -> Vec<(RequestHead, Vec<u8>)> {
    let mut served = Vec::new();
    let mut buf = Vec::new();
    loop {
        let (head, len) = loop {
            if let Some(parsed) = parse_request(&buf, &Limits::default()).unwrap() {
                break parsed;
            }
            if !fill(stream, &mut buf, deadline) {
                assert!(buf.is_empty(), "curl closed mid-head");
                return served;
            }
        };
        buf.drain(..len);
        if head.headers.has_token("expect", "100-continue") {
            respond(stream, 1, 100, &[], b"");
        }
        let mut body = Vec::new();
        match request_body_kind(&head).unwrap() {
            BodyKind::Empty => {}
            BodyKind::Length(n) => {
                let n = usize::try_from(n).unwrap();
                while buf.len() < n {
                    assert!(fill(stream, &mut buf, deadline), "closed mid-body");
                }
                body.extend(buf.drain(..n));
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    let p = dec
                        .decode(&buf, &mut |d| body.extend_from_slice(d))
                        .unwrap();
                    buf.drain(..p.consumed);
                    if p.done {
                        break;
                    }
                    assert!(fill(stream, &mut buf, deadline), "closed mid-body");
                }
            }
            BodyKind::UntilClose => unreachable!("requests are never read until close"),
        }
        let reply = format!("{} {} bytes\n", head.target, body.len());
        let minor = head.minor_version;
        let len = reply.len().to_string();
        let mut fields = vec![
            ("Content-Length", len.as_str()),
            ("Content-Type", "text/plain"),
        ];
        if minor == 0 && head.headers.has_token("connection", "keep-alive") {
            fields.push(("Connection", "keep-alive"));
        }
        respond(stream, minor, 200, &fields, reply.as_bytes());
        served.push((head, body));
    }
}

#[test]
fn curl_chunked_upload_is_decoded() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // 200 KiB of patterned data, sent by curl as a chunked body of unknown size.
    let payload: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = Command::new("curl")
        .args(["-s", "--max-time", "60", "-H", "Transfer-Encoding: chunked"])
        .args(["--data-binary", "@-"])
        .arg(format!("http://127.0.0.1:{port}/upload"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let guard = ChildGuard(Some(child));
    let writer = {
        let payload = payload.clone();
        std::thread::spawn(move || {
            stdin.write_all(&payload).unwrap();
        })
    };
    let deadline = Instant::now() + DEADLINE;
    let mut stream = accept(&listener, deadline);
    let served = serve(&mut stream, deadline);
    writer.join().unwrap();
    let output = guard.finish();
    assert!(output.status.success(), "curl failed: {:?}", output.status);
    assert_eq!(served.len(), 1);
    let (head, body) = &served[0];
    assert_eq!(
        (head.method.as_str(), head.target.as_str()),
        ("POST", "/upload")
    );
    assert_eq!(request_body_kind(head), Ok(BodyKind::Chunked));
    assert!(
        body == &payload,
        "decoded body differs ({} bytes)",
        body.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("/upload {} bytes\n", payload.len())
    );
}

/// curl fetches two URLs; it reuses the connection only if our responses
/// framed correctly, and we parse its second request from the same stream.
fn keep_alive(extra: &[&str], expect_minor: u8) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let child = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}/first"))
        .arg(format!("http://127.0.0.1:{port}/second"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(Some(child));
    let deadline = Instant::now() + DEADLINE;
    let mut stream = accept(&listener, deadline);
    let served = serve(&mut stream, deadline);
    let output = guard.finish();
    assert!(output.status.success(), "curl failed: {:?}", output.status);
    let targets: Vec<&str> = served.iter().map(|(h, _)| h.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/first", "/second"],
        "second request not on the same connection"
    );
    assert!(served.iter().all(|(h, _)| h.minor_version == expect_minor));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "/first 0 bytes\n/second 0 bytes\n"
    );
}

#[test]
fn curl_reuses_connection_http11() {
    keep_alive(&[], 1);
}

#[test]
fn curl_reuses_connection_http10_keep_alive() {
    keep_alive(&["-0", "-H", "Connection: keep-alive"], 0);
}
