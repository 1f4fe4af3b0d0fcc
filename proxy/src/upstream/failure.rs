//! Why an exchange with an upstream failed, as a bounded label (flow log
//! `error_cause`, `tproxy_upstream_failures_total{cause}`,
//! `tproxy_upstream_retries_total{cause}`), and which failures prove that
//! the upstream never acted on the request, so that it may be sent again.
//!
//! The rules (docs/upstream-lifecycle.md):
//! * HTTP/2: a stream refused by GOAWAY (above the last-stream-id, or opened
//!   after GOAWAY arrived) or reset with `REFUSED_STREAM` was not processed
//!   (RFC 9113 §8.7): retried on a new connection whatever the method, when
//!   the request body is still replayable.
//! * HTTP/1.1: a request on a *reused* connection that fails before any
//!   response byte arrived is the keep-alive race (the server closed the idle
//!   connection as the request went out): retried once on a new connection
//!   when the method is idempotent, or when nothing of the request but part
//!   of its head was written. Never a non-idempotent request whose body was
//!   sent.

use std::time::Duration;

/// The cause of a failed upstream exchange. The label set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// HTTP/2 GOAWAY from the upstream ended the stream.
    GoAway,
    /// HTTP/2 `REFUSED_STREAM`: the upstream declined the stream.
    Refused,
    /// HTTP/2 RST_STREAM with another reason.
    Reset,
    /// A reused HTTP/1.1 connection closed before any response byte.
    IdleCloseRace,
    /// The connection closed or broke during the exchange.
    Closed,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream's response was not valid HTTP.
    Invalid,
    /// No connection could be made (DNS, refused, unreachable, TLS).
    Connect,
}

impl Cause {
    /// Every cause, in label order.
    pub const ALL: [Cause; 8] = [
        Cause::GoAway,
        Cause::Refused,
        Cause::Reset,
        Cause::IdleCloseRace,
        Cause::Closed,
        Cause::Timeout,
        Cause::Invalid,
        Cause::Connect,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::GoAway => "goaway",
            Cause::Refused => "refused",
            Cause::Reset => "reset",
            Cause::IdleCloseRace => "idle_close_race",
            Cause::Closed => "closed",
            Cause::Timeout => "timeout",
            Cause::Invalid => "invalid_response",
            Cause::Connect => "connect",
        }
    }

    /// Index into [`Cause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Record an upstream failure on `flow`: its message, its cause label, and
/// the `tproxy_upstream_failures_total{cause}` count.
pub fn record(
    metrics: &crate::metrics::Metrics,
    flow: &mut crate::flowlog::HttpFlow,
    cause: Cause,
    msg: String,
) {
    metrics.upstream_failure(cause);
    flow.error_cause = Some(cause.as_str());
    flow.error = Some(msg);
}

/// Record that the request of `flow` is being sent again after a failure
/// the client does not see.
pub fn record_retry(
    metrics: &crate::metrics::Metrics,
    flow: &mut crate::flowlog::HttpFlow,
    cause: Cause,
) {
    metrics.upstream_retry(cause);
    flow.upstream_retries = flow.upstream_retries.saturating_add(1);
}

/// The cause label of a connect failure.
pub fn connect_cause(e: &super::UpstreamError) -> Cause {
    match e {
        super::UpstreamError::Timeout { .. } => Cause::Timeout,
        _ => Cause::Connect,
    }
}

/// Futile attempts an HTTP/2 stream gets: attempts refused while the
/// destination answered no stream at all on any connection (a server
/// refusing everything costs at most this many connections per stream).
/// Attempts refused while other streams were answered are progress (a
/// server ending each connection after N streams refuses the ones in flight
/// beyond N) and only count against [`H2_MAX_ATTEMPTS`].
pub const H2_MAX_FUTILE_ATTEMPTS: usize = 8;

/// Attempts an HTTP/2 stream gets in all, each on a connection opened after
/// the one that refused it.
pub const H2_MAX_ATTEMPTS: usize = 64;

/// Refused attempts after which a stream's next attempt opens a connection
/// of its own, where it is the first stream, instead of queueing on the
/// shared one: streams refused together retry together, and the ones that
/// lose the race for the next connection's first slots would lose it again
/// (under load a waiting stream is the last to run), while a server that
/// processes any stream of a connection processes its first one.
pub const H2_OWN_CONNECTION_AFTER: usize = 3;

/// Why a failed HTTP/2 attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Retry {
    /// The upstream proved it did not process the stream (GOAWAY,
    /// REFUSED_STREAM), or the stream never left.
    Unprocessed,
    /// The connection closed under the stream before its response head.
    Lost,
}

impl H2Retry {
    /// The retry kind of a stream error seen before the response head.
    pub fn of(e: &h2::Error) -> Option<H2Retry> {
        if h2_unprocessed(e) {
            Some(H2Retry::Unprocessed)
        } else if e.is_io() {
            Some(H2Retry::Lost)
        } else {
            None
        }
    }
}

/// A stream's retry budget ([`H2_MAX_FUTILE_ATTEMPTS`], [`H2_MAX_ATTEMPTS`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct H2Budget {
    attempts: usize,
    futile: usize,
    lost: bool,
}

impl H2Budget {
    /// Count a refused attempt; `progress`: the destination answered some
    /// stream meanwhile. Returns whether another attempt is allowed.
    pub fn refused(&mut self, progress: bool) -> bool {
        self.attempts += 1;
        if !progress {
            self.futile += 1;
        }
        self.attempts < H2_MAX_ATTEMPTS && self.futile < H2_MAX_FUTILE_ATTEMPTS
    }

    /// Count an attempt whose connection closed under the stream before
    /// its response head (an I/O error: the server may or may not have
    /// acted on it). Returns whether to send it again: once, and only an
    /// `idempotent` request, the rule HTTP/1.1's keep-alive race follows.
    pub fn lost(&mut self, idempotent: bool) -> bool {
        if !idempotent || self.lost {
            return false;
        }
        self.lost = true;
        self.attempts += 1;
        self.attempts < H2_MAX_ATTEMPTS
    }

    /// Count a failed attempt of kind `retry` ([`refused`](Self::refused)
    /// with `progress`, or [`lost`](Self::lost) for `method`); returns
    /// whether to send it again.
    pub fn allows(&mut self, retry: H2Retry, progress: bool, method: &str) -> bool {
        match retry {
            H2Retry::Unprocessed => self.refused(progress),
            H2Retry::Lost => self.lost(idempotent(method)),
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Whether the next attempt gets a new connection of its own
    /// ([`H2_OWN_CONNECTION_AFTER`]).
    pub fn wants_own_connection(&self) -> bool {
        self.attempts >= H2_OWN_CONNECTION_AFTER
    }
}

/// Request body bytes kept per stream so an HTTP/2 stream refused by the
/// upstream can be sent again (a gRPC message, a form). A stream whose body
/// is larger than this, and already partly sent, is not retried.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The cause of an HTTP/2 stream error seen by the upstream side.
pub fn h2_cause(e: &h2::Error) -> Cause {
    if e.is_go_away() {
        return Cause::GoAway;
    }
    if e.is_io() {
        return Cause::Closed;
    }
    match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Cause::Refused,
        Some(_) => Cause::Reset,
        None => Cause::Invalid,
    }
}

/// An HTTP/2 stream error in words an operator can act on (the h2 crate's
/// own text for a graceful GOAWAY is "not a result of an error").
pub fn describe_h2(e: &h2::Error) -> String {
    match e.reason() {
        Some(r) if e.is_go_away() && e.is_remote() => {
            format!("the upstream sent GOAWAY ({r:?}) for a stream it did not process")
        }
        Some(r) if e.is_go_away() => format!("the connection is going away ({r:?})"),
        Some(r) if e.is_reset() && e.is_remote() => {
            format!("the upstream reset the stream ({r:?})")
        }
        _ => e.to_string(),
    }
}

/// Whether an HTTP/2 stream error proves the upstream never processed the
/// stream. A graceful GOAWAY (`NO_ERROR`) fails only the streams above its
/// last-stream-id and the ones opened after it (the h2 crate errors streams
/// up to the id only when the connection breaks, with an I/O error); a
/// GOAWAY with an error code may also end processed streams, so it is not
/// trusted.
pub fn h2_unprocessed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
        || (e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// RFC 9110 §9.2.2 idempotent methods.
pub fn idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
        .iter()
        .any(|m| method.eq_ignore_ascii_case(m))
}

/// How far an HTTP/1.1 request got before its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H1Stage {
    /// Writing the request head (the body, if any, is untouched).
    Head,
    /// The whole request was written; no response byte had arrived.
    AwaitingResponse,
}

/// Whether an HTTP/1.1 request that failed at `stage` with no response
/// byte may be sent again on a new connection.
pub fn h1_retryable(reused: bool, stage: H1Stage, method: &str, body_empty: bool) -> bool {
    reused
        && match stage {
            H1Stage::Head => true,
            H1Stage::AwaitingResponse => body_empty && idempotent(method),
        }
}

/// Whether an I/O error is the peer closing or resetting the connection
/// (as opposed to a timeout or a local problem).
pub fn is_peer_close(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}

/// How long before a server's announced keep-alive timeout (`Keep-Alive:
/// timeout=N`) a pooled connection stops being reused: one second, or half
/// the timeout when that is shorter.
pub fn keep_alive_budget(timeout: Duration) -> Duration {
    timeout.saturating_sub(Duration::from_secs(1).min(timeout / 2))
}

/// `timeout=N` of a `Keep-Alive` response field.
pub fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?;
    s.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        v.trim()
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_indexed() {
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let mut labels: Vec<_> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Cause::ALL.len());
    }

    #[test]
    fn keep_alive_timeout_is_parsed() {
        assert_eq!(
            keep_alive_timeout(b"timeout=5, max=100"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            keep_alive_timeout(b"max=3,Timeout = 2"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(keep_alive_timeout(b"max=3"), None);
        assert_eq!(keep_alive_timeout(b"timeout=x"), None);
        assert_eq!(keep_alive_timeout(b"\xff"), None);
    }

    #[test]
    fn keep_alive_budget_leaves_a_margin() {
        assert_eq!(
            keep_alive_budget(Duration::from_secs(5)),
            Duration::from_secs(4)
        );
        assert_eq!(
            keep_alive_budget(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(keep_alive_budget(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn only_safe_http1_requests_are_retried() {
        use H1Stage::*;
        assert!(h1_retryable(true, AwaitingResponse, "GET", true));
        assert!(h1_retryable(true, AwaitingResponse, "delete", true));
        // Non-idempotent and sent: never.
        assert!(!h1_retryable(true, AwaitingResponse, "POST", true));
        // A consumed body cannot be sent again.
        assert!(!h1_retryable(true, AwaitingResponse, "PUT", false));
        // The head did not get out: the server cannot have acted on it.
        assert!(h1_retryable(true, Head, "POST", false));
        // A fresh connection failing is the server's answer, not a race.
        assert!(!h1_retryable(false, Head, "GET", true));
    }

    #[test]
    fn h2_budget_counts_futile_attempts_and_caps_the_rest() {
        let mut b = H2Budget::default();
        for _ in 0..H2_MAX_FUTILE_ATTEMPTS - 1 {
            assert!(b.refused(false));
        }
        assert!(!b.refused(false));
        assert_eq!(b.attempts(), H2_MAX_FUTILE_ATTEMPTS);
        let mut b = H2Budget::default();
        for _ in 0..H2_MAX_ATTEMPTS - 1 {
            assert!(b.refused(true));
        }
        assert!(!b.refused(true));
    }

    #[test]
    fn h2_budget_resends_an_idempotent_stream_once_when_its_connection_is_lost() {
        let mut b = H2Budget::default();
        assert!(!b.lost(false));
        assert!(b.lost(true));
        assert!(!b.lost(true));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn h2_budget_gives_a_repeatedly_refused_stream_its_own_connection() {
        let mut b = H2Budget::default();
        for _ in 0..H2_OWN_CONNECTION_AFTER {
            assert!(!b.wants_own_connection());
            assert!(b.refused(true));
        }
        assert!(b.wants_own_connection());
        const { assert!(H2_OWN_CONNECTION_AFTER < H2_MAX_FUTILE_ATTEMPTS) };
    }

    #[test]
    fn h2_refusals_are_unprocessed_and_other_errors_are_not() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        // A locally made reset is not the server's word.
        assert!(!h2_unprocessed(&refused));
        assert_eq!(h2_cause(&refused), Cause::Refused);
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        assert!(!h2_unprocessed(&cancel));
        assert_eq!(h2_cause(&cancel), Cause::Reset);
    }
}
