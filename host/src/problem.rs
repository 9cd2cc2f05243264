//! RFC 9457 `application/problem+json` responses produced by the host
//! itself (routing, traps, limits, probes).

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A body from bytes, in the type wasmtime-wasi-http responses use.
pub fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A problem response: `slug` names the problem type, `detail` says what
/// happened and what to do.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: impl Into<String>,
) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({
        "type": format!("urn:wasmshop:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
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
