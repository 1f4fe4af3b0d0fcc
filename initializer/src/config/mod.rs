//! What the webhook injects: a YAML file (serde raw struct, unknown fields
//! rejected) validated into [`Config`], with defaults that work with no file.
//!
//! The raw file has two levels: simple knobs (`sidecar.image`,
//! `serviceCidr`, `caBundle.configMap`, `proxyMode`, …) from which the
//! default init container, volumes, mounts and env are generated, and full
//! lists (`initContainers`, `volumes`, `volumeMounts`, `env`) that replace the
//! generated ones when given.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    KeyToPath, ObjectFieldSelector, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod validate;
use validate::{check_cidr, check_dns_label, check_dns_subdomain, check_key, validate_lists};

/// Default image of the `tproxy-sidecar` init container.
pub const DEFAULT_SIDECAR_IMAGE: &str = "tproxy/tproxy-sidecar:0.1.0";
/// Name of the init container the default configuration injects.
pub const DEFAULT_SIDECAR_NAME: &str = "tproxy-sidecar";
/// Default Kubernetes service CIDR (kubeadm's default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// Default cluster DNS address allowed by the sidecar (kubeadm's default).
pub const DEFAULT_ALLOW_DNS: &str = "10.96.0.10";
/// Default name of the ConfigMap holding the CA bundle.
pub const DEFAULT_CA_CONFIGMAP: &str = "tproxy-ca-bundle";
/// Path where Debian, Ubuntu and Alpine look for the system CA bundle.
pub const DEBIAN_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Path where Fedora and RHEL look for the system CA bundle.
pub const RHEL_BUNDLE: &str = "/etc/pki/tls/certs/ca-bundle.crt";
/// Directory of locally added CA certificates (`update-ca-certificates`).
pub const LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";
/// Where the injected init container writes the CA bundle (emptyDir mode,
/// `caBundle.caCertFile`): `ca-certificates.crt` (its image's system roots +
/// the tproxy CA) and `tproxy-ca.crt` (the tproxy CA alone).
pub const BUNDLE_DIR: &str = "/var/run/tproxy-ca-bundle";
/// Name of the emptyDir volume holding the written bundle.
pub const BUNDLE_VOLUME: &str = "tproxy-ca-bundle";

/// How pods reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Node-side REDIRECT: no proxy env vars needed.
    #[default]
    Transparent,
    /// Explicit proxy on the node: `http_proxy`/`https_proxy` point at it.
    Standard,
}

/// The config file as written (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    /// `transparent` (default) or `standard`.
    pub proxy_mode: Option<ProxyMode>,
    /// Namespaces never injected; default `[kube-system]`. The webhook's own
    /// namespace (env `POD_NAMESPACE`) is always added.
    pub excluded_namespaces: Option<Vec<String>>,
    /// Service CIDR(s), comma separated: `BLOCK_SVC_CIDR` and part of `NO_PROXY`.
    pub service_cidr: Option<String>,
    /// Knobs of the generated init container.
    pub sidecar: Option<RawSidecar>,
    /// Knobs of the generated CA bundle volumes, mounts and env.
    pub ca_bundle: Option<RawCaBundle>,
    /// Knobs of the standard-mode env vars.
    pub standard_proxy: Option<RawStandardProxy>,
    /// Replaces the generated init containers (injected first, in this order).
    pub init_containers: Option<Vec<Container>>,
    /// Replaces the generated pod volumes.
    pub volumes: Option<Vec<Volume>>,
    /// Replaces the generated mounts added to every other container.
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Replaces the generated env vars added to every other container.
    pub env: Option<Vec<EnvVar>>,
}

/// `sidecar:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSidecar {
    /// Init container name; default `tproxy-sidecar`.
    pub name: Option<String>,
    /// Image; default [`DEFAULT_SIDECAR_IMAGE`].
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    pub image_pull_policy: Option<String>,
    /// `ALLOW_DNS`: the cluster DNS address; default `10.96.0.10`.
    pub allow_dns: Option<String>,
    /// Resources; default requests 10m/16Mi, limits 100m/64Mi.
    pub resources: Option<ResourceRequirements>,
}

/// `caBundle:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCaBundle {
    /// ConfigMap (in the workload's namespace); default `tproxy-ca-bundle`.
    pub config_map: Option<String>,
    /// Key holding public roots + the tproxy CA; default `ca-certificates.crt`.
    pub bundle_key: Option<String>,
    /// Key holding the tproxy CA alone; default `tproxy-ca.crt`.
    pub ca_key: Option<String>,
    /// Set `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`,
    /// `CURL_CA_BUNDLE`; default true.
    pub env: Option<bool>,
    /// The tproxy CA certificate (PEM file, read at start). When set, no
    /// ConfigMap is used: the generated init container gets the PEM in
    /// `TPROXY_CA_CERT` and writes the bundle into a pod-local emptyDir
    /// (see [`BUNDLE_DIR`]); `configMap` is then ignored.
    pub ca_cert_file: Option<PathBuf>,
}

/// `standardProxy:` section (used when `proxyMode: standard`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawStandardProxy {
    /// Proxy URL; default `http://$(NODE_IP):1080` (`NODE_IP` is injected
    /// from `status.hostIP`; write `http://[$(NODE_IP)]:1080` on IPv6 nodes).
    pub url: Option<String>,
    /// `NO_PROXY`; default `localhost,127.0.0.1,::1,.svc,.cluster.local,<serviceCidr>`.
    pub no_proxy: Option<String>,
}

/// Validated configuration: the JSON values to inject, ready for patches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Proxy mode the env was generated for.
    pub proxy_mode: ProxyMode,
    /// Namespaces never injected.
    pub excluded_namespaces: BTreeSet<String>,
    /// Init containers, inserted before the pod's own.
    pub init_containers: Vec<Value>,
    /// Pod volumes.
    pub volumes: Vec<Value>,
    /// Mounts added to every container but ours.
    pub volume_mounts: Vec<Value>,
    /// Env vars added to every container but ours.
    pub env: Vec<Value>,
}

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("config {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Cause (with line and column).
        source: serde_yaml_ng::Error,
    },
    /// A value is out of range.
    #[error("config: {field}: {reason}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Config::try_from(raw)
    }

    /// Adds a namespace to the excluded set (the webhook's own).
    pub fn exclude_namespace(&mut self, ns: &str) {
        if !ns.is_empty() {
            self.excluded_namespaces.insert(ns.to_owned());
        }
    }

    /// Names of the init containers this config injects.
    pub fn init_container_names(&self) -> impl Iterator<Item = &str> {
        self.init_containers
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
    }

    /// Marker value recorded on injected pods: crate version + a hash of
    /// what was injected.
    pub fn marker(&self) -> String {
        // Only what lands in pods counts (not e.g. the excluded namespaces).
        let injected = (
            self.proxy_mode,
            &self.init_containers,
            &self.volumes,
            &self.volume_mounts,
            &self.env,
        );
        let canonical = serde_json::to_vec(&injected).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", env!("CARGO_PKG_VERSION"))
    }
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are validated by a unit test; fall back to empty lists
        // rather than panic should that ever regress.
        Config::try_from(RawConfig::default()).unwrap_or(Config {
            proxy_mode: ProxyMode::Transparent,
            excluded_namespaces: BTreeSet::new(),
            init_containers: Vec::new(),
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            env: Vec::new(),
        })
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// `name` from the downward API's `status.hostIP`: the node's primary IP,
/// known to the kubelet before any container starts. Node *names* do not
/// resolve from pods on many clusters (kind, most bare-metal and on-prem
/// ones), and an unresolvable one made the sidecar exit and the pod never
/// start.
fn env_host_ip(name: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: "status.hostIP".to_owned(),
            }),
            ..Default::default()
        }),
    }
}

fn default_resources() -> ResourceRequirements {
    let q = |cpu: &str, mem: &str| -> std::collections::BTreeMap<String, Quantity> {
        [
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(mem.to_owned())),
        ]
        .into_iter()
        .collect()
    };
    ResourceRequirements {
        requests: Some(q("10m", "16Mi")),
        limits: Some(q("100m", "64Mi")),
        ..Default::default()
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let proxy_mode = raw.proxy_mode.unwrap_or_default();
        let service_cidr = raw
            .service_cidr
            .unwrap_or_else(|| DEFAULT_SERVICE_CIDR.to_owned());
        // Empty: nothing blocked (BLOCK_SVC_CIDR="" and no CIDR in NO_PROXY).
        for cidr in service_cidr.split(',').filter(|c| !c.trim().is_empty()) {
            check_cidr(cidr.trim()).map_err(|r| invalid("serviceCidr", r))?;
        }
        let sidecar = raw.sidecar.unwrap_or_default();
        let ca = raw.ca_bundle.unwrap_or_default();
        let std_proxy = raw.standard_proxy.unwrap_or_default();

        let ca_config_map = ca
            .config_map
            .unwrap_or_else(|| DEFAULT_CA_CONFIGMAP.to_owned());
        check_dns_subdomain(&ca_config_map).map_err(|r| invalid("caBundle.configMap", r))?;
        let bundle_key = ca
            .bundle_key
            .unwrap_or_else(|| "ca-certificates.crt".to_owned());
        check_key(&bundle_key).map_err(|r| invalid("caBundle.bundleKey", r))?;
        let ca_key = ca.ca_key.unwrap_or_else(|| "tproxy-ca.crt".to_owned());
        check_key(&ca_key).map_err(|r| invalid("caBundle.caKey", r))?;
        // emptyDir mode: the CA certificate travels in the init container's env.
        let ca_cert_pem = match &ca.ca_cert_file {
            Some(path) => Some(read_ca_cert(path)?),
            None => None,
        };

        let init_containers = match raw.init_containers {
            Some(list) => list,
            None => {
                let allow_dns = sidecar
                    .allow_dns
                    .unwrap_or_else(|| DEFAULT_ALLOW_DNS.to_owned());
                for ip in allow_dns.split(',').filter(|s| !s.trim().is_empty()) {
                    ip.trim().parse::<IpAddr>().map_err(|_| {
                        invalid("sidecar.allowDns", format!("{ip:?} is not an IP address"))
                    })?;
                }
                let pull = sidecar
                    .image_pull_policy
                    .unwrap_or_else(|| "IfNotPresent".to_owned());
                if !["Always", "IfNotPresent", "Never"].contains(&pull.as_str()) {
                    return Err(invalid(
                        "sidecar.imagePullPolicy",
                        "must be Always, IfNotPresent or Never",
                    ));
                }
                vec![Container {
                    name: sidecar
                        .name
                        .unwrap_or_else(|| DEFAULT_SIDECAR_NAME.to_owned()),
                    image: Some(
                        sidecar
                            .image
                            .unwrap_or_else(|| DEFAULT_SIDECAR_IMAGE.to_owned()),
                    ),
                    image_pull_policy: Some(pull),
                    env: Some({
                        let mut env = vec![
                            env_value("BLOCK_SVC_CIDR", &service_cidr),
                            env_value("ALLOW_DNS", &allow_dns),
                            env_host_ip("NODE_NAME"),
                        ];
                        if let Some(pem) = &ca_cert_pem {
                            env.push(env_value("TPROXY_CA_CERT", pem));
                            env.push(env_value("TPROXY_CA_BUNDLE_DIR", BUNDLE_DIR));
                        }
                        env
                    }),
                    volume_mounts: ca_cert_pem.as_ref().map(|_| {
                        vec![VolumeMount {
                            name: BUNDLE_VOLUME.to_owned(),
                            mount_path: BUNDLE_DIR.to_owned(),
                            ..Default::default()
                        }]
                    }),
                    resources: Some(sidecar.resources.unwrap_or_else(default_resources)),
                    security_context: Some(SecurityContext {
                        run_as_user: Some(0),
                        run_as_non_root: Some(false),
                        capabilities: Some(Capabilities {
                            add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                            drop: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }
        };

        let emptydir_mode = ca_cert_pem.is_some();
        let volumes = raw.volumes.unwrap_or_else(|| {
            if emptydir_mode {
                return vec![Volume {
                    name: BUNDLE_VOLUME.to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("4Mi".to_owned())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }];
            }
            let cm = |key: &str| ConfigMapVolumeSource {
                name: ca_config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: key.to_owned(),
                    path: key.to_owned(),
                    mode: None,
                }]),
                ..Default::default()
            };
            vec![
                Volume {
                    name: "tproxy-ca-bundle".to_owned(),
                    config_map: Some(cm(&bundle_key)),
                    ..Default::default()
                },
                Volume {
                    name: "tproxy-ca".to_owned(),
                    config_map: Some(cm(&ca_key)),
                    ..Default::default()
                },
            ]
        });

        let volume_mounts = raw.volume_mounts.unwrap_or_else(|| {
            if emptydir_mode {
                // Single files (subPath) so the rest of each directory stays.
                let file = |path: String, sub: &str| VolumeMount {
                    name: BUNDLE_VOLUME.to_owned(),
                    mount_path: path,
                    sub_path: Some(sub.to_owned()),
                    read_only: Some(true),
                    ..Default::default()
                };
                return vec![
                    file(DEBIAN_BUNDLE.to_owned(), "ca-certificates.crt"),
                    file(RHEL_BUNDLE.to_owned(), "ca-certificates.crt"),
                    file(format!("{LOCAL_CA_DIR}/{ca_key}"), "tproxy-ca.crt"),
                ];
            }
            let file = |path: &str| VolumeMount {
                name: "tproxy-ca-bundle".to_owned(),
                mount_path: path.to_owned(),
                sub_path: Some(bundle_key.clone()),
                read_only: Some(true),
                ..Default::default()
            };
            vec![
                file(DEBIAN_BUNDLE),
                file(RHEL_BUNDLE),
                VolumeMount {
                    name: "tproxy-ca".to_owned(),
                    mount_path: LOCAL_CA_DIR.to_owned(),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]
        });

        let env = match raw.env {
            Some(list) => list,
            None => {
                let mut env = Vec::new();
                if ca.env.unwrap_or(true) {
                    env.push(env_value("SSL_CERT_FILE", DEBIAN_BUNDLE));
                    env.push(env_value("REQUESTS_CA_BUNDLE", DEBIAN_BUNDLE));
                    env.push(env_value("CURL_CA_BUNDLE", DEBIAN_BUNDLE));
                    env.push(env_value(
                        "NODE_EXTRA_CA_CERTS",
                        &format!("{LOCAL_CA_DIR}/{ca_key}"),
                    ));
                }
                if proxy_mode == ProxyMode::Standard {
                    let url = std_proxy
                        .url
                        .unwrap_or_else(|| "http://$(NODE_IP):1080".to_owned());
                    if !(url.starts_with("http://") || url.starts_with("https://"))
                        || url.len() <= "http://".len()
                    {
                        return Err(invalid(
                            "standardProxy.url",
                            "must be an http:// or https:// URL",
                        ));
                    }
                    let no_proxy = std_proxy.no_proxy.unwrap_or_else(|| {
                        let base = "localhost,127.0.0.1,::1,.svc,.cluster.local";
                        match service_cidr.trim() {
                            "" => base.to_owned(),
                            cidr => format!("{base},{cidr}"),
                        }
                    });
                    env.push(env_host_ip("NODE_IP"));
                    for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
                        env.push(env_value(name, &url));
                    }
                    env.push(env_value("no_proxy", &no_proxy));
                    env.push(env_value("NO_PROXY", &no_proxy));
                }
                env
            }
        };

        let mut excluded = BTreeSet::new();
        for ns in raw
            .excluded_namespaces
            .unwrap_or_else(|| vec!["kube-system".to_owned()])
        {
            check_dns_label(&ns).map_err(|r| invalid("excludedNamespaces", r))?;
            excluded.insert(ns);
        }

        validate_lists(&init_containers, &volumes, &volume_mounts, &env)?;

        Ok(Config {
            proxy_mode,
            excluded_namespaces: excluded,
            init_containers: to_values(&init_containers)?,
            volumes: to_values(&volumes)?,
            volume_mounts: to_values(&volume_mounts)?,
            env: to_values(&env)?,
        })
    }
}

/// Reads the tproxy CA certificate for emptyDir mode: one or more PEM
/// certificates, nothing else (a private key here would be handed to every
/// injected pod).
fn read_ca_cert(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let field = "caBundle.caCertFile";
    if text.contains("PRIVATE KEY-----") {
        return Err(invalid(
            field,
            format!(
                "{} holds a private key: point it at the certificate alone (mitmproxy-ca-cert.pem)",
                path.display()
            ),
        ));
    }
    let mut certs = 0;
    for item in CertificateDer::pem_slice_iter(text.as_bytes()) {
        item.map_err(|e| {
            invalid(
                field,
                format!("{}: not a PEM certificate: {e}", path.display()),
            )
        })?;
        certs += 1;
    }
    if certs == 0 {
        return Err(invalid(
            field,
            format!("{}: no PEM CERTIFICATE found", path.display()),
        ));
    }
    let mut pem = text.trim().to_owned();
    pem.push('\n');
    Ok(pem)
}

fn to_values<T: Serialize>(items: &[T]) -> Result<Vec<Value>, ConfigError> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).map_err(|e| invalid("(internal)", e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(yaml).map_err(|source| ConfigError::Parse {
                path: "test.yaml".into(),
                source,
            })?;
        Config::try_from(raw)
    }

    #[test]
    fn defaults_are_valid_and_complete() {
        let c = Config::try_from(RawConfig::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.init_containers.len(), 1);
        let sc = &c.init_containers[0];
        assert_eq!(sc["name"], "tproxy-sidecar");
        assert_eq!(
            sc["securityContext"]["capabilities"]["add"],
            serde_json::json!(["NET_ADMIN", "NET_RAW"])
        );
        let env = sc["env"].as_array().unwrap();
        assert_eq!(env[0]["name"], "BLOCK_SVC_CIDR");
        assert_eq!(
            env[2]["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        assert!(c.excluded_namespaces.contains("kube-system"));
        assert_eq!(c.volume_mounts.len(), 3);
        assert_eq!(c.volume_mounts[0]["subPath"], "ca-certificates.crt");
        let names: Vec<_> = c.env.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS"
            ]
        );
        assert!(c.marker().starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn standard_mode_adds_proxy_env() {
        let c = parse("proxyMode: standard\nserviceCidr: 10.0.0.0/16\n").unwrap();
        let get = |n: &str| c.env.iter().find(|e| e["name"] == n).cloned().unwrap();
        assert_eq!(get("https_proxy")["value"], "http://$(NODE_IP):1080");
        assert_eq!(get("HTTP_PROXY")["value"], "http://$(NODE_IP):1080");
        assert_eq!(
            get("NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        let no_proxy = get("NO_PROXY")["value"].as_str().unwrap().to_owned();
        assert!(no_proxy.contains(".svc") && no_proxy.ends_with("10.0.0.0/16"));
        // NODE_IP comes before the vars that reference it.
        let pos = |n: &str| c.env.iter().position(|e| e["name"] == n).unwrap();
        assert!(pos("NODE_IP") < pos("http_proxy"));
        assert_ne!(c.marker(), Config::default().marker());
        let mut other_ns = Config::default();
        other_ns.exclude_namespace("tproxy");
        assert_eq!(other_ns.marker(), Config::default().marker());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("proxyMode: sideways\n", "proxyMode"),
            ("serviceCidr: 10.96.0.0\n", "serviceCidr"),
            ("excludedNamespaces: [Kube_System]\n", "excludedNamespaces"),
            ("sidecar: {image: ''}\n", "initContainers[0].image"),
            ("caBundle: {configMap: 'a b'}\n", "caBundle.configMap"),
            ("unknownKey: 1\n", "unknownKey"),
            (
                "volumeMounts: [{name: nope, mountPath: /x}]\n",
                "volumeMounts[0].name",
            ),
            ("env: [{name: A, value: x}, {name: A}]\n", "env[1].name"),
            ("initContainers: []\n", "initContainers"),
            ("sidecar: {allowDns: dns.local}\n", "sidecar.allowDns"),
        ];
        for (yaml, field) in cases {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml:?}: {err}");
        }
    }

    const CA: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

    fn with_ca_file(extra: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, CA).unwrap();
        parse(&format!(
            "caBundle: {{caCertFile: {}}}\n{extra}",
            path.display()
        ))
    }

    #[test]
    fn ca_cert_file_bundles_in_an_emptydir_instead_of_a_configmap() {
        let c = with_ca_file("").unwrap();
        // The init container gets the CA and the directory, and mounts it.
        let sc = &c.init_containers[0];
        let env = sc["env"].as_array().unwrap();
        let get = |n: &str| env.iter().find(|e| e["name"] == n).unwrap()["value"].clone();
        assert_eq!(get("TPROXY_CA_CERT"), CA);
        assert_eq!(get("TPROXY_CA_BUNDLE_DIR"), BUNDLE_DIR);
        assert_eq!(sc["volumeMounts"][0]["name"], BUNDLE_VOLUME);
        assert_eq!(sc["volumeMounts"][0]["mountPath"], BUNDLE_DIR);
        // One emptyDir volume, no ConfigMap anywhere.
        assert_eq!(c.volumes.len(), 1);
        assert!(c.volumes[0]["emptyDir"].is_object());
        assert!(
            !serde_json::to_string(&c.volumes)
                .unwrap()
                .contains("configMap")
        );
        // App containers: single files, read-only, the directories' other files stay.
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap(),
                    m["subPath"].as_str().unwrap(),
                    m["readOnly"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                (DEBIAN_BUNDLE, "ca-certificates.crt", true),
                (RHEL_BUNDLE, "ca-certificates.crt", true),
                (
                    "/usr/local/share/ca-certificates/tproxy-ca.crt",
                    "tproxy-ca.crt",
                    true
                ),
            ]
        );
        let node_extra = c
            .env
            .iter()
            .find(|e| e["name"] == "NODE_EXTRA_CA_CERTS")
            .unwrap();
        assert_eq!(
            node_extra["value"],
            "/usr/local/share/ca-certificates/tproxy-ca.crt"
        );
        // The CA is part of what is injected: another CA, another marker.
        assert_ne!(c.marker(), Config::default().marker());
    }

    #[test]
    fn ca_cert_file_must_be_a_certificate_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("missing.pem", None, "cannot read"),
            (
                "key.pem",
                Some(format!(
                    "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n{CA}"
                )),
                "private key",
            ),
            ("empty.pem", Some(String::new()), "no PEM CERTIFICATE"),
        ];
        for (name, content, needle) in cases {
            let path = dir.path().join(name);
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            let err = parse(&format!("caBundle: {{caCertFile: {}}}\n", path.display()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn empty_service_cidr_blocks_nothing() {
        let c = parse("serviceCidr: ''\nsidecar: {allowDns: ''}\nproxyMode: standard\n").unwrap();
        let env = c.init_containers[0]["env"].as_array().unwrap();
        assert_eq!(env[0]["name"], "BLOCK_SVC_CIDR");
        assert_eq!(env[0]["value"], "");
        assert_eq!(env[1]["value"], "");
        let no_proxy = c.env.iter().find(|e| e["name"] == "NO_PROXY").unwrap();
        assert_eq!(
            no_proxy["value"],
            "localhost,127.0.0.1,::1,.svc,.cluster.local"
        );
    }

    #[test]
    fn full_lists_replace_generated_ones() {
        let c = parse(
            "initContainers:\n- name: mine\n  image: busybox\nvolumes: []\nvolumeMounts: []\nenv:\n- name: FOO\n  value: bar\n",
        )
        .unwrap();
        assert_eq!(c.init_container_names().collect::<Vec<_>>(), ["mine"]);
        assert!(c.volumes.is_empty() && c.volume_mounts.is_empty());
        assert_eq!(
            c.env,
            vec![serde_json::json!({"name": "FOO", "value": "bar"})]
        );
    }
}
