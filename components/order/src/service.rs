//! The order service's state and the steps its HTTP API and its event
//! handler share: reading orders, releasing stock, keeping the indexes and
//! publishing events. Generic over the store, event sink and transport to
//! the product service, so everything runs natively in unit tests.

use std::time::Duration;

use service_kit::etag::{etag, if_match_allows};
use service_kit::events::{CloudEvent, EventSink};
use service_kit::kv::{Change, KvStore, Retry, get_json, update_json};
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;

use crate::domain::{Order, Status};
use crate::products::{CallPolicy, Products, Transport};
use crate::store::{
    IndexEntry, OrderDoc, OrderIndex, ProductOrders, index_key, order_key, product_orders_key,
};

/// CloudEvents `source` of this service's events.
pub const EVENT_SOURCE: &str = "wasmshop/order";
/// Topic order events are published on.
pub const TOPIC: &str = "orders";
/// Event type: an order was placed.
pub const ORDER_CREATED: &str = "OrderCreated";
/// Event type: an order's status changed (cancellations included).
pub const ORDER_STATUS_CHANGED: &str = "OrderStatusChanged";
/// Event type: an order was cancelled (by a client, a delete, or because
/// a product it contains was deleted).
pub const ORDER_CANCELLED: &str = "OrderCancelled";

/// Tuning knobs (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// CAS retry policy of every read-modify-write.
    pub retry: Retry,
    /// Retries and timeouts of calls to the product service.
    pub calls: CallPolicy,
    /// How long a request waits for a concurrent request with the same
    /// `Idempotency-Key` to finish.
    pub idempotency_wait: Duration,
    /// Age after which an unfinished `Idempotency-Key` claim is deemed to
    /// belong to a request that died (longer than any request may run).
    pub idempotency_lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry: Retry::default(),
            calls: CallPolicy::default(),
            idempotency_wait: Duration::from_secs(15),
            idempotency_lease: Duration::from_secs(120),
        }
    }
}

/// The order service over a store, an event sink and a transport to the
/// product service.
pub struct OrderService<'a, S, E, T> {
    pub(crate) store: &'a S,
    pub(crate) events: &'a E,
    pub(crate) products: Products<'a, T>,
    pub(crate) settings: Settings,
}

/// What one request or event is about: its tenant and trace.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The tenant whose data is touched.
    pub tenant: TenantId,
    /// W3C trace context carried onto events.
    pub traceparent: String,
}

impl<'a, S: KvStore, E: EventSink, T: Transport> OrderService<'a, S, E, T> {
    /// A service with the default settings.
    pub fn new(store: &'a S, events: &'a E, transport: &'a T) -> Self {
        OrderService::with_settings(store, events, transport, Settings::default())
    }

    /// A service with custom settings (tests).
    pub fn with_settings(
        store: &'a S,
        events: &'a E,
        transport: &'a T,
        settings: Settings,
    ) -> Self {
        OrderService {
            store,
            events,
            products: Products::new(transport, settings.calls),
            settings,
        }
    }

    /// The placed order `id`, if any (ids outside the id rule never exist).
    pub(crate) fn live(&self, ctx: &Ctx, id: &str) -> Result<Option<Order>, Problem> {
        if !service_kit::ids::is_valid_id(id) {
            return Ok(None);
        }
        let doc: Option<OrderDoc> = get_json(self.store, &order_key(&ctx.tenant, id))?;
        Ok(doc.and_then(OrderDoc::live))
    }

    /// Returns the stock of every item (but `except`) to the product
    /// service, then records that nothing is held any more. On failure the
    /// order keeps `stockHeld`, so repeating the request finishes the job.
    pub(crate) fn release_stock(
        &self,
        ctx: &Ctx,
        order: &Order,
        except: Option<&str>,
    ) -> Result<Order, Problem> {
        for item in order
            .items
            .iter()
            .filter(|i| Some(i.product_id.as_str()) != except)
        {
            self.products
                .release(&ctx.tenant, &item.product_id, &order.reservation_id)
                .map_err(|u| {
                    Problem::unavailable(format!(
                        "order '{}' is {}, but the stock of product '{}' could not be returned yet ({}); repeat the request to finish",
                        order.id, order.status, item.product_id, u.0
                    ))
                })?;
        }
        let released = update_json(
            self.store,
            &order_key(&ctx.tenant, &order.id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc.and_then(OrderDoc::live) {
                    Some(mut o) if o.stock_held && o.reservation_id == order.reservation_id => {
                        o.stock_held = false;
                        Change::Write(OrderDoc::Live(o.clone()), o)
                    }
                    Some(o) => Change::Keep(o),
                    None => Change::Keep(order.clone()),
                })
            },
        )?;
        Ok(released)
    }

    /// Releases reservations made under `reservation_id` for `product_ids`
    /// after a failed creation. Failures are logged: the client already
    /// gets the creation's error.
    pub(crate) fn compensate(&self, ctx: &Ctx, product_ids: &[String], reservation_id: &str) {
        for pid in product_ids {
            if let Err(u) = self.products.release(&ctx.tenant, pid, reservation_id) {
                eprintln!(
                    "order: compensation failed: product '{pid}' of tenant '{}' may still hold reservation '{reservation_id}': {}",
                    ctx.tenant, u.0
                );
            }
        }
    }

    /// Adds a placed order to the tenant's index and to the
    /// productId → orders documents.
    pub(crate) fn index(&self, ctx: &Ctx, order: &Order) -> Result<(), Problem> {
        let entry = IndexEntry::of(order);
        update_json(
            self.store,
            &index_key(&ctx.tenant),
            &self.settings.retry,
            |ix: Option<OrderIndex>| {
                let mut ix = ix.unwrap_or_default();
                Ok::<_, Problem>(if ix.upsert(entry.clone()) {
                    Change::Write(ix, ())
                } else {
                    Change::Keep(())
                })
            },
        )?;
        for item in &order.items {
            update_json(
                self.store,
                &product_orders_key(&ctx.tenant, &item.product_id),
                &self.settings.retry,
                |doc: Option<ProductOrders>| {
                    let mut doc = doc.unwrap_or_default();
                    Ok::<_, Problem>(if doc.add(&order.id) {
                        Change::Write(doc, ())
                    } else {
                        Change::Keep(())
                    })
                },
            )?;
        }
        Ok(())
    }

    /// Removes an order from the indexes. Reads re-check every order, so a
    /// failure only leaves a stale entry behind: logged, not reported.
    pub(crate) fn unindex(&self, ctx: &Ctx, order_id: &str, product_ids: &[String]) {
        let mut result = update_json(
            self.store,
            &index_key(&ctx.tenant),
            &self.settings.retry,
            |ix: Option<OrderIndex>| {
                let mut ix = ix.unwrap_or_default();
                Ok::<_, Problem>(if ix.remove(order_id) {
                    Change::Write(ix, ())
                } else {
                    Change::Keep(())
                })
            },
        )
        .map_err(Problem::from);
        for pid in product_ids {
            let r = update_json(
                self.store,
                &product_orders_key(&ctx.tenant, pid),
                &self.settings.retry,
                |doc: Option<ProductOrders>| {
                    let mut doc = doc.unwrap_or_default();
                    Ok::<_, Problem>(if doc.remove(order_id) {
                        Change::Write(doc, ())
                    } else {
                        Change::Keep(())
                    })
                },
            );
            result = result.and(r.map_err(Problem::from));
        }
        if let Err(p) = result {
            eprintln!(
                "order: indexes of tenant '{}' still list order '{order_id}': {}",
                ctx.tenant, p.detail
            );
        }
    }

    /// Publishes an event with the order snapshot. The change is already
    /// stored, so a broker failure is logged rather than failing a request
    /// the client would then retry.
    pub(crate) fn publish(&self, ctx: &Ctx, kind: &str, order: &Order) {
        let event = CloudEvent::new(
            EVENT_SOURCE,
            kind,
            &ctx.tenant,
            &ctx.traceparent,
            &order.view(),
        )
        .with_subject(&order.id);
        if let Err(e) = self.events.publish(TOPIC, &event) {
            eprintln!(
                "order: {kind} for order '{}' of tenant '{}' was saved but not published: {e}",
                order.id, ctx.tenant
            );
        }
    }

    /// Publishes what a status change means: always `OrderStatusChanged`,
    /// plus `OrderCancelled` for a cancellation.
    pub(crate) fn publish_transition(&self, ctx: &Ctx, order: &Order) {
        self.publish(ctx, ORDER_STATUS_CHANGED, order);
        if order.status == Status::Cancelled {
            self.publish(ctx, ORDER_CANCELLED, order);
        }
    }
}

/// 404 for an order the tenant does not have.
pub(crate) fn not_found(ctx: &Ctx, id: &str) -> Problem {
    Problem::not_found(format!(
        "there is no order '{id}' for tenant '{}'; check the id and the X-Tenant-Id header",
        ctx.tenant
    ))
}

/// 412 unless `If-Match` allows changing `order`.
pub(crate) fn check_if_match(if_match: Option<&str>, order: &Order) -> Result<(), Problem> {
    if if_match_allows(if_match, order.version) {
        Ok(())
    } else {
        Err(Problem::precondition_failed(format!(
            "If-Match {} does not match the current ETag {} of order '{}'; GET it again and retry with the new ETag",
            if_match.unwrap_or_default(),
            etag(order.version),
            order.id
        )))
    }
}
