//! The HTTP client of the Dapr sidecar API: one pooled hyper client, the
//! sidecar at `http://127.0.0.1:$DAPR_HTTP_PORT`, `dapr-api-token` on every
//! call when `DAPR_API_TOKEN` is set, and a bounded time for every call so
//! a stuck sidecar never hangs a request (API facts:
//! `docs/dapr-reference.md`).

use super::NAME;
use crate::capabilities::BackendError;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Default sidecar HTTP port (`dapr run` and Azure Container Apps).
pub const DEFAULT_HTTP_PORT: u16 = 3500;
/// Header carrying the API token, both ways.
pub const TOKEN_HEADER: &str = "dapr-api-token";
/// Time a state or publish call may take, including the connection.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A sidecar answer, body buffered.
#[derive(Debug)]
pub struct DaprResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (e.g. `ETag`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl DaprResponse {
    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(500)
            .collect()
    }
}

/// Client of one sidecar.
#[derive(Clone)]
pub struct DaprClient {
    base: String,
    token: Option<HeaderValue>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl DaprClient {
    /// A client of the sidecar on `127.0.0.1:port`.
    pub fn new(port: u16, token: Option<String>) -> Result<Self, BackendError> {
        let token = match token.filter(|t| !t.is_empty()) {
            Some(t) => Some(HeaderValue::from_str(&t).map_err(|_| {
                BackendError::rejected(NAME, "DAPR_API_TOKEN contains characters not allowed in an HTTP header; set it to the token daprd was given")
            })?),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(DaprClient {
            base: format!("http://127.0.0.1:{port}"),
            token,
            http,
        })
    }

    /// A client configured from `DAPR_HTTP_PORT` and `DAPR_API_TOKEN`, the
    /// variables `dapr run` and daprd use.
    pub fn from_env() -> Result<Self, BackendError> {
        let port = match std::env::var("DAPR_HTTP_PORT") {
            Ok(p) if !p.is_empty() => p.parse::<u16>().map_err(|_| {
                BackendError::rejected(NAME, format!("DAPR_HTTP_PORT is '{p}', not a port number; set it to the sidecar's HTTP port (default {DEFAULT_HTTP_PORT})"))
            })?,
            _ => DEFAULT_HTTP_PORT,
        };
        Self::new(port, std::env::var("DAPR_API_TOKEN").ok())
    }

    /// The sidecar's base URL, for log lines.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request to the sidecar (`path` starts with `/v1.0/...`)
    /// and buffers the answer; `Err` when the sidecar is unreachable or
    /// slower than `timeout`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<DaprResponse, BackendError> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
            if let Some(t) = &self.token {
                h.insert(TOKEN_HEADER, t.clone());
            }
            // daprd continues the caller's trace in its own spans (state
            // calls included); the current span is the key-value call's,
            // or the request's when key-value spans are not made.
            if !h.contains_key(crate::trace::TRACEPARENT)
                && let Some(tp) = crate::telemetry::spans::current_traceparent()
                && let Ok(v) = HeaderValue::from_str(&tp)
            {
                h.insert(crate::trace::TRACEPARENT, v);
            }
        }
        let request = builder.body(Full::new(body)).map_err(|e| {
            BackendError::rejected(
                NAME,
                format!("cannot build the sidecar request {method} {path}: {e}"),
            )
        })?;
        let run = async {
            let response = self.http.request(request).await.map_err(|e| {
                BackendError::unavailable(NAME, format!(
                    "the Dapr sidecar at {} is not reachable ({e}); check that daprd runs and DAPR_HTTP_PORT names its HTTP port",
                    self.base
                ))
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| {
                    BackendError::unavailable(
                        NAME,
                        format!("the Dapr sidecar broke off its answer to {method} {path}: {e}"),
                    )
                })?
                .to_bytes();
            Ok(DaprResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::unavailable(
                NAME,
                format!(
                    "the Dapr sidecar at {} did not answer {method} {path} within {timeout:?}; check daprd's health and logs",
                    self.base
                ),
            )),
        }
    }

    /// A JSON request (`Content-Type: application/json`) with the default timeout.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<DaprResponse, BackendError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.call(method, path, headers, body, CALL_TIMEOUT).await
    }

    /// `GET /v1.0/healthz/outbound`: ready for the app to call the sidecar.
    /// Not `/v1.0/healthz`, which waits for the app channel and so would
    /// deadlock a host waiting on it before it listens
    /// (`docs/dapr-reference.md`).
    pub async fn outbound_healthy(&self) -> Result<(), BackendError> {
        let r = self
            .call(
                Method::GET,
                "/v1.0/healthz/outbound",
                HeaderMap::new(),
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(BackendError::unavailable(
                NAME,
                format!(
                    "the Dapr sidecar at {} is not ready yet (GET /v1.0/healthz/outbound answered {}: {})",
                    self.base,
                    r.status,
                    r.text()
                ),
            ))
        }
    }
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
