//! CloudEvents 1.0 (JSON format) and publishing through `wasi:messaging`.
//!
//! Services build a [`CloudEvent`] and hand it to an [`EventSink`]:
//! [`MessagingSink`] publishes through a `wasi:messaging` client,
//! [`RecordingSink`] keeps events in memory for native tests.
//!
//! Under `spin up`, which has no `wasi:messaging`, messages arrive instead
//! as HTTP POSTs on a private event route ([`EVENT_ROUTE_PATH`]), sent by
//! the messaging adapter; [`serve_event_route`] hands them to the
//! component's own `wasi:messaging/incoming-handler` implementation.

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
/// extension attributes: the tenant travels with every event, as with
/// every service call, and the trace continues in the subscriber.
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

    /// Makes later publishes succeed again (the broker is back).
    pub fn recover(&self) {
        *self.fail.borrow_mut() = None;
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

/// Path of the private event route: where the Spin messaging adapter
/// (`components/messaging-adapter`) POSTs each message through service
/// chaining. Keep it outside every public route.
pub const EVENT_ROUTE_PATH: &str = "/_wasmshop/events";
/// Header carrying the topic of a message on the event route.
pub const TOPIC_HEADER: &str = "x-wasmshop-topic";
/// Header carrying a message's metadata, form-urlencoded.
pub const METADATA_HEADER: &str = "x-wasmshop-metadata";

/// A message as it arrives on the event route (binding-free, so the
/// decoding is unit-tested natively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDelivery {
    /// The topic it was sent on.
    pub topic: String,
    /// The message content type, if the publisher set one.
    pub content_type: Option<String>,
    /// The message metadata, in order.
    pub metadata: Vec<(String, String)>,
    /// The message data, byte for byte.
    pub data: Vec<u8>,
}

impl EventDelivery {
    /// Whether a request path (without query) is the event route.
    pub fn is_event_route(path: &str) -> bool {
        path == EVENT_ROUTE_PATH
    }

    /// Decodes an event-route request; the problem says what the sender
    /// must fix.
    pub fn from_request(
        req: &crate::web::Request,
    ) -> Result<EventDelivery, crate::problem::Problem> {
        use crate::problem::Problem;
        if req.method != http::Method::POST {
            return Err(Problem::method_not_allowed(&req.method, "POST"));
        }
        let topic = req
            .header(TOPIC_HEADER)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "an event delivery needs the {TOPIC_HEADER} header naming its topic"
                ))
            })?;
        let metadata = form_urlencoded::parse(req.header(METADATA_HEADER).unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Ok(EventDelivery {
            topic: topic.to_owned(),
            content_type: req.header("content-type").map(str::to_owned),
            metadata,
            data: req.body.clone(),
        })
    }

    /// The answer to the adapter: 204 once handled, else a 500 problem
    /// carrying the handler's error (the adapter reports it to the
    /// publisher; nothing redelivers it).
    pub fn response(&self, outcome: Result<(), String>) -> crate::web::Response {
        match outcome {
            Ok(()) => crate::web::Response::empty(http::StatusCode::NO_CONTENT),
            Err(m) => crate::problem::Problem::internal(format!(
                "the subscriber could not handle the message of topic '{}': {m}",
                self.topic
            ))
            .to_response(),
        }
    }
}

/// Whether `request` is a delivery on the event route, to be passed to
/// [`serve_event_route`] instead of the REST API.
pub fn is_event_route(request: &crate::bindings::wasi::http::types::IncomingRequest) -> bool {
    let path = request.path_with_query().unwrap_or_default();
    EventDelivery::is_event_route(path.split('?').next().unwrap_or(""))
}

/// Serves the event route with the component's own
/// `wasi:messaging/incoming-handler` implementation, so a message reaches
/// the same code whether the host delivers it natively or the Spin adapter
/// POSTs it here. Use it from the component's HTTP handler:
///
/// ```ignore
/// if service_kit::events::is_event_route(&request) {
///     return service_kit::events::serve_event_route(request, out, <Component as messaging_handler::Guest>::handle);
/// }
/// ```
pub fn serve_event_route(
    request: crate::bindings::wasi::http::types::IncomingRequest,
    out: crate::bindings::wasi::http::types::ResponseOutparam,
    handler: impl FnOnce(
        crate::bindings::wasi::messaging::types::Message,
    ) -> Result<(), crate::bindings::wasi::messaging::types::Error>,
) {
    use crate::bindings::wasi::messaging::types::{Error, Message};
    crate::wasi_http::serve(request, out, |req| {
        let delivery = match EventDelivery::from_request(&req) {
            Ok(d) => d,
            Err(p) => return p.to_response(),
        };
        let message = Message::new(&delivery.data);
        if let Some(ct) = &delivery.content_type {
            message.set_content_type(ct);
        }
        if !delivery.metadata.is_empty() {
            message.set_metadata(&delivery.metadata);
        }
        let outcome = handler(message).map_err(|e| match e {
            Error::Timeout => "timed out".to_owned(),
            Error::Connection(m) | Error::PermissionDenied(m) | Error::Other(m) => m,
        });
        delivery.response(outcome)
    });
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

    #[test]
    fn event_route_requests_decode_to_the_message_sent() {
        use crate::web::Request;
        assert!(EventDelivery::is_event_route("/_wasmshop/events"));
        assert!(!EventDelivery::is_event_route(
            "/api/orders/_wasmshop/events"
        ));
        let req = Request::new(http::Method::POST, EVENT_ROUTE_PATH)
            .with_header("content-type", CLOUDEVENTS_JSON)
            .with_header(TOPIC_HEADER, "products")
            .with_header(METADATA_HEADER, "ce-type=ProductDeleted&odd+key%26=%C3%A9")
            .with_body(b"{\"a\":1}".to_vec());
        let d = EventDelivery::from_request(&req).unwrap();
        assert_eq!(d.topic, "products");
        assert_eq!(d.content_type.as_deref(), Some(CLOUDEVENTS_JSON));
        assert_eq!(
            d.metadata,
            vec![
                ("ce-type".to_owned(), "ProductDeleted".to_owned()),
                ("odd key&".to_owned(), "é".to_owned())
            ]
        );
        assert_eq!(d.data, b"{\"a\":1}");
        assert_eq!(d.response(Ok(())).status, http::StatusCode::NO_CONTENT);
        let failed = d.response(Err("store down".into()));
        assert_eq!(failed.status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(String::from_utf8_lossy(&failed.body).contains("store down"));
    }

    #[test]
    fn event_route_refuses_what_is_not_a_delivery() {
        use crate::web::Request;
        let get = Request::new(http::Method::GET, EVENT_ROUTE_PATH).with_header(TOPIC_HEADER, "t");
        assert_eq!(
            EventDelivery::from_request(&get)
                .unwrap_err()
                .to_response()
                .status,
            http::StatusCode::METHOD_NOT_ALLOWED
        );
        let no_topic = Request::new(http::Method::POST, EVENT_ROUTE_PATH);
        let p = EventDelivery::from_request(&no_topic)
            .unwrap_err()
            .to_response();
        assert_eq!(p.status, http::StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&p.body).contains(TOPIC_HEADER));
    }
}
