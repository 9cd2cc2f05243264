//! The stored form of a product's recent reservation outcomes: one JSON
//! string of short entries instead of an object of objects
//! (docs/storage-layout.md, "Reservations").
//!
//! ```text
//! "outcomes": "o-17:1735689600000:c:2:1250:EUR o-18:1735689600450:r o-9:1735689500000:e"
//! ```
//!
//! Entries are separated by one space and sorted by order id. Each is
//! `<orderId>:<at>:<kind>`, where `at` is milliseconds since the Unix
//! epoch and the kind is `c` (confirmed, followed by
//! `:<quantity>:<unit price in minor units>:<currency>`), `r` (released)
//! or `e` (expired).
//!
//! Why a string: on a product that many orders reserve at once, every
//! attempt reads and writes the whole record, and a product remembers up to
//! [`MAX_OUTCOMES`] outcomes. As an object of 256 objects (~26 KB) the
//! record cost a JSON parse that built and dropped a map, a deep copy per
//! clone and a serialisation per write: about half the host's CPU on the
//! orders-on-one-product row (docs/performance.md, "Orders on one
//! product"). As one string (~16 KB) it is copied, not parsed, and an
//! order id is looked up by scanning the text. Order ids keep the id rule
//! and currencies are ASCII letters and digits, so no entry needs JSON
//! escaping.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use service_kit::ids::is_valid_id;

use crate::domain::reservation::{MAX_OUTCOMES, Outcome, OutcomeKind, remember, trim};

/// A product's recent outcomes by order id, at most [`MAX_OUTCOMES`], as
/// their stored text.
///
/// Reading a record takes the text as it is and parses nothing: a lookup
/// parses only the first entry of its order id, a change all of them
/// (the last of a repeated id wins; the text written never repeats
/// one). Checking every entry whenever a record was read took reading a
/// product with 256 outcomes from ~0.9 to ~0.65 of the speed of reading
/// one without (docs/performance.md, "Orders on one product"). An entry
/// that does not parse is therefore found only when used; it is then
/// forgotten, as the oldest outcome is when there are too many, and the
/// component logs it. Outcomes are a
/// bounded memory by design, and every caller already handles an order
/// the product no longer remembers (docs/storage-layout.md,
/// "Reservations").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    text: String,
}

/// How a stored entry must look, for the log line of a broken one.
const ENTRY_SHAPE: &str =
    "<orderId>:<at>:c:<quantity>:<unitPriceMinor>:<currency>, <orderId>:<at>:r or <orderId>:<at>:e";

impl Outcomes {
    /// Whether no outcome is remembered.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// How many entries the text holds (broken ones included).
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// The outcome remembered for `order_id`, if any: a scan of the text
    /// that parses only the matching entry.
    pub fn get(&self, order_id: &str) -> Option<Outcome> {
        if !is_valid_id(order_id) {
            return None;
        }
        self.entries()
            .find(|entry| {
                entry.len() > order_id.len()
                    && entry.starts_with(order_id)
                    && entry.as_bytes()[order_id.len()] == b':'
            })
            .and_then(parse_or_log)
            .map(|(_, outcome)| outcome)
    }

    /// Every outcome that parses, by order id.
    pub fn to_map(&self) -> BTreeMap<String, Outcome> {
        self.entries()
            .filter_map(parse_or_log)
            .map(|(id, outcome)| (id.to_owned(), outcome))
            .collect()
    }

    /// Records `kind` for `order_id` at `at_ms`, keeping the newest
    /// [`MAX_OUTCOMES`] (ties by order id).
    ///
    /// An order the text does not hold yet, the outcome of every confirm,
    /// is spliced into its place, dropping the oldest entry when the
    /// memory is full: the other entries are checked byte by byte, not
    /// parsed into a map nor written anew. That map is where the
    /// orders-on-one-product row spent much of its guest time
    /// (docs/performance.md, "A new outcome spliced in"), since every
    /// attempt at a confirm, lost races included, records one. The text
    /// is the one [`Outcomes::change`] would write: any other case, or a
    /// text with an entry that `change` would not write back as it is
    /// (broken, not in the id rule, a number not in its shortest form,
    /// out of order, repeated), goes through `change`.
    pub fn remember(&mut self, order_id: &str, kind: OutcomeKind, at_ms: u64) {
        let outcome = Outcome { kind, at_ms };
        if let Some(text) = self.with_new_entry(order_id, &outcome) {
            self.text = text;
            return;
        }
        let Outcome { kind, at_ms } = outcome;
        self.change(|recent| remember(recent, order_id, kind, at_ms));
    }

    /// The text with `outcome` of `order_id` added, as [`remember`] on the
    /// map would leave it; `None` when that needs the map: the id is
    /// already there, the outcome does not fit the text, an entry is not
    /// [`canonical_entry`] or not in strictly ascending order of id, or
    /// there are more than [`MAX_OUTCOMES`] already.
    fn with_new_entry(&self, order_id: &str, outcome: &Outcome) -> Option<String> {
        if !fits(order_id, outcome) {
            return None;
        }
        let mut entry = String::with_capacity(64);
        write_entry(&mut entry, order_id, outcome);
        if self.text.is_empty() {
            return Some(entry);
        }
        // Byte offset the new entry goes to (that of the first larger id),
        // and the oldest entry (time, id, byte offset).
        let mut insert_at = None;
        let mut oldest: Option<(u64, &str, usize)> = None;
        let mut count = 0usize;
        let mut previous: Option<&str> = None;
        let mut start = 0usize;
        for entry in self.text.split(' ') {
            let at = start;
            start += entry.len() + 1;
            // An empty entry (two spaces, or one at an end) is not canonical.
            let (id, time) = canonical_entry(entry)?;
            if previous.is_some_and(|p| p >= id) || id == order_id {
                return None;
            }
            previous = Some(id);
            if insert_at.is_none() && id > order_id {
                insert_at = Some(at);
            }
            if oldest.is_none_or(|(t, i, ..)| (time, id) < (t, i)) {
                oldest = Some((time, id, at));
            }
            count += 1;
            if count > MAX_OUTCOMES {
                return None;
            }
        }
        let mut text = String::with_capacity(self.text.len() + entry.len() + 1);
        if count < MAX_OUTCOMES {
            splice(&mut text, &self.text, insert_at, &entry, None);
            return Some(text);
        }
        // Full: one of the entries, or the new one, is dropped.
        let (time, id, at) = oldest?;
        if (outcome.at_ms, order_id) < (time, id) {
            return Some(self.text.clone());
        }
        splice(&mut text, &self.text, insert_at, &entry, Some(at));
        Some(text)
    }

    /// Applies `change` to the outcomes as a map, keeps the newest
    /// [`MAX_OUTCOMES`] and writes the text anew, without the entries that
    /// did not parse. An outcome that the text cannot hold — an order id
    /// outside the id rule or a currency that is not ASCII letters and
    /// digits, which only the legacy ledger can bring — is forgotten too,
    /// as if it were the oldest: no reserve can name such an id, and a
    /// release with `confirmedQuantity` returns the units of a sale the
    /// product no longer remembers.
    pub fn change(&mut self, change: impl FnOnce(&mut BTreeMap<String, Outcome>)) {
        let mut recent = self.to_map();
        change(&mut recent);
        recent.retain(|id, outcome| fits(id, outcome));
        trim(&mut recent);
        let mut text = String::with_capacity(recent.len() * 64);
        for (id, outcome) in &recent {
            if !text.is_empty() {
                text.push(' ');
            }
            write_entry(&mut text, id, outcome);
        }
        self.text = text;
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        self.text.clear();
    }

    fn entries(&self) -> impl Iterator<Item = &str> {
        self.text.split(' ').filter(|entry| !entry.is_empty())
    }
}

/// Writes into `out` the entries of `text` (each a non-empty run
/// between single spaces) with `entry` put before the one starting at
/// byte offset `insert_at` (`None`: after the last), leaving out the one
/// starting at `drop_at`.
fn splice(
    out: &mut String,
    text: &str,
    insert_at: Option<usize>,
    entry: &str,
    drop_at: Option<usize>,
) {
    let mut push = |part: &str| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(part);
    };
    let mut start = 0;
    for existing in text.split(' ').filter(|e| !e.is_empty()) {
        let at = start;
        start += existing.len() + 1;
        if insert_at == Some(at) {
            push(entry);
        }
        if drop_at != Some(at) {
            push(existing);
        }
    }
    if insert_at.is_none() {
        push(entry);
    }
}

impl Serialize for Outcomes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Outcomes {
    /// Takes the text as stored; entries are parsed when used.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Outcomes { text })
    }
}

/// The order id and time of `entry` when it is exactly what
/// [`write_entry`] writes for an outcome that [`fits`], so the map path
/// would keep it as it is; `None` otherwise. Byte checks only: no
/// allocation, no number is written back.
fn canonical_entry(entry: &str) -> Option<(&str, u64)> {
    let mut fields = entry.split(':');
    let id = fields.next().filter(|id| is_valid_id(id))?;
    let at_ms = fields.next().and_then(shortest_u64)?;
    let well_formed = match (fields.next()?, fields.next(), fields.next(), fields.next()) {
        ("r" | "e", None, None, None) => true,
        ("c", Some(quantity), Some(unit_price_minor), Some(currency)) => {
            fields.next().is_none()
                && is_shortest_i64(quantity)
                && is_shortest_i64(unit_price_minor)
                && is_currency_text(currency)
        }
        _ => false,
    };
    well_formed.then_some((id, at_ms))
}

/// `text` as a `u64` if it is how `u64`'s `Display` writes it: digits
/// only, no leading zero (unless it is `0`), in range.
fn shortest_u64(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = text == "0" || !text.starts_with('0');
    if digits_only && no_leading_zero {
        text.parse().ok()
    } else {
        None
    }
}

/// Whether `text` is how `i64`'s `Display` writes a number: an optional
/// `-` before a [`shortest_u64`] form, never `-0`, in range.
fn is_shortest_i64(text: &str) -> bool {
    let magnitude = text.strip_prefix('-').unwrap_or(text);
    text != "-0" && shortest_u64(magnitude).is_some() && text.parse::<i64>().is_ok()
}

/// Parses an entry, or logs why it cannot and gives `None`.
fn parse_or_log(entry: &str) -> Option<(&str, Outcome)> {
    parse_entry(entry)
        .map_err(|e| eprintln!("product: {e}; the outcome is forgotten, and a repeated reservation call of that order is answered as for an order the product no longer remembers"))
        .ok()
}

/// Whether the text can hold `outcome` of `order_id`.
fn fits(order_id: &str, outcome: &Outcome) -> bool {
    is_valid_id(order_id)
        && match &outcome.kind {
            OutcomeKind::Confirmed { currency, .. } => is_currency_text(currency),
            OutcomeKind::Released | OutcomeKind::Expired => true,
        }
}

fn is_currency_text(currency: &str) -> bool {
    !currency.is_empty() && currency.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn write_entry(text: &mut String, order_id: &str, outcome: &Outcome) {
    // Writing to a String cannot fail.
    let _ = write!(text, "{order_id}:{}:", outcome.at_ms);
    match &outcome.kind {
        OutcomeKind::Confirmed {
            quantity,
            unit_price_minor,
            currency,
        } => {
            let _ = write!(text, "c:{quantity}:{unit_price_minor}:{currency}");
        }
        OutcomeKind::Released => text.push('r'),
        OutcomeKind::Expired => text.push('e'),
    }
}

/// Parses one entry; the error quotes it (at most 100 characters) and says
/// what it should look like.
fn parse_entry(entry: &str) -> Result<(&str, Outcome), String> {
    let broken = || {
        let shown: String = entry.chars().take(100).collect();
        format!("stored reservation outcome '{shown}' is not {ENTRY_SHAPE}")
    };
    let mut fields = entry.split(':');
    // Any non-empty id reads back: only valid ids are written (`fits`),
    // and a lookup by a valid id cannot match another. Checking the id
    // rule here too cost ~10% of the host's CPU on the hot-product row.
    let order_id = fields
        .next()
        .filter(|id| !id.is_empty())
        .ok_or_else(broken)?;
    let at_ms = fields
        .next()
        .and_then(|at| at.parse::<u64>().ok())
        .ok_or_else(broken)?;
    let kind = match fields.next() {
        Some("c") => {
            let mut number = || fields.next().and_then(|n| n.parse::<i64>().ok());
            let (quantity, unit_price_minor) = (number(), number());
            let currency = fields.next().filter(|c| is_currency_text(c));
            match (quantity, unit_price_minor, currency) {
                (Some(quantity), Some(unit_price_minor), Some(currency)) => {
                    OutcomeKind::Confirmed {
                        quantity,
                        unit_price_minor,
                        currency: currency.to_owned(),
                    }
                }
                _ => return Err(broken()),
            }
        }
        Some("r") => OutcomeKind::Released,
        Some("e") => OutcomeKind::Expired,
        _ => return Err(broken()),
    };
    if fields.next().is_some() {
        return Err(broken());
    }
    Ok((order_id, Outcome { kind, at_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reservation::MAX_OUTCOMES;

    fn confirmed(quantity: i64, at_ms: u64) -> Outcome {
        Outcome {
            kind: OutcomeKind::Confirmed {
                quantity,
                unit_price_minor: 1250,
                currency: "EUR".into(),
            },
            at_ms,
        }
    }

    fn read(text: &str) -> Result<Outcomes, serde_json::Error> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
    }

    #[test]
    fn stored_text_is_short_sorted_and_reads_back() {
        let mut o = Outcomes::default();
        o.remember("o-2", OutcomeKind::Released, 5);
        o.remember("o-10", confirmed(2, 7).kind, 7);
        o.remember("o-1", OutcomeKind::Expired, 3);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, r#""o-1:3:e o-10:7:c:2:1250:EUR o-2:5:r""#);
        let back: Outcomes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        assert_eq!(back.len(), 3);
        assert_eq!(back.get("o-10"), Some(confirmed(2, 7)));
        assert_eq!(back.get("o-1").unwrap().kind, OutcomeKind::Expired);
        assert_eq!(back.get("o-2").unwrap().kind, OutcomeKind::Released);
    }

    #[test]
    fn an_id_that_prefixes_another_is_not_mistaken_for_it() {
        let mut o = Outcomes::default();
        o.remember("o-10", OutcomeKind::Released, 1);
        assert_eq!(o.get("o-1"), None);
        assert_eq!(o.get("o-10:1"), None);
        assert_eq!(o.get(""), None);
        assert!(o.get("o-10").is_some());
    }

    #[test]
    fn remember_keeps_the_newest_256_as_the_map_did() {
        let mut o = Outcomes::default();
        for i in 0..300u64 {
            o.remember(&format!("o{i}"), OutcomeKind::Released, 1000 - i);
        }
        assert_eq!(o.len(), MAX_OUTCOMES);
        assert!(o.get("o0").is_some() && o.get("o299").is_none());
        // Even with every field at its longest, the text is smaller than
        // the object of objects it replaces.
        let mut worst = Outcomes::default();
        worst.change(|recent| {
            for i in 0..MAX_OUTCOMES {
                recent.insert(
                    format!("{i:0>64}"),
                    Outcome {
                        kind: OutcomeKind::Confirmed {
                            quantity: i64::MIN,
                            unit_price_minor: i64::MIN,
                            currency: "USD".into(),
                        },
                        at_ms: u64::MAX,
                    },
                );
            }
        });
        assert_eq!(worst.len(), MAX_OUTCOMES);
        let text = serde_json::to_string(&worst).unwrap().len();
        let object = serde_json::to_string(&worst.to_map()).unwrap().len();
        assert!(text < object, "{text} bytes against {object}");
    }

    #[test]
    fn a_broken_entry_is_forgotten_when_used_and_never_fails_a_read() {
        for broken in [
            "o1:7:c:2:1250",
            "o1:7:c:2:x:EUR",
            "o1:7:sold",
            "o1:-7:r",
            "o1:7:r:extra",
            "o1:7:c:2:1250:E\"R",
            "o1",
        ] {
            let e = parse_entry(broken).unwrap_err();
            assert!(
                e.contains(&format!("'{broken}' is not <orderId>:<at>:c:")),
                "{e}"
            );
            let mut o = read(&format!("a:1:r {broken} z:2:e")).unwrap();
            assert_eq!(o.get("o1"), None, "{broken}");
            assert_eq!(o.get("a").unwrap().kind, OutcomeKind::Released);
            assert_eq!(o.get("z").unwrap().kind, OutcomeKind::Expired);
            o.remember("b", OutcomeKind::Released, 3);
            assert_eq!(serde_json::to_string(&o).unwrap(), r#""a:1:r b:3:r z:2:e""#);
        }
        assert!(read("").unwrap().is_empty());
    }

    /// `remember` on the text as `reservation::remember` on the map, then
    /// written anew, would leave it.
    fn remembered_through_the_map(o: &Outcomes, id: &str, outcome: &Outcome) -> Outcomes {
        let mut through_map = o.clone();
        let kind = outcome.kind.clone();
        through_map.change(|recent| remember(recent, id, kind, outcome.at_ms));
        through_map
    }

    #[test]
    fn adding_an_outcome_leaves_the_text_the_map_would() {
        // A fixed pseudo-random walk (64-bit LCG): ids from a pool a
        // little larger than the memory, so the text fills, ids repeat,
        // new ones are the oldest or land anywhere, and times tie.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut o = Outcomes::default();
        for step in 0..4_000 {
            let id = format!("o-{}", next(300));
            let at_ms = next(5_000);
            let kind = match next(3) {
                0 => confirmed(1 + next(5) as i64, at_ms).kind,
                1 => OutcomeKind::Released,
                _ => OutcomeKind::Expired,
            };
            let outcome = Outcome { kind, at_ms };
            let expected = remembered_through_the_map(&o, &id, &outcome);
            // A new order takes the splice, not the map.
            assert_eq!(
                o.with_new_entry(&id, &outcome).is_some(),
                o.get(&id).is_none(),
                "step {step}: {id}"
            );
            o.remember(&id, outcome.kind, at_ms);
            assert_eq!(o, expected, "step {step}: {id} at {at_ms}");
            assert!(o.len() <= MAX_OUTCOMES);
        }
        assert_eq!(o.len(), MAX_OUTCOMES);
    }

    #[test]
    fn adding_to_a_text_the_map_would_rewrite_leaves_what_the_map_would() {
        // Stored texts this code never writes (older writers, damage):
        // each entry kept verbatim by a splice would differ from the map's.
        let full_with_a_broken_entry = (0..255)
            .map(|i| format!("o{i:03}:{}:r", 100 + i))
            .chain(["o999:500:sold".to_owned()])
            .collect::<Vec<_>>()
            .join(" ");
        let long_id = "x".repeat(65);
        let texts = [
            "a:07:r".to_owned(),
            "a:+3:r".to_owned(),
            "a:7:c:+1:02:EUR".to_owned(),
            "a:7:c:-0:2:EUR".to_owned(),
            "a:7:c:1:2:E-R".to_owned(),
            "\u{e9}:0:r".to_owned(),
            "a.b:0:e".to_owned(),
            format!("{long_id}:0:r"),
            "a:1:r a:2:r".to_owned(),
            "c:1:r a:2:r".to_owned(),
            "a:1:r  c:2:r".to_owned(),
            " a:1:r".to_owned(),
            "a:1:r ".to_owned(),
            "a:18446744073709551616:r".to_owned(),
            "a:18446744073709551615:r".to_owned(),
            "a:7:c:-9223372036854775808:-1:EUR".to_owned(),
            "a:7:c:9223372036854775808:1:EUR".to_owned(),
            "a:7:c:1:2:".to_owned(),
            "a:7:c:1:2:EUR:x".to_owned(),
            "a:7:c:1:2".to_owned(),
            "a:7:r:".to_owned(),
            "a:7:".to_owned(),
            "a::r".to_owned(),
            ":7:r".to_owned(),
            "a:0:r c:0:e".to_owned(),
            full_with_a_broken_entry,
        ];
        for text in &texts {
            let o = read(text).unwrap();
            for (id, at_ms) in [("b", 0), ("a0", 50), ("zz", 1_000)] {
                let outcome = confirmed(1, at_ms);
                let expected = remembered_through_the_map(&o, id, &outcome);
                let mut got = o.clone();
                got.remember(id, outcome.kind, at_ms);
                assert_eq!(got, expected, "{text:?} + {id} at {at_ms}");
            }
        }
    }

    #[test]
    fn a_new_outcome_older_than_a_full_memory_is_not_kept() {
        let mut o = Outcomes::default();
        for i in 0..MAX_OUTCOMES as u64 {
            o.remember(&format!("o{i:03}"), OutcomeKind::Released, 100 + i);
        }
        let before = o.clone();
        o.remember("a", OutcomeKind::Released, 99);
        assert_eq!(o, before);
        // As old as the oldest, but a smaller id: it is the one dropped.
        o.remember("a", OutcomeKind::Released, 100);
        assert_eq!(o, before);
        // Newer: it pushes the oldest (o000) out.
        o.remember("zz", OutcomeKind::Expired, 1_000);
        assert_eq!(o.len(), MAX_OUTCOMES);
        assert!(o.get("o000").is_none() && o.get("zz").is_some());
        assert!(serde_json::to_string(&o).unwrap().ends_with(" zz:1000:e\""));
    }

    #[test]
    fn outcomes_the_text_cannot_hold_are_forgotten() {
        let mut o = Outcomes::default();
        o.change(|recent| {
            recent.insert("legacy id with spaces".into(), confirmed(1, 1));
            recent.insert("odd-currency".into(), {
                let mut c = confirmed(1, 2);
                if let OutcomeKind::Confirmed { currency, .. } = &mut c.kind {
                    *currency = "U S".into();
                }
                c
            });
            recent.insert("kept".into(), confirmed(1, 3));
        });
        assert_eq!(o.to_map().keys().collect::<Vec<_>>(), ["kept"]);
    }
}
