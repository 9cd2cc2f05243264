//! Exact money: decimals with at most 2 places, held as integer minor units.
//!
//! Amounts are read from the *text* of a JSON number (never through `f64`),
//! so `0.1` stays exactly one tenth, and written back as the shortest JSON
//! number (`12.5`, `60.27`, `0.3`). Stores keep the integer minor units,
//! because some state stores round stored JSON numbers.

use std::fmt;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// An exact amount of money in minor units (cents): `12.50` is `1250`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a JSON value is not an amount of money; `Display` is the message a
/// client sees in a validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// Not a JSON number (a string, boolean, null, object or array).
    NotANumber,
    /// More than two decimal places.
    TooPrecise,
    /// Too large to represent.
    OutOfRange,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoneyError::NotANumber => "must be a JSON number such as 12.5",
            MoneyError::TooPrecise => "must have at most 2 decimal places",
            MoneyError::OutOfRange => "is too large",
        })
    }
}

impl std::error::Error for MoneyError {}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// The amount with `minor` minor units (cents).
    pub const fn from_minor(minor: i64) -> Money {
        Money(minor)
    }

    /// The amount in minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    /// Parses the text of a JSON value (e.g. from a [`RawValue`]) as money.
    /// Accepts any JSON number, exponent forms included, whose value has at
    /// most two decimal places (`12.50` and `1.25e1` are fine, `0.125` not).
    pub fn parse_json(text: &str) -> Result<Money, MoneyError> {
        let text = text.trim();
        let first = text.bytes().next().ok_or(MoneyError::NotANumber)?;
        if !(first == b'-' || first.is_ascii_digit()) {
            return Err(MoneyError::NotANumber);
        }
        let decimal = if let Some(pos) = text.find(['e', 'E']) {
            // `from_scientific` rounds an over-long mantissa; refuse those first.
            Decimal::from_str_exact(&text[..pos]).map_err(|_| MoneyError::TooPrecise)?;
            Decimal::from_scientific(text).map_err(|_| MoneyError::OutOfRange)?
        } else {
            Decimal::from_str_exact(text).map_err(|e| match e {
                rust_decimal::Error::Underflow => MoneyError::TooPrecise,
                rust_decimal::Error::ErrorString(_) => MoneyError::NotANumber,
                _ => MoneyError::OutOfRange,
            })?
        }
        .normalize();
        if decimal.scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let minor = decimal.mantissa() * 10i128.pow(2 - decimal.scale());
        i64::try_from(minor)
            .map(Money)
            .map_err(|_| MoneyError::OutOfRange)
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self × quantity`, or `None` on overflow (line totals).
    pub fn checked_mul(self, quantity: i64) -> Option<Money> {
        self.0.checked_mul(quantity).map(Money)
    }

    /// The amount as the shortest decimal text: `12.5`, `60.27`, `3`.
    pub fn to_decimal_string(self) -> String {
        Decimal::new(self.0, 2).normalize().to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

/// Serialises as a JSON number written from exact decimal text (with
/// `serde_json`; no float is involved).
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw =
            RawValue::from_string(self.to_decimal_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Deserialises from the text of a JSON number. Works with
/// `serde_json::from_slice`/`from_str` (not `from_value`, which has already
/// turned the number into a float).
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Money::parse_json(raw.get()).map_err(|e| D::Error::custom(format!("money {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<i64, MoneyError> {
        Money::parse_json(s).map(Money::minor)
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("0.1"), Ok(10));
        assert_eq!(parse("12.5"), Ok(1250));
        assert_eq!(parse("12.50"), Ok(1250));
        assert_eq!(parse("60.27"), Ok(6027));
        assert_eq!(parse("999999999.99"), Ok(99_999_999_999));
        assert_eq!(parse("-3.1"), Ok(-310));
        assert_eq!(parse("1.25e1"), Ok(1250));
        assert_eq!(parse("125E-2"), Ok(125));
        assert_eq!(
            parse("12.500"),
            Ok(1250),
            "trailing zeros are not precision"
        );
    }

    #[test]
    fn rejects_non_numbers_and_extra_places() {
        assert_eq!(parse("\"12.5\""), Err(MoneyError::NotANumber));
        assert_eq!(parse("true"), Err(MoneyError::NotANumber));
        assert_eq!(parse("null"), Err(MoneyError::NotANumber));
        assert_eq!(parse("[1]"), Err(MoneyError::NotANumber));
        assert_eq!(parse("0.125"), Err(MoneyError::TooPrecise));
        assert_eq!(parse("1e-3"), Err(MoneyError::TooPrecise));
        assert_eq!(
            parse("0.1000000000000000000000000000000001"),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(parse("1e400"), Err(MoneyError::OutOfRange));
        assert_eq!(
            parse("99999999999999999999999"),
            Err(MoneyError::OutOfRange)
        );
    }

    #[test]
    fn sums_have_no_float_drift() {
        let tenth = Money::parse_json("0.1").unwrap();
        let total = tenth.checked_mul(3).unwrap();
        assert_eq!(serde_json::to_string(&total).unwrap(), "0.3");
        let sum = tenth
            .checked_add(Money::parse_json("0.2").unwrap())
            .unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn serialises_as_shortest_json_number() {
        let cases = [
            (1250, "12.5"),
            (6027, "60.27"),
            (300, "3"),
            (0, "0"),
            (-5, "-0.05"),
        ];
        for (minor, text) in cases {
            assert_eq!(
                serde_json::to_string(&Money::from_minor(minor)).unwrap(),
                text
            );
        }
        let v = serde_json::json!({ "price": 1 });
        assert_eq!(v["price"], 1);
    }

    #[test]
    fn round_trips_through_serde_json() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Line {
            price: Money,
        }
        let line: Line = serde_json::from_str(r#"{"price": 19.99}"#).unwrap();
        assert_eq!(line.price.minor(), 1999);
        assert_eq!(serde_json::to_string(&line).unwrap(), r#"{"price":19.99}"#);
        let err = serde_json::from_str::<Line>(r#"{"price": 1.999}"#).unwrap_err();
        assert!(
            err.to_string().contains("at most 2 decimal places"),
            "{err}"
        );
    }
}
