//! The messaging metrics, one set per process: the backends record into
//! [`messaging`] without a handle passed down to them, and
//! `metrics.rs` registers the families on every registry ([`register`]).
//! Each is mirrored into an OpenTelemetry instrument of the same meaning
//! (`wasmshop.messaging.*`), exported over OTLP when metrics export is on
//! (a no-op otherwise). What each means: docs/messaging.md, "Metrics".

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter as OtelCounter, Gauge as OtelGauge};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    topic: String,
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveredLabels {
    topic: String,
    subscription: String,
    outcome: &'static str,
}

/// The messaging metrics (what each means: docs/messaging.md, "Metrics").
/// One set per process, shared by every registry it is
/// [`register`]ed on. `subscription` is the subscribing
/// component (the Redis consumer group).
pub struct MessagingMetrics {
    queue_depth: Family<SubscriptionLabels, Gauge>,
    consumer_lag: Family<SubscriptionLabels, Gauge>,
    dead_letters: Family<TopicLabels, Gauge>,
    published: Family<TopicLabels, Counter>,
    delivered: Family<DeliveredLabels, Counter>,
    retried: Family<SubscriptionLabels, Counter>,
    dead_lettered: Family<TopicLabels, Counter>,
}

/// The process's messaging metrics.
pub fn messaging() -> &'static MessagingMetrics {
    static METRICS: std::sync::OnceLock<MessagingMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| MessagingMetrics {
        queue_depth: Family::default(),
        consumer_lag: Family::default(),
        dead_letters: Family::default(),
        published: Family::default(),
        delivered: Family::default(),
        retried: Family::default(),
        dead_lettered: Family::default(),
    })
}

// What each metric counts, for both its Prometheus family and its
// OpenTelemetry instrument.
const QUEUE_DEPTH: &str = "Messages stored for a subscription and not yet acknowledged by it";
const CONSUMER_LAG: &str =
    "Messages stored for a subscription and not yet handed to it (Redis: the group's lag)";
const DEAD_LETTERS: &str = "Dead letters stored on a <topic>.deadletter topic";
const PUBLISHED: &str =
    "Messages accepted by a broker (stored, or dropped for want of a subscriber)";
const DELIVERED: &str = "Deliveries by outcome: success, failure, capacity (no instance free; not an attempt), filtered (event type not wanted)";
const RETRIED: &str = "Failed deliveries scheduled again";
const DEAD_LETTERED: &str =
    "Messages moved to <topic>.deadletter (after the last attempt, or found deleted by Redis)";

/// The OpenTelemetry mirrors, made on first use (after `telemetry::start`
/// set the meter provider).
struct Otel {
    queue_depth: OtelGauge<u64>,
    consumer_lag: OtelGauge<u64>,
    dead_letters: OtelGauge<u64>,
    published: OtelCounter<u64>,
    delivered: OtelCounter<u64>,
    retried: OtelCounter<u64>,
    dead_lettered: OtelCounter<u64>,
}

static OTEL: std::sync::LazyLock<Otel> = std::sync::LazyLock::new(|| {
    let meter = opentelemetry::global::meter("wasmshop");
    let gauge = |name: &'static str, description: &'static str| {
        meter.u64_gauge(name).with_description(description).build()
    };
    let counter = |name: &'static str, description: &'static str| {
        meter
            .u64_counter(name)
            .with_description(description)
            .build()
    };
    Otel {
        queue_depth: gauge("wasmshop.messaging.queue_depth", QUEUE_DEPTH),
        consumer_lag: gauge("wasmshop.messaging.consumer_lag", CONSUMER_LAG),
        dead_letters: gauge("wasmshop.messaging.dead_letters", DEAD_LETTERS),
        published: counter("wasmshop.messaging.published", PUBLISHED),
        delivered: counter("wasmshop.messaging.delivered", DELIVERED),
        retried: counter("wasmshop.messaging.retried", RETRIED),
        dead_lettered: counter("wasmshop.messaging.dead_lettered", DEAD_LETTERED),
    }
});

fn topic_attributes(topic: &str) -> [KeyValue; 1] {
    [KeyValue::new("topic", topic.to_string())]
}

fn subscription_attributes(topic: &str, subscription: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("topic", topic.to_string()),
        KeyValue::new("subscription", subscription.to_string()),
    ]
}

/// Registers the messaging families on `registry` (names get the
/// registry's `wasmshop_` prefix; counters the `_total` suffix).
pub fn register(registry: &mut Registry) {
    let m = messaging();
    registry.register("messaging_queue_depth", QUEUE_DEPTH, m.queue_depth.clone());
    registry.register(
        "messaging_consumer_lag",
        CONSUMER_LAG,
        m.consumer_lag.clone(),
    );
    registry.register(
        "messaging_dead_letters",
        DEAD_LETTERS,
        m.dead_letters.clone(),
    );
    registry.register("messages_published", PUBLISHED, m.published.clone());
    registry.register("messages_delivered", DELIVERED, m.delivered.clone());
    registry.register("messages_retried", RETRIED, m.retried.clone());
    registry.register(
        "messages_dead_lettered",
        DEAD_LETTERED,
        m.dead_lettered.clone(),
    );
}

impl MessagingMetrics {
    /// Counts a message a broker accepted on `topic`.
    pub fn published(&self, topic: &str) {
        self.published.get_or_create(&topic_labels(topic)).inc();
        OTEL.published.add(1, &topic_attributes(topic));
    }

    /// Counts a delivery to `subscription` with `outcome` (`success`,
    /// `failure`, `capacity`, `filtered`).
    pub fn delivered(&self, topic: &str, subscription: &str, outcome: &'static str) {
        self.delivered
            .get_or_create(&DeliveredLabels {
                topic: topic.to_string(),
                subscription: subscription.to_string(),
                outcome,
            })
            .inc();
        let [topic, subscription] = subscription_attributes(topic, subscription);
        OTEL.delivered
            .add(1, &[topic, subscription, KeyValue::new("outcome", outcome)]);
    }

    /// Counts a failed delivery scheduled again.
    pub fn retried(&self, topic: &str, subscription: &str) {
        self.retried
            .get_or_create(&subscription_labels(topic, subscription))
            .inc();
        OTEL.retried
            .add(1, &subscription_attributes(topic, subscription));
    }

    /// Counts a message moved to `topic`'s dead-letter topic.
    pub fn dead_lettered(&self, topic: &str) {
        self.dead_lettered.get_or_create(&topic_labels(topic)).inc();
        OTEL.dead_lettered.add(1, &topic_attributes(topic));
    }

    /// Sets a subscription's stored-and-unacknowledged count and its lag.
    pub fn set_backlog(&self, topic: &str, subscription: &str, depth: u64, lag: u64) {
        let labels = subscription_labels(topic, subscription);
        self.queue_depth.get_or_create(&labels).set(depth as i64);
        self.consumer_lag.get_or_create(&labels).set(lag as i64);
        let attributes = subscription_attributes(topic, subscription);
        OTEL.queue_depth.record(depth, &attributes);
        OTEL.consumer_lag.record(lag, &attributes);
    }

    /// Sets the number of dead letters stored on `dead_letter_topic`.
    pub fn set_dead_letters(&self, dead_letter_topic: &str, count: u64) {
        self.dead_letters
            .get_or_create(&topic_labels(dead_letter_topic))
            .set(count as i64);
        OTEL.dead_letters
            .record(count, &topic_attributes(dead_letter_topic));
    }
}

fn topic_labels(topic: &str) -> TopicLabels {
    TopicLabels {
        topic: topic.to_string(),
    }
}

fn subscription_labels(topic: &str, subscription: &str) -> SubscriptionLabels {
    SubscriptionLabels {
        topic: topic.to_string(),
        subscription: subscription.to_string(),
    }
}
