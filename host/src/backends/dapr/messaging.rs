//! Messaging on Dapr pub/sub, both directions.
//!
//! Send ([`DaprBroker`]): `POST /v1.0/publish/{pubsub}/{topic}`. The
//! `Content-Type` becomes the CloudEvent's `datacontenttype`; a message
//! that already is a CloudEvent (JSON with `specversion`) is sent as
//! `application/cloudevents+json` so daprd forwards it instead of wrapping
//! it again. The trace context travels as headers.
//!
//! Receive ([`DaprReceiver`]), on the app channel (the host's listener):
//! - `GET /dapr/subscribe`: one subscription per (pub/sub, topic) that a
//!   component run here subscribes to through a Dapr messaging client, with
//!   the route `/dapr/events/<component>/<topic>` and the dead-letter topic
//!   of the shared [`delivery`] rules. Dapr accepts one subscription per
//!   topic and app, so components of one process sharing a topic share the
//!   route and each gets the event. When every such component names the
//!   event types it wants (`event_types` in the manifest), the route is
//!   given as one routing rule per type (`event.type == "<type>"`) without
//!   a default route, so daprd never pushes the other types here; a
//!   component that wants fewer types than its neighbours on the route has
//!   the rest acknowledged without running (the messaging trigger filters).
//! - A delivery that finds no free instance (the pool is full) waits for
//!   one for up to 5 s, holding only daprd's connection: daprd
//!   counts every `RETRY` as an attempt, so a refusal would spend one
//!   (docs/messaging.md). Only if none frees up is it answered `RETRY`.
//! - `POST` on such a route: the CloudEvent goes to each subscriber's
//!   `wasi:messaging/incoming-handler` as the message data (content type
//!   `application/cloudevents+json`, topic set, `traceparent` in the
//!   metadata). The answer is `{"status":"SUCCESS"}`, `"RETRY"` when a
//!   handler fails (daprd redelivers per its resiliency policy; handlers
//!   are idempotent), or `"DROP"` when the body is not a JSON CloudEvent
//!   or is larger than `--max-request-body-bytes`. The body is read first,
//!   under the front door's deadline and memory budget
//!   (`docs/operations.md`); a body too slow or past the budget gets the
//!   front door's 408 or 503, which daprd retries.
//!
//! Where each Dapr rule comes from: `docs/dapr-reference.md`.

use super::NAME;
use super::client::{CALL_TIMEOUT, DaprClient, encode_segment};
use crate::capabilities::BackendError;
use crate::capabilities::messaging::delivery;
use crate::capabilities::messaging::{
    BrokerError, BrokerMessage, ComponentSubscription, Deliverer, Message, MessageBroker,
    MessageReceiver, ReceiveOptions,
};
use crate::ingress::{HostResponse, Ingress};
use crate::problem::{json, problem};
use crate::trigger::http::front_door::BodyReader;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tokio::task::JoinHandle;

/// Media type of a structured CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Where Dapr discovers subscriptions.
pub const SUBSCRIBE_PATH: &str = "/dapr/subscribe";
/// Prefix of the delivery routes.
pub const EVENTS_PREFIX: &str = "/dapr/events/";

/// The send side on one Dapr pub/sub component.
pub struct DaprBroker {
    client: DaprClient,
    pubsub: String,
}

impl DaprBroker {
    /// A broker publishing to the pub/sub component `pubsub`.
    pub fn new(client: DaprClient, pubsub: &str) -> Self {
        DaprBroker {
            client,
            pubsub: pubsub.to_string(),
        }
    }
}

/// Whether `data` is a structured CloudEvent (a JSON object with `specversion`).
pub fn is_cloudevent(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .is_some_and(|v| v.get("specversion").is_some_and(|s| s.is_string()))
}

#[async_trait]
impl MessageBroker for DaprBroker {
    async fn send(
        &self,
        _client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError> {
        let mut headers = HeaderMap::new();
        let content_type = if is_cloudevent(&message.data) {
            CLOUDEVENTS_JSON.to_string()
        } else {
            message
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into())
        };
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type).map_err(|_| {
                BackendError::rejected(
                    NAME,
                    format!("content type '{content_type}' is not a valid header value; send a media type such as application/json"),
                )
            })?,
        );
        crate::trace::metadata_to_headers(&message.metadata, &mut headers);
        let path = format!(
            "/v1.0/publish/{}/{}",
            encode_segment(&self.pubsub),
            encode_segment(topic)
        );
        let r = self
            .client
            .call(
                Method::POST,
                &path,
                headers,
                Bytes::from(message.data),
                CALL_TIMEOUT,
            )
            .await?;
        if r.status.is_success() {
            return Ok(());
        }
        let detail = format!(
            "Dapr refused to publish to '{}' topic '{topic}': {} {}",
            self.pubsub,
            r.status,
            r.text()
        );
        Err(BrokerError(match r.status.as_u16() {
            403 => BackendError::rejected(
                NAME,
                format!("{detail}; the topic is blocked by a Dapr scope/ACL"),
            ),
            404 => BackendError::rejected(
                NAME,
                format!(
                    "{detail}; check that the pub/sub component '{}' exists and is scoped to this app",
                    self.pubsub
                ),
            ),
            _ => BackendError::unavailable(NAME, format!("{detail}; retry later")),
        }))
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.client.outbound_healthy().await
    }
}

/// One subscription as advertised to Dapr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaprSubscription {
    /// The Dapr pub/sub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// The delivery route.
    pub route: String,
    /// Local components receiving it.
    pub components: Vec<String>,
    /// The event types wanted, when every local subscriber names its
    /// types (the union); `None`: some subscriber wants every type.
    pub event_types: Option<Vec<String>>,
}

impl DaprSubscription {
    /// The `routes` of the programmatic subscription: with event types, one
    /// rule per type (`event.type == "<type>"`, a CEL expression) and no
    /// default route, so daprd delivers nothing else to this app;
    /// otherwise only the default route (docs/dapr-reference.md,
    /// "Routing rules").
    pub fn routes(&self) -> serde_json::Value {
        match &self.event_types {
            Some(types) => serde_json::json!({
                "rules": types
                    .iter()
                    .map(|t| serde_json::json!({
                        "match": format!("event.type == {}", serde_json::Value::String(t.clone())),
                        "path": self.route,
                    }))
                    .collect::<Vec<_>>(),
            }),
            None => serde_json::json!({ "default": self.route }),
        }
    }
}

/// What [`MessageReceiver::start`] hands the app channel.
struct Started {
    subscriptions: Vec<DaprSubscription>,
    deliverer: Arc<dyn Deliverer>,
}

/// The receive side: daprd pushes each event to the app channel, which
/// this answers (it is one of the backend's [`Ingress`] hooks). Until
/// [`MessageReceiver::start`] ran it advertises no subscription.
pub struct DaprReceiver {
    /// Pub/sub component of each messaging client served by Dapr.
    pubsubs: BTreeMap<String, String>,
    started: OnceLock<Started>,
}

impl DaprReceiver {
    /// A receiver for the clients of `pubsubs` (client → pub/sub component).
    pub fn new(pubsubs: BTreeMap<String, String>) -> Self {
        DaprReceiver {
            pubsubs,
            started: OnceLock::new(),
        }
    }

    /// The subscriptions advertised to daprd, grouped by (pub/sub, topic).
    pub fn subscriptions(&self, of: &[ComponentSubscription]) -> Vec<DaprSubscription> {
        let mut out: Vec<DaprSubscription> = Vec::new();
        for sub in of {
            let Some(pubsub) = self.pubsubs.get(&sub.client) else {
                continue;
            };
            match out
                .iter_mut()
                .find(|s| s.pubsub == *pubsub && s.topic == sub.topic)
            {
                Some(existing) => {
                    existing.components.push(sub.component.clone());
                    match (&mut existing.event_types, sub.event_types.is_empty()) {
                        (Some(types), false) => {
                            for t in &sub.event_types {
                                if !types.contains(t) {
                                    types.push(t.clone());
                                }
                            }
                        }
                        (types, _) => *types = None,
                    }
                }
                None => out.push(DaprSubscription {
                    event_types: (!sub.event_types.is_empty()).then(|| sub.event_types.clone()),
                    route: format!(
                        "{EVENTS_PREFIX}{}/{}",
                        encode_segment(&sub.component),
                        encode_segment(&sub.topic)
                    ),
                    pubsub: pubsub.clone(),
                    topic: sub.topic.clone(),
                    components: vec![sub.component.clone()],
                }),
            }
        }
        out
    }
}

impl MessageReceiver for DaprReceiver {
    /// Nothing to spawn: daprd pushes. Remembers what to advertise and
    /// whom to deliver through.
    fn start(
        &self,
        subscriptions: &[ComponentSubscription],
        deliverer: Arc<dyn Deliverer>,
        _options: ReceiveOptions,
    ) -> Result<Vec<JoinHandle<()>>, BackendError> {
        let started = Started {
            subscriptions: self.subscriptions(subscriptions),
            deliverer,
        };
        if self.started.set(started).is_err() {
            return Err(BackendError::rejected(
                NAME,
                "the Dapr receiver was started twice; start an app's receivers once",
            ));
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl Ingress for DaprReceiver {
    async fn intercept(&self, req: Request<Incoming>) -> Result<HostResponse, Request<Incoming>> {
        let path = req.uri().path().to_string();
        let subscriptions = self
            .started
            .get()
            .map(|s| s.subscriptions.as_slice())
            .unwrap_or_default();
        if path == SUBSCRIBE_PATH && req.method() == Method::GET {
            let list: Vec<serde_json::Value> = subscriptions
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "pubsubname": s.pubsub,
                        "topic": s.topic,
                        "routes": s.routes(),
                        "deadLetterTopic": format!("{}{}", s.topic, delivery::DEAD_LETTER_SUFFIX),
                    })
                })
                .collect();
            return Ok(json(StatusCode::OK, &serde_json::Value::Array(list)));
        }
        if !(path.starts_with(EVENTS_PREFIX) && req.method() == Method::POST) {
            return Err(req);
        }
        let (Some(sub), Some(started)) = (
            subscriptions.iter().find(|s| s.route == path),
            self.started.get(),
        ) else {
            // 404 tells Dapr to drop the event (docs/dapr-reference.md).
            return Ok(problem(
                StatusCode::NOT_FOUND,
                "no-subscription",
                format!(
                    "no component of this host subscribes at {path}; check GET {SUBSCRIBE_PATH}"
                ),
            ));
        };
        Ok(deliver(started.deliverer.as_ref(), sub, req).await)
    }
}

fn status(s: &str) -> HostResponse {
    json(StatusCode::OK, &serde_json::json!({ "status": s }))
}

/// Hands one pushed CloudEvent to every local subscriber of its topic.
async fn deliver(
    deliverer: &dyn Deliverer,
    sub: &DaprSubscription,
    req: Request<Incoming>,
) -> HostResponse {
    // The whole event first, under the front door's size limit, deadline
    // and memory budget (docs/operations.md), before any instance is
    // taken: a slow sender holds a socket, never an instance.
    let Some(reader) = req.extensions().get::<BodyReader>().cloned() else {
        tracing::error!(topic = %sub.topic, "a delivery reached the Dapr receiver without the front door's body reader; asking Dapr to retry");
        return status("RETRY");
    };
    // Held to the end of the delivery: its bytes count against the budget
    // until then.
    let buffered = match reader.read(req).await {
        Ok(req) => req.into_body(),
        // Too large never gets smaller: drop it rather than have daprd
        // retry it forever.
        Err(refusal) if refusal.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::warn!(topic = %sub.topic, "dropping an event larger than --max-request-body-bytes");
            return status("DROP");
        }
        // 408 (too slow), 503 (body memory spent), 400 (broken off):
        // daprd retries a non-2xx answer.
        Err(refusal) => {
            tracing::warn!(topic = %sub.topic, status = %refusal.status(), "an event's body could not be read in time or memory; daprd will retry it");
            return refusal;
        }
    };
    let body = buffered.bytes();
    let event: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(topic = %sub.topic, error = %e, "dropping an event that is not a JSON CloudEvent");
            return status("DROP");
        }
    };
    let mut metadata = vec![("pubsubname".to_string(), sub.pubsub.clone())];
    for key in [
        crate::trace::TRACEPARENT,
        crate::trace::TRACESTATE,
        "id",
        "type",
        "source",
    ] {
        if let Some(v) = event
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
        {
            let name = if matches!(key, "id" | "type" | "source") {
                format!("cloudevent-{key}")
            } else {
                key.to_string()
            };
            metadata.push((name, v.to_string()));
        }
    }
    let message = Message {
        topic: Some(sub.topic.clone()),
        inner: BrokerMessage {
            data: body.to_vec(),
            content_type: Some(CLOUDEVENTS_JSON.into()),
            metadata,
        },
    };
    let mut failed = false;
    for component in &sub.components {
        if let Err(error) = deliverer.deliver_pushed(component, message.clone()).await {
            tracing::warn!(component, topic = %sub.topic, %error, "delivery failed; asking Dapr to retry");
            failed = true;
        }
    }
    status(if failed { "RETRY" } else { "SUCCESS" })
}
