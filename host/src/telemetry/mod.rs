//! Logs, traces and metrics out of the host (`docs/observability.md`).
//!
//! - Logs: `tracing` events formatted as JSON ([`json`]; text on a
//!   terminal) and written to stderr by one thread through a bounded
//!   queue ([`writer`]); the access log is one line per request (target
//!   [`ACCESS_TARGET`]), in JSON written straight to the queue.
//! - Traces: `tracing` spans become OpenTelemetry spans
//!   (`tracing-opentelemetry`) whether or not they are exported, so every
//!   request has W3C trace and span ids for its log lines and outgoing
//!   calls; [`spans`] makes them with the semantic-convention attributes.
//! - Export: OTLP (`http/protobuf` or `grpc`) of traces, logs and metrics,
//!   configured only by the standard `OTEL_*` variables ([`Config`]), off
//!   for every signal without an endpoint. Spans and log records go into
//!   bounded queues drained by batching tasks ([`export`]); a full queue
//!   drops and counts (`wasmshop_telemetry_dropped_total`), never blocks.
//!
//! Each span and log record is exported under the resource of the
//! component that did the work: `service.name` is its Dapr app id
//! ([`name_components`]).

pub mod env;
pub mod export;
pub mod guest;
pub mod json;
pub mod kv;
pub mod messaging;
pub mod spans;
pub mod writer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The `tracing` target of the access log lines (one per request).
pub const ACCESS_TARGET: &str = "wasmshop::access";
/// The `tracing` target of the exporter's own warnings; never exported
/// (a failing exporter must not feed itself).
pub const SELF_TARGET: &str = "wasmshop::telemetry";

/// A kind of telemetry item, for the drop and failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An OpenTelemetry span waiting for export.
    Span,
    /// An OpenTelemetry log record waiting for export.
    LogRecord,
    /// A formatted line waiting for stderr.
    LogLine,
    /// A metrics export.
    Metrics,
}

impl Signal {
    /// The `signal` label value.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Span => "span",
            Signal::LogRecord => "log_record",
            Signal::LogLine => "log_line",
            Signal::Metrics => "metrics",
        }
    }

    const ALL: [Signal; 4] = [
        Signal::Span,
        Signal::LogRecord,
        Signal::LogLine,
        Signal::Metrics,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

static DROPPED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static FAILED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Failed export calls per signal (each drops up to a batch of items).
static FAILED_CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Counts `n` items of `signal` dropped because their queue was full.
pub fn count_dropped(signal: Signal, n: u64) {
    DROPPED[signal.index()].fetch_add(n, Ordering::Relaxed);
}

/// Items of each signal dropped so far (queue full), for `/metrics`.
pub fn dropped() -> impl Iterator<Item = (Signal, u64)> {
    Signal::ALL
        .into_iter()
        .map(|s| (s, DROPPED[s.index()].load(Ordering::Relaxed)))
}

/// Items of each signal whose export failed so far, for `/metrics`.
pub fn failed() -> impl Iterator<Item = (Signal, u64)> {
    Signal::ALL
        .into_iter()
        .map(|s| (s, FAILED[s.index()].load(Ordering::Relaxed)))
}

/// Counts a failed export of `n` items and logs the first failed call
/// and every hundredth after it, per signal (a collector that is down
/// fails every batch: one line per batch would flood the log). Never
/// exported itself: [`SELF_TARGET`].
pub(crate) fn count_failed(signal: Signal, n: u64, error: &dyn std::fmt::Display) {
    FAILED[signal.index()].fetch_add(n.max(1), Ordering::Relaxed);
    if should_warn_of_failed_call(&FAILED_CALLS[signal.index()]) {
        tracing::warn!(
            target: SELF_TARGET,
            signal = signal.label(),
            error = %error,
            "OTLP export failed; the items are dropped and counted in wasmshop_telemetry_export_failures_total. Check OTEL_EXPORTER_OTLP_ENDPOINT and that the collector is up"
        );
    }
}

/// Counts one failed call in `calls`; true for the 1st, 101st, 201st...
fn should_warn_of_failed_call(calls: &AtomicU64) -> bool {
    calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(100)
}

/// What the `OTEL_*` environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Export spans (an endpoint for traces is set).
    pub traces: bool,
    /// Export log records.
    pub logs: bool,
    /// Export metrics.
    pub metrics: bool,
    /// Items a signal's queue holds before dropping (`OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BLRP_MAX_QUEUE_SIZE`; default 2048).
    pub span_queue: usize,
    /// See [`Config::span_queue`].
    pub log_queue: usize,
    /// Longest wait before a partial batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, ms; default 1000).
    pub delay: Duration,
    /// Items per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`; default 512).
    pub max_batch: usize,
    /// A protocol this build cannot speak (`http/json`), named for the error.
    pub unsupported_protocol: Option<String>,
    /// `OTEL_*` values not used as given ([`env::check`]): [`install`]
    /// warns about each and rewrites the process environment so the SDK
    /// crates, which read it themselves, see the value used.
    pub findings: Vec<env::Finding>,
}

impl Config {
    /// Reads the standard variables through `var` (`std::env::var` in the host).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Config {
        let findings = env::check(&var);
        // Read through the findings: an ignored value is unset.
        let var = |k: &str| match findings.iter().find(|f| f.var == k) {
            Some(f) => f.replacement.clone(),
            None => var(k),
        };
        let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
        let disabled =
            var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let wanted = |exporter: &str, endpoint: &str| {
            !disabled
                && var(exporter).is_none_or(|e| !e.trim().eq_ignore_ascii_case("none"))
                && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(endpoint))
        };
        let number = |k: &str, default: usize| {
            var(k)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let unsupported_protocol = [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ]
        .into_iter()
        .filter_map(|k| var(k).map(|v| (k, v)))
        .find(|(_, v)| !matches!(v.trim(), "grpc" | "http/protobuf" | ""))
        .map(|(k, v)| format!("{k}={v}"));
        Config {
            traces: wanted("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            logs: wanted("OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
            metrics: wanted(
                "OTEL_METRICS_EXPORTER",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            ),
            span_queue: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
            log_queue: number("OTEL_BLRP_MAX_QUEUE_SIZE", 2048),
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 1000) as u64),
            max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
            unsupported_protocol,
            findings,
        }
    }

    /// Whether anything is exported.
    pub fn any(&self) -> bool {
        self.traces || self.logs || self.metrics
    }
}

/// What [`install`] set up and [`start`] picks up inside the runtime.
struct Installed {
    config: Config,
    span_queue: Mutex<Option<export::Queue<opentelemetry_sdk::trace::SpanData>>>,
    log_queue: Mutex<Option<export::Queue<export::LogItem>>>,
    _tracer_provider: SdkTracerProvider,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether log records are exported (an OTLP logs endpoint is set).
pub fn logs_exported() -> bool {
    INSTALLED.get().is_some_and(|i| i.config.logs)
}

/// Whether `RUST_LOG` lets the access log through (target
/// [`ACCESS_TARGET`] at INFO), decided once at [`install`]; true before.
pub fn access_log_on() -> bool {
    ACCESS_LOG_ON.load(Ordering::Relaxed)
}

static ACCESS_LOG_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether spans are exported (an OTLP traces endpoint is set).
pub fn traces_exported() -> bool {
    INSTALLED.get().is_some_and(|i| i.config.traces)
}

/// Component id → `service.name` (its Dapr app id).
static SERVICE_NAMES: RwLock<Option<HashMap<String, String>>> = RwLock::new(None);

/// Names the resource of each component's spans and logs: `service.name`
/// is the component's Dapr app id (`tool.wasmshop.dapr_app_id`, else its
/// id), as the seed's Application Insights role names expect.
pub fn name_components(manifest: &crate::manifest::AppManifest) {
    let names = manifest
        .components
        .values()
        .map(|c| (c.id.clone(), c.dapr_app_id().to_string()))
        .collect();
    *SERVICE_NAMES.write().unwrap_or_else(|p| p.into_inner()) = Some(names);
}

/// The `service.name` of `component` (its id until [`name_components`]
/// named it).
pub fn service_name(component: &str) -> String {
    SERVICE_NAMES
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(component).cloned())
        .unwrap_or_else(|| component.to_string())
}

/// Installs the process's `tracing` subscriber: `RUST_LOG` filter (default
/// `info`), JSON or text lines to stderr without blocking, spans as
/// OpenTelemetry spans, and the OTLP log bridge when logs are exported.
/// Called once, before the tokio runtime starts; export begins with
/// [`start`].
pub fn install(json: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::filter_fn;
    let config = Config::from_env(|k| std::env::var(k).ok());
    for f in &config.findings {
        // SAFETY: called from `main` before the tokio runtime and the log
        // writer thread start, so no other thread reads the environment.
        unsafe {
            match &f.replacement {
                Some(v) => std::env::set_var(f.var, v),
                None => std::env::remove_var(f.var),
            }
        }
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Whether the access log is on, asked of a subscriber holding only the
    // `RUST_LOG` filter, once. Asking the process's subscriber per request
    // (`tracing::enabled!`) is wrong with per-layer filters: the query
    // leaves its per-layer verdicts in a thread-local that the next span
    // made on that thread then reads, so the OpenTelemetry layer skipped
    // the next request's server span, whose span id fell back to the
    // caller's.
    let probe = tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let access_on = tracing::subscriber::with_default(
        probe,
        || tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO),
    );
    ACCESS_LOG_ON.store(access_on, Ordering::Relaxed);
    // The per-layer filters below say what they pass at most, so the
    // subscriber's level hint is `RUST_LOG`'s and the `log` crate (set to
    // it by `try_init`) skips disabled records (wasmtime's trace! calls)
    // before they reach `tracing`.
    let hint = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let (json_lines, text) = if json {
        (Some(json::JsonLayer::install()), None)
    } else {
        let text = tracing_subscriber::fmt::layer().with_writer(writer::NonBlockingStderr::get());
        (None, Some(text))
    };

    // Spans always become OpenTelemetry spans (ids for the logs and the
    // traceparent of outgoing calls); only an exported trace queues them.
    let mut tracer_provider = SdkTracerProvider::builder();
    let span_queue = config.traces.then(|| {
        let (processor, queue) = export::span_queue(config.span_queue);
        tracer_provider = std::mem::take(&mut tracer_provider).with_span_processor(processor);
        queue
    });
    let tracer_provider = tracer_provider.build();
    let tracer = tracer_provider.tracer("wasmshop");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        // Events stay log records (below), not span events.
        .with_filter(
            filter_fn(move |meta| meta.is_span() && *meta.level() <= hint)
                .with_max_level_hint(hint),
        );

    let (logs, log_queue) = if config.logs {
        let (processor, queue) = export::log_queue(config.log_queue);
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_log_processor(processor)
            .build();
        let bridge =
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&provider)
                .with_filter(
                    filter_fn(move |meta| {
                        let t = meta.target();
                        *meta.level() <= hint
                            && !(t.starts_with(SELF_TARGET)
                                || t.starts_with("opentelemetry")
                                || t.starts_with("hyper")
                                || t.starts_with("h2")
                                || t.starts_with("tonic")
                                || t.starts_with("tower"))
                    })
                    .with_max_level_hint(hint),
                );
        // The provider lives as long as its processor's queue.
        std::mem::forget(provider);
        (Some(bridge), Some(queue))
    } else {
        (None, None)
    };

    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json_lines)
        .with(text)
        // Below the per-layer filtered layers: a plain layer above them
        // would make the subscriber's level hint "anything" (TRACE), and
        // `try_init` gives the `log` crate that level.
        .with(spans::ComponentLayer)
        .with(spans)
        .with(logs)
        .try_init();
    for w in config.findings.iter().filter_map(|f| f.warning.as_ref()) {
        tracing::warn!(target: SELF_TARGET, "{w}");
    }
    let _ = INSTALLED.set(Installed {
        config,
        span_queue: Mutex::new(span_queue),
        log_queue: Mutex::new(log_queue),
        _tracer_provider: tracer_provider,
    });
}

/// The running exporters; [`Export::shutdown`] sends what is queued.
pub struct Export {
    flushers: Vec<export::Flusher>,
    meter_provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

/// Starts the OTLP export tasks on the current tokio runtime (and the
/// metrics reader, registered as the global meter provider so
/// [`crate::metrics::Metrics`] records into it). Does nothing for a
/// signal without an endpoint.
pub fn start() -> Export {
    let mut out = Export {
        flushers: Vec::new(),
        meter_provider: None,
    };
    let Some(installed) = INSTALLED.get() else {
        return out;
    };
    let config = &installed.config;
    if let Some(p) = &config.unsupported_protocol {
        tracing::error!(
            target: SELF_TARGET,
            "{p} is not supported by this build: set OTEL_EXPORTER_OTLP_PROTOCOL to grpc or http/protobuf; nothing is exported"
        );
        return out;
    }
    let spans = installed.span_queue.lock().map(|mut q| q.take());
    if let Ok(Some(queue)) = spans {
        out.flushers.push(export::run_spans(queue, config));
    }
    let logs = installed.log_queue.lock().map(|mut q| q.take());
    if let Ok(Some(queue)) = logs {
        out.flushers.push(export::run_logs(queue, config));
    }
    if config.metrics {
        match export::meter_provider() {
            Ok(provider) => {
                opentelemetry::global::set_meter_provider(provider.clone());
                out.meter_provider = Some(provider);
            }
            Err(e) => count_failed(Signal::Metrics, 1, &e),
        }
    }
    if config.any() {
        tracing::info!(
            target: SELF_TARGET,
            traces = config.traces,
            logs = config.logs,
            metrics = config.metrics,
            "OTLP export on"
        );
    }
    out
}

impl Export {
    /// Sends what is queued and stops the metrics reader after a last
    /// collection, all signals at once and all within `limit` together:
    /// what is not sent by then is dropped, counted and warned about
    /// (a collector that accepts and never answers cannot hold the exit
    /// past it). Then the pending log lines get at most one more second
    /// to reach stderr.
    pub async fn shutdown(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut waits = tokio::task::JoinSet::new();
        for f in self.flushers {
            waits.spawn(f.flush(deadline));
        }
        if let Some(provider) = self.meter_provider {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A plain thread, not `spawn_blocking`: a stopping runtime
            // waits for its blocking tasks, and this one may hang on the
            // collector.
            let _ = std::thread::Builder::new()
                .name("wasmshop-metrics-shutdown".into())
                .spawn(move || {
                    let _ = tx.send(provider.shutdown_with_timeout(limit));
                });
            waits.spawn(async move {
                if !matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(Ok(())))) {
                    count_dropped(Signal::Metrics, 1);
                }
            });
        }
        while waits.join_next().await.is_some() {}
        writer::NonBlockingStderr::flush(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_exports_are_warned_of_at_the_first_call_and_every_hundredth() {
        let calls = AtomicU64::new(0);
        let warned: Vec<u64> = (1..=250)
            .filter(|_| should_warn_of_failed_call(&calls))
            .collect();
        assert_eq!(warned, [1, 101, 201]);
    }

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|k| vars.get(k).cloned())
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_per_signal_with_one() {
        assert!(!config(&[]).any());
        let all = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert!(all.traces && all.logs && all.metrics);
        let traces = config(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]);
        assert!(traces.traces && !traces.logs && !traces.metrics);
        let no_metrics = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert!(no_metrics.traces && !no_metrics.metrics);
        let disabled = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(!disabled.any());
    }

    #[test]
    fn an_ignored_value_is_read_as_unset() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "abc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ]);
        assert!(c.traces && c.logs && c.metrics);
        assert_eq!(c.span_queue, 2048);
        assert_eq!(c.delay, Duration::from_millis(1000));
        assert_eq!(c.findings.len(), 4);
        let off = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "True"),
        ]);
        assert!(!off.any());
    }

    #[test]
    fn only_grpc_and_http_protobuf_are_accepted() {
        let json = config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert_eq!(
            json.unsupported_protocol.as_deref(),
            Some("OTEL_EXPORTER_OTLP_PROTOCOL=http/json")
        );
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unsupported_protocol,
            None
        );
    }
}
