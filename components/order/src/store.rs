//! What the order service keeps in the key-value store, per tenant.
//!
//! The Dapr state API cannot list keys, so lists and event reactions are
//! served from index documents updated with compare-and-swap:
//! - one order index per tenant (creation order, with the immutable
//!   fields lists filter on);
//! - one productId → order ids document per tenant and product, which the
//!   product-event handler reads.
//!
//! Key prefixes differ from the product service's, so both may share one
//! store.

use serde::{Deserialize, Serialize};
use service_kit::index::{CreationIndex, Indexed};
use service_kit::tenant::TenantId;
use sha2::{Digest, Sha256};

use crate::domain::Order;

/// Key of an order document.
pub fn order_key(tenant: &TenantId, id: &str) -> String {
    format!("tenant/{tenant}/order/{id}")
}

/// Key of a tenant's order index.
pub fn index_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/order-index")
}

/// Key of the ids of a tenant's orders that contain a product.
pub fn product_orders_key(tenant: &TenantId, product_id: &str) -> String {
    format!("tenant/{tenant}/product-orders/{product_id}")
}

/// Key of an `Idempotency-Key` record. Client keys may hold any visible
/// ASCII, so the store key uses their digest.
pub fn idempotency_key(tenant: &TenantId, key: &str) -> String {
    format!("tenant/{tenant}/order-idempotency/{}", digest(key))
}

/// Key marking a handled event (CloudEvent ids are chosen by producers).
pub fn seen_event_key(tenant: &TenantId, event_id: &str) -> String {
    format!("tenant/{tenant}/order-event-seen/{}", digest(event_id))
}

fn digest(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The document at an order's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum OrderDoc {
    /// A client-chosen id is taken while its reservations are made;
    /// invisible to reads.
    Creating {
        /// The reservation id the attempt reserves under.
        reservation_id: String,
    },
    /// A placed order.
    Live(Order),
    /// A deleted order. Its id stays taken: the product service remembers
    /// released reservations per id.
    Deleted {
        /// When it was deleted.
        deleted_at: String,
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
}

/// What an `Idempotency-Key` is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// Digest of the first request's body.
    pub fingerprint: String,
    /// The order that request creates.
    pub order_id: String,
    /// When the creating request claimed the key (ms since the epoch); a
    /// claim older than the lease whose order never appeared belonged to a
    /// request that died, and may be taken over.
    pub claimed_at_ms: u64,
}

/// One order in the tenant's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// Order id.
    pub id: String,
    /// Creation time: the sort key.
    pub created_at: String,
    /// Customer, for filtering.
    pub customer_id: String,
    /// Products ordered, for filtering.
    pub product_ids: Vec<String>,
}

impl IndexEntry {
    /// The entry of an order.
    pub fn of(order: &Order) -> IndexEntry {
        IndexEntry {
            id: order.id.clone(),
            created_at: order.created_at.clone(),
            customer_id: order.customer_id.clone(),
            product_ids: order.items.iter().map(|i| i.product_id.clone()).collect(),
        }
    }
}

impl Indexed for IndexEntry {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

/// A tenant's order index (see [`service_kit::index`]).
pub type OrderIndex = CreationIndex<IndexEntry>;

/// Ids of the orders matching the immutable filters, oldest first.
pub fn matching(
    index: &OrderIndex,
    customer_id: Option<&str>,
    product_id: Option<&str>,
) -> Vec<String> {
    index
        .ids_where(|e| {
            customer_id.is_none_or(|c| e.customer_id == c)
                && product_id.is_none_or(|p| e.product_ids.iter().any(|x| x == p))
        })
        .collect()
}

/// The ids of a tenant's orders that contain one product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductOrders {
    /// Order ids, oldest first.
    pub order_ids: Vec<String>,
}

impl ProductOrders {
    /// Adds `id`; returns whether it was new.
    pub fn add(&mut self, id: &str) -> bool {
        if self.order_ids.iter().any(|x| x == id) {
            return false;
        }
        self.order_ids.push(id.to_owned());
        true
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.order_ids.len();
        self.order_ids.retain(|x| x != id);
        self.order_ids.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::order;

    fn entry(id: &str, at: &str, customer: &str, products: &[&str]) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            created_at: at.into(),
            customer_id: customer.into(),
            product_ids: products.iter().map(|p| (*p).into()).collect(),
        }
    }

    #[test]
    fn index_keeps_creation_then_id_order_and_filters() {
        let mut ix = OrderIndex::default();
        assert!(ix.upsert(entry("b", "t2", "c1", &["x"])));
        assert!(ix.upsert(entry("z", "t1", "c2", &["x", "y"])));
        assert!(ix.upsert(entry("a", "t2", "c1", &["y"])));
        assert!(!ix.upsert(entry("a", "t2", "c1", &["y"])));
        assert_eq!(matching(&ix, None, None), vec!["z", "a", "b"]);
        assert_eq!(matching(&ix, Some("c1"), None), vec!["a", "b"]);
        assert_eq!(matching(&ix, None, Some("y")), vec!["z", "a"]);
        assert_eq!(matching(&ix, Some("c1"), Some("y")), vec!["a"]);
        assert!(ix.remove("a"));
        assert!(!ix.remove("a"));
        assert_eq!(matching(&ix, None, None), vec!["z", "b"]);
    }

    #[test]
    fn product_orders_are_a_set() {
        let mut p = ProductOrders::default();
        assert!(p.add("o1") && p.add("o2") && !p.add("o1"));
        assert!(p.remove("o1") && !p.remove("o1"));
        assert_eq!(p.order_ids, vec!["o2"]);
    }

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
        let creating = OrderDoc::Creating {
            reservation_id: "r".into(),
        };
        let json = serde_json::to_string(&creating).unwrap();
        assert_eq!(json, r#"{"state":"creating","reservationId":"r"}"#);
        assert_eq!(
            serde_json::from_str::<OrderDoc>(&json).unwrap().live(),
            None
        );
    }

    #[test]
    fn keys_are_per_tenant_and_safe() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(order_key(&t, "o1"), "tenant/acme/order/o1");
        let k = idempotency_key(&t, "any key / with ? chars");
        assert!(k.starts_with("tenant/acme/order-idempotency/"));
        assert!(
            k.rsplit('/')
                .next()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_ne!(
            idempotency_key(&t, "a"),
            idempotency_key(&TenantId::default(), "a")
        );
    }
}
