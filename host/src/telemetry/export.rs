//! Bounded queues between the request path and the OTLP exporters, and
//! the tasks that batch and send them.
//!
//! The SDK's own batch processors run their exporter on a plain thread
//! without a tokio reactor, which the gRPC (tonic) and hyper HTTP clients
//! need; ours run on the host's runtime instead. A processor only
//! `try_send`s into its queue: a full queue drops the item and counts it
//! ([`super::count_dropped`]), so exporting never slows a request.
//!
//! Items are grouped by the component that made them (the `component`
//! attribute) and each group goes through an exporter whose resource
//! names that component (`service.name` = its Dapr app id,
//! `wasmshop.component` = its id); items of no component use the host's
//! resource (`OTEL_SERVICE_NAME`, else `wasmshop`).

use super::{SELF_TARGET, Signal, count_dropped, count_failed};
use opentelemetry::logs::LogRecord as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _, SpanProcessor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// An item or a flush request.
pub enum Msg<T> {
    /// A finished span or log record.
    Item(T),
    /// Send everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// The receiving end of a signal's queue, and a sender for flushes.
pub struct Queue<T> {
    rx: mpsc::Receiver<Msg<T>>,
    tx: mpsc::Sender<Msg<T>>,
}

/// A log record with its scope, as queued.
pub type LogItem = (SdkLogRecord, InstrumentationScope);

/// The flush of one signal: runs until its queue is sent or the deadline.
type FlushFn = Box<
    dyn FnOnce(tokio::time::Instant) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// Asks a running export task to send what it holds, by a deadline.
pub struct Flusher(FlushFn);

impl Flusher {
    /// Waits until the task exported what was queued, or until
    /// `deadline`: then what is still queued or in the batch being sent
    /// is given up, counted in `wasmshop_telemetry_dropped_total` and
    /// named in one warning.
    pub async fn flush(self, deadline: tokio::time::Instant) {
        (self.0)(deadline).await
    }
}

fn flusher<T: Send + 'static>(
    tx: mpsc::Sender<Msg<T>>,
    held: Arc<AtomicUsize>,
    signal: Signal,
) -> Flusher {
    Flusher(Box::new(move |deadline| {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            let sent = tokio::time::timeout_at(deadline, tx.send(Msg::Flush(done))).await;
            let finished = matches!(sent, Ok(Ok(())))
                && matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(())));
            if finished {
                return;
            }
            let queued = tx.max_capacity() - tx.capacity();
            let lost = (queued + held.load(Ordering::Relaxed)) as u64;
            count_dropped(signal, lost);
            tracing::warn!(
                target: SELF_TARGET,
                signal = signal.label(),
                dropped = lost,
                "telemetry shutdown deadline reached before the OTLP export finished; what was not sent is dropped. Check that the collector at OTEL_EXPORTER_OTLP_ENDPOINT answers"
            );
        })
    }))
}

/// The span processor feeding a queue of `capacity` spans.
pub fn span_queue(capacity: usize) -> (QueueSpanProcessor, Queue<SpanData>) {
    let (tx, rx) = mpsc::channel(capacity);
    (QueueSpanProcessor { tx: tx.clone() }, Queue { rx, tx })
}

/// The log processor feeding a queue of `capacity` records.
pub fn log_queue(capacity: usize) -> (QueueLogProcessor, Queue<LogItem>) {
    let (tx, rx) = mpsc::channel(capacity);
    (QueueLogProcessor { tx: tx.clone() }, Queue { rx, tx })
}

/// Queues each sampled span when it ends.
#[derive(Debug)]
pub struct QueueSpanProcessor {
    tx: mpsc::Sender<Msg<SpanData>>,
}

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Item(span)).is_err() {
            count_dropped(Signal::Span, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Queues each log record, tagged with the component whose request or
/// delivery emitted it (from the current `tracing` span).
#[derive(Debug)]
pub struct QueueLogProcessor {
    tx: mpsc::Sender<Msg<LogItem>>,
}

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let has_component = record
            .attributes_iter()
            .any(|(k, _)| k.as_str() == "component");
        if !has_component && let Some(c) = super::spans::current_component() {
            record.add_attribute("component", c.to_string());
        }
        exception_of(record);
        if self
            .tx
            .try_send(Msg::Item((record.clone(), scope.clone())))
            .is_err()
        {
            count_dropped(Signal::LogRecord, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// An error record with an `error` field also names an exception
/// (`exception.type` = its message, `exception.message` = the error), so
/// Application Insights files it under `exceptions` as well as `traces`.
fn exception_of(record: &mut SdkLogRecord) {
    use opentelemetry::logs::{AnyValue, Severity};
    if record.severity_number().is_none_or(|s| s < Severity::Error) {
        return;
    }
    let error = record
        .attributes_iter()
        .find(|(k, _)| k.as_str() == "error")
        .map(|(_, v)| any_value_text(v));
    let Some(error) = error else { return };
    let kind = match record.body() {
        Some(AnyValue::String(s)) => s.to_string(),
        _ => "error".to_string(),
    };
    record.add_attribute("exception.type", kind);
    record.add_attribute("exception.message", error);
}

/// The resource of `component`'s telemetry ("" for the host's own).
pub fn resource(component: &str) -> Resource {
    let builder = Resource::builder();
    if component.is_empty() {
        // Set last, so OTEL_SERVICE_NAME wins over a service.name in
        // OTEL_RESOURCE_ATTRIBUTES, as the SDK configuration spec says.
        let name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "wasmshop".to_string());
        return builder.with_service_name(name).build();
    }
    builder
        .with_service_name(super::service_name(component))
        .with_attribute(KeyValue::new("wasmshop.component", component.to_string()))
        .build()
}

/// Where a batch goes.
trait Sink<T> {
    fn send(&mut self, batch: Vec<T>) -> impl Future<Output = ()> + Send;
}

/// Items taken from the queue and not yet sent (the batch being built or
/// exported), for the count of what a shutdown deadline gives up.
async fn send_all<T>(sink: &mut impl Sink<T>, batch: &mut Vec<T>, held: &AtomicUsize) {
    sink.send(std::mem::take(batch)).await;
    held.store(0, Ordering::Relaxed);
}

async fn batch_loop<T: Send + 'static>(
    mut queue: Queue<T>,
    max_batch: usize,
    delay: Duration,
    mut sink: impl Sink<T>,
    held: Arc<AtomicUsize>,
) {
    drop(queue.tx);
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = queue.rx.recv() => match msg {
                Some(Msg::Item(item)) => {
                    batch.push(item);
                    held.store(batch.len(), Ordering::Relaxed);
                    if batch.len() >= max_batch {
                        send_all(&mut sink, &mut batch, &held).await;
                    }
                }
                Some(Msg::Flush(done)) => {
                    if !batch.is_empty() {
                        send_all(&mut sink, &mut batch, &held).await;
                    }
                    let _ = done.send(());
                }
                None => {
                    if !batch.is_empty() {
                        send_all(&mut sink, &mut batch, &held).await;
                    }
                    return;
                }
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    send_all(&mut sink, &mut batch, &held).await;
                }
            }
        }
    }
}

fn component_of(attributes: impl Iterator<Item = (String, String)>) -> String {
    attributes
        .filter(|(k, _)| k == "component")
        .map(|(_, v)| v)
        .next()
        .unwrap_or_default()
}

struct SpanSink(HashMap<String, opentelemetry_otlp::SpanExporter>);

impl Sink<SpanData> for SpanSink {
    async fn send(&mut self, batch: Vec<SpanData>) {
        let mut groups: BTreeMap<String, Vec<SpanData>> = BTreeMap::new();
        for span in batch {
            let c = component_of(
                span.attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string())),
            );
            groups.entry(c).or_default().push(span);
        }
        for (component, spans) in groups {
            let n = spans.len() as u64;
            if !self.0.contains_key(&component) {
                match opentelemetry_otlp::SpanExporter::builder().build() {
                    Ok(mut e) => {
                        e.set_resource(&resource(&component));
                        self.0.insert(component.clone(), e);
                    }
                    Err(e) => {
                        count_failed(Signal::Span, n, &e);
                        continue;
                    }
                }
            }
            if let Err(e) = self.0[&component].export(spans).await {
                count_failed(Signal::Span, n, &e);
            }
        }
    }
}

struct LogSink(HashMap<String, opentelemetry_otlp::LogExporter>);

impl Sink<LogItem> for LogSink {
    async fn send(&mut self, batch: Vec<LogItem>) {
        let mut groups: BTreeMap<String, Vec<LogItem>> = BTreeMap::new();
        for item in batch {
            let c = component_of(
                item.0
                    .attributes_iter()
                    .map(|(k, v)| (k.to_string(), any_value_text(v))),
            );
            groups.entry(c).or_default().push(item);
        }
        for (component, items) in groups {
            let n = items.len() as u64;
            if !self.0.contains_key(&component) {
                match opentelemetry_otlp::LogExporter::builder().build() {
                    Ok(mut e) => {
                        e.set_resource(&resource(&component));
                        self.0.insert(component.clone(), e);
                    }
                    Err(e) => {
                        count_failed(Signal::LogRecord, n, &e);
                        continue;
                    }
                }
            }
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                items.iter().map(|(r, s)| (r, s)).collect();
            if let Err(e) = self.0[&component].export(LogBatch::new(&refs)).await {
                count_failed(Signal::LogRecord, n, &e);
            }
        }
    }
}

/// Starts the span export task; the flusher sends what is queued.
pub fn run_spans(queue: Queue<SpanData>, config: &super::Config) -> Flusher {
    let held = Arc::new(AtomicUsize::new(0));
    let flush = flusher(queue.tx.clone(), held.clone(), Signal::Span);
    let sink = SpanSink(HashMap::new());
    tokio::spawn(batch_loop(
        queue,
        config.max_batch,
        config.delay,
        sink,
        held,
    ));
    flush
}

/// Starts the log record export task; the flusher sends what is queued.
pub fn run_logs(queue: Queue<LogItem>, config: &super::Config) -> Flusher {
    let held = Arc::new(AtomicUsize::new(0));
    let flush = flusher(queue.tx.clone(), held.clone(), Signal::LogRecord);
    let sink = LogSink(HashMap::new());
    tokio::spawn(batch_loop(
        queue,
        config.max_batch,
        config.delay,
        sink,
        held,
    ));
    flush
}

fn any_value_text(v: &opentelemetry::logs::AnyValue) -> String {
    match v {
        opentelemetry::logs::AnyValue::String(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// The OTLP metrics pipeline: a periodic reader on the tokio runtime
/// (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s) under the host's
/// resource; components are the `component` label, as on `/metrics`.
pub fn meter_provider()
-> Result<opentelemetry_sdk::metrics::SdkMeterProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = CountingMetricExporter(opentelemetry_otlp::MetricExporter::builder().build()?);
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    tracing::debug!(target: SELF_TARGET, "OTLP metrics reader started");
    Ok(opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource(""))
        .with_reader(reader)
        .build())
}

/// The OTLP metric exporter, counting and warning about each failed
/// export as the span and log exporters do (the SDK's periodic reader
/// would only report it through its own, unwired, internal log).
struct CountingMetricExporter(opentelemetry_otlp::MetricExporter);

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for CountingMetricExporter {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        let result = self.0.export(metrics).await;
        if let Err(e) = &result {
            count_failed(Signal::Metrics, 1, e);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality()
    }
}
