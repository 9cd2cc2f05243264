//! Outbound HTTP through `wasi:http/outgoing-handler`, blocking on pollables
//! with an overall deadline. Used to call other services at
//! `http://<component-id>.spin.internal/...`.

use std::fmt;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use serde::Serialize;

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{ErrorCode, OutgoingRequest, RequestOptions, Scheme};
use crate::bindings::wasi::io::poll;
use crate::wasi_http::{ReadError, fields, header_map, method_to_wasi, read_body, write_body};
use crate::web::{JSON, Response};

/// Default deadline for a whole call (connect, send, first byte).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body read (8 MiB).
pub const MAX_RESPONSE_BODY: usize = 8 << 20;

/// An outbound HTTP call, built then [`Call::send`]-ed.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method.
    pub method: Method,
    /// Absolute URL, e.g. `http://product.spin.internal/api/products/1`.
    pub url: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Deadline for the response head.
    pub timeout: Duration,
}

/// Why a call produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The URL is not an absolute http(s) URL.
    InvalidUrl(String),
    /// The host refused the destination (not in `allowed_outbound_hosts`).
    Denied(String),
    /// No response before the deadline.
    Timeout(String),
    /// The destination could not be reached or the exchange failed.
    Unreachable(String),
}

impl ClientError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Timeout(_) | ClientError::Unreachable(_))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            ClientError::Denied(m) => write!(
                f,
                "outbound call refused: {m}; add the destination to allowed_outbound_hosts"
            ),
            ClientError::Timeout(m) => write!(f, "outbound call timed out: {m}"),
            ClientError::Unreachable(m) => write!(f, "outbound call failed: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl Call {
    /// A call with no headers or body and the default timeout.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Call {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A `GET`.
    pub fn get(url: impl Into<String>) -> Self {
        Call::new(Method::GET, url)
    }

    /// A `POST`.
    pub fn post(url: impl Into<String>) -> Self {
        Call::new(Method::POST, url)
    }

    /// A `DELETE`.
    pub fn delete(url: impl Into<String>) -> Self {
        Call::new(Method::DELETE, url)
    }

    /// Adds a header; an invalid name or value is skipped (callers pass
    /// constants and validated ids).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// Forwards the caller's tenant (`X-Tenant-Id`), so the callee works on
    /// the same tenant's data.
    pub fn tenant(self, tenant: &crate::tenant::TenantId) -> Self {
        self.header(crate::tenant::TENANT_HEADER, tenant.as_str())
    }

    /// Forwards the W3C trace context, so the call joins the caller's trace.
    pub fn traceparent(self, traceparent: &str) -> Self {
        self.header(crate::trace::TRACEPARENT_HEADER, traceparent)
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        // Our request types always serialise.
        self.body = serde_json::to_vec(body).expect("request body serialises to JSON");
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        self
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the call and waits for the whole response (any status).
    pub fn send(self) -> Result<Response, ClientError> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| ClientError::InvalidUrl(format!("'{}': {e}", self.url)))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => {
                return Err(ClientError::InvalidUrl(format!(
                    "'{}' must start with http:// or https://",
                    self.url
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::InvalidUrl(format!("'{}' has no host", self.url)))?
            .to_string();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());

        let request = OutgoingRequest::new(fields(&self.headers));
        let invalid =
            |what: &str| ClientError::InvalidUrl(format!("{what} of '{}' rejected", self.url));
        request
            .set_method(&method_to_wasi(&self.method))
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&authority))
            .map_err(|()| invalid("authority"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| invalid("path"))?;
        let body = request.body().expect("a new request's body is available");

        let nanos = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        let options = RequestOptions::new();
        // Hosts may not support every timeout; the deadline below still holds.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));

        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|code| error_from_code(&self.url, code))?;
        write_body(body, &self.body)
            .map_err(|m| ClientError::Unreachable(format!("{}: {m}", self.url)))?;

        let response = {
            let ready = future.subscribe();
            let deadline = monotonic_clock::subscribe_duration(nanos);
            while !ready.ready() {
                poll::poll(&[&ready, &deadline]);
                if !ready.ready() && deadline.ready() {
                    return Err(ClientError::Timeout(format!(
                        "{} gave no response within {:?}",
                        self.url, self.timeout
                    )));
                }
            }
            future.get()
        };
        let incoming = match response {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(error_from_code(&self.url, code)),
            Some(Err(())) | None => {
                return Err(ClientError::Unreachable(format!(
                    "{}: the response was lost by the host",
                    self.url
                )));
            }
        };
        let status = http::StatusCode::from_u16(incoming.status())
            .map_err(|_| ClientError::Unreachable(format!("{}: invalid status", self.url)))?;
        let headers = header_map(incoming.headers().entries());
        let body = incoming
            .consume()
            .map_err(|()| ClientError::Unreachable(format!("{}: no response body", self.url)))?;
        let data = read_body(&body, MAX_RESPONSE_BODY).map_err(|e| match e {
            ReadError::TooLarge(n) => {
                ClientError::Unreachable(format!("{}: response body over {n} bytes", self.url))
            }
            ReadError::Failed(m) => ClientError::Unreachable(format!("{}: {m}", self.url)),
        })?;
        Ok(Response {
            status,
            headers,
            body: data,
        })
    }
}

fn error_from_code(url: &str, code: ErrorCode) -> ClientError {
    match code {
        ErrorCode::HttpRequestDenied => ClientError::Denied(format!("{url} is not allowed")),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => ClientError::Timeout(format!("{url}: {code:?}")),
        ErrorCode::HttpRequestUriInvalid => ClientError::InvalidUrl(url.to_owned()),
        other => ClientError::Unreachable(format!("{url}: {other:?}")),
    }
}
