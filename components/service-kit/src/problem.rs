//! `application/problem+json` error bodies (RFC 9457).
//!
//! Every error a service returns is a [`Problem`]: clients get one shape for
//! all failures, and validation failures name each offending field in
//! `errors`.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::web::Response;

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type` URI; the slug after it names the kind of
/// problem so clients can branch on it without parsing `detail`.
pub const TYPE_PREFIX: &str = "urn:wasmshop:problem:";

thread_local! {
    /// The trace id of the request being answered (one request at a time
    /// per instance), for [`Problem::to_response`].
    static REQUEST_TRACE_ID: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

/// While alive, problems turned into responses carry the trace id of the
/// request's `traceparent` as `traceId`; dropping it forgets the id.
/// [`crate::wasi_http::serve`] holds one per request.
#[must_use = "the trace id is forgotten when the guard is dropped"]
pub struct RequestTrace(());

impl RequestTrace {
    /// Remembers the trace id of `traceparent` (the request's header; the
    /// host always sets a valid one) until the guard is dropped. An absent
    /// or malformed value leaves problems without `traceId`.
    pub fn enter(traceparent: Option<&str>) -> RequestTrace {
        let id = traceparent
            .filter(|t| crate::trace::is_valid_traceparent(t))
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_owned);
        REQUEST_TRACE_ID.with(|cell| *cell.borrow_mut() = id);
        RequestTrace(())
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        REQUEST_TRACE_ID.with(|cell| *cell.borrow_mut() = None);
    }
}

/// The trace id of the request being answered, if any.
pub fn current_trace_id() -> Option<String> {
    REQUEST_TRACE_ID.with(|cell| cell.borrow().clone())
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI identifying the kind of problem (`urn:wasmshop:problem:<slug>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence and what to do about it.
    pub detail: String,
    /// For validation problems: field name → messages. Omitted when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, Vec<String>>,
}

impl Problem {
    /// A problem of kind `slug` with the given status, title and detail.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("{TYPE_PREFIX}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: BTreeMap::new(),
        }
    }

    /// 400 for a malformed request that is not about a particular field.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 400 naming each invalid field; `detail` lists the field names.
    pub fn validation(errors: FieldErrors) -> Self {
        let names: Vec<&str> = errors.0.keys().map(String::as_str).collect();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Validation failed",
            format!(
                "Invalid value for {}; see 'errors' for what each needs.",
                names.join(", ")
            ),
        );
        p.errors = errors.0;
        p
    }

    /// 400 for a single invalid field.
    pub fn validation_one(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.add(field, message);
        Problem::validation(errors)
    }

    /// 404 for a resource that does not exist (for this tenant).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405 for a method the route does not support.
    pub fn method_not_allowed(method: &http::Method, allowed: &str) -> Self {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not supported here; use one of: {allowed}"),
        )
    }

    /// The 405 response, with the `Allow` header RFC 9110 §15.5.6 requires.
    pub fn method_not_allowed_response(method: &http::Method, allowed: &str) -> Response {
        Problem::method_not_allowed(method, allowed)
            .to_response()
            .with_header("allow", allowed)
    }

    /// 409 for a request that conflicts with the current state.
    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, slug, "Conflict", detail)
    }

    /// 412 for an `If-Match` that does not match the current version.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
    }

    /// 413 for a body over the size limit.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            detail,
        )
    }

    /// 503 for a dependency (state store, broker, other service) that is
    /// unavailable or too contended; the client may retry.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// 500 for a bug or corrupt state; never used for bad input.
    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    /// The problem as an HTTP response with `application/problem+json`,
    /// with a `traceId` member (32 hex digits) naming the request being
    /// answered (see [`RequestTrace`]) for the client to quote: the host's
    /// log lines of that request carry it. Not a field, so the many
    /// `Result<_, Problem>` stay small.
    pub fn to_response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match (current_trace_id(), serde_json::to_value(self)) {
            (Some(id), Ok(serde_json::Value::Object(mut fields))) => {
                fields.insert("traceId".to_owned(), serde_json::Value::String(id));
                serde_json::to_vec(&fields)
            }
            _ => serde_json::to_vec(self),
        }
        .unwrap_or_default();
        Response::empty(status)
            .with_header("content-type", PROBLEM_JSON)
            .with_body(body)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

/// Collects validation messages per field, so one response reports every
/// invalid field at once instead of one per round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    /// No errors yet.
    pub fn new() -> Self {
        FieldErrors::default()
    }

    /// Records a message for `field`.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `field` has a message.
    pub fn contains(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// `Ok(value)` when empty, else the 400 validation problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Problem> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(Problem::validation(self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problem_names_every_field() {
        let mut errors = FieldErrors::new();
        errors.add("price", "must be at least 0");
        errors.add("name", "is required");
        errors.add("price", "must have at most 2 decimal places");
        let p = Problem::validation(errors);
        let json: serde_json::Value = serde_json::from_slice(&p.to_response().body).unwrap();
        assert_eq!(json["type"], "urn:wasmshop:problem:validation");
        assert_eq!(json["status"], 400);
        assert_eq!(json["errors"]["price"].as_array().unwrap().len(), 2);
        assert_eq!(json["errors"]["name"][0], "is required");
        assert!(json["detail"].as_str().unwrap().contains("name, price"));
    }

    #[test]
    fn response_has_problem_media_type_and_no_empty_errors() {
        let r = Problem::not_found("no product 'x' for tenant 'default'").to_response();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some(PROBLEM_JSON));
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(json.get("errors").is_none());
        assert_eq!(json["title"], "Not found");
    }

    #[test]
    fn a_problem_carries_the_trace_id_of_the_request_being_answered() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = |p: &Problem| -> serde_json::Value {
            serde_json::from_slice(&p.to_response().body).unwrap()
        };
        let p = Problem::unavailable("the store is down; retry later");
        assert!(body(&p).get("traceId").is_none(), "no request, no traceId");
        {
            let _trace = RequestTrace::enter(Some(tp));
            assert_eq!(body(&p)["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        assert!(
            body(&p).get("traceId").is_none(),
            "forgotten after the request"
        );
        let _bad = RequestTrace::enter(Some("garbage"));
        assert!(body(&p).get("traceId").is_none());
    }

    #[test]
    fn field_errors_into_result() {
        assert_eq!(FieldErrors::new().into_result(5).unwrap(), 5);
        let mut e = FieldErrors::new();
        e.add("stock", "must be an integer");
        assert_eq!(e.into_result(5).unwrap_err().status, 400);
    }
}
