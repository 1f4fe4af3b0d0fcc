//! The upstream: nginx (from apt) in the upstream namespace with TLS (h1 +
//! h2 by ALPN) on 443 and plain HTTP on 80, a 64-byte body and the bulk
//! objects; plus the certificates (openssl CLI) and the proxies' CA.
//!
//! nginx rather than a built-in server: it is what real upstreams run, it is
//! fast enough not to be the bottleneck with one worker, and it speaks h2
//! with ALPN and sendfile for bulk out of the box.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::{Proc, run_capture};
use crate::topo::{Topology, UPSTREAM_IP, wait_listening};

/// The small object: exactly 64 bytes.
pub const SMALL_PATH: &str = "/64.txt";

/// Certificates for the run, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Upstream CA + server cert (openssl, P-256) and the proxies' CA
    /// (`tproxy ca init --key-type ecdsa`, mitmproxy's file layout; mitmdump
    /// is given a copy of the same confdir).
    pub fn new(tproxy: &Path) -> Result<Pki, String> {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-bench-pki")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path();
        let t = Duration::from_secs(30);
        let ossl = |args: &[&str]| {
            run_capture(Command::new("openssl").current_dir(d).args(args), t).map(|_| ())
        };
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "up-ca.key",
            "-out",
            "up-ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=tproxy bench upstream CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        ossl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=upstream.test",
        ])?;
        std::fs::write(
            d.join("server.ext"),
            format!(
                "subjectAltName=DNS:upstream.test,DNS:*.upstream.test,IP:{UPSTREAM_IP}\n\
                 basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        )
        .map_err(|e| format!("server.ext: {e}"))?;
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "up-ca.pem",
            "-CAkey",
            "up-ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])?;
        let confdir = d.join("proxy-ca");
        run_capture(
            Command::new(tproxy)
                .args(["ca", "init", "--key-type", "ecdsa", "--confdir"])
                .arg(&confdir),
            t,
        )?;
        Ok(Pki { dir })
    }

    /// The upstream CA (give it to proxies to verify nginx).
    pub fn upstream_ca(&self) -> PathBuf {
        self.dir.path().join("up-ca.pem")
    }

    /// The proxies' confdir (mitmproxy-ca.pem etc.).
    pub fn proxy_confdir(&self) -> PathBuf {
        self.dir.path().join("proxy-ca")
    }

    fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// nginx in the upstream namespace.
pub struct Nginx {
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with one worker; `bulk` names and sizes the bulk objects
    /// (`/bulk-<size>.bin`, sparse files).
    pub fn start(topo: &Topology, pki: &Pki, bulk_sizes: &[u64]) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new()
            .prefix("tproxy-bench-nginx")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path();
        let www = d.join("www");
        std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
        // Exactly 64 bytes: 63 characters and a newline.
        let small = format!("{:-<63}\n", "tproxy bench 64-byte response body ");
        std::fs::write(www.join("64.txt"), small).map_err(|e| format!("64.txt: {e}"))?;
        for size in bulk_sizes {
            let f = std::fs::File::create(www.join(bulk_name(*size)))
                .and_then(|f| f.set_len(*size))
                .map_err(|e| format!("bulk file: {e}"));
            f?;
        }
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    http2_max_concurrent_streams 256;
    server {{
        listen {ip}:80 backlog=4096;
        listen {ip}:443 ssl http2 backlog=4096;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {d}/www;
    }}
    # nginx's own keep-alive defaults (the soak scenario): GOAWAY after 1000
    # streams, Connection: close after 1000 requests, 75 s idle timeout.
    server {{
        listen {ip}:{churn_http} backlog=4096;
        listen {ip}:{churn_https} ssl http2 backlog=4096;
        server_name _;
        keepalive_requests 1000;
        keepalive_timeout 75s;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {d}/www;
    }}
}}
"#,
            churn_http = CHURN_HTTP_PORT,
            churn_https = CHURN_HTTPS_PORT,
            d = d.display(),
            ip = UPSTREAM_IP,
            cert = pki.server_cert().display(),
            key = pki.server_key().display(),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("nginx.conf: {e}"))?;
        let args = vec![
            "-p".to_owned(),
            d.display().to_string(),
            "-c".to_owned(),
            conf_path.display().to_string(),
            "-e".to_owned(),
            d.join("error.log").display().to_string(),
        ];
        let mut proc = Proc::spawn_in(
            &topo.upstream,
            Path::new("nginx"),
            &args,
            &[],
            false,
            &d.join("stderr.log"),
        )?;
        let ip: IpAddr = UPSTREAM_IP.parse().map_err(|e| format!("{e}"))?;
        for port in [80, 443, CHURN_HTTP_PORT, CHURN_HTTPS_PORT] {
            if !wait_listening(
                &topo.upstream,
                SocketAddr::new(ip, port),
                Duration::from_secs(10),
            ) {
                let err = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                proc.stop();
                return Err(format!(
                    "nginx did not listen on {ip}:{port}: {err} {}",
                    proc.log_tail(5)
                ));
            }
        }
        Ok(Nginx {
            _proc: proc,
            _dir: dir,
        })
    }
}

/// nginx's plain-HTTP port with nginx's default keep-alive settings.
pub const CHURN_HTTP_PORT: u16 = 8080;
/// nginx's HTTPS (+h2) port with nginx's default keep-alive settings.
pub const CHURN_HTTPS_PORT: u16 = 8443;

/// `/bulk-<bytes>.bin`.
pub fn bulk_name(size: u64) -> String {
    format!("bulk-{size}.bin")
}
