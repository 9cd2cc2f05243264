//! A binding-free HTTP request/response model.
//!
//! Handlers take a [`Request`] and return a [`Response`], so the whole REST
//! surface of a service can be unit-tested natively; only
//! [`crate::wasi_http`] converts between this model and `wasi:http`.

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Media type of JSON bodies.
pub const JSON: &str = "application/json";

/// A fully read HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// The raw path, without the query string (still percent-encoded).
    pub path: String,
    /// Query parameters in order of appearance, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Request headers (names are case-insensitive).
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Vec<u8>,
}

impl Request {
    /// Builds a request from a method and a `path?query` string, e.g. the
    /// `path-with-query` of a `wasi:http` request.
    pub fn new(method: Method, path_with_query: &str) -> Self {
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, query),
            None => (path_with_query, ""),
        };
        let query = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Request {
            method,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            query,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (builder style, mostly for tests). Invalid names or
    /// values are a programming error and panic.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        self.headers.append(name, value);
        self
    }

    /// Sets the body (builder style, mostly for tests).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header as text; `None` when absent or not
    /// visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header joined with `, ` (how HTTP combines repeated
    /// list headers such as `If-Match`); `None` when absent.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }

    /// The percent-decoded, non-empty path segments: `/api/products/7/` →
    /// `["api", "products", "7"]`. A trailing slash is thus ignored.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect()
    }

    /// The value of a query parameter given at most once. Repeating it is a
    /// 400 problem because it is ambiguous which value the client meant.
    pub fn query_param(&self, name: &str) -> Result<Option<&str>, Problem> {
        let mut found = self.query.iter().filter(|(k, _)| k == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(Problem::validation_one(
                name,
                format!("query parameter '{name}' was given more than once; give it once"),
            ));
        }
        Ok(first.map(|(_, v)| v.as_str()))
    }

    /// Parses the body as JSON into `T`, or a 400 problem that says what is
    /// wrong with the JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(Problem::bad_request(
                "the request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Problem::bad_request(format!(
                "the request body is not valid JSON ({e}); send a JSON object"
            ))
        })
    }
}

/// An HTTP response to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no body.
    pub fn empty(status: StatusCode) -> Self {
        Response {
            status,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    /// A JSON response. Serialising our own types cannot fail in practice;
    /// if it does, the failure becomes a 500 problem rather than a panic.
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::empty(status)
                .with_header(CONTENT_TYPE.as_str(), JSON)
                .with_body(body),
            Err(e) => {
                Problem::internal(format!("could not serialise the response: {e}")).to_response()
            }
        }
    }

    /// Sets a header, replacing earlier values. Invalid header text is
    /// dropped rather than panicking, since values may come from data.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.insert(name, value);
        }
        self
    }

    /// This response as the answer to a HEAD request: the same status and
    /// headers, no body (RFC 9110 §9.3.2). [`crate::wasi_http::serve`]
    /// applies it to every HEAD request, so handlers answer HEAD exactly
    /// as GET.
    pub fn without_body(mut self) -> Self {
        self.body.clear();
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The first value of a header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Parses the body as JSON (for responses received by the outbound
    /// client, and for tests).
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

impl From<Problem> for Response {
    fn from(problem: Problem) -> Self {
        problem.to_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_decodes_query() {
        let r = Request::new(
            Method::GET,
            "/api/products/?category=Home%20%26%20Garden&limit=5",
        );
        assert_eq!(r.path, "/api/products/");
        assert_eq!(r.segments(), vec!["api", "products"]);
        assert_eq!(r.query_param("category").unwrap(), Some("Home & Garden"));
        assert_eq!(r.query_param("limit").unwrap(), Some("5"));
        assert_eq!(r.query_param("offset").unwrap(), None);
    }

    #[test]
    fn repeated_query_parameter_is_a_400_naming_it() {
        let r = Request::new(Method::GET, "/x?limit=1&limit=2");
        let p = r.query_param("limit").unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.errors.contains_key("limit"));
    }

    #[test]
    fn segments_are_percent_decoded() {
        let r = Request::new(Method::GET, "/a/b%2Fc");
        assert_eq!(r.segments(), vec!["a", "b/c"]);
    }

    #[test]
    fn joined_headers_combine_repeats() {
        let r = Request::new(Method::GET, "/")
            .with_header("If-Match", "\"1\"")
            .with_header("if-match", "\"2\"");
        assert_eq!(r.header_joined("if-match").unwrap(), "\"1\", \"2\"");
        assert_eq!(r.header_joined("x-none"), None);
    }

    #[test]
    fn invalid_json_body_is_a_400() {
        let r = Request::new(Method::POST, "/").with_body("{nope");
        let p = r.json::<serde_json::Value>().unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("not valid JSON"));
        let empty = Request::new(Method::POST, "/").with_body("  ");
        assert!(
            empty
                .json::<serde_json::Value>()
                .unwrap_err()
                .detail
                .contains("empty")
        );
    }

    #[test]
    fn json_response_sets_content_type() {
        let r = Response::json(StatusCode::CREATED, &serde_json::json!({"a": 1}));
        assert_eq!(r.status, 201);
        assert_eq!(r.header("content-type"), Some(JSON));
        assert_eq!(r.body, br#"{"a":1}"#);
    }
}
