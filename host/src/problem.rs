//! RFC 9457 `application/problem+json` responses produced by the host
//! itself (routing, traps, limits, probes).
//!
//! Each carries the request's trace id as `traceId` (32 hex digits), as
//! the services' problems do, so a client can quote it and an operator
//! find the host's log lines of that request: [`in_request_trace`] keeps
//! a trace id for every problem made while the request is answered (its
//! server span's once there is one, which components continue).

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A body from bytes, in the type wasmtime-wasi-http responses use.
pub fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

tokio::task_local! {
    /// The trace id of the request being answered on this task.
    static TRACE_ID: String;
}

/// Answers `request` with `answer`; problems the host makes meanwhile (on
/// this task) carry a trace id as `traceId`: the request's server span's
/// once it has one, before that the client's trace (a valid
/// `traceparent`) or a new trace id. Nothing is written into the request:
/// a request without a valid `traceparent` gets a root server span (no
/// made-up parent), so the sampler's root rule applies to it.
pub async fn in_request_trace<B, F, Fut>(request: Request<B>, answer: F) -> Fut::Output
where
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future,
{
    let trace_id = crate::trace::valid_in(request.headers())
        .and_then(crate::capabilities::error::trace_id_of)
        .map(str::to_string)
        .unwrap_or_else(crate::trace::new_trace_id);
    TRACE_ID.scope(trace_id, answer(request)).await
}

/// The trace id of the request this task answers, if any: its server
/// span's when called inside it.
pub fn current_trace_id() -> Option<String> {
    crate::telemetry::spans::current_traceparent()
        .as_deref()
        .and_then(crate::capabilities::error::trace_id_of)
        .map(str::to_string)
        .or_else(|| TRACE_ID.try_with(|id| id.clone()).ok())
        .filter(|id| !id.is_empty())
}

/// A problem response: `slug` names the problem type, `detail` says what
/// happened and what to do; `traceId` is the request's trace id when the
/// request is answered under [`in_request_trace`].
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: impl Into<String>,
) -> Response<HyperOutgoingBody> {
    let mut body = serde_json::json!({
        "type": format!("urn:wasmshop:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    if let Some(id) = current_trace_id() {
        body["traceId"] = serde_json::Value::String(id);
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .body(full_body(body.to_string()))
        .expect("static response parts are valid")
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<HyperOutgoingBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full_body(value.to_string()))
        .expect("static response parts are valid")
}
