//! The Dapr app channel: what daprd calls on the host's main listener
//! (<https://docs.dapr.io/reference/api/pubsub_api/#provide-a-route-for-dapr-to-discover-topic-subscriptions>).
//!
//! - `GET /dapr/subscribe`: one subscription per (pub/sub, topic) that a
//!   component run here subscribes to through a Dapr messaging client, with
//!   the route `/dapr/events/<component>/<topic>` and the dead-letter topic
//!   `<topic>.deadletter`. Dapr accepts one subscription per topic and app,
//!   so components of one process sharing a topic share the route and each
//!   gets the event.
//! - `POST` on such a route: the CloudEvent goes to each subscriber's
//!   `wasi:messaging/incoming-handler` as the message data (content type
//!   `application/cloudevents+json`, topic set, `traceparent` in the
//!   metadata). The answer is `{"status":"SUCCESS"}`, `"RETRY"` when a
//!   handler fails (Dapr redelivers per its resiliency policy; handlers are
//!   idempotent), or `"DROP"` when the body is not a JSON CloudEvent.
//! - `APP_API_TOKEN` (<https://docs.dapr.io/operations/security/app-api-token/>):
//!   when set, Dapr sends it as `dapr-api-token` on every call to the app,
//!   and the host answers 401 (constant-time compare) to every request that
//!   comes, or claims to come, from the sidecar without it: anything under
//!   `/dapr/`, any request carrying `dapr-api-token`, and any request
//!   carrying `dapr-caller-app-id` (which daprd adds to service
//!   invocations). Plain requests are served: Azure Container Apps injects
//!   `APP_API_TOKEN` into Dapr-enabled apps
//!   (<https://learn.microsoft.com/azure/container-apps/dapr-authentication-token>)
//!   while its ingress calls the same port directly. Where the port is
//!   reachable only through Dapr, `WASMSHOP_APP_API_TOKEN_SCOPE=all`
//!   requires the token on every request except `GET`/`HEAD` of `/healthz`
//!   and `/readyz` (answered before this module runs).
//! - Internal endpoints ([`unrouted`]): a path no public route covers
//!   (the product's reservations) reaches a component only through service
//!   chaining. Across processes that chaining is Dapr service invocation,
//!   so the host serves such a path only to invocations it can trust: the
//!   `APP_API_TOKEN` matches (or `--dapr-allow-unauthenticated` was given
//!   and no token is configured), and the `dapr-caller-app-id` daprd
//!   stamps is the app id of a component whose `allowed_outbound_hosts`
//!   admits `http://<target>.spin.internal`. The rules and answers are in
//!   `docs/internal-endpoints.md`.

use crate::app::App;
use crate::backends::dapr::{client::TOKEN_HEADER, client::encode_segment, pubsub_name};
use crate::capabilities::messaging::{BrokerMessage, Message};
use crate::manifest::ComponentSpec;
use crate::problem::{json, problem};
use crate::trigger::messaging::Deliverer;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::{Arc, OnceLock};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Where Dapr discovers subscriptions.
pub const SUBSCRIBE_PATH: &str = "/dapr/subscribe";
/// Prefix of the delivery routes.
pub const EVENTS_PREFIX: &str = "/dapr/events/";
/// Suffix of dead-letter topics, as the embedded broker names them.
pub const DEAD_LETTER_SUFFIX: &str = ".deadletter";
/// Largest CloudEvent accepted.
const MAX_EVENT_BYTES: usize = 4 << 20;

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
}

/// The subscriptions this process advertises.
pub fn subscriptions(app: &App) -> Vec<DaprSubscription> {
    let mut out: Vec<DaprSubscription> = Vec::new();
    for (component, sub) in app.manifest().subscriptions() {
        if !app.runs(component) {
            continue;
        }
        let Some(pubsub) = pubsub_name(app.runtime_config(), &sub.client) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.pubsub == pubsub && s.topic == sub.topic)
        {
            Some(existing) => existing.components.push(component.to_string()),
            None => out.push(DaprSubscription {
                route: format!(
                    "{EVENTS_PREFIX}{}/{}",
                    encode_segment(component),
                    encode_segment(&sub.topic)
                ),
                pubsub,
                topic: sub.topic.clone(),
                components: vec![component.to_string()],
            }),
        }
    }
    out
}

/// Header daprd adds to service invocations: the calling app's id
/// (dapr/dapr `pkg/messaging/v1/util.go`, `CallerIDHeader`). daprd
/// overwrites whatever the caller sent in it, so it can be trusted on
/// requests that carry the `APP_API_TOKEN`.
const CALLER_HEADER: &str = "dapr-caller-app-id";
/// Header daprd adds to service invocations: the invoked app id
/// (`CalleeIDHeader`, same file).
const CALLEE_HEADER: &str = "dapr-callee-app-id";

/// Whether `WASMSHOP_APP_API_TOKEN_SCOPE=all`; an unknown value also
/// means all (fail closed), with a warning.
fn token_everywhere() -> bool {
    static ALL: OnceLock<bool> = OnceLock::new();
    *ALL.get_or_init(|| match std::env::var("WASMSHOP_APP_API_TOKEN_SCOPE").as_deref() {
        Err(_) | Ok("") | Ok("dapr") => false,
        Ok("all") => true,
        Ok(other) => {
            tracing::warn!(
                value = other,
                "WASMSHOP_APP_API_TOKEN_SCOPE must be 'dapr' or 'all'; requiring APP_API_TOKEN on every request"
            );
            true
        }
    })
}

fn app_token() -> Option<&'static str> {
    static TOKEN: OnceLock<Option<String>> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            std::env::var("APP_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        })
        .as_deref()
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Answers the app-channel requests and enforces `APP_API_TOKEN`; hands
/// every other request back for normal routing. Probes are answered
/// before this is called.
pub async fn intercept(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, Request<Incoming>> {
    let claims_dapr = req.uri().path().starts_with("/dapr/")
        || req.headers().contains_key(TOKEN_HEADER)
        || req.headers().contains_key(CALLER_HEADER);
    if let Some(expected) = app_token()
        && (claims_dapr || token_everywhere())
    {
        let given = req
            .headers()
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, expected.as_bytes()) {
            return Ok(bad_token());
        }
    }
    if app.dapr().is_none() || !req.uri().path().starts_with("/dapr/") {
        return Err(req);
    }
    let path = req.uri().path().to_string();
    if path == SUBSCRIBE_PATH && req.method() == Method::GET {
        let list: Vec<serde_json::Value> = subscriptions(app)
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "pubsubname": s.pubsub,
                    "topic": s.topic,
                    "routes": {"default": s.route},
                    "deadLetterTopic": format!("{}{DEAD_LETTER_SUFFIX}", s.topic),
                })
            })
            .collect();
        return Ok(json(StatusCode::OK, &serde_json::Value::Array(list)));
    }
    if path.starts_with(EVENTS_PREFIX) && req.method() == Method::POST {
        let Some(sub) = subscriptions(app).into_iter().find(|s| s.route == path) else {
            // 404 tells Dapr to drop the event (pubsub_api.md).
            return Ok(problem(
                StatusCode::NOT_FOUND,
                "no-subscription",
                format!(
                    "no component of this host subscribes at {path}; check GET {SUBSCRIBE_PATH}"
                ),
            ));
        };
        return Ok(deliver(app, sub, req).await);
    }
    Err(req)
}

/// What becomes of a request that no public route covers.
pub enum Unrouted {
    /// Serve it with this component: an authenticated invocation from a
    /// caller the manifest allows to chain to it.
    Serve(String),
    /// Answer this (401 bad token, 403 caller not allowed).
    Refuse(Response<HyperOutgoingBody>),
    /// Answer 404 as to any public request; the text, when there is one,
    /// says why an invocation was not served, for the caller's operator.
    NotFound(Option<String>),
}

/// Decides about a request whose path no public route of this process
/// covers (see the module docs and `docs/internal-endpoints.md`). Only in
/// Dapr mode, and only for service invocations (`dapr-caller-app-id`), can
/// the answer be anything but 404.
pub fn unrouted<B>(app: &App, req: &Request<B>) -> Unrouted {
    let path = req.uri().path();
    if app.dapr().is_none() || path.starts_with("/dapr/") {
        return Unrouted::NotFound(None);
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(caller) = header(CALLER_HEADER) else {
        return Unrouted::NotFound(None);
    };
    match app_token() {
        Some(expected) => {
            // `intercept` already refused a wrong token; checked again so
            // this rule does not depend on the order of the two.
            let given = req
                .headers()
                .get(TOKEN_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !constant_time_eq(given, expected.as_bytes()) {
                return Unrouted::Refuse(bad_token());
            }
        }
        None if app.dapr_allow_unauthenticated() => {}
        None => {
            tracing::warn!(
                caller,
                path,
                "refused an internal endpoint to an unauthenticated Dapr invocation: set APP_API_TOKEN for daprd and this host, or pass --dapr-allow-unauthenticated where only the sidecar reaches this port"
            );
            return Unrouted::NotFound(Some(
                "internal endpoints are served only to Dapr service invocations that prove they come from the sidecar; set APP_API_TOKEN for daprd and this host (or --dapr-allow-unauthenticated where only the sidecar reaches this port)".into(),
            ));
        }
    }
    let callee = header(CALLEE_HEADER);
    let manifest = app.manifest();
    let targets: Vec<&str> = manifest
        .components
        .values()
        .filter(|c| app.serves_http(&c.id))
        .filter(|c| callee.is_none_or(|id| c.dapr_app_id() == id))
        .map(|c| c.id.as_str())
        .collect();
    if targets.is_empty() {
        return Unrouted::NotFound(Some(format!(
            "no component with an HTTP handler and Dapr app id '{}' runs in this process",
            callee.unwrap_or("(any)")
        )));
    }
    let callers: Vec<&ComponentSpec> = manifest.components_with_dapr_app_id(caller).collect();
    let allowed: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| callers.iter().any(|c| c.may_chain_to(t)))
        .collect();
    let chosen = match allowed.as_slice() {
        [] => {
            let why = if callers.is_empty() {
                format!("no component of the manifest has Dapr app id '{caller}'")
            } else {
                format!(
                    "none of its components ({}) lists {} in allowed_outbound_hosts",
                    callers
                        .iter()
                        .map(|c| c.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    targets
                        .iter()
                        .map(|t| format!("http://{t}.spin.internal"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            tracing::warn!(caller, path, "refused an internal endpoint: {why}");
            return Unrouted::Refuse(problem(
                StatusCode::FORBIDDEN,
                "caller-not-allowed",
                format!(
                    "Dapr app '{caller}' may not call {path} here: {why}; add the target to the caller's allowed_outbound_hosts in spin.toml if this call is intended"
                ),
            ));
        }
        [one] => *one,
        several => match app.component_below_routes(several, path) {
            Some(c) => c,
            None => {
                return Unrouted::NotFound(Some(format!(
                    "{path} could belong to any of {}, which all run in this process; give each its own tool.wasmshop.dapr_app_id",
                    several.join(", ")
                )));
            }
        },
    };
    Unrouted::Serve(chosen.to_string())
}

fn bad_token() -> Response<HyperOutgoingBody> {
    problem(
        StatusCode::UNAUTHORIZED,
        "invalid-app-api-token",
        "this request comes from, or claims to come from, the Dapr sidecar but lacks the APP_API_TOKEN in its dapr-api-token header; check that daprd and the host share APP_API_TOKEN",
    )
}

fn status(s: &str) -> Response<HyperOutgoingBody> {
    json(StatusCode::OK, &serde_json::json!({ "status": s }))
}

async fn deliver(
    app: &Arc<App>,
    sub: DaprSubscription,
    req: Request<Incoming>,
) -> Response<HyperOutgoingBody> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_EVENT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(topic = %sub.topic, error = %e, "dropping an event whose body could not be read");
            return status("DROP");
        }
    };
    let event: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(topic = %sub.topic, error = %e, "dropping an event that is not a JSON CloudEvent");
            return status("DROP");
        }
    };
    let mut metadata = vec![("pubsubname".to_string(), sub.pubsub.clone())];
    for key in ["traceparent", "tracestate", "id", "type", "source"] {
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
            content_type: Some(crate::backends::dapr::pubsub::CLOUDEVENTS_JSON.into()),
            metadata,
        },
    };
    let mut failed = false;
    for component in &sub.components {
        if let Err(error) = app.deliver(component, message.clone()).await {
            tracing::warn!(component, topic = %sub.topic, %error, "delivery failed; asking Dapr to retry");
            failed = true;
        }
    }
    status(if failed { "RETRY" } else { "SUCCESS" })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
    }
}
