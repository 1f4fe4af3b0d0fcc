//! Checks of configuration values: names, paths, CIDRs, list consistency.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, EnvVar, Volume, VolumeMount};

use super::{ConfigError, invalid};

pub(super) fn validate_lists(
    init_containers: &[Container],
    volumes: &[Volume],
    mounts: &[VolumeMount],
    env: &[EnvVar],
) -> Result<(), ConfigError> {
    if init_containers.is_empty() {
        return Err(invalid(
            "initContainers",
            "must list at least one init container (the tproxy sidecar)",
        ));
    }
    let mut names = BTreeSet::new();
    for (i, c) in init_containers.iter().enumerate() {
        let field = format!("initContainers[{i}]");
        check_dns_label(&c.name).map_err(|r| invalid(format!("{field}.name"), r))?;
        if !names.insert(c.name.as_str()) {
            return Err(invalid(format!("{field}.name"), "duplicate container name"));
        }
        if c.image.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Err(invalid(
                format!("{field}.image"),
                "must name an image (set sidecar.image)",
            ));
        }
    }
    let mut vol_names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        check_dns_label(&v.name).map_err(|r| invalid(format!("volumes[{i}].name"), r))?;
        if !vol_names.insert(v.name.as_str()) {
            return Err(invalid(
                format!("volumes[{i}].name"),
                "duplicate volume name",
            ));
        }
    }
    let mut paths = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("volumeMounts[{i}]");
        if !vol_names.contains(m.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{:?} is not one of the configured volumes", m.name),
            ));
        }
        if !m.mount_path.starts_with('/') {
            return Err(invalid(
                format!("{field}.mountPath"),
                "must be an absolute path",
            ));
        }
        if !paths.insert(m.mount_path.as_str()) {
            return Err(invalid(
                format!("{field}.mountPath"),
                "duplicate mount path",
            ));
        }
    }
    let mut env_names = BTreeSet::new();
    for (i, e) in env.iter().enumerate() {
        let ok = !e.name.is_empty()
            && !e.name.contains('=')
            && e.name.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(invalid(
                format!("env[{i}].name"),
                "must be non-empty printable ASCII without '='",
            ));
        }
        if !env_names.insert(e.name.as_str()) {
            return Err(invalid(format!("env[{i}].name"), "duplicate env var"));
        }
    }
    Ok(())
}

pub(super) fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (lower-case letters, digits, '-', at most 63)"
        ))
    }
}

pub(super) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(format!("{s:?} is not a DNS subdomain name"));
    }
    Ok(())
}

pub(super) fn check_key(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid ConfigMap key"))
    }
}

pub(super) fn check_cidr(s: &str) -> Result<(), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 10.96.0.0/12"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Ok(()),
        _ => Err(format!("{s:?}: prefix length must be 0..={max}")),
    }
}
