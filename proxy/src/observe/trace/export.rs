//! The exporter thread: drains the span queue, batches (by size or age),
//! encodes and POSTs each batch, counts what was exported and what was lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::http::OtlpClient;
use super::record::SpanMsg;
use super::settings::TraceSettings;

/// Trace export counters (registered in the proxy's registry).
#[derive(Debug, Clone)]
pub struct Counters {
    /// Spans the receiver accepted.
    pub exported: IntCounter,
    /// Spans dropped because the queue was full (workers never wait).
    pub dropped_queue_full: IntCounter,
    /// Spans dropped because their export request failed (not retried).
    pub dropped_export_failed: IntCounter,
    /// Export requests that succeeded.
    pub requests_ok: IntCounter,
    /// Export requests that failed.
    pub requests_failed: IntCounter,
}

impl Counters {
    /// Create and register the counters.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "tproxy_trace_spans_exported_total",
            "Spans accepted by the OTLP receiver.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "tproxy_trace_spans_dropped_total",
                "Spans lost, by reason: queue_full (the export queue was full; workers never wait) or export_failed (the export request failed; batches are not retried).",
            ),
            &["reason"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "tproxy_trace_export_requests_total",
                "OTLP export requests, by result (ok, error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self {
            exported,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            requests_ok: requests.with_label_values(&["ok"]),
            requests_failed: requests.with_label_values(&["error"]),
        })
    }
}

/// The running exporter thread.
#[derive(Debug)]
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Start the thread draining `rx`.
    pub fn spawn(
        settings: &TraceSettings,
        tls: Option<Arc<rustls::ClientConfig>>,
        counters: Counters,
        rx: Receiver<SpanMsg>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Batcher {
            client: OtlpClient::new(
                settings.endpoint.clone(),
                &settings.headers.0,
                settings.timeout,
                tls,
            ),
            counters,
            batch_size: settings.batch_size,
            delay: settings.schedule_delay,
            resource: super::encode::ResourceDefaults {
                service_name: settings.service_name.clone(),
                extra: settings.resource_attributes.clone(),
            },
            failing: false,
            endpoint: settings.endpoint.url.clone(),
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tproxy-otlp".into())
            .spawn(move || worker.run(&rx, &s))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Export what is queued (one attempt per batch; the first failure
    /// drops the rest) and stop the thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// [`Exporter::shutdown`], waiting at most until `deadline`: an export
    /// still in progress then (a collector that does not answer) is left
    /// behind with its spans, and the process exits without it.
    pub fn shutdown_until(mut self, deadline: Instant) {
        self.stop.store(true, Ordering::Release);
        let Some(t) = self.thread.take() else { return };
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!(
                "shutdown deadline reached while spans were still being exported; they are lost"
            );
        }
    }
}

/// How often the exporter drains the queue (and looks at the stop flag).
const POLL: Duration = Duration::from_millis(10);

struct Batcher {
    client: OtlpClient,
    counters: Counters,
    batch_size: usize,
    delay: Duration,
    resource: super::encode::ResourceDefaults,
    /// The last export failed (log state changes only, not every failure).
    failing: bool,
    endpoint: String,
}

impl Batcher {
    fn run(&mut self, rx: &Receiver<SpanMsg>, stop: &AtomicBool) {
        let mut batch: Vec<SpanMsg> = Vec::new();
        let mut spans = 0usize;
        let mut oldest: Option<Instant> = None;
        loop {
            // Poll rather than block in `recv`: a receiver blocked on the
            // channel makes every worker's send a futex wake-up (~1 µs and
            // a context switch per flow); polling keeps a send a plain push.
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(m) => {
                        oldest.get_or_insert_with(Instant::now);
                        spans += m.span_count() as usize;
                        batch.push(m);
                        if spans >= self.batch_size {
                            self.export(std::mem::take(&mut batch));
                            spans = 0;
                            oldest = None;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if oldest.is_some_and(|t| t.elapsed() >= self.delay) {
                self.export(std::mem::take(&mut batch));
                spans = 0;
                oldest = None;
            }
            if closed || stop.load(Ordering::Acquire) {
                break;
            }
            let wait = oldest.map_or(POLL, |t| self.delay.saturating_sub(t.elapsed()).min(POLL));
            std::thread::sleep(wait);
        }
        // Shutdown: what is queued goes out in batches; after a failure the
        // rest is counted as dropped rather than waited for.
        let mut ok = true;
        loop {
            while spans < self.batch_size {
                match rx.try_recv() {
                    Ok(m) => {
                        spans += m.span_count() as usize;
                        batch.push(m);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let b = std::mem::take(&mut batch);
            spans = 0;
            if ok {
                ok = self.export(b);
            } else {
                self.counters
                    .dropped_export_failed
                    .inc_by(b.iter().map(SpanMsg::span_count).sum());
            }
        }
    }

    /// Encode and send one batch; false when it failed.
    fn export(&mut self, batch: Vec<SpanMsg>) -> bool {
        let n: u64 = batch.iter().map(SpanMsg::span_count).sum();
        let body = super::encode::request(&batch, &self.resource);
        drop(batch);
        match self.client.post(&body) {
            Ok(()) => {
                self.counters.exported.inc_by(n);
                self.counters.requests_ok.inc();
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
                    self.failing = false;
                }
                true
            }
            Err(error) => {
                self.counters.dropped_export_failed.inc_by(n);
                self.counters.requests_failed.inc();
                if !self.failing {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        spans = n,
                        "OTLP export failed; spans dropped (see tproxy_trace_spans_dropped_total); logged again when it recovers"
                    );
                    self.failing = true;
                }
                false
            }
        }
    }
}
