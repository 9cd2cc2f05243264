//! What the order service keeps in the key-value store, per tenant
//! (`docs/storage-layout.md`, "Orders", is the reference):
//!
//! - `tenant/<t>/order/<id>`: the order document, through its life
//!   `creating` → `confirming` → `live` (or `failed`), then `deleted`;
//! - paged indexes under `tenant/<t>/orders/...` (all, per customer, per
//!   status, per product, per product while open), whose entries count
//!   only while the order stores their slot;
//! - legacy documents of earlier versions (one tenant index, one
//!   productId → order ids document per product, one record per
//!   `Idempotency-Key`), read until a tenant's migration is done.
//!
//! Key prefixes differ from the product service's, so both may share one
//! store.

use serde::{Deserialize, Serialize};
use service_kit::index::{CreationIndex, Indexed};
use service_kit::tenant::TenantId;
use sha2::{Digest, Sha256};

use crate::domain::{Idempotency, Order, Status};

/// Key of an order document.
pub fn order_key(tenant: &TenantId, id: &str) -> String {
    format!("tenant/{tenant}/order/{id}")
}

/// Prefix of the paged index of every order of a tenant.
pub fn all_index(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/orders/all")
}

/// Prefix of the paged index of one customer's orders. Customer ids are
/// free text, so the key holds their digest.
pub fn customer_index(tenant: &TenantId, customer_id: &str) -> String {
    format!("tenant/{tenant}/orders/customer/{}", digest(customer_id))
}

/// Prefix of the paged index of the orders in one status.
pub fn status_index(tenant: &TenantId, status: Status) -> String {
    format!("tenant/{tenant}/orders/status/{status}")
}

/// Prefix of the paged index of every order containing a product.
pub fn product_index(tenant: &TenantId, product_id: &str) -> String {
    format!("tenant/{tenant}/orders/product/{product_id}")
}

/// Prefix of the paged index of the *open* orders containing a product:
/// what product events walk.
pub fn open_product_index(tenant: &TenantId, product_id: &str) -> String {
    format!("tenant/{tenant}/orders/open-product/{product_id}")
}

/// Key of a tenant's migration progress marker.
pub fn migration_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/orders/migration")
}

/// Key of a tenant's legacy order index (one document, read only by the
/// migration and by lists until it is done).
pub fn legacy_index_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/order-index")
}

/// Key of a legacy productId → order ids document.
pub fn legacy_product_orders_key(tenant: &TenantId, product_id: &str) -> String {
    format!("tenant/{tenant}/product-orders/{product_id}")
}

/// Key of a legacy `Idempotency-Key` record (read as a fallback, deleted
/// once converted).
pub fn legacy_idempotency_key(tenant: &TenantId, key: &str) -> String {
    format!("tenant/{tenant}/order-idempotency/{}", digest(key))
}

/// The digest an order stores for its `Idempotency-Key`: sha256 hex of
/// `<tenant>/<key>`.
pub fn key_digest(tenant: &TenantId, key: &str) -> String {
    digest(&format!("{tenant}/{key}"))
}

/// The order id a keyed request without an `id` gets: `k-` and the first
/// 32 hex digits of [`key_digest`]. Deterministic, so a retry finds the
/// order without any record per key.
pub fn keyed_order_id(tenant: &TenantId, key: &str) -> String {
    format!("k-{}", &key_digest(tenant, key)[..32])
}

fn digest(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// One requested line of an order being created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DraftItem {
    /// Product to order.
    pub product_id: String,
    /// Units.
    pub quantity: i64,
}

/// What an order being created needs so that any request can finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Draft {
    /// The `orderId` its holds are taken under at the product service;
    /// fresh for every attempt, since a released id stays refused there.
    pub reservation_id: String,
    /// Customer.
    #[serde(default)]
    pub customer_id: String,
    /// Lines, in request order. Empty only in a placeholder written by an
    /// earlier version, which cannot be finished.
    #[serde(default)]
    pub items: Vec<DraftItem>,
    /// Creation time of the order (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// The `Idempotency-Key` of the creating request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
}

/// The document at an order's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum OrderDoc {
    /// Step 1-2: the id is taken and holds are being taken; invisible to
    /// reads, finished by whichever request touches it next. An order
    /// with a fresh random id is never in this state: its document is
    /// first written as [`OrderDoc::Confirming`].
    Creating(Draft),
    /// Step 3-4: every hold is taken and the index entries appended; the
    /// holds are being confirmed. Invisible to lists; finished by the next
    /// request that touches it.
    Confirming(Order),
    /// A placed order.
    Live(Order),
    /// An attempt that ended without placing the order; the id is free
    /// again (the document is deleted right after it is written).
    Failed {
        /// The reservation id of the attempt that failed.
        reservation_id: String,
    },
    /// A deleted order. Its id stays taken.
    Deleted {
        /// When it was deleted.
        deleted_at: String,
        /// The `Idempotency-Key` it was created with, so a retry of its
        /// creation is told it was deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<Idempotency>,
    },
    /// At a keyed order id: the order a legacy `Idempotency-Key` record
    /// named (its id was not derived from the key). Never an order itself.
    Alias {
        /// The order created with the key.
        order_id: String,
        /// The key and request it was created with.
        idempotency: Idempotency,
    },
}

impl OrderDoc {
    /// The order, if placed and not deleted.
    pub fn live(self) -> Option<Order> {
        match self {
            OrderDoc::Live(o) => Some(o),
            _ => None,
        }
    }

    /// The `Idempotency-Key` recorded in the document, if any.
    pub fn idempotency(&self) -> Option<&Idempotency> {
        match self {
            OrderDoc::Creating(d) => d.idempotency.as_ref(),
            OrderDoc::Confirming(o) | OrderDoc::Live(o) => o.idempotency.as_ref(),
            OrderDoc::Deleted { idempotency, .. } => idempotency.as_ref(),
            OrderDoc::Alias { idempotency, .. } => Some(idempotency),
            OrderDoc::Failed { .. } => None,
        }
    }
}

/// Lets the shared compare-and-swap of a live record
/// ([`service_kit::rest::update_live`]) see through the document states.
impl service_kit::rest::Document for OrderDoc {
    type Live = Order;
    fn into_live(self) -> Option<Order> {
        self.live()
    }
    fn version_of(live: &Order) -> u64 {
        live.version
    }
}

/// What a legacy `Idempotency-Key` record bound the key to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// Digest of the first request's body.
    pub fingerprint: String,
    /// The order that request created.
    pub order_id: String,
    /// When the creating request claimed the key (ms since the epoch).
    pub claimed_at_ms: u64,
}

/// One order in a legacy tenant index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEntry {
    /// Order id.
    pub id: String,
    /// Creation time: the sort key.
    pub created_at: String,
    /// Customer.
    pub customer_id: String,
    /// Products ordered.
    pub product_ids: Vec<String>,
}

impl LegacyEntry {
    /// The entry of an order.
    pub fn of(order: &Order) -> LegacyEntry {
        LegacyEntry {
            id: order.id.clone(),
            created_at: order.created_at.clone(),
            customer_id: order.customer_id.clone(),
            product_ids: order.items.iter().map(|i| i.product_id.clone()).collect(),
        }
    }
}

impl Indexed for LegacyEntry {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

/// A tenant's legacy order index.
pub type LegacyIndex = CreationIndex<LegacyEntry>;

/// A legacy productId → order ids document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyProductOrders {
    /// Order ids, oldest first.
    pub order_ids: Vec<String>,
}

impl LegacyProductOrders {
    /// Adds `id`; returns whether it was new.
    pub fn add(&mut self, id: &str) -> bool {
        if self.order_ids.iter().any(|x| x == id) {
            return false;
        }
        self.order_ids.push(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::order;

    #[test]
    fn documents_round_trip_with_a_state_tag() {
        let live = OrderDoc::Live(order(&[("p", 150, 2)]));
        let json = serde_json::to_string(&live).unwrap();
        assert!(json.contains(r#""state":"live""#), "{json}");
        assert!(
            json.contains(r#""unitPriceMinor":150"#),
            "money is stored as minor units: {json}"
        );
        assert_eq!(serde_json::from_str::<OrderDoc>(&json).unwrap(), live);
        // A placeholder written by an earlier version still reads.
        let old = r#"{"state":"creating","reservationId":"r"}"#;
        match serde_json::from_str::<OrderDoc>(old).unwrap() {
            OrderDoc::Creating(d) => assert!(d.items.is_empty() && d.reservation_id == "r"),
            other => panic!("{other:?}"),
        }
        // So does a deleted order of an earlier version.
        let old = r#"{"state":"deleted","deletedAt":"t"}"#;
        assert!(matches!(
            serde_json::from_str::<OrderDoc>(old).unwrap(),
            OrderDoc::Deleted { .. }
        ));
    }

    #[test]
    fn keys_are_per_tenant_and_safe() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(order_key(&t, "o1"), "tenant/acme/order/o1");
        let k = legacy_idempotency_key(&t, "any key / with ? chars");
        assert!(k.starts_with("tenant/acme/order-idempotency/"));
        let id = keyed_order_id(&t, "any key / with ? chars");
        assert!(service_kit::ids::is_valid_id(&id) && id.len() == 34, "{id}");
        assert_ne!(
            id,
            keyed_order_id(&TenantId::default(), "any key / with ? chars")
        );
        assert_eq!(id, keyed_order_id(&t, "any key / with ? chars"));
        let c = customer_index(&t, "Jane / Doe");
        assert!(c.starts_with("tenant/acme/orders/customer/") && !c.contains(' '));
        assert_eq!(
            status_index(&t, Status::Pending),
            "tenant/acme/orders/status/Pending"
        );
    }
}
