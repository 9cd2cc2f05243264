//! Producer and consumer spans of messaging (`docs/observability.md`,
//! "Messages").
//!
//! - Send: [`traced`] wraps each messaging client's broker, so every
//!   backend's send runs in a producer span (child of the sending
//!   request's span). The message's `traceparent` metadata becomes the
//!   producer span's context, and the same context is copied to
//!   [`PRODUCER_KEY`], an extension of ours that no broker rewrites: in
//!   metadata, and on Dapr also as an attribute of the CloudEvent itself
//!   (daprd keeps unknown attributes of a structured CloudEvent and
//!   replaces its `traceparent` with its own span's).
//! - Delivery: [`consumer`] makes the consumer span, a child of the
//!   delivered `traceparent` (metadata, else the CloudEvent's) and linked
//!   to the producer span named by [`PRODUCER_KEY`].

use super::spans;
use crate::capabilities::messaging::{
    BrokerError, BrokerMessage, ComponentSubscription, Message, MessageBroker,
};
use crate::trace::TRACEPARENT;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tracing::Instrument as _;

/// Metadata key and CloudEvent extension attribute carrying the
/// producer span's `traceparent` (CloudEvent attribute names are lower
/// case letters and digits, at most 20).
pub const PRODUCER_KEY: &str = "producertraceparent";

/// Messaging client → backend name, for `messaging.system` on delivery.
static SYSTEMS: RwLock<BTreeMap<String, &'static str>> = RwLock::new(BTreeMap::new());

/// `broker` of messaging client `client`, sending inside a producer span
/// (`messaging.system` = `system`: `embedded`, `redis` or `dapr`).
pub fn traced(
    broker: Arc<dyn MessageBroker>,
    client: &str,
    system: &'static str,
) -> Arc<dyn MessageBroker> {
    SYSTEMS
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(client.to_string(), system);
    Arc::new(Traced {
        inner: broker,
        system,
    })
}

struct Traced {
    inner: Arc<dyn MessageBroker>,
    system: &'static str,
}

#[async_trait]
impl MessageBroker for Traced {
    async fn send(
        &self,
        client: &str,
        topic: &str,
        mut message: BrokerMessage,
    ) -> Result<(), BrokerError> {
        let component = spans::current_component();
        let span = spans::producer(self.system, topic, component.as_deref().unwrap_or(""));
        if let Some(id) = message_id(&message) {
            span.record("messaging.message.id", id.as_str());
        }
        if let Some(tp) = spans::traceparent(&span) {
            set_producer(&mut message, &tp, self.system == "dapr");
        }
        let sent = self
            .inner
            .send(client, topic, message)
            .instrument(span.clone())
            .await;
        if sent.is_err() {
            spans::record_error(&span);
        }
        sent
    }

    async fn ready(&self) -> Result<(), crate::capabilities::BackendError> {
        self.inner.ready().await
    }
}

/// Points the message's trace context at the producer span `tp`: its
/// `traceparent` (unless the guest set one of another trace) and
/// [`PRODUCER_KEY`]; with `in_event`, also as an attribute of a JSON
/// CloudEvent body.
fn set_producer(message: &mut BrokerMessage, tp: &str, in_event: bool) {
    let trace_of = |v: &str| v.split('-').nth(1).map(str::to_string);
    let md = &mut message.metadata;
    match md.iter_mut().find(|(k, _)| k == TRACEPARENT) {
        Some((_, v)) if trace_of(v) == trace_of(tp) => *v = tp.to_string(),
        Some(_) => {}
        None => md.push((TRACEPARENT.to_string(), tp.to_string())),
    }
    md.retain(|(k, _)| k != PRODUCER_KEY);
    md.push((PRODUCER_KEY.to_string(), tp.to_string()));
    if in_event
        && let Ok(serde_json::Value::Object(mut event)) =
            serde_json::from_slice::<serde_json::Value>(&message.data)
        && event.contains_key("specversion")
    {
        event.insert(PRODUCER_KEY.into(), tp.into());
        if let Ok(data) = serde_json::to_vec(&event) {
            message.data = data;
        }
    }
}

/// A message's id: the CloudEvent `id` (metadata `ce-id` or
/// `cloudevent-id`, else the JSON body's `id`).
pub fn message_id(message: &BrokerMessage) -> Option<String> {
    metadata(message, &["ce-id", "cloudevent-id"]).or_else(|| event_field(message, "id"))
}

fn metadata(message: &BrokerMessage, keys: &[&str]) -> Option<String> {
    message
        .metadata
        .iter()
        .find(|(k, _)| keys.contains(&k.as_str()))
        .map(|(_, v)| v.clone())
}

fn event_field(message: &BrokerMessage, field: &str) -> Option<String> {
    if !message.data.starts_with(b"{") {
        return None;
    }
    let event: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&message.data).ok()?;
    event.get(field)?.as_str().map(str::to_string)
}

/// The consumer span of delivering `message` to `component`: child of the
/// delivered `traceparent`, linked to the producer span; records its ids
/// for the log lines written during the delivery.
pub fn consumer(
    component: &str,
    message: &Message,
    subscriptions: &[ComponentSubscription],
) -> tracing::Span {
    let topic = message.topic.as_deref().unwrap_or("");
    let system = subscriptions
        .iter()
        .find(|s| s.component == component && s.topic == topic)
        .and_then(|s| {
            SYSTEMS
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&s.client)
                .copied()
        })
        .unwrap_or("embedded");
    let inner = &message.inner;
    let id = message_id(inner).unwrap_or_default();
    let span = spans::consumer(system, topic, &id, component);
    let parent = metadata(inner, &[TRACEPARENT]).or_else(|| event_field(inner, TRACEPARENT));
    spans::set_parent(&span, parent.as_deref());
    let producer = metadata(inner, &[PRODUCER_KEY]).or_else(|| event_field(inner, PRODUCER_KEY));
    spans::link(&span, producer.as_deref());
    spans::ids(&span, || parent.clone().unwrap_or_else(crate::trace::start));
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_context_replaces_the_request_one_and_rides_in_the_event_on_dapr() {
        let request = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let producer = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        let mut m = BrokerMessage {
            data: br#"{"specversion":"1.0","id":"e1","type":"t"}"#.to_vec(),
            content_type: None,
            metadata: vec![(TRACEPARENT.into(), request.into())],
        };
        set_producer(&mut m, producer, true);
        assert_eq!(metadata(&m, &[TRACEPARENT]).as_deref(), Some(producer));
        assert_eq!(metadata(&m, &[PRODUCER_KEY]).as_deref(), Some(producer));
        assert_eq!(event_field(&m, PRODUCER_KEY).as_deref(), Some(producer));
        assert_eq!(message_id(&m).as_deref(), Some("e1"));

        let other = "00-11111111111111111111111111111111-b7ad6b7169203331-01";
        let mut m = BrokerMessage {
            data: b"plain".to_vec(),
            content_type: None,
            metadata: vec![(TRACEPARENT.into(), other.into())],
        };
        set_producer(&mut m, producer, false);
        assert_eq!(metadata(&m, &[TRACEPARENT]).as_deref(), Some(other));
        assert_eq!(m.data, b"plain");
    }
}
