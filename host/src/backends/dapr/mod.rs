//! The Dapr backend: the host as a Dapr app next to its sidecar.
//! Key-value → state API ([`state`]), messaging send → pub/sub
//! ([`pubsub`]), `http://<component>.spin.internal` of a component not run
//! here → service invocation ([`DaprSidecar::invoke`]). Deliveries come
//! in through the app channel (`crate::trigger::dapr_app_channel`).
//!
//! Dapr is in use when the runtime config names `type = "dapr"` for any
//! store or messaging client; only then does the host wait for the sidecar
//! and route chained calls to it.

pub mod client;
pub mod pubsub;
pub mod state;

use crate::runtime_config::{MessagingBackend, RuntimeConfig, StoreConfig};
use client::{DaprClient, encode_segment};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Time a service invocation may take end to end.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request or response body relayed through service invocation.
const MAX_INVOKE_BODY: usize = 16 << 20;

/// The sidecar of this process.
pub struct DaprSidecar {
    client: DaprClient,
}

impl DaprSidecar {
    /// The sidecar from `DAPR_HTTP_PORT`/`DAPR_API_TOKEN` when the runtime
    /// config uses Dapr, else `None`.
    pub fn from_runtime_config(rc: &RuntimeConfig) -> Result<Option<Self>, String> {
        if !uses_dapr(rc) {
            return Ok(None);
        }
        Ok(Some(DaprSidecar {
            client: DaprClient::from_env()?,
        }))
    }

    /// The sidecar client, shared by the backends.
    pub fn client(&self) -> &DaprClient {
        &self.client
    }

    /// Waits until `GET /v1.0/healthz/outbound` succeeds. The host calls
    /// this before it binds its port: daprd's `/v1.0/healthz` only turns
    /// healthy once the app's port accepts connections, so waiting on it
    /// would deadlock (<https://docs.dapr.io/reference/api/health_api/>).
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        tracing::info!(
            sidecar = self.client.base(),
            timeout_secs = timeout.as_secs_f64(),
            "waiting for the Dapr sidecar (GET /v1.0/healthz/outbound)"
        );
        let mut last_error;
        loop {
            match self.client.outbound_healthy().await {
                Ok(()) => {
                    tracing::info!(
                        sidecar = self.client.base(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the Dapr sidecar is ready"
                    );
                    return Ok(());
                }
                Err(e) => last_error = e,
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "gave up waiting for the Dapr sidecar after {timeout:?}: {last_error}; start daprd (dapr run --dapr-http-port ...), or raise --dapr-startup-timeout-secs"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Service invocation: sends `request` to `/v1.0/invoke/{app_id}/method/{path}`
    /// and passes method, headers, body and status through
    /// (<https://docs.dapr.io/reference/api/service_invocation_api/>).
    pub async fn invoke(
        &self,
        app_id: &str,
        request: Request<WasiBody>,
    ) -> Result<Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(INVOKE_TIMEOUT, body.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(HttpError::HttpRequestBodySize(None)),
        };
        if body.len() > MAX_INVOKE_BODY {
            return Err(HttpError::HttpRequestBodySize(Some(body.len() as u64)));
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let path = format!(
            "/v1.0/invoke/{}/method/{}",
            encode_segment(app_id),
            path_and_query.trim_start_matches('/')
        );
        let mut headers = parts.headers;
        for h in [
            http::header::HOST,
            http::header::CONNECTION,
            http::header::TRANSFER_ENCODING,
        ] {
            headers.remove(h);
        }
        headers.remove(client::TOKEN_HEADER);
        let r = self
            .client
            .call(parts.method.clone(), &path, headers, body, INVOKE_TIMEOUT)
            .await
            .map_err(|e| {
                tracing::warn!(app_id, error = %e, "service invocation failed");
                HttpError::DestinationUnavailable
            })?;
        if r.body.len() > MAX_INVOKE_BODY {
            return Err(HttpError::HttpResponseBodySize(Some(r.body.len() as u64)));
        }
        let mut response = Response::new(
            Full::new(r.body)
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = r.status;
        *response.headers_mut() = r.headers;
        for h in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
            response.headers_mut().remove(h);
        }
        Ok(response)
    }
}

/// Whether any store or messaging client of `rc` is on Dapr.
pub fn uses_dapr(rc: &RuntimeConfig) -> bool {
    rc.key_value_store
        .values()
        .any(|s| matches!(s, StoreConfig::Dapr { .. }))
        || rc
            .messaging
            .values()
            .any(|m| m.backend == MessagingBackend::Dapr)
}

/// The pub/sub component of a Dapr messaging client: `pubsub`, or the
/// client's name.
pub fn pubsub_name(rc: &RuntimeConfig, client: &str) -> Option<String> {
    let cfg = rc.messaging.get(client)?;
    (cfg.backend == MessagingBackend::Dapr)
        .then(|| cfg.pubsub.clone().unwrap_or_else(|| client.to_string()))
}
