//! Field-by-field reading of JSON request bodies.
//!
//! A `#[derive(Deserialize)]` stops at the first bad field and judges
//! numbers through floats; validation problems must instead name *every*
//! offending field, and integers and money must be judged exactly on their
//! JSON text (`2.0` is the whole number 2, as JSON Schema counts it;
//! `0.1` is exactly one tenth). A
//! [`JsonObject`] keeps each field's raw JSON text and offers typed readers
//! that record a message per field in [`FieldErrors`].

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::money::Money;
use crate::problem::{FieldErrors, Problem};

/// A JSON object whose field values are kept as raw JSON text.
#[derive(Debug)]
pub struct JsonObject {
    fields: BTreeMap<String, Box<RawValue>>,
    prefix: String,
}

/// The largest integer `stock`/`quantity` fields accept: 2^31 − 1.
pub const MAX_INT: i64 = i32::MAX as i64;

impl JsonObject {
    /// Parses a request body that must be a JSON object; otherwise a 400
    /// problem saying what was sent instead.
    pub fn parse(body: &[u8]) -> Result<JsonObject, Problem> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Problem::bad_request(
                "the request body is empty; send a JSON object",
            ));
        }
        let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|e| {
            Problem::bad_request(format!(
                "the request body is not valid JSON ({e}); send a JSON object"
            ))
        })?;
        JsonObject::from_raw(&raw, "").map_err(Problem::bad_request)
    }

    /// Reads a nested object (e.g. `items[0]`); field names in errors are
    /// then prefixed, e.g. `items[0].quantity`.
    pub fn from_raw(raw: &RawValue, prefix: &str) -> Result<JsonObject, String> {
        let text = raw.get().trim_start();
        if !text.starts_with('{') {
            let what = if prefix.is_empty() {
                "the request body"
            } else {
                prefix
            };
            return Err(format!(
                "{what} must be a JSON object, not {}",
                kind_of(text)
            ));
        }
        let fields = serde_json::from_str(raw.get())
            .map_err(|e| format!("the JSON object is malformed: {e}"))?;
        Ok(JsonObject {
            fields,
            prefix: prefix.to_owned(),
        })
    }

    /// The error key of a field: `name`, or `prefix.name` when nested.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The raw JSON of a field that is present and not `null`.
    pub fn raw(&self, name: &str) -> Option<&RawValue> {
        self.fields
            .get(name)
            .map(Box::as_ref)
            .filter(|r| r.get().trim() != "null")
    }

    /// Whether a field is present and not `null`.
    pub fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// Records "is required" for a missing or `null` field; returns whether
    /// it is present.
    pub fn require(&self, name: &str, errors: &mut FieldErrors) -> bool {
        let present = self.has(name);
        if !present {
            errors.add(&self.path(name), "is required");
        }
        present
    }

    /// Records an error for each field not in `allowed`, so a typo such as
    /// `prise` is reported instead of silently ignored.
    pub fn reject_unknown(&self, allowed: &[&str], errors: &mut FieldErrors) {
        for name in self.fields.keys() {
            if !allowed.contains(&name.as_str()) {
                errors.add(
                    &self.path(name),
                    format!(
                        "is not a known field; known fields are {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// A string field (`None` when absent, `null`, or not a string — the
    /// last recorded as an error).
    pub fn string(&self, name: &str, errors: &mut FieldErrors) -> Option<String> {
        let raw = self.raw(name)?;
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Some(s),
            Err(_) => {
                errors.add(&self.path(name), not_a_string(raw.get()));
                None
            }
        }
    }

    /// A whole-number field within `min..=max`: any JSON number whose
    /// value is integral (`2`, `2.0`, `2e0`, as JSON Schema's `integer`
    /// counts them), not `2.5`, `"2"` or `true`.
    pub fn integer(&self, name: &str, min: i64, max: i64, errors: &mut FieldErrors) -> Option<i64> {
        let raw = self.raw(name)?;
        match integral_value(raw.get()) {
            Some(Some(n)) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                errors.add(&self.path(name), format!("must be between {min} and {max}"));
                None
            }
            None => {
                errors.add(
                    &self.path(name),
                    format!(
                        "must be a whole number between {min} and {max}, not {}",
                        raw.get().trim()
                    ),
                );
                None
            }
        }
    }

    /// A money field: a JSON number with at most 2 decimal places.
    pub fn money(&self, name: &str, errors: &mut FieldErrors) -> Option<Money> {
        let raw = self.raw(name)?;
        match Money::parse_json(raw.get()) {
            Ok(m) => Some(m),
            Err(e) => {
                errors.add(&self.path(name), e.to_string());
                None
            }
        }
    }

    /// An array field, its elements as raw JSON.
    pub fn array(&self, name: &str, errors: &mut FieldErrors) -> Option<Vec<Box<RawValue>>> {
        let raw = self.raw(name)?;
        if !raw.get().trim_start().starts_with('[') {
            errors.add(
                &self.path(name),
                format!("must be an array, not {}", kind_of(raw.get())),
            );
            return None;
        }
        // A syntactically valid array always parses into raw elements.
        serde_json::from_str(raw.get()).ok()
    }
}

/// Whether `text` is a JSON integer literal (`-?[0-9]+`).
fn is_integer_text(text: &str) -> bool {
    let t = text.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The value of a JSON number whose value is a whole number: `Some(Some(n))`
/// for one that fits an `i64`, `Some(None)` for a larger one, `None` for
/// anything else (fractions, strings, booleans, numbers too precise to
/// judge exactly). Read from the JSON text, never through a float.
fn integral_value(text: &str) -> Option<Option<i64>> {
    let t = text.trim();
    if is_integer_text(t) {
        return Some(t.parse().ok());
    }
    let first = t.bytes().next()?;
    if !(first == b'-' || first.is_ascii_digit()) {
        return None;
    }
    let decimal = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).ok()?
    } else {
        Decimal::from_str_exact(t).ok()?
    }
    .normalize();
    if decimal.scale() != 0 {
        return None;
    }
    Some(i64::try_from(decimal.mantissa()).ok())
}

/// Why the raw JSON `text` is not a usable string. A JSON string the body
/// parser accepted fails only on a `\u` escape of a lone UTF-16
/// surrogate (`\ud800` without its low half, or a low half alone), which
/// names no Unicode character.
fn not_a_string(text: &str) -> String {
    if text.trim_start().starts_with('"') {
        "is not valid text: it contains an invalid Unicode escape, a lone UTF-16 surrogate (\\uD800-\\uDFFF not in a high-low pair) that is no character; send the text as UTF-8, or escape a character beyond U+FFFF as a surrogate pair (e.g. \\ud83d\\ude00)".to_owned()
    } else {
        format!("must be a string, not {}", kind_of(text))
    }
}

/// A short description of a JSON value's kind, for messages.
fn kind_of(text: &str) -> &'static str {
    match text.trim_start().bytes().next() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
        None => "nothing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> JsonObject {
        JsonObject::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn body_must_be_an_object() {
        assert!(JsonObject::parse(b"").unwrap_err().detail.contains("empty"));
        assert!(
            JsonObject::parse(b"{")
                .unwrap_err()
                .detail
                .contains("not valid JSON")
        );
        let p = JsonObject::parse(b"[1]").unwrap_err();
        assert_eq!(p.status, 400);
        assert!(
            p.detail.contains("must be a JSON object, not an array"),
            "{}",
            p.detail
        );
    }

    #[test]
    fn strings() {
        let o = obj(r#"{"a": "x", "b": 5, "c": null}"#);
        let mut e = FieldErrors::new();
        assert_eq!(o.string("a", &mut e).as_deref(), Some("x"));
        assert_eq!(o.string("b", &mut e), None);
        assert_eq!(o.string("c", &mut e), None);
        assert_eq!(o.string("d", &mut e), None);
        assert!(e.contains("b") && !e.contains("c") && !e.contains("d"));
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        for text in [r#"{"a": "x\ud800"}"#, r#"{"a": "\udc00y"}"#] {
            let o = obj(text);
            let mut e = FieldErrors::new();
            assert_eq!(o.string("a", &mut e), None, "{text}");
            let problem = Problem::validation(e);
            let message = problem.errors["a"][0].clone();
            assert!(
                message.contains("invalid Unicode escape")
                    && message.contains("surrogate")
                    && !message.contains("not a string"),
                "{message}"
            );
        }
        // A surrogate pair is one character.
        let mut e = FieldErrors::new();
        assert_eq!(
            obj(r#"{"a": "\ud83d\ude00"}"#)
                .string("a", &mut e)
                .as_deref(),
            Some("\u{1F600}")
        );
    }

    #[test]
    fn integers_are_integral_json_numbers_in_range() {
        let o = obj(
            r#"{"ok": 7, "float": 2.0, "exp": 2e0, "big_exp": 1.5e3, "zero": -0.0, "half": 2.5, "tiny": 1e-1, "str": "2", "bool": true, "neg": -1, "big": 2147483648, "big_float": 2147483648.0, "huge": 99999999999999999999999, "huge_exp": 1e400}"#,
        );
        let mut e = FieldErrors::new();
        assert_eq!(o.integer("ok", 0, MAX_INT, &mut e), Some(7));
        assert_eq!(o.integer("float", 0, MAX_INT, &mut e), Some(2));
        assert_eq!(o.integer("exp", 0, MAX_INT, &mut e), Some(2));
        assert_eq!(o.integer("big_exp", 0, MAX_INT, &mut e), Some(1500));
        assert_eq!(o.integer("zero", 0, MAX_INT, &mut e), Some(0));
        assert!(e.is_empty(), "{e:?}");
        for bad in [
            "half",
            "tiny",
            "str",
            "bool",
            "neg",
            "big",
            "big_float",
            "huge",
            "huge_exp",
        ] {
            assert_eq!(o.integer(bad, 0, MAX_INT, &mut e), None, "{bad}");
            assert!(e.contains(bad), "{bad}");
        }
        let p = e.into_result(()).unwrap_err();
        assert_eq!(p.errors["big"][0], "must be between 0 and 2147483647");
        assert_eq!(p.errors["big_float"][0], "must be between 0 and 2147483647");
        assert!(p.errors["half"][0].contains("whole number"), "{p:?}");
    }

    #[test]
    fn unknown_and_required_fields_are_named() {
        let o = obj(r#"{"name": "x", "prise": 1}"#);
        let mut e = FieldErrors::new();
        o.reject_unknown(&["name", "price"], &mut e);
        assert!(!o.require("price", &mut e));
        assert!(o.require("name", &mut e));
        let p = e.into_result(()).unwrap_err();
        assert!(p.errors["prise"][0].contains("not a known field"));
        assert_eq!(p.errors["price"], vec!["is required"]);
    }

    #[test]
    fn nested_objects_prefix_error_keys() {
        let o = obj(r#"{"items": [{"quantity": 0}, 3]}"#);
        let mut e = FieldErrors::new();
        let items = o.array("items", &mut e).unwrap();
        let first = JsonObject::from_raw(&items[0], "items[0]").unwrap();
        first.integer("quantity", 1, MAX_INT, &mut e);
        assert!(e.contains("items[0].quantity"));
        let err = JsonObject::from_raw(&items[1], "items[1]").unwrap_err();
        assert!(
            err.contains("items[1] must be a JSON object, not a number"),
            "{err}"
        );
        let mut e2 = FieldErrors::new();
        assert!(obj(r#"{"items": 1}"#).array("items", &mut e2).is_none());
        assert!(e2.contains("items"));
    }

    #[test]
    fn money_fields() {
        let o = obj(r#"{"p": 0.1, "q": 0.125, "r": "1"}"#);
        let mut e = FieldErrors::new();
        assert_eq!(o.money("p", &mut e).unwrap().minor(), 10);
        assert!(o.money("q", &mut e).is_none());
        assert!(o.money("r", &mut e).is_none());
        assert!(e.contains("q") && e.contains("r"));
    }
}
