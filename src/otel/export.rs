//! Spans leave the process in batches, from a bounded queue, on a task of their own.
//!
//! Why not the SDK's `BatchSpanProcessor`: it counts the spans it drops only in its own
//! internal log, and SPEC §7.5 wants them in `outrigger_spans_dropped_total`; its thread
//! flavour also blocks on the exporter, which the hyper-based client cannot do outside a
//! tokio runtime. This processor is the small part we need: `on_end` (called on the
//! request's task when a span ends) is a `try_send` into a bounded channel and nothing else,
//! so a full queue drops the span and counts it, and a slow, refusing or absent collector
//! never delays a request. The export task collects up to [`BATCH`] spans or waits at most
//! [`LINGER`], then hands them to the OTLP exporter; a batch the collector did not take is
//! counted as dropped too.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::debug;

/// Spans waiting for export at most; beyond, new spans are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How long a span may wait for companions before its batch is sent.
pub const LINGER: Duration = Duration::from_millis(200);

/// The span processor: a bounded queue in front of the export task.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

impl Queue {
    /// A queue whose spans `exporter` sends; the export task is spawned on the current
    /// tokio runtime (without one, every span is dropped and counted).
    pub fn start<E: SpanExporter + 'static>(exporter: E, dropped: IntCounter) -> Queue {
        let (tx, rx) = mpsc::channel(QUEUE);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(export(rx, exporter, dropped.clone()));
            }
            Err(_) => drop(rx),
        }
        Queue { tx, dropped }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn export<E: SpanExporter>(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: E,
    dropped: IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        if let Err(e) = exporter.export(std::mem::take(&mut batch)).await {
            dropped.inc_by(n);
            debug!(error = %e, spans = n, "span export failed; spans dropped");
        }
    }
}
