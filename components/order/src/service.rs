//! The order service's state and the steps its HTTP API and its event
//! handler share: reading orders (finishing an unfinished creation on the
//! way), releasing stock and publishing events. Generic over the store,
//! event sink and transport to the product service, so everything runs
//! natively in unit tests.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use service_kit::clock::parse_rfc3339;
use service_kit::events::{CloudEvent, EventSink};
use service_kit::kv::{Change, KvStore, Retry, get_json, update_json};
use service_kit::outbox::{self, Pending, Stalled, event_pending};
use service_kit::pages::DEFAULT_PAGE_CAPACITY;
use service_kit::problem::Problem;
use service_kit::rest::Conditions;
pub use service_kit::rest::Ctx;

use crate::create::Drive;
use crate::domain::{Order, Status};
use crate::products::{CallPolicy, Products, Transport};
use crate::store::{OrderDoc, open_product_index, order_key};

/// CloudEvents `source` of this service's events.
pub const EVENT_SOURCE: &str = "wasmshop/order";
/// Topic order events are published on.
pub const TOPIC: &str = "orders";
/// Event type: an order was placed.
pub const ORDER_CREATED: &str = "OrderCreated";
/// Event type: an order's status changed (cancellations included).
pub const ORDER_STATUS_CHANGED: &str = "OrderStatusChanged";
/// Event type: an order was cancelled (by a client, a delete, because a
/// product it contains was deleted, or because its holds expired before
/// they were confirmed).
pub const ORDER_CANCELLED: &str = "OrderCancelled";

/// Tuning knobs (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// CAS retry policy of every read-modify-write.
    pub retry: Retry,
    /// Retries and timeouts of calls to the product service.
    pub calls: CallPolicy,
    /// Entries per page of the paged indexes (component variable
    /// `index_page_capacity`).
    pub page_capacity: usize,
    /// Age after which an unfinished legacy `Idempotency-Key` claim is
    /// deemed to belong to a request that died.
    pub idempotency_lease: Duration,
    /// Legacy index entries one request migrates
    /// (`docs/storage-layout.md`, "Migration").
    pub migration_chunk: usize,
    /// Age (since the order's `createdAt`) after which a list that meets
    /// an unfinished creation finishes it, as a `GET` would. A creation
    /// normally ends within a few seconds of its `createdAt`; waiting
    /// longer than that keeps lists from doing the work of a request that
    /// is still running. Racing one would be safe anyway (every step is a
    /// compare-and-swap from the state the previous one left, and the
    /// product calls are idempotent), only wasted work.
    pub unfinished_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry: Retry::default(),
            calls: CallPolicy::default(),
            page_capacity: DEFAULT_PAGE_CAPACITY,
            idempotency_lease: Duration::from_secs(120),
            migration_chunk: 200,
            unfinished_grace: Duration::from_secs(10),
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
    /// The last event [`OrderService::publish`] saw refused, by order id:
    /// the create request that placed the order answers 503 from it.
    pub(crate) refused: RefCell<Option<(String, Stalled)>>,
    /// Milliseconds since the Unix epoch, for ages and deadlines (the
    /// system clock unless a test replaces it).
    clock: Box<dyn Fn() -> u64 + 'a>,
}

impl<'a, S: KvStore, E: EventSink, T: Transport> OrderService<'a, S, E, T> {
    /// A service with the default settings.
    pub fn new(store: &'a S, events: &'a E, transport: &'a T) -> Self {
        OrderService::with_settings(store, events, transport, Settings::default())
    }

    /// A service with custom settings.
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
            refused: RefCell::new(None),
            clock: Box::new(crate::create::system_now_ms),
        }
    }

    /// Replaces the clock (milliseconds since the Unix epoch), so tests
    /// can step past deadlines and grace periods.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + 'a) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Now, in milliseconds since the Unix epoch, by this service's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The document at an order's key.
    pub(crate) fn doc(&self, ctx: &Ctx, id: &str) -> Result<Option<OrderDoc>, Problem> {
        Ok(get_json(self.store, &order_key(&ctx.tenant, id))?)
    }

    /// The placed order `id` as a client sees it, if any: an unfinished
    /// creation is finished first, a legacy order re-indexed (ids outside
    /// the id rule never exist).
    pub(crate) fn live(&self, ctx: &Ctx, id: &str) -> Result<Option<Order>, Problem> {
        if !service_kit::ids::is_valid_id(id) {
            return Ok(None);
        }
        match self.doc(ctx, id)? {
            Some(OrderDoc::Live(order)) => Ok(Some(self.ensure_indexed(ctx, order)?)),
            Some(doc @ (OrderDoc::Creating(_) | OrderDoc::Confirming(_))) => {
                match self.drive(ctx, id, doc)? {
                    Drive::Placed(order) => Ok(Some(order)),
                    Drive::NotPlaced(..) => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// What a list does with an unfinished creation it meets: once the
    /// document is older than [`Settings::unfinished_grace`], and while
    /// `budget` lasts (one unit per creation finished), it finishes it
    /// exactly as a `GET` would and returns where that ended (`Some`).
    /// `None` when it was left alone: too young, the budget spent, not an
    /// unfinished creation, or the attempt failed (logged; a later request
    /// retries). Without this, the confirmed sales of an order whose
    /// creating request died mid-confirmation would stay sold to an order
    /// nobody can see (`docs/storage-layout.md`, "Orders").
    pub(crate) fn finish_overdue(
        &self,
        ctx: &Ctx,
        id: &str,
        doc: OrderDoc,
        budget: &mut usize,
    ) -> Option<Drive> {
        let created_at = match &doc {
            OrderDoc::Creating(draft) => &draft.created_at,
            OrderDoc::Confirming(order) => &order.created_at,
            _ => return None,
        };
        if *budget == 0 || !self.is_overdue(created_at) {
            return None;
        }
        *budget -= 1;
        match self.drive(ctx, id, doc) {
            Ok(drive) => Some(drive),
            Err(p) => {
                eprintln!(
                    "order: unfinished creation of order '{id}' of tenant '{}' met by a list could not be finished yet (the next request that meets it retries): {}",
                    ctx.tenant, p.detail
                );
                None
            }
        }
    }

    /// Whether a creation started at `created_at` (RFC 3339) is older than
    /// the grace period. Unreadable text (a placeholder of an earlier
    /// version has none) counts as old.
    fn is_overdue(&self, created_at: &str) -> bool {
        match parse_rfc3339(created_at) {
            Ok(t) => SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age >= self.settings.unfinished_grace),
            Err(_) => true,
        }
    }

    /// Returns the stock of every item (but `except`) of a placed order to
    /// the product service as confirmed sales, then records that nothing
    /// is held any more (and drops a closed order's open-product entries). On failure the order keeps `stockHeld`, so
    /// repeating the request finishes the job (releases are idempotent).
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
                .release(
                    &ctx.tenant,
                    &item.product_id,
                    &order.reservation_id,
                    Some(item.quantity),
                )
                .map_err(|u| {
                    Problem::unavailable(format!(
                        "order '{}' is {}, but the stock of product '{}' could not be returned yet ({}); repeat the request to finish",
                        order.id, order.status, item.product_id, u.0
                    ))
                })?;
        }
        let (released, gone) = update_json(
            self.store,
            &order_key(&ctx.tenant, &order.id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc.and_then(OrderDoc::live) {
                    Some(mut o) if o.stock_held && o.reservation_id == order.reservation_id => {
                        o.stock_held = false;
                        let mut gone = Vec::new();
                        if !o.status.is_open() {
                            for item in o.items.iter_mut() {
                                if let Some(slot) = item.open_slot.take() {
                                    let prefix = open_product_index(&ctx.tenant, &item.product_id);
                                    gone.push((prefix, slot));
                                }
                            }
                        }
                        Change::Write(OrderDoc::Live(o.clone()), (o, gone))
                    }
                    Some(o) => Change::Keep((o, Vec::new())),
                    None => Change::Keep((order.clone(), Vec::new())),
                })
            },
        )?;
        self.remove_placements(ctx, &order.id, gone);
        Ok(released)
    }

    /// The event `kind` with the snapshot of `order` (its data).
    fn event(&self, ctx: &Ctx, kind: &str, order: &Order) -> Pending {
        Pending::new(
            TOPIC,
            CloudEvent::new(
                EVENT_SOURCE,
                kind,
                &ctx.tenant,
                &ctx.traceparent,
                &order.view(),
            )
            .with_subject(&order.id),
        )
    }

    /// Publishes, best effort, the event `kind` of a change already saved
    /// in `order` (as stored): a refused event is kept in the order for
    /// the next request that touches it, and logged.
    pub(crate) fn publish(&self, ctx: &Ctx, kind: &str, order: &Order) {
        let event = self.event(ctx, kind, order);
        if let Err(s) = self.emit(ctx, order, vec![event]) {
            eprintln!(
                "order: {} of order '{}' of tenant '{}' was refused by the message broker ({}); it is kept with the order and published by the next request that touches it",
                s.kind, order.id, ctx.tenant, s.error
            );
            *self.refused.borrow_mut() = Some((order.id.clone(), s));
        }
    }

    /// Publishes what a status change saved in `order` means: always
    /// `OrderStatusChanged`, plus `OrderCancelled` for a cancellation.
    /// `Err` when the broker refused one (both are then kept in the order).
    pub(crate) fn publish_transition(&self, ctx: &Ctx, order: &Order) -> Result<(), Stalled> {
        let mut events = vec![self.event(ctx, ORDER_STATUS_CHANGED, order)];
        if order.status == Status::Cancelled {
            events.push(self.event(ctx, ORDER_CANCELLED, order));
        }
        self.emit(ctx, order, events).map(|_| ())
    }

    /// Publishes the events pending in `order` (as stored), if any, and
    /// clears them; `Err` when the broker still refuses them.
    pub(crate) fn flush(&self, ctx: &Ctx, order: &Order) -> Result<(), Stalled> {
        if order.pending_events.is_empty() {
            return Ok(());
        }
        self.emit(ctx, order, Vec::new()).map(|_| ())
    }

    /// [`OrderService::flush`] for a write: 503 `event-pending` (nothing
    /// changed) while the broker refuses the order's earlier events.
    pub(crate) fn flush_before_write(&self, ctx: &Ctx, order: &Order) -> Result<(), Problem> {
        self.flush(ctx, order).map_err(|s| {
            event_pending(format!(
                "order '{}' has a {} event of an earlier change that the message broker still refuses ({}); nothing was changed. The event is kept with the order: retry this request in a few seconds, once the broker accepts events again",
                order.id, s.kind, s.error
            ))
        })
    }

    /// Publishes, in order, the events pending in `record` (the order as
    /// stored) and then `new` (the events of the change just saved in
    /// it); then records the outcome in the order with one
    /// compare-and-swap, only when something changed: published pending
    /// events removed, refused new ones added (docs/messaging.md, "Events
    /// of a saved change"). `Err` names the event the broker refused.
    fn emit(&self, ctx: &Ctx, record: &Order, new: Vec<Pending>) -> Result<(), Stalled> {
        let earlier = outbox::unpack(&record.pending_events, &record.view());
        let emitted = outbox::emit(self.events, earlier, new, |sent, kept| {
            self.save_pending(ctx, &record.id, sent, kept)
        });
        if let Some(p) = emitted.save_failed {
            eprintln!(
                "order: the outbox of order '{}' of tenant '{}' could not be updated ({}); an event refused by the broker may be lost, and a published one may be published again",
                record.id, ctx.tenant, p.detail
            );
        }
        emitted.outcome
    }

    /// Removes the events `sent` from the order's pending list and adds
    /// `kept`, with compare-and-swap (another writer's change is kept).
    fn save_pending(
        &self,
        ctx: &Ctx,
        id: &str,
        sent: &[String],
        kept: Vec<Pending>,
    ) -> Result<(), Problem> {
        update_json(
            self.store,
            &order_key(&ctx.tenant, id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                let Some(mut o) = doc.and_then(OrderDoc::live) else {
                    return Ok::<_, Problem>(Change::Keep(()));
                };
                let removed = outbox::remove_published(&mut o.pending_events, sent);
                if kept.is_empty() {
                    return Ok(if removed {
                        Change::Write(OrderDoc::Live(o), ())
                    } else {
                        Change::Keep(())
                    });
                }
                let pending = outbox::unpack(&o.pending_events, &o.view());
                // A newer status change replaces an older pending one (it
                // carries the order's whole view): concurrent transitions
                // then keep at most one of each type pending.
                let merged = outbox::merge(pending, kept.clone(), |old, new| {
                    old.kind == ORDER_STATUS_CHANGED && new.kind == ORDER_STATUS_CHANGED
                });
                o.pending_events = outbox::pack(&merged, &o.view());
                Ok(Change::Write(OrderDoc::Live(o), ()))
            },
        )?;
        Ok(())
    }
}

/// The 503 of a public write whose change is saved but whose event `s`
/// the broker refused; `done` says what happened (`cancelled`, ...).
pub(crate) fn saved_not_published(ctx: &Ctx, id: &str, done: &str, s: &Stalled) -> Problem {
    event_pending(format!(
        "order '{id}' of tenant '{}' was {done}, but its {} event was refused by the message broker ({}); the event is kept with the order and is published by the next request that reads or writes it: retry this request or GET /api/orders/{id}",
        ctx.tenant, s.kind, s.error
    ))
}

/// `next`, derived from `stored` by a write, with the events pending in
/// `stored` re-packed against `next`'s view.
pub(crate) fn carry_pending(stored: &Order, mut next: Order) -> Order {
    let mut pending = std::mem::take(&mut next.pending_events);
    outbox::rebase(&mut pending, &stored.view(), &next.view());
    next.pending_events = pending;
    next
}

/// 404 for an order the tenant does not have.
pub(crate) fn not_found(ctx: &Ctx, id: &str) -> Problem {
    Problem::not_found(format!(
        "there is no order '{id}' for tenant '{}'; check the id and the X-Tenant-Id header",
        ctx.tenant
    ))
}

/// 412 unless the request's preconditions (`If-Match`, `If-None-Match`)
/// allow changing `order`.
pub(crate) fn check_write(conditions: &Conditions, order: &Order) -> Result<(), Problem> {
    conditions.check_write(order.version, &what(&order.id))
}

/// How problems name an order: `order '<id>'`.
pub(crate) fn what(id: &str) -> String {
    format!("order '{id}'")
}
