//! Prometheus metrics, served on `--metrics-listen` (a separate address,
//! so the public listener never exposes them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

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

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmshop");
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
    }

    /// Counts a delivery attempt.
    pub fn record_delivery(&self, component: &str, ok: bool, _took: Duration) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                component: component.to_string(),
                outcome: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
