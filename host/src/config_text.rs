//! Helpers for the error messages of the two TOML files the host reads
//! (the manifest and the runtime config).

/// toml's messages end with a second line repeating the path; keep one line.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}
