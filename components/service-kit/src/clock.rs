//! Wall-clock time as RFC 3339 UTC text.
//!
//! Uses `std::time::SystemTime`, which a `wasm32-wasip2` component reads
//! from `wasi:clocks/wall-clock`. Timestamps always carry milliseconds, so
//! their text sorts in time order.

use std::time::SystemTime;

/// The current time, e.g. `2025-01-31T12:00:00.123Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses RFC 3339 text (for tests and for reading stored timestamps).
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(s).map_err(|e| format!("'{s}' is not an RFC 3339 UTC time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_with_millis_and_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_120);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20.120Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.120Z").unwrap(), t);
    }

    #[test]
    fn now_round_trips() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z') && s.len() == 24, "{s}");
        parse_rfc3339(&s).unwrap();
    }
}
