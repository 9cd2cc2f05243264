//! Prometheus metrics, served on `--metrics-listen` (a separate address,
//! so the public listener never exposes them), and the same measurements
//! recorded into OpenTelemetry instruments, exported by OTLP when
//! `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT` is set (`docs/observability.md`;
//! without it the instruments are no-ops).
//!
//! Measurements made below the app (key-value calls, outbound calls,
//! exporter drops) go to process-wide families ([`record_kv`],
//! [`record_outbound`], ...) that every [`Metrics`] registry shows.

use opentelemetry::KeyValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabels {
    backend: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    component: String,
    destination: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

/// Families shared by every registry: measured where no [`Metrics`] is
/// at hand.
struct Shared {
    kv_operations: Family<KvLabels, Counter>,
    cas_conflicts: Family<BackendLabels, Counter>,
    outbound: Family<OutboundLabels, Counter>,
    instances_in_use: Gauge,
    instance_refusals: Family<ComponentLabels, Counter>,
    telemetry_dropped: Family<SignalLabels, Counter>,
    telemetry_failed: Family<SignalLabels, Counter>,
}

static SHARED: LazyLock<Shared> = LazyLock::new(|| Shared {
    kv_operations: Family::default(),
    cas_conflicts: Family::default(),
    outbound: Family::default(),
    instances_in_use: Gauge::default(),
    instance_refusals: Family::default(),
    telemetry_dropped: Family::default(),
    telemetry_failed: Family::default(),
});

/// The OpenTelemetry instruments (no-ops unless OTLP metrics export is on;
/// made on first use, after `telemetry::start` set the meter provider).
struct Otel {
    requests: opentelemetry::metrics::Histogram<f64>,
    deliveries: opentelemetry::metrics::Counter<u64>,
    kv_operations: opentelemetry::metrics::Counter<u64>,
    cas_conflicts: opentelemetry::metrics::Counter<u64>,
    outbound: opentelemetry::metrics::Counter<u64>,
    instances_in_use: opentelemetry::metrics::UpDownCounter<i64>,
    instance_refusals: opentelemetry::metrics::Counter<u64>,
}

static OTEL: LazyLock<Otel> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("wasmshop");
    Otel {
        requests: meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Time to the response head, per component and status")
            .with_boundaries(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .build(),
        deliveries: meter
            .u64_counter("wasmshop.deliveries")
            .with_description("Message deliveries to subscribers")
            .build(),
        kv_operations: meter
            .u64_counter("wasmshop.kv.operations")
            .with_description("Key-value operations by backend, operation and outcome")
            .build(),
        cas_conflicts: meter
            .u64_counter("wasmshop.kv.cas_conflicts")
            .with_description("Compare-and-swap writes refused because the value changed")
            .build(),
        outbound: meter
            .u64_counter("wasmshop.outbound.requests")
            .with_description("Outbound HTTP calls by destination and status")
            .build(),
        instances_in_use: meter
            .i64_up_down_counter("wasmshop.instances.in_use")
            .with_description("Component instances running now")
            .build(),
        instance_refusals: meter
            .u64_counter("wasmshop.instances.refused")
            .with_description("Instances not created because the pool was full")
            .build(),
    }
});

/// Counts a key-value call of `backend` (`embedded`, `redis`, `dapr`):
/// `outcome` is `ok`, `error` or `conflict` (a refused compare-and-swap).
pub fn record_kv(backend: &'static str, operation: &'static str, outcome: &'static str) {
    SHARED
        .kv_operations
        .get_or_create(&KvLabels {
            backend,
            operation,
            outcome,
        })
        .inc();
    OTEL.kv_operations.add(
        1,
        &[
            KeyValue::new("backend", backend),
            KeyValue::new("operation", operation),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// Counts a compare-and-swap refused by `backend` because the value changed.
pub fn record_cas_conflict(backend: &'static str) {
    SHARED
        .cas_conflicts
        .get_or_create(&BackendLabels { backend })
        .inc();
    OTEL.cas_conflicts
        .add(1, &[KeyValue::new("backend", backend)]);
}

/// Counts an outbound HTTP call of `component` to `destination` (the
/// host, e.g. `product.spin.internal`); `status` is the response code,
/// or `error` when no response came.
pub fn record_outbound(component: &str, destination: &str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    OTEL.outbound.add(
        1,
        &[
            KeyValue::new("component", component.to_string()),
            KeyValue::new("destination", destination.to_string()),
            KeyValue::new("status", status.clone()),
        ],
    );
    SHARED
        .outbound
        .get_or_create(&OutboundLabels {
            component: component.to_string(),
            destination: destination.to_string(),
            status,
        })
        .inc();
}

/// One more instance running (`+1`) or one fewer (`-1`).
pub fn instances_in_use(delta: i64) {
    SHARED.instances_in_use.inc_by(delta);
    OTEL.instances_in_use.add(delta, &[]);
}

/// Counts one instance running until the returned guard drops
/// (`wasmshop_instances_in_use`).
pub fn instance_in_use() -> InstanceInUse {
    instances_in_use(1);
    InstanceInUse(())
}

/// See [`instance_in_use`].
pub struct InstanceInUse(());

impl Drop for InstanceInUse {
    fn drop(&mut self) {
        instances_in_use(-1);
    }
}

/// Counts an instance of `component` refused because the pool was full
/// (`--max-instances`).
pub fn record_instance_refused(component: &str) {
    SHARED
        .instance_refusals
        .get_or_create(&ComponentLabels {
            component: component.to_string(),
        })
        .inc();
    OTEL.instance_refusals
        .add(1, &[KeyValue::new("component", component.to_string())]);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    component: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    component: String,
    outcome: &'static str,
}

/// The host's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<ComponentLabels, Histogram>,
    deliveries: Family<DeliveryLabels, Counter>,
}

fn register_shared(registry: &mut Registry) {
    let s = &*SHARED;
    registry.register(
        "kv_operations",
        "Key-value operations by backend, operation and outcome (ok, error, conflict)",
        s.kv_operations.clone(),
    );
    registry.register(
        "kv_cas_conflicts",
        "Compare-and-swap writes refused because the value changed, by backend",
        s.cas_conflicts.clone(),
    );
    registry.register(
        "outbound_requests",
        "Outbound HTTP calls by component, destination host and status (error: no response)",
        s.outbound.clone(),
    );
    registry.register(
        "instances_in_use",
        "Component instances running now (the pool holds --max-instances)",
        s.instances_in_use.clone(),
    );
    registry.register(
        "instance_refusals",
        "Instances not created because the pool was full",
        s.instance_refusals.clone(),
    );
    registry.register(
        "telemetry_dropped",
        "Telemetry items dropped because their queue was full, by signal (span, log_record, log_line)",
        s.telemetry_dropped.clone(),
    );
    registry.register(
        "telemetry_export_failures",
        "Telemetry items whose OTLP export failed, by signal",
        s.telemetry_failed.clone(),
    );
}

/// Brings the telemetry counters (kept as atomics where they happen) into
/// their families.
fn sync_telemetry_counters() {
    let sync = |family: &Family<SignalLabels, Counter>, now: (crate::telemetry::Signal, u64)| {
        let c = family.get_or_create(&SignalLabels {
            signal: now.0.label(),
        });
        let shown = c.get();
        if now.1 > shown {
            c.inc_by(now.1 - shown);
        }
    };
    for d in crate::telemetry::dropped() {
        sync(&SHARED.telemetry_dropped, d);
    }
    for f in crate::telemetry::failed() {
        sync(&SHARED.telemetry_failed, f);
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmshop");
        // The messaging families (docs/messaging.md, "Metrics").
        crate::capabilities::messaging::metrics::register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<ComponentLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests handled by a component",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, per component",
            request_seconds.clone(),
        );
        registry.register(
            "deliveries",
            "Message deliveries to subscribers",
            deliveries.clone(),
        );
        register_shared(&mut registry);
        Metrics {
            registry: Mutex::new(registry),
            requests,
            request_seconds,
            deliveries,
        }
    }
}

impl Metrics {
    /// Counts a request and its latency.
    pub fn record_request(&self, component: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                component: component.to_string(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&ComponentLabels {
                component: component.to_string(),
            })
            .observe(took.as_secs_f64());
        OTEL.requests.record(
            took.as_secs_f64(),
            &[
                KeyValue::new("component", component.to_string()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    /// Counts a delivery attempt.
    pub fn record_delivery(&self, component: &str, ok: bool, _took: Duration) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                component: component.to_string(),
                outcome: if ok { "success" } else { "failure" },
            })
            .inc();
        OTEL.deliveries.add(
            1,
            &[
                KeyValue::new("component", component.to_string()),
                KeyValue::new("outcome", if ok { "success" } else { "failure" }),
            ],
        );
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        sync_telemetry_counters();
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
