//! Reactions to the product service's events (topic `products`).
//!
//! - `ProductUpdated` refreshes `productName` on the tenant's open orders
//!   containing the product (an order is written only when the name it
//!   shows changes, and only from a newer product version); prices stay
//!   as ordered.
//! - `ProductDeleted` cancels those orders whose line was ordered from the
//!   deleted incarnation of the product (its `createdAt`), with a
//!   `cancellationReason`, and returns their other items' stock. A late
//!   `ProductDeleted` never touches orders of a product re-created under
//!   the same id.
//!
//! Only the `open-product/<productId>` index is walked, so the work is
//! bounded by the product's open orders, whatever history the tenant has.
//! Delivery is at least once; the version and incarnation rules make a
//! repeat change nothing, so no per-event marker is kept. A transient
//! failure is an error (the host redelivers); an event that can never be
//! handled is logged and dropped.

use serde::Deserialize;
use service_kit::clock::now_rfc3339;
use service_kit::events::{CloudEvent, EventSink};
use service_kit::ids::is_valid_id;
use service_kit::kv::{Change, KvStore, update_json};
use service_kit::pages::{Position, Slot, Verdict, absent_record_verdict};
use service_kit::problem::Problem;
use service_kit::rest::Conditions;
use service_kit::tenant::TenantId;
use service_kit::trace::{is_valid_traceparent, new_traceparent};

use crate::create::Drive;
use crate::domain::{Order, Status, stored_name};
use crate::migration::Phase;
use crate::products::Transport;
use crate::service::{Ctx, OrderService};
use crate::store::{OrderDoc, open_product_index, order_key};

/// The product event a rename comes from.
pub const PRODUCT_UPDATED: &str = "ProductUpdated";
/// The product event a cancellation comes from.
pub const PRODUCT_DELETED: &str = "ProductDeleted";

/// Index entries read per round trip while walking.
const WALK_BATCH: usize = 64;

/// What the order needs of a product event's data.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProductData {
    id: String,
    name: String,
    version: u64,
    /// The product's incarnation; absent from events of older versions,
    /// which then match any.
    #[serde(default)]
    created_at: Option<String>,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; this many orders changed now (0 for a repeat).
    Applied(usize),
    /// Another event type, which needs no reaction.
    NotRelevant,
    /// Undecodable or invalid; dropped (retrying cannot help).
    Ignored(String),
}

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// Handles one message of topic `products`. `Err` means "retry later".
    pub fn on_product_event(&self, body: &[u8]) -> Result<Outcome, String> {
        let event = match CloudEvent::from_json(body) {
            Ok(e) => e,
            Err(m) => return Ok(Outcome::Ignored(m)),
        };
        if event.kind != PRODUCT_UPDATED && event.kind != PRODUCT_DELETED {
            return Ok(Outcome::NotRelevant);
        }
        let tenant = match TenantId::parse(&event.tenantid) {
            Ok(t) => t,
            Err(m) => return Ok(Outcome::Ignored(format!("event {}: {m}", event.id))),
        };
        let data: ProductData = match event.data_as() {
            Ok(d) => d,
            Err(e) => {
                return Ok(Outcome::Ignored(format!(
                    "event {}: data is not a product: {e}",
                    event.id
                )));
            }
        };
        if !is_valid_id(&data.id) {
            return Ok(Outcome::Ignored(format!(
                "event {}: invalid product id",
                event.id
            )));
        }
        let ctx = Ctx {
            tenant,
            traceparent: if is_valid_traceparent(&event.traceparent) {
                event.traceparent.clone()
            } else {
                new_traceparent()
            },
        };
        let deleted = event.kind == PRODUCT_DELETED;
        let mut applied = 0;
        let mut failures = Vec::new();
        let mut react = |order_id: &str, slot: Option<Slot>, young: bool| match self
            .react(&ctx, order_id, slot, young, deleted, &data)
        {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(p) => failures.push(format!("order '{order_id}': {}", p.detail)),
        };
        let phase = self.migration(&ctx).map_err(|p| p.detail)?.phase;
        if phase == Phase::Index {
            for id in self
                .legacy_product_orders(&ctx, &data.id)
                .map_err(|p| p.detail)?
            {
                react(&id, None, false);
            }
        } else {
            let index = self.index(open_product_index(&ctx.tenant, &data.id));
            let mut scan = index.scan(&Position::start()).map_err(|e| e.to_string())?;
            loop {
                let batch = scan.next_batch(WALK_BATCH).map_err(|e| e.to_string())?;
                if batch.is_empty() {
                    break;
                }
                let now = self.now_ms();
                for (entry, slot) in batch {
                    let young = absent_record_verdict::<()>(&entry, now) == Verdict::Skip;
                    react(&entry.id, Some(slot), young);
                }
            }
        }
        if !failures.is_empty() {
            return Err(format!(
                "{} of tenant '{}' for product '{}' is not fully applied: {}",
                event.kind,
                ctx.tenant,
                data.id,
                failures.join("; ")
            ));
        }
        Ok(Outcome::Applied(applied))
    }

    /// Applies the event to one order found through the open-product entry
    /// at `slot` (or, while migrating, through a legacy document). An
    /// unfinished creation is finished first; a stale entry is removed,
    /// but not a `young` one whose order has no document yet (a fresh
    /// order appends its entries before it writes its document:
    /// [`pages::ABSENT_RECORD_GRACE_MS`](service_kit::pages::ABSENT_RECORD_GRACE_MS)).
    /// `true` when the order changed now.
    fn react(
        &self,
        ctx: &Ctx,
        order_id: &str,
        slot: Option<Slot>,
        young: bool,
        deleted: bool,
        data: &ProductData,
    ) -> Result<bool, Problem> {
        let stale = |slot: Option<Slot>| {
            if let Some(slot) = slot {
                let prefix = open_product_index(&ctx.tenant, &data.id);
                self.remove_placements(ctx, order_id, vec![(prefix, slot)]);
            }
        };
        let order = match self.doc(ctx, order_id)? {
            Some(OrderDoc::Live(o)) => o,
            Some(doc @ (OrderDoc::Creating(_) | OrderDoc::Confirming(_))) => {
                match self.drive(ctx, order_id, doc)? {
                    Drive::Placed(o) => o,
                    Drive::NotPlaced(..) => return Ok(false),
                }
            }
            None if young => return Ok(false),
            _ => {
                stale(slot);
                return Ok(false);
            }
        };
        if !order.contains(&data.id) {
            return Ok(false);
        }
        // Its earlier events go out first; while the broker refuses them
        // the reaction fails, and the redelivery tries again.
        self.flush(ctx, &order).map_err(|s| {
            Problem::unavailable(format!(
                "order '{}' has a {} event pending that the message broker refuses ({}); the reaction is retried on redelivery",
                order.id, s.kind, s.error
            ))
        })?;
        if let Some(slot) = slot
            && order.slots.is_some()
            && !order
                .items
                .iter()
                .any(|i| i.product_id == data.id && i.open_slot == Some(slot))
        {
            stale(Some(slot));
            return Ok(false);
        }
        if deleted {
            self.cancel_for_deleted(ctx, order, data)
        } else {
            self.rename(ctx, &order.id, data)
        }
    }

    /// Applies a rename to one order; `true` if its name changed.
    fn rename(&self, ctx: &Ctx, order_id: &str, data: &ProductData) -> Result<bool, Problem> {
        let now = now_rfc3339();
        Ok(update_json(
            self.store,
            &order_key(&ctx.tenant, order_id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(
                    match doc.and_then(OrderDoc::live).and_then(|o| {
                        o.rename_product(&data.id, &data.name, data.version, &now)
                            .map(|next| crate::service::carry_pending(&o, next))
                    }) {
                        Some(next) => Change::Write(OrderDoc::Live(next), true),
                        None => Change::Keep(false),
                    },
                )
            },
        )?)
    }

    /// Cancels one open order ordered from the deleted incarnation and
    /// returns its other items' stock (the deleted product's holds went
    /// with it); `true` if it was cancelled now.
    fn cancel_for_deleted(
        &self,
        ctx: &Ctx,
        order: Order,
        data: &ProductData,
    ) -> Result<bool, Problem> {
        let incarnation = data.created_at.as_deref();
        if !order.ordered_incarnation(&data.id, incarnation) {
            return Ok(false);
        }
        let now = now_rfc3339();
        let reason = format!(
            "Product '{}' ({}) was removed from the catalog",
            data.id,
            stored_name(&data.name)
        );
        let (order, cancelled) = self.change_status(ctx, order, &Conditions::NONE, |o| {
            Ok(
                if o.status.is_open() && o.ordered_incarnation(&data.id, incarnation) {
                    o.transition(Status::Cancelled, Some(&reason), &now)
                        .ok()
                        .flatten()
                } else {
                    None
                },
            )
        })?;
        if cancelled {
            // A refused event fails the reaction before the stock is
            // returned: the order keeps its open-product entries while it
            // holds stock, so the redelivery finds it, publishes the event
            // kept in it, then returns the stock.
            self.publish_transition(ctx, &order).map_err(|s| {
                Problem::unavailable(format!(
                    "order '{}' was cancelled, but its {} event was refused by the message broker ({}); it is kept with the order and published on redelivery",
                    order.id, s.kind, s.error
                ))
            })?;
        }
        if order.status == Status::Cancelled && order.stock_held {
            self.release_stock(ctx, &order, Some(&data.id))?;
        }
        Ok(cancelled)
    }
}
