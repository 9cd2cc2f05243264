//! The order: its stored record, status machine, exact totals and public
//! JSON shape.

use std::fmt;

use serde::{Deserialize, Serialize};
use service_kit::money::Money;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Created; stock is reserved.
    Pending,
    /// Accepted for fulfilment; stock still reserved.
    Confirmed,
    /// Handed to the carrier (closed).
    Shipped,
    /// Received by the customer (closed).
    Delivered,
    /// Cancelled; its stock was returned (closed).
    Cancelled,
}

/// Every status, in the order the machine moves through them.
pub const ALL_STATUSES: [Status; 5] = [
    Status::Pending,
    Status::Confirmed,
    Status::Shipped,
    Status::Delivered,
    Status::Cancelled,
];

impl Status {
    /// The status named exactly `s` (case-sensitive, as serialised).
    pub fn parse(s: &str) -> Option<Status> {
        ALL_STATUSES.into_iter().find(|st| st.as_str() == s)
    }

    /// [`Status::parse`] for client input: the error message names the
    /// valid statuses. The one place request bodies and list queries parse
    /// a status.
    pub fn parse_input(s: &str) -> Result<Status, String> {
        Status::parse(s).ok_or_else(|| {
            let names: Vec<&str> = ALL_STATUSES.iter().map(|s| s.as_str()).collect();
            format!(
                "'{s}' is not a status; use one of {} (case-sensitive)",
                names.join(", ")
            )
        })
    }

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::Confirmed => "Confirmed",
            Status::Shipped => "Shipped",
            Status::Delivered => "Delivered",
            Status::Cancelled => "Cancelled",
        }
    }

    /// Open orders still hold reserved stock and react to product events;
    /// closed ones are left as they are.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Pending | Status::Confirmed)
    }

    /// The status machine: `Pending → Confirmed → Shipped → Delivered`,
    /// and `Pending | Confirmed → Cancelled`.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Confirmed)
                | (Confirmed, Shipped)
                | (Shipped, Delivered)
                | (Pending, Cancelled)
                | (Confirmed, Cancelled)
        )
    }

    /// Whether some chain of allowed changes leads from this status to
    /// `target` (not counting staying put). Statuses never come back, so
    /// an order that cannot reach a status never shows in its list again.
    pub fn can_reach(self, target: Status) -> bool {
        let mut seen = vec![self];
        let mut i = 0;
        while i < seen.len() {
            for next in seen[i].next_allowed() {
                if next == target {
                    return true;
                }
                if !seen.contains(&next) {
                    seen.push(next);
                }
            }
            i += 1;
        }
        false
    }

    /// The statuses this one may move to (for error messages).
    pub fn next_allowed(self) -> Vec<Status> {
        ALL_STATUSES
            .into_iter()
            .filter(|n| self.can_become(*n))
            .collect()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an entry sits in a paged index (shard, page, position; stored as
/// the short text `"s.p.i"`). An entry counts only when its order stores
/// that very slot (`docs/storage-layout.md`, "Paged indexes").
pub use service_kit::pages::Slot;

/// The slots of an order's whole-order index entries (`all`, `customer`,
/// `status`); the per-product ones are on the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSlots {
    /// Entry in `orders/all`.
    pub all: Slot,
    /// Entry in `orders/customer/<sha256(customerId)>`.
    pub customer: Slot,
    /// Entry in `orders/status/<status>` (moves with the status).
    pub status: Slot,
}

/// The `Idempotency-Key` an order was created with: a digest of the key
/// (keys may hold any visible ASCII) and of the request body, so a retry
/// with the same key is told apart from a reuse with another body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// sha256 hex of the tenant and key.
    pub key: String,
    /// sha256 hex of the meaning of the request body.
    pub fingerprint: String,
}

/// Most bytes of a product name kept in an order line, counted as JSON
/// text (a `"` or a backslash counts twice). Names may have 200 characters of up to 4
/// bytes; a 100-line order must still stay well under 64 KiB
/// (`docs/storage-layout.md`).
pub const NAME_JSON_BYTES_MAX: usize = 240;

/// A product name as an order keeps it: control characters (which the
/// product service refuses anyway) become spaces, and the text is cut at a
/// character boundary to [`NAME_JSON_BYTES_MAX`] bytes of JSON, ending in
/// `…` when cut.
pub fn stored_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if json_len(&clean) <= NAME_JSON_BYTES_MAX {
        return clean;
    }
    let budget = NAME_JSON_BYTES_MAX - '…'.len_utf8();
    let mut out = String::new();
    let mut used = 0;
    for c in clean.chars() {
        let n = json_char_len(c);
        if used + n > budget {
            break;
        }
        used += n;
        out.push(c);
    }
    out.push('…');
    out
}

/// Bytes `s` takes inside a JSON string (control characters excluded).
pub fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' => 2,
        c if c.is_control() => 6,
        c => c.len_utf8(),
    }
}

/// One line of a stored order. The name and price are snapshots taken
/// when the order was placed; only the name follows later product renames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product ordered.
    pub product_id: String,
    /// The product's name (refreshed by `ProductUpdated`).
    pub product_name: String,
    /// Price per unit when reserved, in minor units (stores round floats).
    pub unit_price_minor: i64,
    /// Units ordered, ≥ 1.
    pub quantity: i64,
    /// Product version the name was taken from, so a late, older
    /// `ProductUpdated` never overwrites a newer name.
    #[serde(default)]
    pub name_version: u64,
    /// The product's `createdAt` when the order was placed: which
    /// incarnation of the product id was ordered. `None` on orders placed
    /// before it was recorded, which then match any incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// Entry in `orders/product/<productId>`; `None` on legacy orders not
    /// yet re-indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_slot: Option<Slot>,
    /// Entry in `orders/open-product/<productId>`, only while the order is
    /// open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_slot: Option<Slot>,
}

impl OrderItem {
    /// Price × quantity, or `None` on overflow.
    pub fn line_total(&self) -> Option<Money> {
        Money::from_minor(self.unit_price_minor).checked_mul(self.quantity)
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Unique within the tenant.
    pub id: String,
    /// Who ordered, 1–100 characters.
    pub customer_id: String,
    /// 1–100 lines, no product twice.
    pub items: Vec<OrderItem>,
    /// ISO 4217 code shared by every item.
    pub currency: String,
    /// Current status.
    pub status: Status,
    /// Why it was cancelled; only on cancelled orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_reason: Option<String>,
    /// Starts at 1, grows with every visible change; the ETag.
    pub version: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last change, RFC 3339 UTC.
    pub updated_at: String,
    /// The `orderId` its reservations are held under at the product
    /// service (the order id unless the client chose the id).
    pub reservation_id: String,
    /// Whether the product service still holds stock for this order; stays
    /// set on a cancelled order until every release succeeded, so a retry
    /// finishes the job.
    pub stock_held: bool,
    /// Slots of its whole-order index entries; `None` on a legacy order
    /// not yet re-indexed (see `docs/storage-layout.md`, "Migration").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<OrderSlots>,
    /// The `Idempotency-Key` it was created with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
    /// Events of a saved change that the broker refused, packed against
    /// this order's view ([`service_kit::outbox`]): at most one change's
    /// (`OrderStatusChanged` + `OrderCancelled`, or `OrderCreated`),
    /// published by the next request that touches the order
    /// (docs/messaging.md, "Events of a saved change").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_events: Vec<service_kit::outbox::StoredEvent>,
}

/// Why a status change was refused (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTransition {
    /// Current status.
    pub from: Status,
    /// Requested status.
    pub to: Status,
}

impl fmt::Display for BadTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed = self.from.next_allowed();
        let allowed = if allowed.is_empty() {
            format!("{} is final", self.from)
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            format!(
                "from {} it can only become {}",
                self.from,
                names.join(" or ")
            )
        };
        write!(
            f,
            "an order cannot go from {} to {}; {allowed}",
            self.from, self.to
        )
    }
}

impl Order {
    /// Sum of the line totals, or `None` on overflow.
    pub fn total(&self) -> Option<Money> {
        self.items
            .iter()
            .try_fold(Money::ZERO, |sum, i| sum.checked_add(i.line_total()?))
    }

    /// The same order one version later.
    pub fn next_version(&self, now: &str) -> Order {
        let mut next = self.clone();
        next.version += 1;
        next.updated_at = now.to_owned();
        next
    }

    /// The order after moving to `to`: `Ok(None)` when it already is
    /// there (a repeat changes nothing), `Err` when the machine forbids it.
    pub fn transition(
        &self,
        to: Status,
        reason: Option<&str>,
        now: &str,
    ) -> Result<Option<Order>, BadTransition> {
        if to == self.status {
            return Ok(None);
        }
        if !self.status.can_become(to) {
            return Err(BadTransition {
                from: self.status,
                to,
            });
        }
        let mut next = self.next_version(now);
        next.status = to;
        if to == Status::Cancelled {
            next.cancellation_reason = Some(reason.unwrap_or(DEFAULT_CANCEL_REASON).to_owned());
        }
        Ok(Some(next))
    }

    /// Whether an item refers to `product_id`.
    pub fn contains(&self, product_id: &str) -> bool {
        self.items.iter().any(|i| i.product_id == product_id)
    }

    /// Applies a product rename seen at product `version`: `None` when the
    /// order is closed, lacks the product, already knows a version at least
    /// as new, or would show the same name (then nothing is written, so a
    /// price-only update costs no order write).
    pub fn rename_product(
        &self,
        product_id: &str,
        name: &str,
        version: u64,
        now: &str,
    ) -> Option<Order> {
        if !self.status.is_open() {
            return None;
        }
        let item = self
            .items
            .iter()
            .position(|i| i.product_id == product_id && i.name_version < version)?;
        let name = stored_name(name);
        if self.items[item].product_name == name {
            return None;
        }
        let mut next = self.next_version(now);
        next.items[item].product_name = name;
        next.items[item].name_version = version;
        Some(next)
    }

    /// Whether the item for `product_id` was ordered from the product
    /// incarnation `created_at` (a legacy item without one matches any; so
    /// does an event that does not say).
    pub fn ordered_incarnation(&self, product_id: &str, created_at: Option<&str>) -> bool {
        self.items.iter().any(|i| {
            i.product_id == product_id
                && match (&i.incarnation, created_at) {
                    (Some(mine), Some(theirs)) => mine == theirs,
                    _ => true,
                }
        })
    }

    /// The public representation. Creation refuses orders whose totals
    /// overflow, so the zero fallback is never shown.
    pub fn view(&self) -> OrderView<'_> {
        let items = self
            .items
            .iter()
            .map(|i| ItemView {
                product_id: &i.product_id,
                product_name: &i.product_name,
                unit_price: Money::from_minor(i.unit_price_minor),
                quantity: i.quantity,
                line_total: i.line_total().unwrap_or(Money::ZERO),
            })
            .collect();
        OrderView {
            id: &self.id,
            customer_id: &self.customer_id,
            items,
            total: self.total().unwrap_or(Money::ZERO),
            currency: &self.currency,
            status: self.status,
            cancellation_reason: self.cancellation_reason.as_deref(),
            version: self.version,
            created_at: &self.created_at,
            updated_at: &self.updated_at,
        }
    }
}

/// Reason recorded when a client cancels without giving one.
pub const DEFAULT_CANCEL_REASON: &str = "Cancelled by request";

/// The JSON of an order line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemView<'a> {
    /// Product id.
    pub product_id: &'a str,
    /// Product name.
    pub product_name: &'a str,
    /// Price per unit as ordered.
    pub unit_price: Money,
    /// Units.
    pub quantity: i64,
    /// `unitPrice × quantity`, exact.
    pub line_total: Money,
}

/// The public JSON of an order (responses and event data).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView<'a> {
    /// Id.
    pub id: &'a str,
    /// Customer.
    pub customer_id: &'a str,
    /// Lines.
    pub items: Vec<ItemView<'a>>,
    /// Sum of the line totals, exact.
    pub total: Money,
    /// Currency of every amount.
    pub currency: &'a str,
    /// Status.
    pub status: Status,
    /// Why it was cancelled; `null` unless cancelled.
    pub cancellation_reason: Option<&'a str>,
    /// Version (the ETag without quotes).
    pub version: u64,
    /// Creation time.
    pub created_at: &'a str,
    /// Last change.
    pub updated_at: &'a str,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn order(items: &[(&str, i64, i64)]) -> Order {
        Order {
            id: "o1".into(),
            customer_id: "c1".into(),
            items: items
                .iter()
                .map(|(p, price, q)| OrderItem {
                    product_id: (*p).into(),
                    product_name: format!("name of {p}"),
                    unit_price_minor: *price,
                    quantity: *q,
                    name_version: 1,
                    incarnation: Some("inc".into()),
                    product_slot: None,
                    open_slot: None,
                })
                .collect(),
            currency: "USD".into(),
            status: Status::Pending,
            cancellation_reason: None,
            version: 1,
            created_at: "t0".into(),
            updated_at: "t0".into(),
            reservation_id: "o1".into(),
            stock_held: true,
            slots: None,
            idempotency: None,
            pending_events: Vec::new(),
        }
    }

    #[test]
    fn every_allowed_transition_and_nothing_else() {
        use Status::*;
        let allowed = [
            (Pending, Confirmed),
            (Confirmed, Shipped),
            (Shipped, Delivered),
            (Pending, Cancelled),
            (Confirmed, Cancelled),
        ];
        for from in ALL_STATUSES {
            for to in ALL_STATUSES {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert!(Pending.is_open() && Confirmed.is_open());
        assert!(Pending.can_reach(Delivered) && Confirmed.can_reach(Cancelled));
        assert!(!Shipped.can_reach(Cancelled) && !Delivered.can_reach(Delivered));
        assert!(!Confirmed.can_reach(Pending));
        assert!(!Shipped.is_open() && !Delivered.is_open() && !Cancelled.is_open());
    }

    #[test]
    fn transition_bumps_version_and_names_both_states_when_refused() {
        let o = order(&[("p", 100, 1)]);
        let next = o
            .transition(Status::Confirmed, None, "t1")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.status, next.version, next.updated_at.as_str()),
            (Status::Confirmed, 2, "t1")
        );
        assert_eq!(next.cancellation_reason, None);
        assert_eq!(o.transition(Status::Pending, None, "t1").unwrap(), None);
        let err = o.transition(Status::Shipped, None, "t1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("from Pending to Shipped"), "{msg}");
        assert!(msg.contains("Confirmed or Cancelled"), "{msg}");
        let mut delivered = o.clone();
        delivered.status = Status::Delivered;
        let msg = delivered
            .transition(Status::Cancelled, None, "t1")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("Delivered is final"), "{msg}");
    }

    #[test]
    fn cancelling_records_a_reason() {
        let o = order(&[("p", 100, 1)]);
        let c = o
            .transition(Status::Cancelled, None, "t1")
            .unwrap()
            .unwrap();
        assert_eq!(
            c.cancellation_reason.as_deref(),
            Some(DEFAULT_CANCEL_REASON)
        );
        let c = o
            .transition(Status::Cancelled, Some("changed my mind"), "t1")
            .unwrap()
            .unwrap();
        assert_eq!(c.cancellation_reason.as_deref(), Some("changed my mind"));
    }

    #[test]
    fn totals_are_exact() {
        // 0.1 × 3 + 19.99 × 2 + 0.07 = 40.35 with no float drift.
        let o = order(&[("a", 10, 3), ("b", 1999, 2), ("c", 7, 1)]);
        assert_eq!(o.total().unwrap().minor(), 4035);
        let json = serde_json::to_string(&o.view()).unwrap();
        assert!(json.contains(r#""total":40.35"#), "{json}");
        assert!(json.contains(r#""lineTotal":0.3"#), "{json}");
        assert!(json.contains(r#""unitPrice":19.99"#), "{json}");
        assert!(json.contains(r#""cancellationReason":null"#), "{json}");
        assert!(
            !json.contains("reservation"),
            "internal fields stay internal: {json}"
        );
        assert_eq!(order(&[("a", i64::MAX / 2, 3)]).total(), None);
    }

    #[test]
    fn rename_only_applies_newer_versions_to_open_orders() {
        let o = order(&[("a", 10, 1), ("b", 20, 1)]);
        let r = o.rename_product("b", "Bee", 2, "t1").unwrap();
        assert_eq!((r.items[1].product_name.as_str(), r.version), ("Bee", 2));
        assert_eq!(r.items[1].unit_price_minor, 20, "prices stay as ordered");
        assert_eq!(r.rename_product("b", "Old", 2, "t2"), None, "same version");
        assert_eq!(r.rename_product("b", "Old", 1, "t2"), None, "older version");
        assert_eq!(
            r.rename_product("b", "Bee", 3, "t2"),
            None,
            "same name: nothing to write"
        );
        assert_eq!(o.rename_product("zzz", "x", 9, "t1"), None);
        let mut shipped = o.clone();
        shipped.status = Status::Shipped;
        assert_eq!(shipped.rename_product("a", "x", 9, "t1"), None);
    }

    #[test]
    fn the_worst_order_at_the_validation_limits_stays_under_64_kib() {
        let slot = Slot {
            shard: 7,
            page: u32::MAX,
            pos: u32::MAX,
        };
        let names = ["\"".repeat(200), "😀".repeat(200), "\\".repeat(200)];
        let mut o = order(&[]);
        o.id = "x".repeat(64);
        o.customer_id = "😀".repeat(100);
        o.reservation_id = "r".repeat(64);
        o.currency = "XXX".into();
        o.status = Status::Cancelled;
        // 500 characters, 2000 bytes of JSON at most (validation): 4-byte
        // characters outweigh escaped quotes (2 bytes each).
        o.cancellation_reason = Some("😀".repeat(500));
        o.version = u64::MAX;
        o.slots = Some(OrderSlots {
            all: slot,
            customer: slot,
            status: slot,
        });
        o.idempotency = Some(Idempotency {
            key: "f".repeat(64),
            fingerprint: "f".repeat(64),
        });
        o.items = (0..100)
            .map(|i| OrderItem {
                product_id: format!("{i:03}{}", "p".repeat(61)),
                product_name: stored_name(&names[i % names.len()]),
                unit_price_minor: i64::MIN,
                quantity: i64::MIN,
                name_version: u64::MAX,
                incarnation: Some("2025-01-31T12:00:00.123Z".into()),
                product_slot: Some(slot),
                open_slot: Some(slot),
            })
            .collect();
        // A full pending list: a cancellation's two events (their data is
        // the order's view; the longest tenant id and subject).
        let tenant = service_kit::tenant::TenantId::parse(&"t".repeat(64)).unwrap();
        let events: Vec<service_kit::outbox::Pending> = ["OrderStatusChanged", "OrderCancelled"]
            .iter()
            .map(|kind| {
                service_kit::outbox::Pending::new(
                    "orders",
                    service_kit::events::CloudEvent::new(
                        "wasmshop/order",
                        kind,
                        &tenant,
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        &o.view(),
                    )
                    .with_subject(&o.id),
                )
            })
            .collect();
        o.pending_events = service_kit::outbox::pack(&events, &o.view());
        let json = serde_json::to_vec(&crate::store::OrderDoc::Live(o.clone())).unwrap();
        assert!(json.len() < 64 * 1024, "{} bytes", json.len());
        let back = service_kit::outbox::unpack(&o.pending_events, &o.view());
        assert_eq!(back[1].event.to_json(), events[1].event.to_json());
    }

    #[test]
    fn incarnations_match_or_are_unknown() {
        let mut o = order(&[("a", 10, 1)]);
        assert!(o.ordered_incarnation("a", Some("inc")));
        assert!(!o.ordered_incarnation("a", Some("later")));
        assert!(o.ordered_incarnation("a", None));
        assert!(!o.ordered_incarnation("b", None));
        o.items[0].incarnation = None;
        assert!(o.ordered_incarnation("a", Some("later")), "legacy line");
    }

    #[test]
    fn stored_names_are_capped_in_json_bytes() {
        assert_eq!(stored_name("Widget"), "Widget");
        assert_eq!(stored_name("a\nb"), "a b");
        for long in ["\"".repeat(200), "😀".repeat(200), "x".repeat(300)] {
            let s = stored_name(&long);
            assert!(json_len(&s) <= NAME_JSON_BYTES_MAX, "{}", json_len(&s));
            assert!(s.ends_with('…'));
            let encoded = serde_json::to_string(&s).unwrap();
            assert!(
                encoded.len() <= NAME_JSON_BYTES_MAX + 2,
                "{}",
                encoded.len()
            );
        }
        assert_eq!(
            stored_name(&"y".repeat(200)),
            "y".repeat(200),
            "200 ASCII characters fit"
        );
    }

    #[test]
    fn status_parse_is_exact() {
        assert_eq!(Status::parse("Confirmed"), Some(Status::Confirmed));
        assert_eq!(Status::parse("confirmed"), None);
        assert_eq!(Status::parse(""), None);
    }
}
