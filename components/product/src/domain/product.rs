//! The product: its stored record, its public JSON shape, how changes
//! apply to it, and the reservation rules (hold, confirm, release,
//! expiry) that move its stock. The ledger's data types are in
//! [`crate::domain::reservation`]; this module depends on that one, never
//! the other way round.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use service_kit::clock::format_rfc3339;
use service_kit::money::Money;
use service_kit::outbox::{self, StoredEvent};
use service_kit::pages::Slot;

use crate::domain::outcomes::Outcomes;
use crate::domain::reservation::{
    Hold, LegacyReservation, Outcome, OutcomeKind, convert_legacy, remember,
};

/// Most characters in a name.
pub const NAME_MAX: usize = 200;
/// Most UTF-8 bytes in a name (4 per character: any text within
/// [`NAME_MAX`] characters fits).
pub const NAME_MAX_BYTES: usize = 4 * NAME_MAX;
/// Most characters in a description.
pub const DESCRIPTION_MAX: usize = 2000;
/// Most UTF-8 bytes in a description.
pub const DESCRIPTION_MAX_BYTES: usize = 4 * DESCRIPTION_MAX;
/// Most characters in a category.
pub const CATEGORY_MAX: usize = 100;
/// Most UTF-8 bytes in a category.
pub const CATEGORY_MAX_BYTES: usize = 4 * CATEGORY_MAX;
/// Highest price: 999,999,999.99.
pub const MAX_PRICE: Money = Money::from_minor(99_999_999_999);
/// Most unconfirmed holds a product can carry whatever
/// `reservation_max_holds` says: with [`crate::domain::reservation::MAX_OUTCOMES`]
/// outcomes and the text caps above, the worst-case record stays under
/// 64 KiB (a unit test builds it).
pub const MAX_HOLDS_CEILING: usize = 100;

/// The slots of a product's entries in its paged indexes
/// (docs/storage-layout.md, "Validity by slot"): an index entry counts
/// only when the record stores its slot. `None` while the entry is being
/// written, or for a legacy record not yet re-indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// Entry in the index of every product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Slot>,
    /// Entry in the index of the product's category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Slot>,
}

impl Slots {
    /// Whether both entries are recorded.
    pub fn complete(&self) -> bool {
        self.all.is_some() && self.category.is_some()
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.category.is_none()
    }
}

/// A product as stored in the key-value store. Money is kept as integer
/// minor units (some state stores round JSON numbers); holds and recent
/// outcomes live in the same document so stock and reservations change in
/// one compare-and-swap. Bounded: text is capped in characters and bytes,
/// holds at [`MAX_HOLDS_CEILING`], outcomes at 256, so it stays < 64 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// Unique within the tenant.
    pub id: String,
    /// 1–200 characters.
    pub name: String,
    /// Up to 2000 characters.
    pub description: String,
    /// Up to 100 characters; lists can filter on it.
    pub category: String,
    /// Price in minor units, 0 ..= 99,999,999,999.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units available to reserve.
    pub stock: i64,
    /// Starts at 1, grows with every visible change; the ETag.
    pub version: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last change, RFC 3339 UTC.
    pub updated_at: String,
    /// Which life of this id the record is: the `createdAt` of its
    /// creation, kept by the tombstone. Index entries carry it (as their
    /// time), so an entry of an earlier life is recognisably stale. Empty
    /// only in legacy records, filled by [`Product::settle`].
    #[serde(default)]
    pub incarnation: String,
    /// A deleted product's tombstone: reads treat it as absent. Deletion
    /// writes a tombstone (with compare-and-swap) instead of removing the
    /// key, because `wasi:keyvalue` has no conditional delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Slots of this product's index entries.
    #[serde(default, skip_serializing_if = "Slots::is_empty")]
    pub slots: Slots,
    /// Unconfirmed holds by order id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<String, Hold>,
    /// Outcomes of recent reservations by order id (at most 256), stored
    /// as one string of short entries ([`crate::domain::outcomes`] says
    /// why).
    #[serde(default, skip_serializing_if = "Outcomes::is_empty")]
    pub outcomes: Outcomes,
    /// Outcomes in their earlier stored form, an object of objects: read
    /// from records written before [`Outcomes`], never written;
    /// [`Product::settle`] moves them into `outcomes`.
    #[serde(default, rename = "recent", skip_serializing)]
    pub legacy_outcomes: Option<BTreeMap<String, Outcome>>,
    /// The legacy reservation ledger: read from old records, never
    /// written; [`Product::settle`] converts it to `outcomes`.
    #[serde(default, skip_serializing)]
    pub reservations: Option<BTreeMap<String, LegacyReservation>>,
    /// Events of a saved change that the broker refused, packed against
    /// this record's view ([`service_kit::outbox`]): at most one
    /// `ProductCreated`/`Updated`/`Deleted` and one `StockChanged`,
    /// published by the next request that touches the product
    /// (docs/messaging.md, "Events of a saved change"). Kept by the
    /// tombstone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_events: Vec<StoredEvent>,
}

/// The public JSON representation (API responses and event data).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductView<'a> {
    /// Id.
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Description.
    pub description: &'a str,
    /// Category.
    pub category: &'a str,
    /// Price as an exact JSON number.
    pub price: Money,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// Units in stock.
    pub stock: i64,
    /// Version (the ETag without quotes).
    pub version: u64,
    /// Creation time.
    pub created_at: &'a str,
    /// Last change.
    pub updated_at: &'a str,
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// Client-chosen id, if any.
    pub id: Option<String>,
    /// Name.
    pub name: String,
    /// Description (default empty).
    pub description: String,
    /// Category (default empty).
    pub category: String,
    /// Price.
    pub price: Money,
    /// Currency (default USD).
    pub currency: String,
    /// Stock (default 0).
    pub stock: i64,
}

/// A validated update: fields to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New category.
    pub category: Option<String>,
    /// New price.
    pub price: Option<Money>,
    /// New currency.
    pub currency: Option<String>,
    /// New stock level.
    pub stock: Option<i64>,
}

impl NewProduct {
    /// The product this request creates, at version 1, not yet indexed.
    pub fn into_product(self, id: String, now: &str) -> Product {
        Product {
            id,
            name: self.name,
            description: self.description,
            category: self.category,
            price_minor: self.price.minor(),
            currency: self.currency,
            stock: self.stock,
            version: 1,
            created_at: now.to_owned(),
            updated_at: now.to_owned(),
            incarnation: now.to_owned(),
            deleted: false,
            slots: Slots::default(),
            holds: BTreeMap::new(),
            outcomes: Outcomes::default(),
            legacy_outcomes: None,
            reservations: None,
            pending_events: Vec::new(),
        }
    }
}

/// RFC 3339 text of a time in milliseconds since the epoch.
pub fn rfc3339_of_ms(ms: u64) -> String {
    format_rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// What [`Product::settle`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// The record changed and must be written.
    pub changed: bool,
    /// Stock changed (expired holds returned): a new version, and a
    /// `StockChanged` event once written.
    pub stock_changed: bool,
}

/// A validated `POST .../reservations` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    /// The order taking the units (the reservation id).
    pub order_id: String,
    /// Units to take, ≥ 1.
    pub quantity: i64,
}

/// Where a reservation stands, for its JSON view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Held until this time (milliseconds since the epoch).
    Held {
        /// Expiry.
        expires_at_ms: u64,
    },
    /// Confirmed: sold.
    Confirmed,
}

/// A reservation as answered to the order service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Units.
    pub quantity: i64,
    /// Price per unit when held, minor units.
    pub unit_price_minor: i64,
    /// Currency of the price.
    pub currency: String,
    /// Held or confirmed.
    pub standing: Standing,
}

/// The JSON returned for a reservation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView<'a> {
    /// The order holding the units.
    pub order_id: &'a str,
    /// The product.
    pub product_id: &'a str,
    /// Units.
    pub quantity: i64,
    /// Price per unit when held.
    pub unit_price: Money,
    /// Currency of `unitPrice`.
    pub currency: &'a str,
    /// `held` or `confirmed`.
    pub status: &'static str,
    /// When an unconfirmed hold expires (RFC 3339); absent once confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The product as this answer found it (reserve answers only): what an
    /// order keeps of it besides the price, so that it needs no separate
    /// `GET` of the product (docs/storage-layout.md, "Reservations").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<ReservedProduct<'a>>,
}

/// The product fields of a reserve answer: `{"name", "version",
/// "createdAt"}`, with the meaning they have in the product's own JSON,
/// as the answer found the product (after the hold, for a new one).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedProduct<'a> {
    /// The product's name.
    pub name: &'a str,
    /// The product's version (its ETag).
    pub version: u64,
    /// The product's creation time (RFC 3339): its incarnation.
    pub created_at: &'a str,
}

impl<'a> ReservationView<'a> {
    /// The view with `product`'s fields (a reserve answer).
    pub fn naming(self, product: &'a Product) -> Self {
        ReservationView {
            product: Some(ReservedProduct {
                name: &product.name,
                version: product.version,
                created_at: &product.created_at,
            }),
            ..self
        }
    }
}

impl Reservation {
    /// The public representation.
    pub fn view<'a>(&'a self, product_id: &'a str, order_id: &'a str) -> ReservationView<'a> {
        let (status, expires_at) = match self.standing {
            Standing::Held { expires_at_ms } => ("held", Some(rfc3339_of_ms(expires_at_ms))),
            Standing::Confirmed => ("confirmed", None),
        };
        ReservationView {
            order_id,
            product_id,
            quantity: self.quantity,
            unit_price: Money::from_minor(self.unit_price_minor),
            currency: &self.currency,
            status,
            expires_at,
            product: None,
        }
    }

    fn held(h: &Hold) -> Reservation {
        Reservation {
            quantity: h.quantity,
            unit_price_minor: h.unit_price_minor,
            currency: h.currency.clone(),
            standing: Standing::Held {
                expires_at_ms: h.expires_at_ms,
            },
        }
    }
}

/// What a reserve decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Units were taken: the product's next state and the new hold.
    New(Box<Product>, Reservation),
    /// The same order already holds (or bought) the same quantity.
    Repeat(Reservation),
}

/// Why a reserve or confirm was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 409 `reservation-conflict`: the order holds another quantity.
    OtherQuantity {
        /// What it holds.
        reserved: i64,
    },
    /// 409 `reservation-released`: a release (or, for reserve, an expiry)
    /// came first.
    Released,
    /// 409 `reservation-expired`: the hold expired before the confirm.
    Expired,
    /// 409 `reservation-unknown`: no hold or outcome for the order.
    Unknown,
    /// 409 `insufficient-stock`.
    InsufficientStock {
        /// Units available.
        available: i64,
    },
    /// 503: too many unconfirmed holds; retry after this many seconds
    /// (when the oldest hold expires at the latest).
    TooManyHolds {
        /// Seconds until a hold expires, ≥ 1.
        retry_after_secs: u64,
    },
}

impl Product {
    /// The public representation.
    pub fn view(&self) -> ProductView<'_> {
        ProductView {
            id: &self.id,
            name: &self.name,
            description: &self.description,
            category: &self.category,
            price: self.price(),
            currency: &self.currency,
            stock: self.stock,
            version: self.version,
            created_at: &self.created_at,
            updated_at: &self.updated_at,
        }
    }

    /// The price.
    pub fn price(&self) -> Money {
        Money::from_minor(self.price_minor)
    }

    /// The next version of this product, stamped `now`.
    pub fn next_version(&self, now: &str) -> Product {
        let mut next = self.clone();
        next.version += 1;
        next.updated_at = now.to_owned();
        next
    }

    /// Applies `patch`; `None` when it changes nothing (no new version, no
    /// event). The category's index slot is the caller's business.
    pub fn apply(&self, patch: &ProductPatch, now: &str) -> Option<Product> {
        let mut next = self.next_version(now);
        if let Some(v) = &patch.name {
            next.name.clone_from(v);
        }
        if let Some(v) = &patch.description {
            next.description.clone_from(v);
        }
        if let Some(v) = &patch.category {
            next.category.clone_from(v);
        }
        if let Some(v) = patch.price {
            next.price_minor = v.minor();
        }
        if let Some(v) = &patch.currency {
            next.currency.clone_from(v);
        }
        if let Some(v) = patch.stock {
            next.stock = v;
        }
        let unchanged = next.name == self.name
            && next.description == self.description
            && next.category == self.category
            && next.price_minor == self.price_minor
            && next.currency == self.currency
            && next.stock == self.stock;
        (!unchanged).then_some(next)
    }

    /// The tombstone that replaces this product on delete: a new version,
    /// marked deleted, keeping its incarnation, without holds, outcomes or
    /// slots (a later confirm finds no product: 404).
    pub fn tombstone(&self, now: &str) -> Product {
        let mut t = self.next_version(now);
        t.deleted = true;
        t.holds.clear();
        t.outcomes.clear();
        t.legacy_outcomes = None;
        t.slots = Slots::default();
        t.reservations = None;
        t
    }

    /// Brings a record up to date in place before any use: fills the
    /// incarnation of a legacy record, converts a legacy ledger to
    /// outcomes, and returns the stock of holds expired at `now_ms`
    /// (recording them `expired`, with a new version when stock moved).
    pub fn settle(&mut self, now_ms: u64) -> Settled {
        let before = (!self.pending_events.is_empty())
            .then(|| serde_json::value::to_raw_value(&self.view()).ok())
            .flatten();
        let settled = self.settle_fields(now_ms);
        if let Some(before) = before
            && settled.changed
        {
            let mut pending = std::mem::take(&mut self.pending_events);
            outbox::rebase(&mut pending, &before, &self.view());
            self.pending_events = pending;
        }
        settled
    }

    fn settle_fields(&mut self, now_ms: u64) -> Settled {
        let mut settled = Settled::default();
        if self.incarnation.is_empty() {
            self.incarnation.clone_from(&self.created_at);
            settled.changed = true;
        }
        let legacy_outcomes = self.legacy_outcomes.take();
        let ledger = self.reservations.take();
        if legacy_outcomes.is_some() || ledger.is_some() {
            self.outcomes.change(|recent| {
                // The string is the newer form: it wins over the object.
                for (order_id, outcome) in legacy_outcomes.unwrap_or_default() {
                    recent.entry(order_id).or_insert(outcome);
                }
                if let Some(ledger) = ledger {
                    convert_legacy(ledger, recent);
                }
            });
            settled.changed = true;
        }
        if self.deleted {
            return settled;
        }
        let expired: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            return settled;
        }
        // One change of the outcomes' text for all of them.
        let (holds, stock) = (&mut self.holds, &mut self.stock);
        self.outcomes.change(|recent| {
            for id in expired {
                if let Some(h) = holds.remove(&id) {
                    *stock = stock.saturating_add(h.quantity);
                    remember(recent, &id, OutcomeKind::Expired, h.expires_at_ms);
                }
            }
        });
        self.version += 1;
        self.updated_at = rfc3339_of_ms(now_ms);
        Settled {
            changed: true,
            stock_changed: true,
        }
    }

    /// Whether [`Product::settle`] would change anything at `now_ms`.
    pub fn needs_settling(&self, now_ms: u64) -> bool {
        self.incarnation.is_empty()
            || self.reservations.is_some()
            || self.legacy_outcomes.is_some()
            || (!self.deleted && self.holds.values().any(|h| h.expires_at_ms <= now_ms))
    }

    /// Decides a reservation on a settled product: a new hold of
    /// `hold_ms` milliseconds, or a repeat, or a refusal.
    pub fn reserve(
        &self,
        request: &ReservationRequest,
        now_ms: u64,
        hold_ms: u64,
        max_holds: usize,
    ) -> Result<Reserved, Refusal> {
        let rid = &request.order_id;
        if let Some(h) = self.holds.get(rid) {
            return if h.quantity == request.quantity {
                Ok(Reserved::Repeat(Reservation::held(h)))
            } else {
                Err(Refusal::OtherQuantity {
                    reserved: h.quantity,
                })
            };
        }
        if let Some(o) = self.outcomes.get(rid) {
            return match o.kind {
                OutcomeKind::Confirmed {
                    quantity,
                    unit_price_minor,
                    currency,
                } if quantity == request.quantity => Ok(Reserved::Repeat(Reservation {
                    quantity,
                    unit_price_minor,
                    currency,
                    standing: Standing::Confirmed,
                })),
                OutcomeKind::Confirmed { quantity, .. } => {
                    Err(Refusal::OtherQuantity { reserved: quantity })
                }
                OutcomeKind::Released | OutcomeKind::Expired => Err(Refusal::Released),
            };
        }
        if self.holds.len() >= max_holds.min(MAX_HOLDS_CEILING) {
            let soonest = self.holds.values().map(|h| h.expires_at_ms).min();
            let wait_ms = soonest.unwrap_or(now_ms).saturating_sub(now_ms);
            return Err(Refusal::TooManyHolds {
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            });
        }
        if self.stock < request.quantity {
            return Err(Refusal::InsufficientStock {
                available: self.stock,
            });
        }
        let hold = Hold {
            quantity: request.quantity,
            unit_price_minor: self.price_minor,
            currency: self.currency.clone(),
            expires_at_ms: now_ms.saturating_add(hold_ms),
        };
        let mut next = self.next_version(&rfc3339_of_ms(now_ms));
        next.stock -= request.quantity;
        next.holds.insert(rid.clone(), hold.clone());
        Ok(Reserved::New(Box::new(next), Reservation::held(&hold)))
    }

    /// Confirms the hold of `order_id` on a settled product: the next
    /// state (`None` for an idempotent repeat) and the confirmed
    /// reservation. Stock does not move (the hold took it), so the
    /// version does not either.
    pub fn confirm(
        &self,
        order_id: &str,
        now_ms: u64,
    ) -> Result<(Option<Product>, Reservation), Refusal> {
        if let Some(h) = self.holds.get(order_id) {
            let mut next = self.clone();
            next.holds.remove(order_id);
            next.outcomes.remember(
                order_id,
                OutcomeKind::Confirmed {
                    quantity: h.quantity,
                    unit_price_minor: h.unit_price_minor,
                    currency: h.currency.clone(),
                },
                now_ms,
            );
            let r = Reservation {
                standing: Standing::Confirmed,
                ..Reservation::held(h)
            };
            return Ok((Some(next), r));
        }
        match self.outcomes.get(order_id).map(|o| o.kind) {
            Some(OutcomeKind::Confirmed {
                quantity,
                unit_price_minor,
                currency,
            }) => Ok((
                None,
                Reservation {
                    quantity,
                    unit_price_minor,
                    currency,
                    standing: Standing::Confirmed,
                },
            )),
            Some(OutcomeKind::Expired) => Err(Refusal::Expired),
            Some(OutcomeKind::Released) => Err(Refusal::Released),
            None => Err(Refusal::Unknown),
        }
    }

    /// Releases `order_id` on a settled product: the next state and
    /// whether stock moved, or `None` when nothing changes. An unconfirmed
    /// hold or a remembered sale returns its units; an unknown order with
    /// `confirmed_quantity` is a sale older than the product's memory and
    /// returns that many; an unknown order without it leaves a `released`
    /// outcome so a late reserve is refused.
    pub fn release(
        &self,
        order_id: &str,
        confirmed_quantity: Option<i64>,
        now_ms: u64,
    ) -> Option<(Product, bool)> {
        let units = if let Some(h) = self.holds.get(order_id) {
            Some(h.quantity)
        } else {
            match self.outcomes.get(order_id).map(|o| o.kind) {
                Some(OutcomeKind::Confirmed { quantity, .. }) => Some(quantity),
                Some(OutcomeKind::Released | OutcomeKind::Expired) => return None,
                None => confirmed_quantity,
            }
        };
        let mut next = match units {
            Some(n) => {
                let mut next = self.next_version(&rfc3339_of_ms(now_ms));
                next.stock = next.stock.saturating_add(n);
                next
            }
            None => self.clone(),
        };
        next.holds.remove(order_id);
        next.outcomes
            .remember(order_id, OutcomeKind::Released, now_ms);
        Some((next, units.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Product {
        NewProduct {
            id: None,
            name: "Widget".into(),
            description: "A widget".into(),
            category: "tools".into(),
            price: Money::from_minor(1250),
            currency: "USD".into(),
            stock: 10,
        }
        .into_product("p1".into(), "2025-01-01T00:00:00.000Z")
    }

    #[test]
    fn new_product_starts_at_version_1() {
        let p = sample();
        assert_eq!(
            (p.version, p.created_at.as_str()),
            (1, p.updated_at.as_str())
        );
    }

    #[test]
    fn view_has_api_fields_and_exact_price() {
        let json = serde_json::to_string(&sample().view()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"p1","name":"Widget","description":"A widget","category":"tools","price":12.5,"currency":"USD","stock":10,"version":1,"createdAt":"2025-01-01T00:00:00.000Z","updatedAt":"2025-01-01T00:00:00.000Z"}"#
        );
    }

    #[test]
    fn stored_record_keeps_minor_units_not_floats() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains(r#""priceMinor":1250"#), "{json}");
        assert!(!json.contains("deleted") && !json.contains("holds") && !json.contains("slots"));
        let back: Product = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn apply_bumps_version_only_on_change() {
        let p = sample();
        assert_eq!(p.apply(&ProductPatch::default(), "later"), None);
        let same_name = ProductPatch {
            name: Some("Widget".into()),
            ..Default::default()
        };
        assert_eq!(p.apply(&same_name, "later"), None);
        let patch = ProductPatch {
            price: Some(Money::from_minor(999)),
            stock: Some(3),
            ..Default::default()
        };
        let next = p.apply(&patch, "later").unwrap();
        assert_eq!((next.version, next.price_minor, next.stock), (2, 999, 3));
        assert_eq!(next.updated_at, "later");
        assert_eq!(next.created_at, p.created_at);
        assert_eq!(next.name, "Widget");
    }

    #[test]
    fn tombstone_is_a_new_deleted_version() {
        let mut p = sample();
        p.holds.insert("o1".into(), hold(1, 10));
        let t = p.tombstone("later");
        assert!(t.deleted && t.holds.is_empty());
        assert_eq!(t.version, 2);
        assert_eq!(t.incarnation, p.incarnation);
    }

    fn hold(quantity: i64, expires_at_ms: u64) -> Hold {
        Hold {
            quantity,
            unit_price_minor: 1250,
            currency: "USD".into(),
            expires_at_ms,
        }
    }

    fn req(order: &str, quantity: i64) -> ReservationRequest {
        ReservationRequest {
            order_id: order.into(),
            quantity,
        }
    }

    const HOLD_MS: u64 = 120_000;

    fn reserved(p: &Product, order: &str, quantity: i64, now: u64) -> Product {
        match p.reserve(&req(order, quantity), now, HOLD_MS, 100).unwrap() {
            Reserved::New(next, _) => *next,
            other => panic!("expected a new hold, got {other:?}"),
        }
    }

    #[test]
    fn reserve_holds_stock_and_snapshots_price() {
        let next = reserved(&sample(), "o1", 2, 1000);
        assert_eq!((next.stock, next.version), (8, 2));
        assert_eq!(next.holds["o1"], hold(2, 1000 + HOLD_MS));
        let again = next.reserve(&req("o1", 2), 2000, HOLD_MS, 100).unwrap();
        assert!(
            matches!(again, Reserved::Repeat(r) if r.standing == Standing::Held { expires_at_ms: 1000 + HOLD_MS })
        );
        assert_eq!(
            next.reserve(&req("o1", 3), 2000, HOLD_MS, 100).unwrap_err(),
            Refusal::OtherQuantity { reserved: 2 }
        );
        assert_eq!(
            next.reserve(&req("o2", 9), 2000, HOLD_MS, 100).unwrap_err(),
            Refusal::InsufficientStock { available: 8 }
        );
    }

    #[test]
    fn too_many_holds_says_when_to_retry() {
        let mut p = sample();
        p.stock = 100;
        let p = reserved(&p, "o1", 1, 0);
        let p = reserved(&p, "o2", 1, 500);
        assert_eq!(
            p.reserve(&req("o3", 1), 60_500, HOLD_MS, 2).unwrap_err(),
            Refusal::TooManyHolds {
                retry_after_secs: 60
            }
        );
    }

    #[test]
    fn confirm_is_idempotent_and_keeps_stock() {
        let held = reserved(&sample(), "o1", 2, 0);
        let (next, r) = held.confirm("o1", 10).unwrap();
        let next = next.unwrap();
        assert_eq!((next.stock, next.version), (8, 2), "no new version");
        assert!(next.holds.is_empty());
        assert_eq!(r.standing, Standing::Confirmed);
        let (none, again) = next.confirm("o1", 20).unwrap();
        assert_eq!((none, again), (None, r));
        assert!(matches!(
            next.reserve(&req("o1", 2), 30, HOLD_MS, 100).unwrap(),
            Reserved::Repeat(_)
        ));
        assert_eq!(next.confirm("nope", 30).unwrap_err(), Refusal::Unknown);
    }

    #[test]
    fn expiry_returns_stock_with_a_new_version() {
        let mut p = reserved(&sample(), "o1", 2, 0);
        assert!(!p.needs_settling(HOLD_MS - 1));
        assert!(p.needs_settling(HOLD_MS));
        let s = p.settle(HOLD_MS + 5);
        assert!(s.changed && s.stock_changed);
        assert_eq!((p.stock, p.version), (10, 3));
        assert_eq!(p.confirm("o1", HOLD_MS + 6).unwrap_err(), Refusal::Expired);
        assert_eq!(
            p.reserve(&req("o1", 2), HOLD_MS + 6, HOLD_MS, 100)
                .unwrap_err(),
            Refusal::Released
        );
        assert_eq!(p.settle(HOLD_MS + 7), Settled::default());
    }

    #[test]
    fn release_returns_units_once_and_blocks_late_reserves() {
        let held = reserved(&sample(), "o1", 2, 0);
        let (released, moved) = held.release("o1", None, 10).unwrap();
        assert!(moved);
        assert_eq!((released.stock, released.version), (10, 3));
        assert_eq!(released.release("o1", Some(2), 20), None, "once only");
        assert_eq!(released.confirm("o1", 20).unwrap_err(), Refusal::Released);
        // A confirmed sale the product remembers returns its units.
        let sold = held.confirm("o1", 5).unwrap().0.unwrap();
        let (back, _) = sold.release("o1", None, 6).unwrap();
        assert_eq!(back.stock, 10);
        // Release before reserve: a tombstone, no stock, no new version.
        let (tomb, moved) = sample().release("early", None, 1).unwrap();
        assert!(!moved);
        assert_eq!((tomb.stock, tomb.version), (10, 1));
        assert_eq!(
            tomb.reserve(&req("early", 1), 2, HOLD_MS, 100).unwrap_err(),
            Refusal::Released
        );
        // An unknown sale older than the memory returns what the order says.
        let (old, moved) = sample().release("ancient", Some(4), 1).unwrap();
        assert!(moved);
        assert_eq!(old.stock, 14);
    }

    #[test]
    fn legacy_record_settles_into_outcomes() {
        let json = r#"{"id":"p1","name":"W","description":"","category":"","priceMinor":100,"currency":"USD","stock":3,"version":4,"createdAt":"2025-01-01T00:00:00.000Z","updatedAt":"2025-01-01T00:00:00.000Z","reservations":{"o1":{"quantity":2,"unitPriceMinor":100,"currency":"USD","createdAt":"2025-01-01T00:00:00.000Z"},"o2":{"quantity":1,"unitPriceMinor":100,"currency":"USD","createdAt":"2025-01-01T00:00:00.000Z","releasedAt":"2025-01-01T00:00:01.000Z"}}}"#;
        let mut p: Product = serde_json::from_str(json).unwrap();
        assert!(p.needs_settling(0));
        let s = p.settle(0);
        assert!(s.changed && !s.stock_changed);
        assert_eq!(
            (p.version, p.incarnation.as_str()),
            (4, "2025-01-01T00:00:00.000Z")
        );
        assert!(matches!(
            p.outcomes.get("o1").unwrap().kind,
            OutcomeKind::Confirmed { quantity: 2, .. }
        ));
        assert_eq!(p.outcomes.get("o2").unwrap().kind, OutcomeKind::Released);
        let stored = serde_json::to_string(&p).unwrap();
        assert!(!stored.contains("reservations"), "{stored}");
        let (_, r) = p.confirm("o1", 1).unwrap();
        assert_eq!(r.quantity, 2);
    }

    #[test]
    fn outcomes_stored_as_an_object_move_into_the_text_when_settled() {
        let json = r#"{"id":"p1","name":"W","description":"","category":"","priceMinor":100,"currency":"USD","stock":3,"version":4,"createdAt":"2025-01-01T00:00:00.000Z","updatedAt":"2025-01-01T00:00:00.000Z","incarnation":"2025-01-01T00:00:00.000Z","recent":{"o1":{"s":"confirmed","q":2,"p":100,"c":"USD","at":7},"o2":{"at":9,"s":"released"}}}"#;
        let mut p: Product = serde_json::from_str(json).unwrap();
        assert!(p.needs_settling(0));
        let s = p.settle(0);
        assert!(s.changed && !s.stock_changed);
        assert_eq!(p.version, 4, "moving outcomes is not a visible change");
        let stored = serde_json::to_string(&p).unwrap();
        assert!(
            stored.contains(r#""outcomes":"o1:7:c:2:100:USD o2:9:r""#)
                && !stored.contains("recent"),
            "{stored}"
        );
        let back: Product = serde_json::from_str(&stored).unwrap();
        assert!(!back.needs_settling(0));
        assert_eq!(back.confirm("o1", 1).unwrap().1.quantity, 2);
        assert_eq!(back.confirm("o2", 1).unwrap_err(), Refusal::Released);
        // Both forms (not written by any version, but readable): the
        // string wins for an order id in both.
        let both = json.replace(r#""recent""#, r#""outcomes":"o1:3:r","recent""#);
        let mut p: Product = serde_json::from_str(&both).unwrap();
        p.settle(0);
        assert_eq!(p.outcomes.get("o1").unwrap().kind, OutcomeKind::Released);
        assert_eq!(p.outcomes.get("o2").unwrap().kind, OutcomeKind::Released);
        let broken = json.replace(r#""at":9,"#, "");
        let e = serde_json::from_str::<Product>(&broken).unwrap_err();
        assert!(e.to_string().contains("missing field `at`"), "{e}");
    }

    #[test]
    fn worst_case_record_stays_under_64_kib() {
        let wide = |n: usize| "\u{1D11E}".repeat(n); // 4 UTF-8 bytes each
        let rid = |i: usize| format!("{i:0>64}");
        let mut p = NewProduct {
            id: None,
            name: wide(NAME_MAX),
            description: wide(DESCRIPTION_MAX),
            category: wide(CATEGORY_MAX),
            price: MAX_PRICE,
            currency: "USD".into(),
            stock: i64::from(i32::MAX),
        }
        .into_product("i".repeat(64), "2025-01-01T00:00:00.000Z");
        assert_eq!(p.name.len(), NAME_MAX_BYTES);
        assert_eq!(p.description.len(), DESCRIPTION_MAX_BYTES);
        p.version = u64::MAX;
        let big = Slot {
            shard: 7,
            page: u32::MAX,
            pos: u32::MAX,
        };
        p.slots = Slots {
            all: Some(big),
            category: Some(big),
        };
        for i in 0..MAX_HOLDS_CEILING {
            p.holds.insert(
                rid(i),
                Hold {
                    quantity: i64::from(i32::MAX),
                    unit_price_minor: MAX_PRICE.minor(),
                    currency: "USD".into(),
                    expires_at_ms: u64::MAX,
                },
            );
        }
        p.outcomes.change(|recent| {
            for i in 0..crate::domain::reservation::MAX_OUTCOMES {
                recent.insert(
                    rid(1000 + i),
                    Outcome {
                        kind: OutcomeKind::Confirmed {
                            quantity: i64::from(i32::MAX),
                            unit_price_minor: MAX_PRICE.minor(),
                            currency: "USD".into(),
                        },
                        at_ms: u64::MAX,
                    },
                );
            }
        });
        // A full pending list: one change's events (ProductUpdated and
        // StockChanged) whose data differs from the record's view in what
        // reservations may change meanwhile (stock, version, updatedAt).
        let tenant = service_kit::tenant::TenantId::parse(&"t".repeat(64)).unwrap();
        let mut then = p.clone();
        then.stock = i64::from(i32::MIN);
        then.version = u64::MAX - 1;
        then.updated_at = "2024-12-31T23:59:59.999Z".into();
        let events: Vec<outbox::Pending> = ["ProductUpdated", "StockChanged"]
            .iter()
            .map(|kind| {
                outbox::Pending::new(
                    "products",
                    service_kit::events::CloudEvent::new(
                        "wasmshop/product",
                        kind,
                        &tenant,
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        &then.view(),
                    )
                    .with_subject(&p.id),
                )
            })
            .collect();
        p.pending_events = outbox::pack(&events, &p.view());
        let bytes = serde_json::to_vec(&p).unwrap().len();
        assert!(bytes < 64 * 1024, "worst-case record is {bytes} bytes");
        let back: Product = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        let unpacked = outbox::unpack(&back.pending_events, &back.view());
        assert_eq!(unpacked[1].event.to_json(), events[1].event.to_json());
    }
}
