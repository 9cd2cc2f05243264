//! `wasi:messaging` send on Dapr pub/sub: `POST /v1.0/publish/{pubsub}/{topic}`
//! (<https://docs.dapr.io/reference/api/pubsub_api/>). The `Content-Type`
//! becomes the CloudEvent's `datacontenttype`; a message that already is a
//! CloudEvent (JSON with `specversion`) is sent as
//! `application/cloudevents+json` so daprd forwards it instead of wrapping
//! it again. `traceparent` travels as a header.

use super::client::{CALL_TIMEOUT, DaprClient, encode_segment};
use crate::capabilities::messaging::{BrokerError, BrokerMessage, MessageBroker};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

/// Media type of a structured CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// A broker on one Dapr pub/sub component.
pub struct DaprPubSub {
    client: DaprClient,
    pubsub: String,
}

impl DaprPubSub {
    /// A broker publishing to the pub/sub component `pubsub`.
    pub fn new(client: DaprClient, pubsub: &str) -> Self {
        DaprPubSub {
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
impl MessageBroker for DaprPubSub {
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
                BrokerError::Other(format!(
                    "content type '{content_type}' is not a valid header value"
                ))
            })?,
        );
        for (k, v) in &message.metadata {
            if matches!(k.as_str(), "traceparent" | "tracestate")
                && let Ok(v) = HeaderValue::from_str(v)
            {
                headers.insert(
                    http::HeaderName::from_static(if k == "traceparent" {
                        "traceparent"
                    } else {
                        "tracestate"
                    }),
                    v,
                );
            }
        }
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
            .await
            .map_err(BrokerError::Unavailable)?;
        if r.status.is_success() {
            return Ok(());
        }
        let detail = format!(
            "Dapr refused to publish to '{}' topic '{topic}': {} {}",
            self.pubsub,
            r.status,
            r.text()
        );
        Err(match r.status.as_u16() {
            403 => BrokerError::Other(format!(
                "{detail}; the topic is blocked by a Dapr scope/ACL"
            )),
            404 => BrokerError::Other(format!(
                "{detail}; check that the pub/sub component '{}' exists and is scoped to this app",
                self.pubsub
            )),
            _ => BrokerError::Unavailable(format!("{detail}; retry later")),
        })
    }

    async fn ready(&self) -> Result<(), String> {
        self.client.outbound_healthy().await
    }
}
