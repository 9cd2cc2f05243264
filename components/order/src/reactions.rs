//! Reactions to the product service's events (topic `products`).
//!
//! - `ProductUpdated` refreshes `productName` on the tenant's open orders
//!   containing the product; prices stay as ordered.
//! - `ProductDeleted` cancels those orders, with a `cancellationReason`,
//!   and returns their other items' stock.
//!
//! Delivery is at least once, so handling is idempotent: an event id seen
//! before is skipped, a rename only applies a newer product version, and a
//! cancelled order is not cancelled again. A transient failure is an error
//! (the host redelivers); an event that can never be handled is logged and
//! dropped.

use serde::Deserialize;
use service_kit::clock::now_rfc3339;
use service_kit::events::{CloudEvent, EventSink};
use service_kit::ids::is_valid_id;
use service_kit::kv::{Change, KvError, KvStore, get_json, put_json, update_json};
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;
use service_kit::trace::{is_valid_traceparent, new_traceparent};

use crate::domain::{Order, Status};
use crate::products::Transport;
use crate::service::{Ctx, OrderService};
use crate::store::{OrderDoc, ProductOrders, order_key, product_orders_key, seen_event_key};

/// The product event a rename comes from.
pub const PRODUCT_UPDATED: &str = "ProductUpdated";
/// The product event a cancellation comes from.
pub const PRODUCT_DELETED: &str = "ProductDeleted";

/// What the order needs of a product event's data.
#[derive(Debug, Deserialize)]
struct ProductData {
    id: String,
    name: String,
    version: u64,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to this many orders.
    Applied(usize),
    /// Seen before; nothing done.
    Duplicate,
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
        let seen = seen_event_key(&ctx.tenant, &event.id);
        if self.store.get(&seen).map_err(transient)?.is_some() {
            return Ok(Outcome::Duplicate);
        }
        let ids: ProductOrders =
            match get_json(self.store, &product_orders_key(&ctx.tenant, &data.id)) {
                Ok(ids) => ids.unwrap_or_default(),
                Err(e) => return Err(transient(e)),
            };
        let mut applied = 0;
        let mut failures = Vec::new();
        for order_id in &ids.order_ids {
            let result = if event.kind == PRODUCT_UPDATED {
                self.rename(&ctx, order_id, &data)
            } else {
                self.cancel_for_deleted(&ctx, order_id, &data)
            };
            match result {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(p) => failures.push(format!("order '{order_id}': {}", p.detail)),
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
        put_json(self.store, &seen, &event.time).map_err(transient)?;
        Ok(Outcome::Applied(applied))
    }

    /// Applies a rename to one order; `true` if it changed visibly.
    fn rename(&self, ctx: &Ctx, order_id: &str, data: &ProductData) -> Result<bool, Problem> {
        let now = now_rfc3339();
        let changed = update_json(
            self.store,
            &order_key(&ctx.tenant, order_id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(
                    match doc
                        .and_then(OrderDoc::live)
                        .and_then(|o| o.rename_product(&data.id, &data.name, data.version, &now))
                    {
                        Some((next, visible)) => Change::Write(OrderDoc::Live(next), visible),
                        None => Change::Keep(false),
                    },
                )
            },
        )?;
        Ok(changed)
    }

    /// Cancels one open order containing a deleted product and returns its
    /// other items' stock; `true` if it was cancelled now.
    fn cancel_for_deleted(
        &self,
        ctx: &Ctx,
        order_id: &str,
        data: &ProductData,
    ) -> Result<bool, Problem> {
        let now = now_rfc3339();
        let reason = format!(
            "Product '{}' ({}) was removed from the catalog",
            data.id, data.name
        );
        let (order, cancelled): (Option<Order>, bool) = update_json(
            self.store,
            &order_key(&ctx.tenant, order_id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc.and_then(OrderDoc::live) {
                    Some(o) if o.contains(&data.id) && o.status.is_open() => {
                        match o.transition(Status::Cancelled, Some(&reason), &now) {
                            Ok(Some(next)) => {
                                Change::Write(OrderDoc::Live(next.clone()), (Some(next), true))
                            }
                            _ => Change::Keep((Some(o), false)),
                        }
                    }
                    Some(o) if o.contains(&data.id) => Change::Keep((Some(o), false)),
                    _ => Change::Keep((None, false)),
                })
            },
        )?;
        let Some(order) = order else {
            return Ok(false);
        };
        if cancelled {
            self.publish_transition(ctx, &order);
        }
        // A deleted product's reservations went with it; return the rest.
        if order.status == Status::Cancelled && order.stock_held {
            self.release_stock(ctx, &order, Some(&data.id))?;
        }
        Ok(cancelled)
    }
}

fn transient(e: KvError) -> String {
    e.to_string()
}
