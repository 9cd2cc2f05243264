//! The product: its stored record, its public JSON shape and how changes
//! apply to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use service_kit::money::Money;

use crate::reservation::Reservation;

/// Most characters in a name.
pub const NAME_MAX: usize = 200;
/// Most characters in a description.
pub const DESCRIPTION_MAX: usize = 2000;
/// Most characters in a category.
pub const CATEGORY_MAX: usize = 100;
/// Highest price: 999,999,999.99.
pub const MAX_PRICE: Money = Money::from_minor(99_999_999_999);

/// A product as stored in the key-value store. Money is kept as integer
/// minor units (some state stores round JSON numbers); the reservation
/// ledger lives in the same document so stock and reservations change in
/// one compare-and-swap.
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
    /// Starts at 1, grows with every change; the ETag.
    pub version: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last change, RFC 3339 UTC.
    pub updated_at: String,
    /// A deleted product's tombstone: reads treat it as absent. Deletion
    /// writes a tombstone (with compare-and-swap) instead of removing the
    /// key, because `wasi:keyvalue` has no conditional delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Reservations by order id, active and released.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reservations: BTreeMap<String, Reservation>,
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
    /// The product this request creates, at version 1.
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
            deleted: false,
            reservations: BTreeMap::new(),
        }
    }
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
    /// event).
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
    /// marked deleted, without the reservation ledger.
    pub fn tombstone(&self, now: &str) -> Product {
        let mut t = self.next_version(now);
        t.deleted = true;
        t.reservations.clear();
        t
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
        assert!(!json.contains("deleted") && !json.contains("reservations"));
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
        let t = sample().tombstone("later");
        assert!(t.deleted);
        assert_eq!(t.version, 2);
    }
}
