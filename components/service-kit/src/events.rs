//! CloudEvents 1.0 (JSON format) and publishing through `wasi:messaging`.
//!
//! Services build a [`CloudEvent`] and hand it to an [`EventSink`]:
//! [`MessagingSink`] publishes through a `wasi:messaging` client,
//! [`RecordingSink`] keeps events in memory for native tests.

use std::cell::RefCell;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::tenant::TenantId;

/// The messaging client both services publish through (`spin.toml`).
pub const PUBSUB_CLIENT: &str = "product-pubsub";

/// Content type of a message whose body is a whole CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// A CloudEvents 1.0 event with the `tenantid` and `traceparent`
/// extension attributes (DESIGN §4).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; consumers deduplicate on it.
    pub id: String,
    /// Which service emitted the event, e.g. `wasmshop/product`.
    pub source: String,
    /// The event name, e.g. `ProductCreated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (RFC 3339 UTC).
    pub time: String,
    /// Media type of `data`: `application/json`.
    pub datacontenttype: String,
    /// The resource id the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The tenant whose data changed.
    pub tenantid: String,
    /// W3C trace context of the request that caused the event.
    pub traceparent: String,
    /// The resource snapshot, kept as JSON text so money in it is never
    /// turned into a float.
    pub data: Box<RawValue>,
}

impl CloudEvent {
    /// A new event with a fresh id and the current time; `data` is the
    /// resource snapshot.
    pub fn new<T: Serialize + ?Sized>(
        source: &str,
        kind: &str,
        tenant: &TenantId,
        traceparent: &str,
        data: &T,
    ) -> Self {
        // Snapshots are plain data types: serialising them cannot fail.
        let data = serde_json::value::to_raw_value(data).expect("event data serialises to JSON");
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: crate::ids::new_id(),
            source: source.to_owned(),
            kind: kind.to_owned(),
            time: crate::clock::now_rfc3339(),
            datacontenttype: crate::web::JSON.to_owned(),
            subject: None,
            tenantid: tenant.as_str().to_owned(),
            traceparent: traceparent.to_owned(),
            data,
        }
    }

    /// Decodes `data` into a service's own type (money stays exact).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// Sets `subject` (the id of the resource concerned).
    pub fn with_subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_owned());
        self
    }

    /// The event as CloudEvents JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // A CloudEvent of strings and a JSON value always serialises.
        serde_json::to_vec(self).expect("a CloudEvent serialises to JSON")
    }

    /// Parses a received message body; the error says what is missing.
    pub fn from_json(bytes: &[u8]) -> Result<CloudEvent, String> {
        let event: CloudEvent = serde_json::from_slice(bytes)
            .map_err(|e| format!("the message is not a CloudEvents 1.0 JSON event: {e}"))?;
        if event.specversion != "1.0" {
            return Err(format!(
                "unsupported CloudEvents specversion '{}'; expected 1.0",
                event.specversion
            ));
        }
        Ok(event)
    }
}

/// Why an event could not be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError(pub String);

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PublishError {}

/// Somewhere events go.
pub trait EventSink {
    /// Publishes `event` on `topic`; returns once the broker accepted it.
    fn publish(&self, topic: &str, event: &CloudEvent) -> Result<(), PublishError>;
}

/// Publishes through a `wasi:messaging` client declared in the manifest.
pub struct MessagingSink {
    client_name: String,
}

impl MessagingSink {
    /// A sink for the named client (e.g. [`PUBSUB_CLIENT`]); it connects on
    /// first publish, so an unused sink costs nothing.
    pub fn new(client_name: &str) -> Self {
        MessagingSink {
            client_name: client_name.to_owned(),
        }
    }
}

impl EventSink for MessagingSink {
    fn publish(&self, topic: &str, event: &CloudEvent) -> Result<(), PublishError> {
        use crate::bindings::wasi::messaging::{producer, types};
        let describe = |e: types::Error| match e {
            types::Error::Timeout => "timed out".to_owned(),
            types::Error::Connection(m) => format!("connection failed: {m}"),
            types::Error::PermissionDenied(m) => format!("permission denied: {m}"),
            types::Error::Other(m) => m,
        };
        let client = types::Client::connect(&self.client_name).map_err(|e| {
            PublishError(format!(
                "could not connect messaging client '{}': {}; check the component's messaging_clients in spin.toml",
                self.client_name,
                describe(e)
            ))
        })?;
        let message = types::Message::new(&event.to_json());
        message.set_content_type(CLOUDEVENTS_JSON);
        message.add_metadata("ce-type", &event.kind);
        message.add_metadata("tenantid", &event.tenantid);
        message.add_metadata("traceparent", &event.traceparent);
        producer::send(&client, topic, message).map_err(|e| {
            PublishError(format!(
                "could not publish {} to topic '{topic}': {}",
                event.kind,
                describe(e)
            ))
        })
    }
}

/// Keeps published events in memory (native tests).
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: RefCell<Vec<(String, CloudEvent)>>,
    fail: RefCell<Option<String>>,
}

impl RecordingSink {
    /// An empty recorder.
    pub fn new() -> Self {
        RecordingSink::default()
    }

    /// `(topic, event)` pairs published so far, in order.
    pub fn events(&self) -> Vec<(String, CloudEvent)> {
        self.events.borrow().clone()
    }

    /// Makes every later publish fail with `message` (to test error paths).
    pub fn fail_with(&self, message: &str) {
        *self.fail.borrow_mut() = Some(message.to_owned());
    }
}

impl EventSink for RecordingSink {
    fn publish(&self, topic: &str, event: &CloudEvent) -> Result<(), PublishError> {
        if let Some(m) = self.fail.borrow().as_ref() {
            return Err(PublishError(m.clone()));
        }
        self.events
            .borrow_mut()
            .push((topic.to_owned(), event.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[derive(Serialize)]
    struct Snapshot {
        id: &'static str,
        price: crate::money::Money,
    }

    #[test]
    fn event_has_every_required_attribute() {
        let tenant = TenantId::parse("acme").unwrap();
        let e = CloudEvent::new(
            "wasmshop/product",
            "ProductCreated",
            &tenant,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &Snapshot {
                id: "p1",
                price: crate::money::Money::from_minor(30),
            },
        )
        .with_subject("p1");
        let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
        for attr in [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "tenantid",
            "traceparent",
            "data",
        ] {
            assert!(json.get(attr).is_some(), "missing {attr}");
        }
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "ProductCreated");
        assert_eq!(json["tenantid"], "acme");
        assert_eq!(json["subject"], "p1");
        assert_eq!(json["datacontenttype"], "application/json");
        crate::clock::parse_rfc3339(json["time"].as_str().unwrap()).unwrap();
        assert!(
            String::from_utf8(e.to_json())
                .unwrap()
                .contains(r#""price":0.3"#)
        );
        let back = CloudEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(
            (back.id.as_str(), back.kind.as_str()),
            (e.id.as_str(), "ProductCreated")
        );
        let data: Value = back.data_as().unwrap();
        assert_eq!(data["id"], "p1");
    }

    #[test]
    fn rejects_non_cloudevents() {
        assert!(
            CloudEvent::from_json(b"{}")
                .unwrap_err()
                .contains("CloudEvents")
        );
        let mut e = CloudEvent::new("s", "T", &TenantId::default(), "tp", &Value::Null);
        e.specversion = "0.3".into();
        assert!(
            CloudEvent::from_json(&e.to_json())
                .unwrap_err()
                .contains("0.3")
        );
    }

    #[test]
    fn recording_sink_records_and_fails_on_demand() {
        let sink = RecordingSink::new();
        let e = CloudEvent::new("s", "T", &TenantId::default(), "tp", &Value::Null);
        sink.publish("products", &e).unwrap();
        assert_eq!(sink.events()[0].0, "products");
        sink.fail_with("broker down");
        assert_eq!(sink.publish("products", &e).unwrap_err().0, "broker down");
    }
}
