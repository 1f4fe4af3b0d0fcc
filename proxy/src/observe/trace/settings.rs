//! Trace export settings: `--otlp-*` flags and the standard OpenTelemetry
//! environment variables, resolved and validated once at start-up.

use std::time::Duration;

use super::sampler::{Sampler, SamplerError};

/// Where spans are POSTed (OTLP/HTTP, protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as resolved (for logs).
    pub url: String,
    /// `https://`.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (default 80 / 443 by scheme).
    pub port: u16,
    /// Request target: path and query, starting with `/`.
    pub path: String,
}

/// Validated trace export settings (present only when tracing is on).
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL.
    pub endpoint: Endpoint,
    /// Head sampler.
    pub sampler: Sampler,
    /// `--otlp-inject-traceparent`: send a `traceparent` upstream for every
    /// traced request, not only for those that came with one.
    pub inject_always: bool,
    /// Spans waiting for export; more are dropped (and counted).
    pub queue_size: usize,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    pub schedule_delay: Duration,
    /// Timeout of one export request (connect, write, read each).
    pub timeout: Duration,
    /// Extra HTTP headers of export requests (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: ExportHeaders,
    /// `service.name` of spans whose client is not a known pod.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: added to every resource (e.g.
    /// `k8s.cluster.name`); never replaces the pod's own attributes.
    pub resource_attributes: Vec<(String, String)>,
}

/// Extra export request headers; often credentials, so `Debug` shows the
/// names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExportHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}: ***")))
            .finish()
    }
}

/// A trace setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Bad sampler variables.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// Bad endpoint URL.
    #[error(
        "{source_name} {url:?}: {reason} (expected http://HOST[:PORT][/PATH] or https://…, e.g. http://otel-collector:4318)"
    )]
    Endpoint {
        /// Flag or variable the URL came from.
        source_name: &'static str,
        /// The value.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Anything else, said in full.
    #[error("{0}")]
    Other(String),
}

/// Default `--otlp-queue-size` (spans).
pub const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolve the settings from the flags and `env` (a variable lookup;
/// `std::env::var` in the binary). `Ok(None)`: tracing is off (no endpoint
/// anywhere, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
pub fn resolve(
    endpoint_flag: Option<&str>,
    inject_always: bool,
    queue_size: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<TraceSettings>, SettingsError> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(SettingsError::Other(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported: tproxy exports OTLP (otlp) or nothing (none)"
            )));
        }
    }
    let endpoint = if let Some(url) = endpoint_flag.map(str::trim).filter(|s| !s.is_empty()) {
        parse_url("--otlp-endpoint", url, PathRule::DefaultTraces)?
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        parse_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url, PathRule::AsIs)?
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url, PathRule::AppendTraces)?
    } else {
        return Ok(None);
    };
    let either = |signal: &str, generic: &str| var(signal).or_else(|| var(generic));
    if let Some(p) = either(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) && p != "http/protobuf"
    {
        return Err(SettingsError::Other(format!(
            "OTLP protocol {p:?} is not supported: tproxy sends http/protobuf (a collector's port 4318); unset OTEL_EXPORTER_OTLP_PROTOCOL or set it to http/protobuf"
        )));
    }
    match either(
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    )
    .as_deref()
    {
        None | Some("none") => {}
        Some("gzip") => tracing::warn!(
            "OTEL_EXPORTER_OTLP_COMPRESSION=gzip is not supported; spans are sent uncompressed"
        ),
        Some(other) => {
            return Err(SettingsError::Other(format!(
                "OTEL_EXPORTER_OTLP_COMPRESSION={other:?}: expected none (or gzip, sent uncompressed)"
            )));
        }
    }
    let sampler = Sampler::from_env_values(
        var("OTEL_TRACES_SAMPLER").as_deref(),
        var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    let millis = |name: &'static str, default: Duration| -> Result<Duration, SettingsError> {
        match var(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(SettingsError::Other(format!(
                    "{name}={v:?}: expected a positive number of milliseconds"
                ))),
            },
        }
    };
    let timeout_var = if var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
    } else {
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    };
    let timeout = millis(timeout_var, DEFAULT_TIMEOUT)?;
    let schedule_delay = millis("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY)?;
    let batch_size = match var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        None => DEFAULT_BATCH,
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            SettingsError::Other(format!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={v:?}: expected a positive number of spans"
            ))
        })?,
    };
    if queue_size == 0 {
        return Err(SettingsError::Other(
            "--otlp-queue-size must be at least 1".into(),
        ));
    }
    let headers = match either(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ) {
        None => ExportHeaders::default(),
        Some(h) => ExportHeaders(parse_pairs("OTEL_EXPORTER_OTLP_HEADERS", &h, true)?),
    };
    Ok(Some(TraceSettings {
        endpoint,
        sampler,
        inject_always,
        queue_size,
        batch_size: batch_size.min(queue_size),
        schedule_delay,
        timeout,
        headers,
        service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "tproxy".to_owned()),
        resource_attributes: match var("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(v) => parse_pairs("OTEL_RESOURCE_ATTRIBUTES", &v, false)?,
        },
    }))
}

#[derive(Clone, Copy)]
enum PathRule {
    /// The flag: a URL without a path gets `/v1/traces` (no collector
    /// takes traces at `/`); a URL with a path is used as given.
    DefaultTraces,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: exactly as given (OTLP spec).
    AsIs,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL; `/v1/traces` is appended
    /// to its path (OTLP spec).
    AppendTraces,
}

fn parse_url(
    source_name: &'static str,
    url: &str,
    rule: PathRule,
) -> Result<Endpoint, SettingsError> {
    let err = |reason| SettingsError::Endpoint {
        source_name,
        url: url.to_owned(),
        reason,
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(err("the scheme must be http:// or https://"));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(err(
            "credentials in the URL are not supported (use OTEL_EXPORTER_OTLP_HEADERS)",
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| err("unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| err("bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(err("bad port")),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| err("bad port"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
    let path = match (rule, path) {
        (PathRule::DefaultTraces, "" | "/") => "/v1/traces".to_owned(),
        (PathRule::AsIs, "") => "/".to_owned(),
        (PathRule::DefaultTraces | PathRule::AsIs, p) if p.starts_with('?') => format!("/{p}"),
        (PathRule::DefaultTraces | PathRule::AsIs, p) => p.to_owned(),
        (PathRule::AppendTraces, p) => {
            if p.contains('?') {
                return Err(err("a base endpoint cannot have a query"));
            }
            format!("{}/v1/traces", p.trim_end_matches('/'))
        }
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(Endpoint {
        url: format!("{scheme}://{authority}{path}"),
        tls,
        host,
        port,
        path,
    })
}

/// `key=value,key2=value2` with percent-encoded values (W3C Baggage style,
/// as the OTLP exporter and resource specs say). `header`: keys must be
/// HTTP header names.
fn parse_pairs(var: &str, s: &str, header: bool) -> Result<Vec<(String, String)>, SettingsError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| SettingsError::Other(format!("{var}: {item:?} is not key=value")))?;
        let k = k.trim();
        let name_ok = if header {
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        } else {
            !k.bytes().any(|b| b.is_ascii_control())
        };
        if k.is_empty() || !name_ok {
            return Err(SettingsError::Other(format!(
                "{var}: {k:?} is not a valid key"
            )));
        }
        let v = percent_decode(v.trim());
        if header && v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(SettingsError::Other(format!(
                "{var}: a value contains a line break"
            )));
        }
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn endpoint(flag: Option<&str>, env: &[(&str, &str)]) -> Option<Endpoint> {
        resolve(flag, false, DEFAULT_QUEUE, &env_of(env))
            .unwrap()
            .map(|s| s.endpoint)
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(endpoint(None, &[]).is_none());
        assert!(endpoint(None, &[("OTEL_TRACES_SAMPLER", "bogus")]).is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(endpoint(None, &on).is_some());
        let mut off = on.to_vec();
        off.push(("OTEL_SDK_DISABLED", "TRUE"));
        assert!(endpoint(None, &off).is_none());
        let mut none = on.to_vec();
        none.push(("OTEL_TRACES_EXPORTER", "none"));
        assert!(endpoint(None, &none).is_none());
    }

    #[test]
    fn endpoint_precedence_and_paths() {
        let generic = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/otlp/");
        let traces = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom");
        let e = endpoint(None, &[generic]).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("base", 4318, "/otlp/v1/traces")
        );
        let e = endpoint(None, &[generic, traces]).unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("t", "/custom"));
        let e = endpoint(Some("http://flag:1234"), &[generic, traces]).unwrap();
        assert_eq!(e.url, "http://flag:1234/v1/traces");
        let e = endpoint(Some("http://flag:1234/x/y?q=1"), &[]).unwrap();
        assert_eq!(e.path, "/x/y?q=1");
        // The traces variable is used as is, even with an empty path.
        let e = endpoint(
            None,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318")],
        )
        .unwrap();
        assert_eq!(e.path, "/");
        let e = endpoint(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")]).unwrap();
        assert_eq!((e.tls, e.port, e.path.as_str()), (true, 443, "/v1/traces"));
        let e = endpoint(Some("http://[::1]:4318"), &[]).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4318));
    }

    #[test]
    fn bad_endpoints_are_named() {
        for bad in [
            "collector:4318",
            "ftp://c",
            "http://:4318",
            "http://c:port",
            "http://u:p@c",
        ] {
            let e = resolve(Some(bad), false, 1, &env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--otlp-endpoint") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn env_knobs() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20x, x-tenant = a",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "edge-proxy"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.cluster.name=prod-eu,deployment.environment=prod",
            ),
        ];
        let s = resolve(None, true, 100, &env_of(&env)).unwrap().unwrap();
        assert_eq!(s.sampler.describe(), "parentbased_traceidratio(0.25)");
        assert_eq!(
            s.headers.0,
            vec![
                ("authorization".to_owned(), "Bearer x".to_owned()),
                ("x-tenant".to_owned(), "a".to_owned())
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.schedule_delay, Duration::from_millis(200));
        assert_eq!(s.batch_size, 100, "a batch never exceeds the queue");
        assert_eq!(s.service_name, "edge-proxy");
        assert_eq!(
            s.resource_attributes[0],
            ("k8s.cluster.name".to_owned(), "prod-eu".to_owned())
        );
        assert_eq!(s.resource_attributes.len(), 2);
        assert!(s.inject_always);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("authorization: ***") && !shown.contains("Bearer"),
            "{shown}"
        );
    }

    #[test]
    fn bad_env_values_are_errors() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for bad in [
            ("OTEL_TRACES_SAMPLER", "xray"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ] {
            let mut env = vec![base, bad];
            if bad.0 == "OTEL_TRACES_SAMPLER_ARG" {
                env.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
            }
            let e = resolve(None, false, 10, &env_of(&env))
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.0), "{bad:?}: {e}");
        }
        assert!(resolve(Some("http://c"), false, 0, &env_of(&[])).is_err());
    }
}
