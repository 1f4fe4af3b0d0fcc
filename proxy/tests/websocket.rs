//! WebSocket echo through the proxy with a raw-socket client (wsclient.py):
//! absolute-form upgrade, plain ws inside CONNECT, and wss through an
//! intercepted CONNECT. The server is the `websockets` library.
// Helpers here are test code too: a failed unwrap is a test failure with a
// location (.clippy.toml allows unwrap in #[test] fns only).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::pki::TestPki;
use support::proxy::ProxyBuilder;
use support::pyup::{Kind, PyUpstream, WSCLIENT_PY, run_python};

const T: Duration = Duration::from_secs(60);

#[test]
fn ws_absolute_form_upgrade_through_regular_proxy() {
    let ws = PyUpstream::local(Kind::Ws, None);
    let p = ProxyBuilder::new().spawn();
    let out = run_python(
        WSCLIENT_PY,
        &[
            "--proxy",
            &p.addr("regular").to_string(),
            "--via",
            "absolute",
            "--target",
            &ws.addr.to_string(),
        ],
        T,
    );
    assert_eq!(out.trim(), "OK 3", "{}", p.dump());
}

#[test]
fn ws_plain_inside_connect_tunnel() {
    let ws = PyUpstream::local(Kind::Ws, None);
    let p = ProxyBuilder::new().spawn();
    let out = run_python(
        WSCLIENT_PY,
        &[
            "--proxy",
            &p.addr("regular").to_string(),
            "--via",
            "connect",
            "--target",
            &ws.addr.to_string(),
        ],
        T,
    );
    assert_eq!(out.trim(), "OK 3", "{}", p.dump());
}

#[test]
fn wss_through_intercepted_connect() {
    let pki = TestPki::new();
    let wss = PyUpstream::local(Kind::Ws, Some(&pki));
    let p = ProxyBuilder::new().upstream_ca(&pki.ca_pem()).spawn();
    let ca = p.ca_cert();
    let target = format!("localhost:{}", wss.addr.port());
    let out = run_python(
        WSCLIENT_PY,
        &[
            "--proxy",
            &p.addr("regular").to_string(),
            "--via",
            "connect",
            "--target",
            &target,
            "--tls",
            "--cafile",
            ca.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(out.trim(), "OK 3", "{}", p.dump());
    // Intercepted, so the upgrade request is in the flow log.
    let re = format!(r": GET https://{}/ws", regex::escape(&target));
    assert!(
        p.wait_for_stdout(&re, Duration::from_secs(10)).is_some(),
        "{}",
        p.dump()
    );
}
