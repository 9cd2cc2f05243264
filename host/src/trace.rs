//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the one
//! place that reads, checks and makes `traceparent` values. A request
//! without a valid one starts a trace; outgoing calls and sent messages
//! carry a child of the instance's; message metadata carries it under the
//! same name.

use http::{HeaderMap, HeaderValue};

/// The header and metadata name of the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The vendor-specific companion of [`TRACEPARENT`], passed through as is.
pub const TRACESTATE: &str = "tracestate";

/// Whether `tp` is a `traceparent` a receiver may continue, per W3C
/// Trace Context §3.2: `version-traceid-parentid-flags` of 2, 32, 16 and
/// 2 lower-case hex digits, version not `ff`, and neither id all zeros;
/// a version above `00` may add fields after the flags (§4.3: parse the
/// four known ones). Anything else starts a new trace (§3.2.2.3: an
/// invalid header is ignored, never repaired).
pub fn is_valid(tp: &str) -> bool {
    let lower_hex = |p: &str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |p: &str| p.bytes().any(|b| b != b'0');
    let mut parts = tp.splitn(5, '-');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(version), Some(trace_id), Some(parent_id), Some(flags), more)
            if more.is_none() || version != "00" =>
        {
            version.len() == 2
                && trace_id.len() == 32
                && parent_id.len() == 16
                && flags.len() == 2
                && [version, trace_id, parent_id, flags]
                    .into_iter()
                    .all(lower_hex)
                && version != "ff"
                && not_zero(trace_id)
                && not_zero(parent_id)
        }
        _ => false,
    }
}

/// Random bytes for new ids from the thread's generator (ChaCha, seeded
/// and reseeded from the OS): a request needs one trace id and several
/// span ids, and a system call for each showed in the hot path's profile
/// (docs/performance.md). An id of zeros is invalid, so one never is.
fn random_id<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut id = [0u8; N];
    while id.iter().all(|&b| b == 0) {
        rand::rng().fill_bytes(&mut id);
    }
    id
}

/// A new random trace id: 32 lower-case hex digits.
pub fn new_trace_id() -> String {
    hex::encode(random_id::<16>())
}

/// A new trace: random trace and span ids, sampled.
pub fn start() -> String {
    format!(
        "00-{}-{}-01",
        hex::encode(random_id::<16>()),
        hex::encode(random_id::<8>())
    )
}

/// A child of `parent` (same trace id and flags, new span id) in the
/// version this host writes, `00`; `None` when `parent` is not a trace
/// context.
pub fn child(parent: &str) -> Option<String> {
    if !is_valid(parent) {
        return None;
    }
    let mut parts = parent.split('-');
    let (_version, trace_id, _span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(format!(
        "00-{trace_id}-{}-{flags}",
        hex::encode(random_id::<8>())
    ))
}

/// The `traceparent` of `headers`, when there is one and it is valid
/// ([`is_valid`]).
pub fn valid_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|tp| is_valid(tp))
}

/// The request's valid `traceparent`, or a new trace written into the
/// headers; returns the value either way.
pub fn ensure(headers: &mut HeaderMap) -> String {
    if let Some(tp) = valid_in(headers) {
        return tp.to_string();
    }
    let tp = start();
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&tp).expect("hex is a valid header value"),
    );
    tp
}

/// The `traceparent` entry of message metadata, if any.
pub fn from_metadata(metadata: &[(String, String)]) -> Option<String> {
    metadata
        .iter()
        .find(|(k, _)| k == TRACEPARENT)
        .map(|(_, v)| v.clone())
}

/// Adds `traceparent` to message metadata that has none.
pub fn add_to_metadata(metadata: &mut Vec<(String, String)>, traceparent: Option<&str>) {
    if let Some(tp) = traceparent
        && !metadata.iter().any(|(k, _)| k == TRACEPARENT)
    {
        metadata.push((TRACEPARENT.into(), tp.to_string()));
    }
}

/// Adds a child of `parent` as the request's `traceparent` unless the
/// guest set one itself.
pub fn continue_in(headers: &mut HeaderMap, parent: Option<&str>) {
    if !headers.contains_key(TRACEPARENT)
        && let Some(tp) = parent.and_then(child)
        && let Ok(value) = HeaderValue::from_str(&tp)
    {
        headers.insert(TRACEPARENT, value);
    }
}

/// The trace headers (`traceparent`, `tracestate`) of message metadata,
/// as HTTP headers.
pub fn metadata_to_headers(metadata: &[(String, String)], headers: &mut HeaderMap) {
    for (k, v) in metadata {
        let name = match k.as_str() {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_a_valid_context_starts_a_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("nonsense"));
        let tp = ensure(&mut headers);
        assert!(is_valid(&tp), "{tp}");
        assert_eq!(headers[TRACEPARENT], tp.as_str());
        let kept = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert(TRACEPARENT, HeaderValue::from_static(kept));
        assert_eq!(ensure(&mut headers), kept);
    }

    #[test]
    fn only_what_w3c_calls_valid_is_continued() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(is_valid(ok));
        for bad in [
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
        ] {
            assert!(!is_valid(bad), "{bad}");
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_str(bad).unwrap());
            let started = ensure(&mut headers);
            assert!(is_valid(&started) && started != bad, "{bad} -> {started}");
        }
    }

    #[test]
    fn a_later_version_with_more_fields_is_continued_as_version_00() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        assert!(is_valid(later));
        let c = child(later).unwrap();
        assert!(c.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && c.ends_with("-01"));
        assert_eq!(c.len(), 55);
    }

    #[test]
    fn new_ids_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| start()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|tp| is_valid(tp)));
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let c = child(parent).unwrap();
        assert!(is_valid(&c));
        assert!(c.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(c.ends_with("-01"));
        assert_ne!(c, parent);
        assert_eq!(child("not-a-trace"), None);
    }

    #[test]
    fn metadata_gets_the_context_once() {
        let mut md = vec![];
        add_to_metadata(&mut md, Some("a"));
        add_to_metadata(&mut md, Some("b"));
        assert_eq!(from_metadata(&md).as_deref(), Some("a"));
    }
}
