//! Entity tags and their comparisons (RFC 9110 §8.8.3, §13.1).
//!
//! A resource's ETag is exactly `"<version>"`. `If-Match` uses strong
//! comparison, so a weak tag (`W/"3"`) never matches; `If-None-Match` uses
//! weak comparison (§13.1.2), so `W/"3"` and `"3"` both match version 3.
//! In both, `*` matches any existing resource. Header values may list
//! several tags separated by commas (repeated headers are joined with
//! `, ` first, see [`crate::web::Request::header_joined`]).

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

/// Whether an `If-None-Match` header value (possibly several tags,
/// comma-joined) matches a resource currently at `version`, by weak
/// comparison: `*`, `"<version>"` or `W/"<version>"`. A match means the
/// condition is *false*: a GET/HEAD answers 304, any other method 412.
pub fn if_none_match_matches(if_none_match: &str, version: u64) -> bool {
    let current = etag(version);
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
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

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        assert!(if_none_match_matches("\"3\"", 3));
        assert!(if_none_match_matches("W/\"3\"", 3), "weak tags match");
        assert!(if_none_match_matches("*", 3));
        assert!(if_none_match_matches("\"1\", W/\"3\"", 3));
        assert!(if_none_match_matches("\"1\",\"3\"", 3));
        assert!(!if_none_match_matches("\"2\"", 3));
        assert!(!if_none_match_matches("\"1\", \"2\"", 3));
        assert!(
            !if_none_match_matches("3", 3),
            "unquoted is not an entity tag"
        );
        assert!(!if_none_match_matches("", 3));
    }
}
