//! A request body that trickles in must not pin an upstream connection: the
//! time spent *waiting for the client* (not for the upstream to accept what
//! was sent) is bounded by `timeout + received / min_rate`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// `--request-body-timeout` and `--request-body-min-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Waiting allowed before any byte counts.
    pub timeout: Duration,
    /// Each `min_rate` bytes received earn one more second (0: none).
    pub min_rate: u64,
}

impl BodyPace {
    fn allowed(&self, received: u64) -> Duration {
        let earned = if self.min_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        self.timeout.saturating_add(earned)
    }
}

/// A reader failing with `TimedOut` once the client made it wait longer
/// than its [`BodyPace`] allows.
pub struct Paced<'a, R> {
    inner: &'a mut R,
    pace: BodyPace,
    received: u64,
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<monoio::time::Sleep>>>,
}

impl<'a, R> Paced<'a, R> {
    pub fn new(inner: &'a mut R, pace: BodyPace) -> Self {
        Paced {
            inner,
            pace,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The error a client too slow gets (mapped to `408`).
    pub fn is_too_slow(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::TimedOut
            && e.get_ref()
                .is_some_and(|inner| inner.to_string().starts_with(TOO_SLOW))
    }
}

const TOO_SLOW: &str = "request body too slow";

impl<R: AsyncRead + Unpin> AsyncRead for Paced<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.received += (buf.filled().len() - before) as u64;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let waited = this.waited + now.duration_since(since);
                let allowed = this.pace.allowed(this.received);
                if waited >= allowed {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{TOO_SLOW}: waited {}s for {} bytes (allowed: {}s{})",
                            waited.as_secs(),
                            this.received,
                            this.pace.timeout.as_secs(),
                            if this.pace.min_rate > 0 {
                                format!(" + 1s per {} bytes", this.pace.min_rate)
                            } else {
                                String::new()
                            }
                        ),
                    )));
                }
                let deadline = monoio::time::Instant::from_std(now + (allowed - waited));
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(monoio::time::sleep_until(deadline)));
                timer.as_mut().reset(deadline);
                if timer.as_mut().poll(cx).is_ready() {
                    // Fires on the next poll with the error above.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_grows_with_received_bytes() {
        let p = BodyPace {
            timeout: Duration::from_secs(60),
            min_rate: 1000,
        };
        assert_eq!(p.allowed(0), Duration::from_secs(60));
        assert_eq!(p.allowed(5000), Duration::from_secs(65));
        let total = BodyPace { min_rate: 0, ..p };
        assert_eq!(total.allowed(1 << 40), Duration::from_secs(60));
    }

    #[test]
    fn a_silent_client_times_out_and_a_fed_one_does_not() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let pace = BodyPace {
                timeout: Duration::from_millis(50),
                min_rate: 0,
            };
            // Data available at once: never waits.
            let mut fed: &[u8] = b"hello";
            let mut out = Vec::new();
            Paced::new(&mut fed, pace)
                .read_to_end(&mut out)
                .await
                .unwrap();
            assert_eq!(out, b"hello");
            // A reader that never becomes ready.
            let mut silent = Silent;
            let mut r = Paced::new(&mut silent, pace);
            let e = r.read(&mut [0u8; 4]).await.unwrap_err();
            assert!(Paced::<Silent>::is_too_slow(&e), "{e}");
        });
    }

    struct Silent;
    impl AsyncRead for Silent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }
}
