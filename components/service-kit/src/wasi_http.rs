//! Glue between `wasi:http` and the [`crate::web`] model: reads an incoming
//! request fully and writes a response. The only server-side code that
//! touches the HTTP bindings.

use http::header::{HeaderName, HeaderValue};

use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::problem::Problem;
use crate::web::{Request, Response};

/// Largest request body a service accepts (1 MiB); larger is a 413.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// Largest chunk `blocking-write-and-flush` accepts per call.
const WRITE_CHUNK: usize = 4096;

/// Reads the request (head and whole body) into the binding-free model, and
/// sends the handler's response; a body that cannot be read becomes a
/// problem response without calling the handler.
///
/// A HEAD request reaches the handler as HEAD (routers answer it as GET,
/// see [`crate::rest::is_read`]); its response goes out with the GET
/// status and headers, ETag included, but no body and no `Content-Length`:
/// `wasi:http` refuses a response body shorter than its `Content-Length`
/// (wasmtime and Spin finish such a body with an error), and RFC 9110
/// §8.6 lets a HEAD response leave the length out.
pub fn serve(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let is_head = matches!(request.method(), WasiMethod::Head);
    // Problems answered to this request carry its trace id (`traceId`).
    let traceparent = request
        .headers()
        .get(crate::trace::TRACEPARENT_HEADER)
        .into_iter()
        .next()
        .and_then(|v| String::from_utf8(v).ok());
    let _trace = crate::problem::RequestTrace::enter(traceparent.as_deref());
    let mut response = match read_request(&request) {
        Ok(r) => handler(r),
        Err(p) => p.to_response(),
    };
    drop(request);
    if is_head {
        response = response.without_body();
    }
    send(out, response, !is_head);
}

/// Converts a `wasi:http` method.
pub fn method_from_wasi(m: &WasiMethod) -> http::Method {
    match m {
        WasiMethod::Get => http::Method::GET,
        WasiMethod::Head => http::Method::HEAD,
        WasiMethod::Post => http::Method::POST,
        WasiMethod::Put => http::Method::PUT,
        WasiMethod::Delete => http::Method::DELETE,
        WasiMethod::Connect => http::Method::CONNECT,
        WasiMethod::Options => http::Method::OPTIONS,
        WasiMethod::Trace => http::Method::TRACE,
        WasiMethod::Patch => http::Method::PATCH,
        WasiMethod::Other(s) => {
            http::Method::from_bytes(s.as_bytes()).unwrap_or(http::Method::OPTIONS)
        }
    }
}

/// Converts to a `wasi:http` method.
pub fn method_to_wasi(m: &http::Method) -> WasiMethod {
    match *m {
        http::Method::GET => WasiMethod::Get,
        http::Method::HEAD => WasiMethod::Head,
        http::Method::POST => WasiMethod::Post,
        http::Method::PUT => WasiMethod::Put,
        http::Method::DELETE => WasiMethod::Delete,
        http::Method::CONNECT => WasiMethod::Connect,
        http::Method::OPTIONS => WasiMethod::Options,
        http::Method::TRACE => WasiMethod::Trace,
        http::Method::PATCH => WasiMethod::Patch,
        _ => WasiMethod::Other(m.as_str().to_owned()),
    }
}

/// `wasi:http` header entries as an `http::HeaderMap`, skipping entries that
/// are not valid HTTP (the host already validated them).
pub(crate) fn header_map(entries: Vec<(String, Vec<u8>)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in entries {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// An `http::HeaderMap` as `wasi:http` fields.
pub(crate) fn fields(headers: &http::HeaderMap) -> Fields {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    // Entries from a valid HeaderMap are valid fields; fall back to setting
    // them one by one so a host quirk drops one header, not all.
    Fields::from_list(&entries).unwrap_or_else(|_| {
        let f = Fields::new();
        for (n, v) in &entries {
            let _ = f.append(n, v);
        }
        f
    })
}

/// Reads an incoming request, body included (at most
/// [`MAX_REQUEST_BODY`] bytes).
pub fn read_request(request: &IncomingRequest) -> Result<Request, Problem> {
    let method = method_from_wasi(&request.method());
    let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let mut r = Request::new(method, &path);
    r.headers = header_map(request.headers().entries());
    let body = request
        .consume()
        .map_err(|()| Problem::bad_request("the request body was already consumed"))?;
    r.body = read_body(&body, MAX_REQUEST_BODY).map_err(|e| match e {
        ReadError::TooLarge(limit) => Problem::payload_too_large(format!(
            "the request body is larger than {limit} bytes; send a smaller body"
        )),
        ReadError::Failed(m) => {
            Problem::bad_request(format!("could not read the request body: {m}"))
        }
    })?;
    drop(IncomingBody::finish(body));
    Ok(r)
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Longer than the given limit.
    TooLarge(usize),
    /// The stream failed.
    Failed(String),
}

/// Reads a whole body stream, up to `limit` bytes.
pub(crate) fn read_body(body: &IncomingBody, limit: usize) -> Result<Vec<u8>, ReadError> {
    let stream = body
        .stream()
        .map_err(|()| ReadError::Failed("body stream already taken".to_owned()))?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if buf.len() + chunk.len() > limit {
                    return Err(ReadError::TooLarge(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(buf),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ReadError::Failed(e.to_debug_string()));
            }
        }
    }
}

/// Writes `data` to an outgoing body and finishes it.
pub(crate) fn write_body(body: OutgoingBody, data: &[u8]) -> Result<(), String> {
    {
        let stream = body
            .write()
            .map_err(|()| "body stream already taken".to_owned())?;
        for chunk in data.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the body failed: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("finishing the body failed: {e:?}"))
}

/// Sends `response` through the outparam, with a `Content-Length` unless
/// the status has no body (204, 304).
pub fn write_response(out: ResponseOutparam, response: Response) {
    send(out, response, true);
}

/// Sends `response`; `with_length` false leaves `Content-Length` out (the
/// answer to HEAD, whose body is not sent).
fn send(out: ResponseOutparam, response: Response, with_length: bool) {
    let mut headers = response.headers.clone();
    headers.remove(http::header::CONTENT_LENGTH);
    let bodyless = response.status == http::StatusCode::NO_CONTENT
        || response.status == http::StatusCode::NOT_MODIFIED;
    if with_length && !bodyless {
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(response.body.len()),
        );
    }
    let outgoing = OutgoingResponse::new(fields(&headers));
    // Every `http::StatusCode` is a valid wasi:http status.
    let _ = outgoing.set_status_code(response.status.as_u16());
    let body = outgoing.body().expect("a new response's body is available");
    ResponseOutparam::set(out, Ok(outgoing));
    if let Err(e) = write_body(body, if bodyless { &[] } else { &response.body }) {
        eprintln!("service-kit: could not send the response body: {e}");
    }
}
