//! The reservation ledger kept inside a product record: unconfirmed holds
//! and the outcomes of recent reservations (docs/storage-layout.md,
//! "Reservations"). Plain data and bookkeeping only; the rules that move
//! stock live with the product ([`crate::domain::product`]).
//!
//! Stored short, because a product record must stay under 64 KiB with
//! [`crate::domain::product::MAX_HOLDS_CEILING`] holds and [`MAX_OUTCOMES`]
//! outcomes: holds with short keys, outcomes as one string of short
//! entries ([`crate::domain::outcomes`]):
//!
//! ```text
//! "holds":    {"<orderId>": {"q": 2, "p": 1250, "c": "EUR", "e": 1735689720000}}
//! "outcomes": "<orderId>:1735689600000:c:2:1250:EUR <orderId>:1735689600450:r"
//! ```
//!
//! [`Outcome`]'s own JSON form (`{"s": "confirmed", "q": 2, "p": 1250,
//! "c": "EUR", "at": 1735689600000}`) is what records written before the
//! string kept under `"recent"`, an object by order id; it is read only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most outcomes a product remembers; the oldest is dropped first.
pub const MAX_OUTCOMES: usize = 256;

/// Units held for an order until it confirms, releases, or the hold
/// expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Units taken from stock.
    #[serde(rename = "q")]
    pub quantity: i64,
    /// The product's price when held, in minor units (the order's price
    /// snapshot).
    #[serde(rename = "p")]
    pub unit_price_minor: i64,
    /// The product's currency when held.
    #[serde(rename = "c")]
    pub currency: String,
    /// When the hold expires and its units return to stock, in
    /// milliseconds since the Unix epoch.
    #[serde(rename = "e")]
    pub expires_at_ms: u64,
}

/// How a reservation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "lowercase")]
pub enum OutcomeKind {
    /// Confirmed: the units are sold.
    Confirmed {
        /// Units sold.
        #[serde(rename = "q")]
        quantity: i64,
        /// Price per unit, minor units.
        #[serde(rename = "p")]
        unit_price_minor: i64,
        /// Currency of the price.
        #[serde(rename = "c")]
        currency: String,
    },
    /// Released by the order (its units, if any, returned); also the
    /// tombstone a release of an unknown order leaves, so a late reserve
    /// is refused.
    Released,
    /// The hold expired and its units returned to stock.
    Expired,
}

/// A remembered outcome and when it happened, stored flat:
/// `{"s": "confirmed", "q": 2, "p": 1250, "c": "EUR", "at": 1735689600000}`.
///
/// (De)serialized through [`OutcomeWire`] rather than with
/// `#[serde(flatten)]`: flatten buffers every field of every outcome
/// into serde's generic `Content` before decoding it, which made decoding
/// a hot product's 256 outcomes most of an order's CPU
/// (docs/performance.md, "Orders on one product").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "OutcomeWire", try_from = "OutcomeWire")]
pub struct Outcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// [`Outcome`]'s stored form: the kind's tag and fields beside `at`.
#[derive(Serialize, Deserialize)]
struct OutcomeWire {
    s: OutcomeTag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<String>,
    at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutcomeTag {
    Confirmed,
    Released,
    Expired,
}

impl From<Outcome> for OutcomeWire {
    fn from(o: Outcome) -> Self {
        let (s, q, p, c) = match o.kind {
            OutcomeKind::Confirmed {
                quantity,
                unit_price_minor,
                currency,
            } => (
                OutcomeTag::Confirmed,
                Some(quantity),
                Some(unit_price_minor),
                Some(currency),
            ),
            OutcomeKind::Released => (OutcomeTag::Released, None, None, None),
            OutcomeKind::Expired => (OutcomeTag::Expired, None, None, None),
        };
        OutcomeWire {
            s,
            q,
            p,
            c,
            at: o.at_ms,
        }
    }
}

impl TryFrom<OutcomeWire> for Outcome {
    type Error = &'static str;

    fn try_from(w: OutcomeWire) -> Result<Self, Self::Error> {
        let kind = match w.s {
            OutcomeTag::Confirmed => match (w.q, w.p, w.c) {
                (Some(quantity), Some(unit_price_minor), Some(currency)) => {
                    OutcomeKind::Confirmed {
                        quantity,
                        unit_price_minor,
                        currency,
                    }
                }
                _ => return Err("a confirmed outcome needs fields q, p and c"),
            },
            OutcomeTag::Released => OutcomeKind::Released,
            OutcomeTag::Expired => OutcomeKind::Expired,
        };
        Ok(Outcome { kind, at_ms: w.at })
    }
}

/// Records `kind` for `order_id` at `at_ms`, dropping the oldest outcomes
/// beyond [`MAX_OUTCOMES`] (ties by order id, so the result is
/// deterministic).
pub fn remember(
    recent: &mut BTreeMap<String, Outcome>,
    order_id: &str,
    kind: OutcomeKind,
    at_ms: u64,
) {
    recent.insert(order_id.to_owned(), Outcome { kind, at_ms });
    trim(recent);
}

/// Drops the oldest outcomes until at most [`MAX_OUTCOMES`] remain.
pub fn trim(recent: &mut BTreeMap<String, Outcome>) {
    if recent.len() <= MAX_OUTCOMES {
        return;
    }
    if recent.len() == MAX_OUTCOMES + 1 {
        // One over, the usual case after one more outcome: find the
        // oldest without copying every order id.
        let oldest = recent
            .iter()
            .min_by(|a, b| (a.1.at_ms, a.0).cmp(&(b.1.at_ms, b.0)))
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            recent.remove(&id);
        }
        return;
    }
    let mut by_age: Vec<(u64, String)> =
        recent.iter().map(|(id, o)| (o.at_ms, id.clone())).collect();
    by_age.sort();
    let excess = recent.len() - MAX_OUTCOMES;
    for (_, id) in by_age.into_iter().take(excess) {
        recent.remove(&id);
    }
}

/// A reservation of the legacy ledger (records written before holds):
/// read only, converted to outcomes on the record's next read or write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyReservation {
    /// Units taken.
    pub quantity: i64,
    /// Price per unit, minor units.
    pub unit_price_minor: i64,
    /// Currency.
    pub currency: String,
    /// When the units were taken (RFC 3339).
    pub created_at: String,
    /// When they were returned; `None` while active (= sold, as the legacy
    /// ledger had no confirmation).
    #[serde(default)]
    pub released_at: Option<String>,
}

/// Converts a legacy ledger to outcomes: active reservations become
/// confirmed sales, released ones released outcomes, timestamped by their
/// last change; beyond [`MAX_OUTCOMES`] the newest are kept.
pub fn convert_legacy(
    ledger: BTreeMap<String, LegacyReservation>,
    recent: &mut BTreeMap<String, Outcome>,
) {
    for (order_id, r) in ledger {
        if recent.contains_key(&order_id) {
            continue;
        }
        let (kind, at) = match &r.released_at {
            None => (
                OutcomeKind::Confirmed {
                    quantity: r.quantity,
                    unit_price_minor: r.unit_price_minor,
                    currency: r.currency.clone(),
                },
                &r.created_at,
            ),
            Some(released) => (OutcomeKind::Released, released),
        };
        let at_ms = millis_of(at);
        recent.insert(order_id, Outcome { kind, at_ms });
    }
    trim(recent);
}

/// Milliseconds since the epoch of RFC 3339 text; 0 when unreadable (an
/// unreadable time sorts as oldest, which only affects which outcome is
/// dropped first).
pub fn millis_of(rfc3339: &str) -> u64 {
    service_kit::clock::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_shapes_are_short() {
        let hold = Hold {
            quantity: 2,
            unit_price_minor: 1250,
            currency: "EUR".into(),
            expires_at_ms: 5,
        };
        assert_eq!(
            serde_json::to_string(&hold).unwrap(),
            r#"{"q":2,"p":1250,"c":"EUR","e":5}"#
        );
        let o = Outcome {
            kind: OutcomeKind::Confirmed {
                quantity: 2,
                unit_price_minor: 1250,
                currency: "EUR".into(),
            },
            at_ms: 7,
        };
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(text, r#"{"s":"confirmed","q":2,"p":1250,"c":"EUR","at":7}"#);
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), o);
        let released = Outcome {
            kind: OutcomeKind::Released,
            at_ms: 1,
        };
        assert_eq!(
            serde_json::to_string(&released).unwrap(),
            r#"{"s":"released","at":1}"#
        );
    }

    #[test]
    fn stored_outcomes_read_back_in_any_field_order_and_a_broken_one_is_an_error() {
        let read = |text: &str| serde_json::from_str::<Outcome>(text);
        assert_eq!(
            read(r#"{"at":7,"c":"EUR","p":1250,"q":2,"s":"confirmed"}"#).unwrap(),
            Outcome {
                kind: OutcomeKind::Confirmed {
                    quantity: 2,
                    unit_price_minor: 1250,
                    currency: "EUR".into(),
                },
                at_ms: 7,
            }
        );
        assert_eq!(
            read(r#"{"s":"expired","at":3}"#).unwrap().kind,
            OutcomeKind::Expired
        );
        assert_eq!(
            read(r#"{"s":"released","at":1,"q":5}"#).unwrap().kind,
            OutcomeKind::Released
        );
        let missing = read(r#"{"s":"confirmed","q":2,"at":7}"#).unwrap_err();
        assert!(missing.to_string().contains("q, p and c"), "{missing}");
        assert!(read(r#"{"s":"sold","at":7}"#).is_err());
        assert!(read(r#"{"s":"released"}"#).is_err(), "at is required");
    }

    #[test]
    fn remember_keeps_the_newest_256() {
        let mut recent = BTreeMap::new();
        for i in 0..300u64 {
            remember(
                &mut recent,
                &format!("o{i}"),
                OutcomeKind::Released,
                1000 - i,
            );
        }
        assert_eq!(recent.len(), MAX_OUTCOMES);
        // The smallest at_ms were the last ones added (o299...): dropped.
        assert!(recent.contains_key("o0") && !recent.contains_key("o299"));
    }

    #[test]
    fn legacy_ledger_converts_to_outcomes() {
        let mut ledger = BTreeMap::new();
        ledger.insert(
            "active".to_owned(),
            LegacyReservation {
                quantity: 2,
                unit_price_minor: 100,
                currency: "USD".into(),
                created_at: "2025-01-01T00:00:00.000Z".into(),
                released_at: None,
            },
        );
        ledger.insert(
            "gone".to_owned(),
            LegacyReservation {
                quantity: 1,
                unit_price_minor: 100,
                currency: "USD".into(),
                created_at: "2025-01-01T00:00:00.000Z".into(),
                released_at: Some("2025-01-02T00:00:00.000Z".into()),
            },
        );
        let mut recent = BTreeMap::new();
        convert_legacy(ledger, &mut recent);
        assert!(matches!(
            recent["active"].kind,
            OutcomeKind::Confirmed { quantity: 2, .. }
        ));
        assert_eq!(recent["gone"].kind, OutcomeKind::Released);
        assert_eq!(recent["gone"].at_ms, 1_735_776_000_000);
    }
}
