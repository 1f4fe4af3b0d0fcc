//! One client connection, phase by phase:
//! accept → destination → loop guard → sniff → passthrough | intercept.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::AsyncWriteRentExt;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access::RefusalReason;
use crate::config::Mode;
use crate::detect::{self, ClientHello, Sniff};
use crate::engine::verdict::{self, ConnVerdict};
use crate::engine::{self, ConnCtx, Exit, Preconnected, Scope, log_conn_error};
use crate::flowlog::{ConnEvent, ConnEventKind, TcpFlow};
use crate::metrics::ConnKind;
use crate::net::origdst;
use crate::net::rewind::Rewind;
use crate::net::stream::{ClientIo, Tcp};
use crate::passthrough::{RelayOptions, relay_with};
use crate::policy::DenyHow;
use crate::tls::certcache::{LeafName, Outcome};
use crate::tls::upstream::{ALPN_H1, ALPN_H2, mirror_offer};
use crate::upstream::{self, Target};
use crate::worker::Worker;

/// Bytes read at most to classify a connection's first message.
const SNIFF_LIMIT: usize = 64 * 1024;
/// How long a client may stay silent before we treat it as server-speaks-first.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for the client's TLS handshake with us.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a regular-mode client that is not (yet) a known pod is held
/// before it is refused: a pod's first connection can arrive before the
/// proxy has reloaded the pod directory that lists it (podwatch writes the
/// file when the pod gets its IP; the proxy polls it every 500 ms).
const NEW_POD_GRACE: Duration = Duration::from_millis(1500);

/// [`Worker::client_allowed`], re-checked against the reloading pod
/// directory for up to [`NEW_POD_GRACE`] when `pods` is allowed, so a pod
/// that just started is not refused by a race with the reload. Others wait
/// that long for their refusal, which costs tproxy one timer.
async fn client_allowed_soon(worker: &Worker, peer: SocketAddr) -> bool {
    if worker.client_allowed(peer.ip()) {
        return true;
    }
    if !worker.shared.cfg.allow_clients.has_pods() || worker.shared.shutting_down() {
        return false;
    }
    let until = std::time::Instant::now() + NEW_POD_GRACE;
    while std::time::Instant::now() < until {
        monoio::time::sleep(Duration::from_millis(100)).await;
        if worker.client_allowed(peer.ip()) {
            return true;
        }
    }
    false
}

/// Serve one accepted connection to the end.
pub async fn serve(worker: &Worker, mode: Mode, stream: TcpStream, peer: SocketAddr) {
    let shared = &worker.shared;
    let peer = origdst::normalize(peer);
    // The ceiling: beyond it a connection is shed at once (degrade, do not
    // get OOM-killed with every pod's egress); the open ones are untouched.
    // `in_flight` counts this connection already.
    if let Some(max) = shared.cfg.max_connections {
        let open = shared.in_flight.load(std::sync::atomic::Ordering::Acquire);
        if open > max {
            let detail = format!(
                "{} connections open, the --max-connections limit (closed before reading); \
                 raise it with the memory limit (docs/capacity.md) or spread the load",
                open - 1
            );
            refused(
                worker,
                mode,
                peer,
                RefusalReason::MaxConnections,
                Some(detail),
            );
            return;
        }
    }
    // Who may use this listener, decided before a byte is read; a refused
    // connection is closed by dropping `stream` (docs/access.md).
    let redirected_to = match mode {
        Mode::Regular if !client_allowed_soon(worker, peer).await => {
            refused(worker, mode, peer, RefusalReason::NotAllowed, None);
            return;
        }
        Mode::Regular => None,
        Mode::Transparent => match redirected_destination(worker, &stream, peer) {
            Some(dst) => Some(dst),
            None => return,
        },
    };
    let _ = stream.set_nodelay(true);
    let active = shared.metrics.active(mode);
    active.inc();
    let ctx = ConnCtx {
        client: peer,
        mode,
        sni: None,
        conn_host: None,
        source: worker.source_pod(peer.ip()),
    };
    event(worker, &ctx, ConnEventKind::ClientConnect);
    match redirected_to {
        None => serve_regular(worker, ctx.clone(), stream).await,
        Some(dst) => serve_transparent(worker, ctx.clone(), stream, dst).await,
    }
    event(worker, &ctx, ConnEventKind::ClientDisconnect);
    active.dec();
}

/// Count and log (rate-limited, per reason) a client turned away before a
/// byte of it was read: no parser sees anything from it, and a port scan
/// learns nothing about tproxy. Not in the flow log: nothing was served.
fn refused(
    worker: &Worker,
    mode: Mode,
    peer: SocketAddr,
    reason: RefusalReason,
    detail: Option<String>,
) {
    let shared = &worker.shared;
    shared.metrics.conn(mode, ConnKind::Refused);
    shared.metrics.refused(mode, reason);
    let Some(suppressed) = shared.refusal_logs[reason as usize].admit() else {
        return;
    };
    match reason {
        RefusalReason::NotAllowed => tracing::warn!(
            %mode,
            client = %peer,
            allowed = %shared.cfg.allow_clients,
            suppressed,
            "refused a client that --allow-client does not allow (closed before reading); \
             to serve it, add its network with --allow-client CIDR"
        ),
        _ => tracing::warn!(
            %mode,
            client = %peer,
            suppressed,
            "refused: {}",
            detail.unwrap_or_default()
        ),
    }
}

/// The original destination of a transparent connection; `None` when it
/// was not redirected (refused: the loop guard — a connection made straight
/// to our port, from this host or any other, or redirected to another of our
/// listeners, would be proxied to ourselves).
fn redirected_destination(
    worker: &Worker,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let shared = &worker.shared;
    let local = stream.local_addr().ok()?;
    let why = match origdst::original_dst(stream, local) {
        Ok(dst) if dst == origdst::normalize(local) || shared.is_own_listener(dst) => format!(
            "refused by the loop guard: destination {dst} is this proxy's own listener (the connection was not redirected)"
        ),
        Ok(dst) => return Some(dst),
        Err(e) => format!("no original destination (SO_ORIGINAL_DST): {e}"),
    };
    refused(
        worker,
        Mode::Transparent,
        peer,
        RefusalReason::NotRedirected,
        Some(why),
    );
    None
}

fn event(worker: &Worker, ctx: &ConnCtx, kind: ConnEventKind) {
    worker.shared.flowlog.conn_event(ConnEvent {
        at: SystemTime::now(),
        client: ctx.client,
        kind,
    });
}

fn to_poll(stream: TcpStream) -> Option<Tcp> {
    stream.into_poll_io().ok()
}

async fn serve_regular(worker: &Worker, mut ctx: ConnCtx, stream: TcpStream) {
    let Some(tcp) = to_poll(stream) else { return };
    let mut client = ClientIo::Plain(tcp);
    let exit = engine::serve(
        worker,
        &ctx,
        &mut client,
        Vec::new(),
        Scope::Proxy,
        Preconnected::None,
    )
    .await;
    let Exit::Connect { head, leftover } = exit else {
        worker.shared.metrics.conn(ctx.mode, ConnKind::Intercepted);
        return;
    };
    let ClientIo::Plain(mut tcp) = client else {
        return;
    };
    let Some((host, port)) = connect_target(&head.target) else {
        let _ = tcp
            .write_all(&crate::engine::respond_error(
                400,
                &format!("bad CONNECT target `{}`", head.target),
            ))
            .await;
        return;
    };
    let dest = Target {
        host: host.clone(),
        port,
        addr: None,
        tls: None,
    };
    if tcp
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if worker.shared.cfg.is_ignored(&host, port) {
        passthrough(worker, &ctx, tcp, leftover, dest, None, "ignore-hosts").await;
        return;
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        ctx.conn_host = Some(host);
    }
    tunnel(worker, ctx, tcp, leftover, dest).await;
}

/// `host:port` of a CONNECT request (the port is mandatory there).
fn connect_target(target: &str) -> Option<(String, u16)> {
    let (h, p) = crate::engine::split_authority(target, 0)?;
    (p != 0).then_some((h, p))
}

/// Classify the first bytes inside a tunnel / redirected connection and
/// hand off to interception or passthrough.
async fn tunnel(worker: &Worker, mut ctx: ConnCtx, mut tcp: Tcp, mut buf: Vec<u8>, dest: Target) {
    let cfg = &worker.shared.cfg;
    let sniffed = sniff(&mut tcp, &mut buf).await;
    match sniffed {
        Sniff::Tls(hello) => {
            let sni_host = hello.sni.clone();
            if let Some(sni) = &sni_host
                && let Some(name) = connect_name(&dest)
                && !crate::engine::same_host(sni, name)
            {
                // Explicit proxy: the CONNECT target is where the bytes go;
                // a TLS session naming another host is refused before TLS.
                worker.shared.metrics.conn(ctx.mode, ConnKind::Refused);
                log_conn_error(
                    worker,
                    &ctx,
                    format!(
                        "refused TLS for `{sni}` inside a CONNECT tunnel to {}: the TLS server name must be the CONNECT target",
                        dest.authority()
                    ),
                );
                deny_connection(tcp, DenyHow::TlsAlert).await;
                return;
            }
            if let Some(sni) = &sni_host
                && cfg.is_ignored(sni, dest.port)
                && sni_reaches(worker, &ctx, sni, &dest, "--ignore-hosts").await
            {
                passthrough(
                    worker,
                    &ctx,
                    tcp,
                    buf,
                    dest,
                    sni_host.clone(),
                    "ignore-hosts",
                )
                .await;
                return;
            }
            // TLS fail-open: a host whose clients keep rejecting our
            // certificate (pinning) is passed through for a while.
            let fail_host = sni_host.clone().unwrap_or_else(|| dest.host.clone());
            if worker.shared.policy.fail_open().is_open(&fail_host)
                && (sni_host.is_none()
                    || sni_reaches(worker, &ctx, &fail_host, &dest, "TLS fail-open").await)
            {
                passthrough(worker, &ctx, tcp, buf, dest, sni_host, "tls fail-open").await;
                return;
            }
            ctx.sni = sni_host;
            let mut decided = verdict::for_connection(worker, &ctx, dest.port);
            if let (ConnVerdict::Passthrough { rule }, Some(sni)) = (&decided, &ctx.sni)
                && !sni_reaches(worker, &ctx, sni, &dest, &format!("rule {rule}")).await
            {
                // A passthrough is never verified by us: decide again
                // without the unbound claim (intercepting verifies it).
                let claim = ctx.sni.take();
                decided = verdict::for_connection(worker, &ctx, dest.port);
                ctx.sni = claim;
            }
            match decided {
                ConnVerdict::Intercept => intercept_tls(worker, ctx, tcp, buf, hello, dest).await,
                ConnVerdict::Passthrough { rule } => {
                    let sni = ctx.sni.clone();
                    let reason = format!("rule {rule}");
                    passthrough(worker, &ctx, tcp, buf, dest, sni, &reason).await;
                }
                ConnVerdict::Deny { how, rule } => {
                    worker.shared.metrics.conn(ctx.mode, ConnKind::Refused);
                    let host = ctx.sni.clone().unwrap_or_else(|| dest.authority());
                    let how_s = match how {
                        DenyHow::TlsAlert => "TLS alert",
                        DenyHow::Reset => "reset",
                    };
                    log_conn_error(
                        worker,
                        &ctx,
                        format!("denied {host} before TLS ({how_s}) [deny rule {rule}]"),
                    );
                    deny_connection(tcp, how).await;
                }
            }
        }
        Sniff::Http1 => {
            worker.shared.metrics.conn(ctx.mode, ConnKind::Intercepted);
            let mut client = ClientIo::Plain(tcp);
            let scope = Scope::Fixed {
                target: dest,
                tls: false,
            };
            engine::serve(worker, &ctx, &mut client, buf, scope, Preconnected::None).await;
        }
        Sniff::H2Preface if worker.shared.cfg.http2 => {
            // Cleartext HTTP/2 with prior knowledge: h2c upstream too.
            worker.shared.metrics.conn(ctx.mode, ConnKind::Intercepted);
            let io = Rewind::new(buf, tcp);
            engine::h2::server::serve(worker, &ctx, io, dest, false, Preconnected::None).await;
        }
        Sniff::H2Preface => {
            passthrough(worker, &ctx, tcp, buf, dest, None, "h2c (--http2=false)").await;
        }
        Sniff::Other | Sniff::NeedMore => {
            passthrough(worker, &ctx, tcp, buf, dest, None, "not HTTP or TLS").await;
        }
    }
}

/// The CONNECT target when it is a name (explicit proxy, not an address).
fn connect_name(dest: &Target) -> Option<&str> {
    (dest.addr.is_none() && dest.host.parse::<std::net::IpAddr>().is_err())
        .then_some(dest.host.as_str())
}

/// Whether the client's TLS server name is bound to where tproxy would
/// splice the bytes, for decisions that pass TLS through unverified: the
/// CONNECT target itself, or a name resolving (tproxy's resolver) to the
/// destination address. An unbound name is logged and not used.
async fn sni_reaches(worker: &Worker, ctx: &ConnCtx, sni: &str, dest: &Target, what: &str) -> bool {
    if let Some(name) = connect_name(dest) {
        return crate::engine::same_host(sni, name);
    }
    let Ok(want) = dest.host.parse::<std::net::IpAddr>() else {
        return false;
    };
    let want = origdst::normalize(std::net::SocketAddr::new(want, 0)).ip();
    let bound = match upstream::resolve(worker, sni, dest.port).await {
        Ok(addrs) => addrs.iter().any(|a| origdst::normalize(*a).ip() == want),
        Err(_) => false,
    };
    if !bound {
        log_conn_error(
            worker,
            ctx,
            format!(
                "TLS server name `{sni}` does not resolve to the destination {}: not passed through by {what}; intercepted (the upstream certificate is verified)",
                dest.authority()
            ),
        );
    }
    bound
}

/// Read until the first bytes classify (bounded in size and time).
async fn sniff(tcp: &mut Tcp, buf: &mut Vec<u8>) -> Sniff {
    loop {
        if !buf.is_empty() {
            match detect::sniff(buf) {
                Sniff::NeedMore if buf.len() < SNIFF_LIMIT => {}
                Sniff::NeedMore => return Sniff::Other,
                s => return s,
            }
        }
        buf.reserve(4096);
        match monoio::time::timeout(SNIFF_TIMEOUT, tcp.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Silence (server-speaks-first protocol) or EOF: pass through.
            _ => return Sniff::Other,
        }
    }
}

async fn serve_transparent(worker: &Worker, ctx: ConnCtx, stream: TcpStream, dst: SocketAddr) {
    let shared = &worker.shared;
    let Some(tcp) = to_poll(stream) else { return };
    let dest = Target {
        host: dst.ip().to_string(),
        port: dst.port(),
        addr: Some(dst),
        tls: None,
    };
    if shared.cfg.is_ignored(&dest.host, dest.port) {
        passthrough(worker, &ctx, tcp, Vec::new(), dest, None, "ignore-hosts").await;
        return;
    }
    tunnel(worker, ctx, tcp, Vec::new(), dest).await;
}

/// Terminate the client's TLS with a minted leaf and serve HTTP inside.
async fn intercept_tls(
    worker: &Worker,
    ctx: ConnCtx,
    tcp: Tcp,
    buf: Vec<u8>,
    hello: ClientHello,
    dest: Target,
) {
    let shared = &worker.shared;
    shared.metrics.conn(ctx.mode, ConnKind::Intercepted);
    // Upstream first: its failure is reported inside the TLS session as a 502
    // the user can read, instead of a bare handshake failure.
    let upstream_sni = hello.sni.clone().or_else(|| {
        (dest.addr.is_none() && dest.host.parse::<std::net::IpAddr>().is_err())
            .then(|| dest.host.clone())
    });
    let target = Target {
        tls: Some(upstream_sni),
        ..dest
    };
    let offer = mirror_offer(&hello.alpn, shared.cfg.http2);
    let pre = preconnect(worker, &ctx, &target, &offer).await;
    let leaf_name = match (&hello.sni, &target.addr) {
        (Some(s), _) => LeafName::Dns(s.clone()),
        (None, Some(a)) => LeafName::Ip(a.ip()),
        (None, None) => match target.host.parse() {
            Ok(ip) => LeafName::Ip(ip),
            Err(_) => LeafName::Dns(target.host.clone()),
        },
    };
    let leaf = match shared.certs.get(&leaf_name) {
        Ok((leaf, outcome)) => {
            match outcome {
                Outcome::Hit => shared.metrics.cert_hit.inc(),
                Outcome::Coalesced => shared.metrics.cert_coalesced.inc(),
                Outcome::Miss { mint } => {
                    shared.metrics.cert_miss.inc();
                    shared.metrics.cert_mint_seconds.observe(mint.as_secs_f64());
                    shared
                        .metrics
                        .cert_cache_entries
                        .set(shared.certs.len() as i64);
                }
            }
            leaf
        }
        Err(e) => {
            log_conn_error(worker, &ctx, e.to_string());
            return;
        }
    };
    // ALPN mirroring: the client gets what the upstream chose.
    let chosen = answer_alpn(worker, &target, &offer, &pre);
    let alpn: Vec<Vec<u8>> = chosen.iter().map(|p| p.to_vec()).collect();
    let config = crate::tls::server::server_config(leaf, &alpn);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let host = hello.sni.clone().unwrap_or_else(|| {
        target
            .addr
            .map_or_else(|| target.host.clone(), |a| a.ip().to_string())
    });
    let started = Instant::now();
    let tls = match monoio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Rewind::new(buf, tcp)))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared
                .metrics
                .tls_failure(crate::metrics::CLIENT, crate::metrics::tls::reason(&e));
            let msg = if crate::tls::upstream::client_rejected_our_cert(&e) {
                if shared.policy.fail_open().record_client_reject(&host) {
                    tracing::warn!(%host, "tls fail-open: passing this host through for the configured TTL");
                }
                format!("client does not trust the tproxy CA for {host} ({e})")
            } else {
                format!("TLS handshake with client failed for {host}: {e}")
            };
            log_conn_error(worker, &ctx, msg);
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure(
                crate::metrics::CLIENT,
                crate::metrics::tls::Reason::HandshakeTimeout,
            );
            log_conn_error(
                worker,
                &ctx,
                format!("client TLS handshake for {host} timed out"),
            );
            return;
        }
    };
    shared.metrics.tls_ok[crate::metrics::CLIENT].inc();
    tracing::trace!(sni = %host, handshake_us = started.elapsed().as_micros() as u64, "client TLS established");
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
    let mut client = ClientIo::Tls(Box::new(tls));
    if client_h2 {
        engine::h2::server::serve(worker, &ctx, client, target, true, pre).await;
        return;
    }
    let scope = Scope::Fixed { target, tls: true };
    engine::serve(worker, &ctx, &mut client, Vec::new(), scope, pre).await;
}

/// Connect upstream before the client handshake, offering the client's ALPN
/// list (`offer`). Skipped when the worker already speaks HTTP/2 to `target`
/// (the streams use that connection). A client that did not offer h2 to an
/// upstream refusing its list (no_application_protocol) gets one retry
/// offering h2 only: the exchange is then translated HTTP/1.1 → HTTP/2.
async fn preconnect(
    worker: &Worker,
    ctx: &ConnCtx,
    target: &Target,
    offer: &[&'static [u8]],
) -> Preconnected {
    let shared = &worker.shared;
    if shared.cfg.http2 && engine::h2::client::lookup(worker, target).is_some() {
        return Preconnected::None;
    }
    let client_h2 = offer.contains(&ALPN_H2);
    let res = if !client_h2 || engine::h2::client::is_h1_only(worker, target) {
        upstream::get(worker, target, ctx.client).await
    } else {
        let tls = shared.upstream_alpn.for_offer(offer);
        upstream::connect_with(worker, target, ctx.client, tls).await
    };
    let res = match res {
        Err(upstream::UpstreamError::NoAlpn { .. }) if shared.cfg.http2 && !client_h2 => {
            let tls = shared.upstream_alpn.for_offer(&[ALPN_H2]);
            upstream::connect_with(worker, target, ctx.client, tls).await
        }
        other => other,
    };
    match res {
        Ok((c, t)) => {
            if is_no_alpn_tls(&c) {
                // RFC 7301: a server that selects no protocol speaks
                // HTTP/1.1; it is not probed again with h2.
                engine::h2::client::mark_h1_only(worker, target);
            }
            Preconnected::Conn(Box::new(c), t)
        }
        Err(e) => Preconnected::Failed(e),
    }
}

/// A fresh TLS connection on which the server selected no ALPN protocol.
fn is_no_alpn_tls(c: &upstream::UpstreamConn) -> bool {
    !c.reused && matches!(c.io, crate::net::stream::UpstreamIo::Tls(_)) && c.io.alpn().is_none()
}

/// The ALPN protocol answered to the client: the upstream's choice when the
/// client offered it; HTTP/1.1 when the client offered it and the upstream
/// chose something it did not offer or nothing; else h2 (translated).
fn answer_alpn(
    worker: &Worker,
    target: &Target,
    offer: &[&'static [u8]],
    pre: &Preconnected,
) -> Option<&'static [u8]> {
    if offer.is_empty() {
        return None;
    }
    let upstream_choice = match pre {
        Preconnected::Conn(c, _) => {
            c.io.alpn()
                .and_then(|p| offer.iter().copied().find(|o| *o == p))
        }
        Preconnected::None if engine::h2::client::lookup(worker, target).is_some() => Some(ALPN_H2),
        _ => None,
    };
    upstream_choice
        .filter(|p| offer.contains(p))
        .or_else(|| offer.iter().copied().find(|p| *p == ALPN_H1))
        .or_else(|| offer.first().copied())
}

/// Relay the connection untouched to `dest`, after replaying `prefix`.
async fn passthrough(
    worker: &Worker,
    ctx: &ConnCtx,
    tcp: Tcp,
    prefix: Vec<u8>,
    dest: Target,
    sni: Option<String>,
    reason: &str,
) {
    let shared = &worker.shared;
    shared.metrics.conn(ctx.mode, ConnKind::Passthrough);
    let started = SystemTime::now();
    let t0 = Instant::now();
    let mut flow = TcpFlow {
        started,
        client: ctx.client,
        mode: ctx.mode.as_str(),
        destination: dest.authority(),
        server_addr: None,
        sni,
        client_to_server: 0,
        server_to_client: 0,
        duration: Duration::ZERO,
        reason: reason.to_owned(),
        error: None,
    };
    let result = async {
        let client = tcp
            .try_into_comp_io()
            .map_err(|(e, _)| format!("cannot switch client socket to completion mode: {e}"))?;
        let (mut server, addr) = upstream::connect_tcp(worker, &dest)
            .await
            .map_err(|e| e.to_string())?;
        flow.server_addr = Some(addr);
        if !prefix.is_empty() {
            let len = prefix.len() as u64;
            let (res, _) = server.write_all(prefix).await;
            res.map_err(|e| format!("writing to {addr}: {e}"))?;
            flow.client_to_server = len;
        }
        let opts = RelayOptions {
            mode: shared.cfg.relay_mode,
            idle_timeout: Some(shared.cfg.idle_timeout),
        };
        Ok(relay_with(client, server, opts).await)
    }
    .await;
    match result {
        Ok(out) => {
            flow.client_to_server += out.stats.client_to_server;
            flow.server_to_client = out.stats.server_to_client;
            flow.error = out.error.map(|e| e.to_string());
        }
        Err(e) => flow.error = Some(e),
    }
    flow.duration = t0.elapsed();
    crate::observe::tcp_done(worker, ctx, flow);
}

/// Refuse a connection before TLS: a fatal `access_denied` alert, or a TCP
/// reset (SO_LINGER 0 then close). No upstream connection is ever made.
async fn deny_connection(mut tcp: Tcp, how: DenyHow) {
    match how {
        DenyHow::TlsAlert => {
            // TLS record: alert, TLS 1.2 framing, length 2, fatal(2), access_denied(49).
            let _ = tcp
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31])
                .await;
            let _ = tcp.flush().await;
            let _ = tcp.shutdown().await;
        }
        DenyHow::Reset => {
            use std::os::fd::{AsRawFd, BorrowedFd};
            // SAFETY: the fd belongs to `tcp`, alive for this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
        }
    }
}
