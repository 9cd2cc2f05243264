//! Optimistic concurrency over HTTP: `ETag` and `If-Match` (RFC 9110).
//!
//! A resource's ETag is exactly `"<version>"`. `If-Match` uses strong
//! comparison, so a weak tag (`W/"3"`) never matches, and `*` matches any
//! existing resource.

/// The ETag header value of a resource version: `"<version>"`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Whether an `If-Match` header value (possibly several, comma-joined)
/// allows a change to a resource currently at `version`. No header means
/// an unconditional request, which is allowed.
pub fn if_match_allows(if_match: Option<&str>, version: u64) -> bool {
    let Some(value) = if_match else {
        return true;
    };
    let current = etag(version);
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_quoted_version() {
        assert_eq!(etag(1), "\"1\"");
        assert_eq!(etag(42), "\"42\"");
    }

    #[test]
    fn if_match_rules() {
        assert!(if_match_allows(None, 3));
        assert!(if_match_allows(Some("\"3\""), 3));
        assert!(if_match_allows(Some("*"), 3));
        assert!(if_match_allows(Some("\"1\", \"3\""), 3));
        assert!(!if_match_allows(Some("\"2\""), 3));
        assert!(
            !if_match_allows(Some("W/\"3\""), 3),
            "weak tags never match"
        );
        assert!(
            !if_match_allows(Some("3"), 3),
            "unquoted is not an entity tag"
        );
        assert!(!if_match_allows(Some(""), 3));
    }
}
