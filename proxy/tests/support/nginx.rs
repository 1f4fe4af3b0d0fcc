//! nginx upstream: HTTP and HTTPS (with h2) on one server block, serving
//! small files, the 100 MiB pattern file, a slow (rate-limited) file and a
//! header-echo endpoint; requests go to an access log the test can read.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pki::TestPki;
use super::{big_file, free_port, netns, terminate_child, wait_until};

/// Body of `/small.txt`.
pub const SMALL_BODY: &str = "small body from the nginx upstream fixture: 0123456789\n";
/// Body of `/` (index.html).
pub const INDEX_BODY: &str = "tproxy upstream index\n";
/// Size of `/slow/1m.bin`, served at [`SLOW_RATE`] bytes/s.
pub const SLOW_LEN: usize = 1024 * 1024;
/// nginx `limit_rate` of `/slow/`.
pub const SLOW_RATE: &str = "256k";

/// Keep-alive settings of the nginx fixture (both HTTP/1.1 and HTTP/2:
/// nginx ends an HTTP/2 connection with GOAWAY after `keepalive_requests`
/// streams and an HTTP/1.1 one with `Connection: close`).
#[derive(Debug, Clone)]
pub struct KeepAlive {
    /// `keepalive_requests`.
    pub requests: u32,
    /// `keepalive_timeout` (nginx syntax; a second value makes nginx send
    /// `Keep-Alive: timeout=N`).
    pub timeout: String,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            requests: 10000,
            timeout: "75s".into(),
        }
    }
}

/// A running nginx; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// Address both listeners bind.
    pub ip: IpAddr,
    /// Plain HTTP port.
    pub http_port: u16,
    /// HTTPS (+h2) port.
    pub https_port: u16,
    netns: Option<String>,
}

impl Nginx {
    /// nginx on 127.0.0.1 with free ephemeral ports (retried on a bind race).
    pub fn start(pki: &TestPki) -> Nginx {
        Self::start_with(pki, &KeepAlive::default())
    }

    /// [`Nginx::start`] with these keep-alive settings.
    pub fn start_with(pki: &TestPki, ka: &KeepAlive) -> Nginx {
        for _ in 0..5 {
            if let Some(n) = Self::try_start(pki, None, "127.0.0.1", free_port(), free_port(), ka) {
                return n;
            }
        }
        panic!("nginx: could not bind free ports after 5 attempts");
    }

    /// nginx inside network namespace `ns`, binding `ip` on the given ports.
    pub fn start_in_ns(pki: &TestPki, ns: &str, ip: &str, http: u16, https: u16) -> Nginx {
        Self::start_in_ns_with(pki, ns, ip, http, https, &KeepAlive::default())
    }

    /// [`Nginx::start_in_ns`] with these keep-alive settings.
    pub fn start_in_ns_with(
        pki: &TestPki,
        ns: &str,
        ip: &str,
        http: u16,
        https: u16,
        ka: &KeepAlive,
    ) -> Nginx {
        Self::try_start(pki, Some(ns), ip, http, https, ka)
            .unwrap_or_else(|| panic!("nginx in {ns}: ports {http}/{https} busy"))
    }

    /// Starts nginx; `None` when a port was taken (caller may retry).
    fn try_start(
        pki: &TestPki,
        ns: Option<&str>,
        ip: &str,
        http_port: u16,
        https_port: u16,
        ka: &KeepAlive,
    ) -> Option<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-nginx")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let www = d.join("www");
        std::fs::create_dir_all(www.join("slow")).expect("mkdir www");
        std::fs::write(www.join("index.html"), INDEX_BODY).expect("index");
        std::fs::write(www.join("small.txt"), SMALL_BODY).expect("small");
        std::fs::write(www.join("slow/1m.bin"), slow_body()).expect("slow");
        std::os::unix::fs::symlink(&big_file().0, www.join("big.bin")).expect("symlink big");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format t '$remote_addr "$request" $status $body_bytes_sent host=$host conn=$connection';
    access_log {d}/access.log t;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests {ka_requests};
    keepalive_timeout {ka_timeout};
    client_max_body_size 0;
    server {{
        listen {ip}:{http_port};
        listen {ip}:{https_port} ssl http2;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {d}/www;
        location = /headers {{
            default_type text/plain;
            return 200 "authorization=$http_authorization\nhost=$host\n";
        }}
        location /slow/ {{
            limit_rate {SLOW_RATE};
        }}
    }}
}}
"#,
            d = d.display(),
            cert = pki.server_cert().display(),
            key = pki.server_key().display(),
            ka_requests = ka.requests,
            ka_timeout = ka.timeout,
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nginx"]);
                c
            }
            None => Command::new("nginx"),
        };
        let log = std::fs::File::create(d.join("stderr.log")).expect("stderr.log");
        let mut child = cmd
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nginx (is nginx installed? see scripts/install-test-deps.sh)");
        let ipaddr: IpAddr = ip.parse().expect("nginx ip");
        let targets = [
            SocketAddr::new(ipaddr, http_port),
            SocketAddr::new(ipaddr, https_port),
        ];
        let ready = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            let up = targets.iter().all(|a| match ns {
                Some(ns) => netns::in_netns(ns, {
                    let a = *a;
                    move || std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200))
                })
                .is_ok(),
                None => std::net::TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok(),
            });
            up.then_some(true)
        });
        let errors = || {
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
                + &std::fs::read_to_string(d.join("stderr.log")).unwrap_or_default()
        };
        match ready {
            Some(true) => {}
            Some(false) => {
                let e = errors();
                if e.contains("Address already in use") {
                    return None;
                }
                panic!("nginx exited at start:\n{e}");
            }
            None => {
                terminate_child(&mut child, Duration::from_secs(2));
                panic!("nginx not listening after 10 s:\n{}", errors());
            }
        }
        Some(Nginx {
            child,
            dir,
            ip: ipaddr,
            http_port,
            https_port,
            netns: ns.map(str::to_owned),
        })
    }

    /// `ip:http_port`.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.http_port)
    }

    /// `ip:https_port`.
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.https_port)
    }

    /// `http://ip:port` (no trailing slash).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// `https://localhost:port` — the name the server certificate covers.
    pub fn https_base(&self) -> String {
        format!("https://localhost:{}", self.https_port)
    }

    /// Everything in the access log so far (one line per request:
    /// `$remote_addr "$request" $status $body_bytes_sent host=$host conn=$connection`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Distinct connections (`$connection`) the access log lines matching
    /// `needle` came in on.
    pub fn connections(&self, needle: &str) -> usize {
        let log = self.access_log();
        let set: std::collections::HashSet<&str> = log
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.rsplit_once(" conn=").map(|(_, c)| c.trim()))
            .collect();
        set.len()
    }

    /// Waits (bounded) until the access log contains `needle`.
    pub fn wait_access_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.access_log().contains(needle).then_some(())).is_some()
    }

    /// The document root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// The temp directory of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Namespace nginx runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(3));
    }
}

/// Contents of `/slow/1m.bin`: bytes `i * 7 + (i >> 11)`, wrapping.
pub fn slow_body() -> Vec<u8> {
    (0..SLOW_LEN)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 11)) as u8)
        .collect()
}
