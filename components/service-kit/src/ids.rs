//! Identifiers: validation of client-chosen ids and random generation.
//!
//! Ids appear in key-value keys and URLs, so they are restricted to
//! `[A-Za-z0-9_-]{1,64}`: no separator or escaping issues anywhere.

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is 1–64 of `[A-Za-z0-9_-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The message for an invalid id, shared so every service words it alike.
pub const ID_RULE: &str = "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'";

/// Fills `buf` with random bytes from the platform (`wasi:random` in a
/// component, the OS natively).
pub fn random_bytes(buf: &mut [u8]) {
    // The platform RNG failing is unrecoverable and never happens on WASI.
    getrandom::fill(buf).expect("the platform random source failed");
}

/// A new random id: a lowercase UUID v4 (36 characters, a valid id).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// `n` random bytes as lowercase hex (for trace and span ids).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rule() {
        assert!(is_valid_id("abc_DEF-09"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
        assert_eq!(random_hex(8).len(), 16);
    }
}
