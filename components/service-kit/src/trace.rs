//! W3C Trace Context: the `traceparent` header carried from an incoming
//! request into events and outbound calls, so one trace spans services.

use http::HeaderMap;

/// The trace-context header name.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Whether `s` is a well-formed version-00 `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn is_valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// A new sampled `traceparent` with random trace and span ids.
pub fn new_traceparent() -> String {
    format!(
        "00-{}-{}-01",
        crate::ids::random_hex(16),
        crate::ids::random_hex(8)
    )
}

/// The request's `traceparent` when valid, else a new one: an event or
/// call always belongs to some trace.
pub fn traceparent_from(headers: &HeaderMap) -> String {
    headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_valid_traceparent(s))
        .map(str::to_owned)
        .unwrap_or_else(new_traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn validates_traceparent() {
        assert!(is_valid_traceparent(GOOD));
        assert!(is_valid_traceparent(&new_traceparent()));
        assert!(!is_valid_traceparent(
            "00-0000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent("garbage"));
    }

    #[test]
    fn carries_incoming_or_makes_one() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(GOOD));
        assert_eq!(traceparent_from(&h), GOOD);
        h.insert("traceparent", HeaderValue::from_static("bad"));
        let made = traceparent_from(&h);
        assert!(is_valid_traceparent(&made) && made != GOOD);
    }
}
