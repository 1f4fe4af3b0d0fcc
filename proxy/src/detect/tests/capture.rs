//! Live captures: real clients (curl, openssl s_client, Python ssl, nghttp)
//! connect to a listener on 127.0.0.1; the first bytes they send are read
//! until `sniff` decides, then the connection is dropped.
//!
//! `TPROXY_WRITE_CLIENTHELLO_FIXTURES=1 cargo test -p tproxy detect::tests::capture`
//! rewrites the committed fixtures from the same invocations.

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::{Sniff, sniff};
use super::fixtures;

/// Generous: the build machine is shared and busy.
const DEADLINE: Duration = Duration::from_secs(30);

/// Kills and reaps the client process when the capture ends, also on panic.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn accept_within(listener: &TcpListener, deadline: Instant, child: &mut ChildGuard) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Some(status) = child.0.try_wait().unwrap() {
                    panic!("client exited before connecting: {status}");
                }
                assert!(Instant::now() < deadline, "client did not connect in time");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Run `client(port)` and return the first bytes it sends, read until
/// `sniff` stops answering `NeedMore`.
fn capture(client: impl FnOnce(u16) -> Command) -> (Vec<u8>, Sniff) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = client(port);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
    let deadline = Instant::now() + DEADLINE;
    let mut stream = accept_within(&listener, deadline, &mut child);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let verdict = sniff(&buf);
        if verdict != Sniff::NeedMore {
            return (buf, verdict);
        }
        assert!(
            Instant::now() < deadline,
            "no decision after {} bytes",
            buf.len()
        );
        match stream.read(&mut chunk) {
            Ok(0) => panic!("client closed after {} bytes", buf.len()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn curl_tls(port: u16) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sk", "--http2", "--max-time", "30", "--connect-to"])
        .arg(format!("example.test:443:127.0.0.1:{port}"))
        .arg("https://example.test/");
    c
}

fn openssl_tls(port: u16) -> Command {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "openssl.example.test",
            "-alpn",
            "h2,http/1.1",
        ]);
    c
}

fn python_tls(port: u16) -> Command {
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.set_alpn_protocols(['http/1.1'])\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=30)\n\
         ctx.wrap_socket(s, server_hostname='Python.Example.Test')\n"
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]);
    c
}

/// The single-record hello of `raw` (a client may send more records after it).
fn hello_record(raw: &[u8]) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
    raw[..5 + len].to_vec()
}

#[test]
fn live_clients_send_the_expected_hellos() {
    type Client = fn(u16) -> Command;
    let clients: [(&str, Client); 3] = [
        ("curl", curl_tls),
        ("openssl", openssl_tls),
        ("python", python_tls),
    ];
    let write = std::env::var_os("TPROXY_WRITE_CLIENTHELLO_FIXTURES").is_some();
    for ((name, client), fixture) in clients.into_iter().zip(fixtures()) {
        assert_eq!(name, fixture.name);
        let (raw, verdict) = capture(client);
        let Sniff::Tls(hello) = verdict else {
            panic!("{name}: expected a ClientHello, got {verdict:?} from {raw:02x?}");
        };
        assert_eq!(hello.sni.as_deref(), Some(fixture.sni), "{name}");
        assert_eq!(hello.alpn, fixture.alpn, "{name}");
        // The live hello parses the same when re-fragmented, too.
        let record = hello_record(&raw);
        assert_eq!(
            sniff(&super::refragment(&record, 100)),
            Sniff::Tls(hello.clone()),
            "{name}"
        );
        if write {
            let path = format!(
                "{}/tests/fixtures/clienthello/{name}.bin",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::write(&path, &record).unwrap();
            eprintln!("wrote {path} ({} bytes)", record.len());
        }
    }
}

#[test]
fn live_plaintext_clients() {
    // curl over plain HTTP, through an explicit proxy (CONNECT), and nghttp
    // with HTTP/2 prior knowledge.
    let (raw, verdict) = capture(|port| {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "30"])
            .arg(format!("http://127.0.0.1:{port}/x"));
        c
    });
    assert_eq!(verdict, Sniff::Http1, "{:?}", String::from_utf8_lossy(&raw));
    let (raw, verdict) = capture(|port| {
        let mut c = Command::new("curl");
        c.args(["-sk", "--max-time", "30", "--proxy"])
            .arg(format!("http://127.0.0.1:{port}"))
            .arg("https://example.test/");
        c
    });
    assert_eq!(verdict, Sniff::Http1, "{:?}", String::from_utf8_lossy(&raw));
    assert!(raw.starts_with(b"CONNECT example.test:443 HTTP/1.1\r\n"));
    let (raw, verdict) = capture(|port| {
        let mut c = Command::new("nghttp");
        c.args(["-t", "30"])
            .arg(format!("http://127.0.0.1:{port}/"));
        c
    });
    assert_eq!(verdict, Sniff::H2Preface, "{raw:02x?}");
}
