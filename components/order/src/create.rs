//! Placing an order: try / confirm with the product service, in steps
//! recorded in the order document so that any request can finish a
//! creation another one left behind (`docs/storage-layout.md`, "Orders"
//! and "Reservations"):
//!
//! 1. `creating` (the draft, with a fresh reservation id) is written with
//!    compare-and-swap on the absent key: the id is taken. Only for an id
//!    someone else may name (the client's `id`, or one derived from an
//!    `Idempotency-Key`). A fresh random id skips this state: its
//!    document is first written in step 3, as `confirming`, after its
//!    index entries ("Entries before the record"), so a request dying
//!    before that leaves no document, only entries lists never show;
//! 2. per item: take a hold; its answer carries the price snapshot and
//!    the product's name, version and incarnation (a product service that
//!    does not send them is asked with a `GET`). Any failure ends the
//!    attempt: the document becomes `failed` (then is deleted) and every
//!    hold is released;
//! 3. the index entries are appended, then the document becomes
//!    `confirming` (the order with its slots);
//! 4. every hold is confirmed. A product deleted meanwhile (404) ends the
//!    attempt like step 2; a hold that expired or was released (409) ends
//!    the order `live` but Cancelled ("reservation expired"), its other
//!    items released;
//! 5. the document becomes `live`: 201, and `OrderCreated`.
//!
//! Every step is a compare-and-swap from the state the previous step
//! left, under the same reservation id, and reserve/confirm/release are
//! idempotent at the product service, so two requests driving one order
//! converge; a list that meets an unfinished creation well after its
//! `createdAt` finishes it too. `Idempotency-Key`: without an `id` in the
//! body the order id is derived from the key, and the order stores the
//! key and a fingerprint of the body; a retry finds the order by its id.

use std::time::{SystemTime, UNIX_EPOCH};

use service_kit::clock::now_rfc3339;
use service_kit::events::EventSink;
use service_kit::http::StatusCode;
use service_kit::ids::new_id;
use service_kit::kv::{Change, KvStore, UpdateError, get_json, update_json};
use service_kit::money::Money;
use service_kit::pages::{RECORD_WRITE_DEADLINE_MS, within_record_deadline};
use service_kit::problem::Problem;

use crate::domain::{Idempotency, Order, OrderItem, Status, stored_name};
use crate::migration::Phase;
use crate::products::{Refused, ReservedProduct, Transport};
use crate::service::{Ctx, ORDER_CANCELLED, ORDER_CREATED, OrderService, not_found};
use crate::store::{
    Draft, DraftItem, IdempotencyRecord, OrderDoc, key_digest, keyed_order_id,
    legacy_idempotency_key, open_product_index, order_key, status_index,
};
use crate::validation::NewOrder;

/// Reason recorded on an order whose holds expired (or were released)
/// before they were confirmed.
pub const EXPIRED_REASON: &str = "reservation expired";

/// Most attempts of one `POST` at claiming its order id (a retry with the
/// same key that finds a failed attempt starts a new one).
const MAX_ROUNDS: usize = 4;

/// The result of a create: the order, and whether it was made now (201)
/// or earlier under the same `Idempotency-Key` (200).
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// `true` when an earlier request with the same key created it.
    pub replayed: bool,
}

/// Why a create placed nothing: the problem for the client, and the
/// product service's `Retry-After` when it was only busy.
#[derive(Debug)]
pub struct Failure {
    /// The problem response (boxed: failures travel far up the stack).
    pub problem: Box<Problem>,
    /// `Retry-After` to pass on (from a 503 of the product service).
    pub retry_after: Option<String>,
}

impl From<Problem> for Failure {
    fn from(problem: Problem) -> Failure {
        Failure {
            problem: Box::new(problem),
            retry_after: None,
        }
    }
}

/// Where driving an order document ended.
#[derive(Debug)]
pub(crate) enum Drive {
    /// The order is live (Pending, or Cancelled because its holds
    /// expired before they were confirmed).
    Placed(Order),
    /// The attempt ended without an order.
    NotPlaced(Problem, Option<String>),
}

/// When an attempt writes its `creating` document
/// (`docs/storage-layout.md`, "Orders", step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Already written before the holds were taken: the id is one a
    /// client or a retry may name (its own `id`, or one derived from an
    /// `Idempotency-Key`), so it is claimed first.
    Claimed,
    /// Not written yet: a fresh random id nobody else can name. The
    /// document is written once every hold is taken, right before the
    /// index entries that must find it (a list removes an entry whose
    /// order document is absent). A request dying before that leaves
    /// nothing stored; its holds expire at the product service.
    Late,
}

/// The answer of a create from where driving its attempt ended: a
/// Cancelled order (its holds expired before they were confirmed) is a
/// 409, never a 201.
fn settle(drive: Drive) -> Result<Placed, Failure> {
    match drive {
        Drive::Placed(order) if order.status == Status::Cancelled => Err(expired(&order).into()),
        Drive::Placed(order) => Ok(Placed {
            order,
            replayed: false,
        }),
        Drive::NotPlaced(problem, retry_after) => Err(Failure {
            problem: Box::new(problem),
            retry_after,
        }),
    }
}

/// Who moves a document on, seen from one compare-and-swap.
enum Step {
    /// This call did.
    Mine,
    /// Another request already moved it on, to this document.
    Theirs(Box<OrderDoc>),
    /// The attempt was ended by another request.
    Gone,
}

impl Step {
    /// The order another request finished, if it did.
    fn finished(self) -> Option<Drive> {
        match self {
            Step::Theirs(doc) => match *doc {
                OrderDoc::Live(o) => Some(Drive::Placed(o)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// Places `new`, honouring an `Idempotency-Key` when given.
    pub fn place(&self, ctx: &Ctx, new: &NewOrder, key: Option<&str>) -> Result<Placed, Failure> {
        let idem = key.map(|k| Idempotency {
            key: key_digest(&ctx.tenant, k),
            fingerprint: new.fingerprint(),
        });
        let id = match (&new.id, key) {
            (Some(id), _) => id.clone(),
            (None, Some(k)) => keyed_order_id(&ctx.tenant, k),
            (None, None) => new_id(),
        };
        // Only an id someone else may name needs claiming before the
        // holds are taken: a client's own id, or one derived from a key
        // that a retry derives again. A fresh random id is claimed only
        // once every hold is taken ([`Claim::Late`]).
        let claim_first = new.id.is_some() || key.is_some();
        let mut legacy_checked = key.is_none();
        for _ in 0..MAX_ROUNDS {
            match self.doc(ctx, &id)? {
                None | Some(OrderDoc::Failed { .. }) => {
                    if !legacy_checked {
                        legacy_checked = true;
                        if let (Some(k), Some(i)) = (key, &idem)
                            && let Some(placed) = self.legacy_key(ctx, new, k, i, &id)?
                        {
                            return Ok(placed);
                        }
                    }
                    let draft = Draft {
                        reservation_id: new_id(),
                        customer_id: new.customer_id.clone(),
                        items: new
                            .items
                            .iter()
                            .map(|i| DraftItem {
                                product_id: i.product_id.clone(),
                                quantity: i.quantity,
                            })
                            .collect(),
                        created_at: now_rfc3339(),
                        idempotency: idem.clone(),
                    };
                    if !claim_first {
                        return settle(self.finish_creating(ctx, &id, draft, Claim::Late)?);
                    }
                    let mine = update_json(
                        self.store,
                        &order_key(&ctx.tenant, &id),
                        &self.settings.retry,
                        |doc: Option<OrderDoc>| {
                            Ok::<_, Problem>(match doc {
                                None | Some(OrderDoc::Failed { .. }) => {
                                    Change::Write(OrderDoc::Creating(draft.clone()), true)
                                }
                                Some(_) => Change::Keep(false),
                            })
                        },
                    )
                    .map_err(Problem::from)?;
                    if !mine {
                        continue;
                    }
                    return settle(self.finish_creating(ctx, &id, draft, Claim::Claimed)?);
                }
                Some(doc) => {
                    let (Some(k), Some(idem)) = (key, &idem) else {
                        return Err(order_exists(ctx, &id).into());
                    };
                    let Some(theirs) = doc.idempotency().filter(|i| i.key == idem.key) else {
                        if !legacy_checked
                            && let Some(placed) = self.legacy_key(ctx, new, k, idem, &id)?
                        {
                            return Ok(placed);
                        }
                        return Err(order_exists(ctx, &id).into());
                    };
                    if theirs.fingerprint != idem.fingerprint {
                        return Err(key_reused(k).into());
                    }
                    let doc = match doc {
                        OrderDoc::Alias { order_id, .. } => match self.doc(ctx, &order_id)? {
                            Some(live @ OrderDoc::Live(_)) => live,
                            _ => return Err(key_used(&order_id).into()),
                        },
                        OrderDoc::Deleted { .. } => return Err(key_used(&id).into()),
                        doc => doc,
                    };
                    let order_id = match &doc {
                        OrderDoc::Live(o) => o.id.clone(),
                        _ => id.clone(),
                    };
                    match self.drive(ctx, &order_id, doc)? {
                        Drive::Placed(order) => {
                            return Ok(Placed {
                                order,
                                replayed: true,
                            });
                        }
                        // The earlier attempt failed: this retry starts afresh.
                        Drive::NotPlaced(..) => continue,
                    }
                }
            }
        }
        Err(Problem::unavailable(format!(
            "order '{id}' is being created by concurrent requests that keep failing; nothing was ordered by this request, retry shortly"
        ))
        .into())
    }

    /// Moves an unfinished order document on as far as it goes.
    pub(crate) fn drive(&self, ctx: &Ctx, id: &str, doc: OrderDoc) -> Result<Drive, Problem> {
        match doc {
            OrderDoc::Creating(draft) => self.finish_creating(ctx, id, draft, Claim::Claimed),
            OrderDoc::Confirming(order) => self.finish_confirming(ctx, order),
            OrderDoc::Live(order) => Ok(Drive::Placed(self.ensure_indexed(ctx, order)?)),
            _ => Ok(Drive::NotPlaced(not_found(ctx, id), None)),
        }
    }

    /// Steps 2-3 for `draft` (taking holds again is idempotent), then 4-5.
    /// With [`Claim::Late`] no document exists yet: it is written as
    /// `creating` once every hold is taken, just before the index entries
    /// are appended.
    fn finish_creating(
        &self,
        ctx: &Ctx,
        id: &str,
        draft: Draft,
        claim: Claim,
    ) -> Result<Drive, Problem> {
        if draft.items.is_empty() {
            // A placeholder of an earlier version: nothing to finish.
            return self.end_creating(ctx, id, &draft, not_found(ctx, id), None);
        }
        // Until the document is written, ending the attempt only releases
        // the holds taken.
        let end = |problem: Problem, retry_after: Option<String>| match claim {
            Claim::Claimed => self.end_creating(ctx, id, &draft, problem, retry_after),
            Claim::Late => {
                for item in &draft.items {
                    self.release_hold(ctx, &item.product_id, &draft.reservation_id, None);
                }
                Ok(Drive::NotPlaced(problem, retry_after))
            }
        };
        let t = &ctx.tenant;
        let rid = &draft.reservation_id;
        let mut items = Vec::new();
        let mut currency: Option<String> = None;
        let mut total = Money::ZERO;
        for (i, item) in draft.items.iter().enumerate() {
            let pid = &item.product_id;
            let field = format!("items[{i}].productId");
            let mut reserved = match self.products.reserve(t, pid, rid, item.quantity) {
                Ok(Ok(r)) => r,
                Ok(Err(Refused::NotFound)) => {
                    let p = unknown_product(ctx, &field, pid);
                    return end(p, None);
                }
                Ok(Err(Refused::Busy {
                    retry_after,
                    problem,
                })) => {
                    let p = busy(&field, pid, &retry_after, problem);
                    return end(p, Some(retry_after));
                }
                Ok(Err(Refused::Conflict(p))) => {
                    let p = refused(&field, pid, item.quantity, p);
                    return end(p, None);
                }
                Err(u) => return end(u.into(), None),
            };
            // The reserve answer names the product; a product service
            // that does not is asked with a GET (one more call per item).
            let product = match reserved.product.take() {
                Some(p) => p,
                None => match self.products.product(t, pid) {
                    Ok(Some(info)) => ReservedProduct {
                        name: info.name,
                        version: info.version,
                        created_at: info.created_at,
                    },
                    Ok(None) => {
                        let p = unknown_product(ctx, &field, pid);
                        return end(p, None);
                    }
                    Err(u) => return end(u.into(), None),
                },
            };
            if let Some(c) = &currency
                && *c != reserved.currency
            {
                let p = unprocessable(
                    "mixed-currencies",
                    &field,
                    format!(
                        "product '{pid}' is priced in {}, but earlier items in {c}; an order has one currency, so order them separately",
                        reserved.currency
                    ),
                );
                return end(p, None);
            }
            currency = Some(reserved.currency.clone());
            match reserved
                .unit_price
                .checked_mul(item.quantity)
                .and_then(|l| total.checked_add(l))
            {
                Some(t) => total = t,
                None => {
                    let p = unprocessable(
                        "order-too-large",
                        &format!("items[{i}].quantity"),
                        "the order total is too large to represent; order fewer units".to_owned(),
                    );
                    return end(p, None);
                }
            }
            items.push(OrderItem {
                product_id: pid.clone(),
                product_name: stored_name(&product.name),
                unit_price_minor: reserved.unit_price.minor(),
                quantity: item.quantity,
                name_version: product.version,
                incarnation: Some(product.created_at).filter(|c| !c.is_empty()),
                product_slot: None,
                open_slot: None,
            });
        }
        let order = Order {
            id: id.to_owned(),
            customer_id: draft.customer_id.clone(),
            items,
            currency: currency.unwrap_or_default(),
            status: Status::Pending,
            cancellation_reason: None,
            version: 1,
            created_at: draft.created_at.clone(),
            updated_at: draft.created_at.clone(),
            reservation_id: rid.clone(),
            stock_held: true,
            slots: None,
            idempotency: draft.idempotency.clone(),
            pending_events: Vec::new(),
        };
        // While the tenant's legacy documents are still read, a new order
        // joins them (`legacy_add`), and their readers expect its
        // document to exist by then: claim it as `creating` first.
        let legacy_indexing = match claim {
            Claim::Late => match self.migration(ctx) {
                Ok(marker) => marker.phase == Phase::Index,
                Err(p) => return end(p, None),
            },
            Claim::Claimed => false,
        };
        if claim == Claim::Late && !legacy_indexing {
            return self.confirm_entries_first(ctx, order, &draft);
        }
        if claim == Claim::Late {
            match self.claim_late(ctx, id, &draft) {
                Ok(true) => {}
                Ok(false) => {
                    let p = Problem::unavailable(format!(
                        "order id '{id}' drawn for this order was taken meanwhile; nothing was ordered, retry"
                    ));
                    return end(p, None);
                }
                Err(p) => return end(p, None),
            }
        }
        let order = match self.append_entries(ctx, &order) {
            Ok(order) => order,
            Err(p) => return self.end_creating(ctx, id, &draft, p, None),
        };
        if let Err(p) = self.legacy_add(ctx, &order) {
            self.remove_placements(ctx, id, Self::placements(ctx, &order));
            return self.end_creating(ctx, id, &draft, p, None);
        }
        let step = update_json(
            self.store,
            &order_key(t, id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    Some(OrderDoc::Creating(d)) if d.reservation_id == *rid => {
                        Change::Write(OrderDoc::Confirming(order.clone()), Step::Mine)
                    }
                    Some(doc @ (OrderDoc::Confirming(_) | OrderDoc::Live(_)))
                        if same_attempt(&doc, rid) =>
                    {
                        Change::Keep(Step::Theirs(Box::new(doc)))
                    }
                    _ => Change::Keep(Step::Gone),
                })
            },
        );
        match step {
            Ok(Step::Mine) => self.finish_confirming(ctx, order),
            Ok(Step::Theirs(doc)) => {
                self.remove_placements(ctx, id, Self::placements(ctx, &order));
                self.drive(ctx, id, *doc)
            }
            Ok(Step::Gone) => {
                self.remove_placements(ctx, id, Self::placements(ctx, &order));
                Ok(Drive::NotPlaced(interrupted(ctx, id), None))
            }
            Err(e) => {
                self.remove_placements(ctx, id, Self::placements(ctx, &order));
                Err(e.into())
            }
        }
    }

    /// Steps 3-5 of a [`Claim::Late`] attempt whose holds are taken,
    /// entries first: appends `order`'s index entries, then writes its
    /// document straight as `confirming` (slots included) by
    /// compare-and-swap on the absent key, skipping the `creating` write
    /// (docs/storage-layout.md, "Entries before the record"). A list
    /// leaves entries of an absent document alone while they are young
    /// ([`service_kit::pages::ABSENT_RECORD_GRACE_MS`]); this gives up,
    /// removing them and releasing the holds, once
    /// [`RECORD_WRITE_DEADLINE_MS`] has passed since `createdAt`. After a
    /// store error on the document's write nothing is undone: the write
    /// may have landed, and then a later request finishes the order; if
    /// not, the holds expire and a list removes the entries.
    fn confirm_entries_first(
        &self,
        ctx: &Ctx,
        order: Order,
        draft: &Draft,
    ) -> Result<Drive, Problem> {
        let id = order.id.clone();
        let release = |problem: Problem| {
            for item in &draft.items {
                self.release_hold(ctx, &item.product_id, &draft.reservation_id, None);
            }
            Ok(Drive::NotPlaced(problem, None))
        };
        let order = match self.append_entries(ctx, &order) {
            Ok(order) => order,
            Err(p) => return release(p),
        };
        let undo = |problem: Problem| {
            self.remove_placements(ctx, &id, Self::placements(ctx, &order));
            release(problem)
        };
        if !within_record_deadline(&order.created_at, self.now_ms()) {
            return undo(Problem::unavailable(format!(
                "order '{id}' was not placed: adding it to the order lists took longer than {} s, so the store is overloaded; nothing was ordered, retry later",
                RECORD_WRITE_DEADLINE_MS / 1000
            )));
        }
        let written = update_json(
            self.store,
            &order_key(&ctx.tenant, &id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    None => Change::Write(OrderDoc::Confirming(order.clone()), true),
                    Some(_) => Change::Keep(false),
                })
            },
        );
        match written {
            Ok(true) => self.finish_confirming(ctx, order),
            Ok(false) => undo(Problem::unavailable(format!(
                "order id '{id}' drawn for this order was taken meanwhile; nothing was ordered, retry"
            ))),
            Err(UpdateError::Store(e)) => Err(Problem::unavailable(format!(
                "order '{id}' may or may not have been placed: saving it failed ({e}); GET /api/orders/{id} shortly to see (a saved order is finished then; otherwise its stock is returned when the holds expire)"
            ))),
            Err(other) => undo(other.into()),
        }
    }

    /// Writes the `creating` document of a [`Claim::Late`] attempt with
    /// compare-and-swap on the absent key. `false` when the key holds
    /// anything (a random id drawn twice: nothing of this attempt is
    /// there).
    fn claim_late(&self, ctx: &Ctx, id: &str, draft: &Draft) -> Result<bool, Problem> {
        Ok(update_json(
            self.store,
            &order_key(&ctx.tenant, id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    None => Change::Write(OrderDoc::Creating(draft.clone()), true),
                    Some(_) => Change::Keep(false),
                })
            },
        )?)
    }

    /// Ends a `creating` attempt that failed with `problem`: marks it
    /// `failed`, releases every hold it may have (unconfirmed, so an
    /// unknown one leaves a tombstone that refuses a late reserve), and
    /// deletes the document. If another request already moved the
    /// attempt on, joins it instead.
    fn end_creating(
        &self,
        ctx: &Ctx,
        id: &str,
        draft: &Draft,
        problem: Problem,
        retry_after: Option<String>,
    ) -> Result<Drive, Problem> {
        let rid = &draft.reservation_id;
        let key = order_key(&ctx.tenant, id);
        let step = update_json(
            self.store,
            &key,
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    Some(OrderDoc::Creating(d)) if d.reservation_id == *rid => Change::Write(
                        OrderDoc::Failed {
                            reservation_id: rid.clone(),
                        },
                        Step::Mine,
                    ),
                    Some(doc @ (OrderDoc::Confirming(_) | OrderDoc::Live(_)))
                        if same_attempt(&doc, rid) =>
                    {
                        Change::Keep(Step::Theirs(Box::new(doc)))
                    }
                    _ => Change::Keep(Step::Gone),
                })
            },
        )?;
        match step {
            Step::Mine => {
                for item in &draft.items {
                    self.release_hold(ctx, &item.product_id, rid, None);
                }
                if let Err(e) = self.store.delete(&key) {
                    eprintln!(
                        "order: failed attempt at order '{id}' of tenant '{}' not deleted (the id is free anyway): {e}",
                        ctx.tenant
                    );
                }
                Ok(Drive::NotPlaced(problem, retry_after))
            }
            Step::Theirs(doc) => self.drive(ctx, id, *doc),
            Step::Gone => Ok(Drive::NotPlaced(problem, retry_after)),
        }
    }

    /// Steps 4-5: confirms every hold, then makes the order live.
    fn finish_confirming(&self, ctx: &Ctx, order: Order) -> Result<Drive, Problem> {
        let t = &ctx.tenant;
        let rid = order.reservation_id.clone();
        let mut confirmed = vec![false; order.items.len()];
        for (i, item) in order.items.iter().enumerate() {
            let pid = &item.product_id;
            match self.products.confirm(t, pid, &rid) {
                Ok(Ok(())) => confirmed[i] = true,
                Ok(Err(Refused::NotFound)) => {
                    let p = unprocessable(
                        "unknown-product",
                        &format!("items[{i}].productId"),
                        format!(
                            "product '{pid}' was deleted while order '{}' was being placed; nothing was ordered, check the product id",
                            order.id
                        ),
                    );
                    return self.abandon(ctx, order, &confirmed, i, p);
                }
                Ok(Err(Refused::Conflict(_))) => return self.expire(ctx, order, &confirmed, i),
                Ok(Err(Refused::Busy { .. })) | Err(_) => {
                    return Err(Problem::unavailable(format!(
                        "order '{}' is being placed: its stock is held, but product '{pid}' could not confirm it yet; GET the order (or retry with the same Idempotency-Key) shortly to finish",
                        order.id
                    )));
                }
            }
        }
        let step = self.settle_confirming(ctx, &order, OrderDoc::Live(order.clone()))?;
        match step {
            Step::Mine => {
                self.publish(ctx, ORDER_CREATED, &order);
                Ok(Drive::Placed(order))
            }
            other => Ok(other
                .finished()
                .unwrap_or_else(|| Drive::NotPlaced(interrupted(ctx, &order.id), None))),
        }
    }

    /// Compare-and-swaps the `confirming` document of `order`'s attempt
    /// to `next`.
    fn settle_confirming(&self, ctx: &Ctx, order: &Order, next: OrderDoc) -> Result<Step, Problem> {
        let rid = &order.reservation_id;
        Ok(update_json(
            self.store,
            &order_key(&ctx.tenant, &order.id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    Some(OrderDoc::Confirming(o)) if o.reservation_id == *rid => {
                        Change::Write(next.clone(), Step::Mine)
                    }
                    Some(doc @ OrderDoc::Live(_)) if same_attempt(&doc, rid) => {
                        Change::Keep(Step::Theirs(Box::new(doc)))
                    }
                    _ => Change::Keep(Step::Gone),
                })
            },
        )?)
    }

    /// Releases the holds of every item but `failed` (`confirmed[j]`: item
    /// `j` was confirmed by this call, so it is released as a confirmed
    /// sale). `Err` when one could not be released: the document stays
    /// `confirming` and a later request repeats this.
    fn release_others(
        &self,
        ctx: &Ctx,
        order: &Order,
        confirmed: &[bool],
        failed: usize,
    ) -> Result<(), Problem> {
        for (j, item) in order.items.iter().enumerate() {
            if j == failed {
                continue;
            }
            let qty = confirmed[j].then_some(item.quantity);
            self.products
                .release(&ctx.tenant, &item.product_id, &order.reservation_id, qty)
                .map_err(|u| {
                    Problem::unavailable(format!(
                        "order '{}' cannot be placed, but the stock of product '{}' could not be returned yet ({}); GET the order shortly to finish",
                        order.id, item.product_id, u.0
                    ))
                })?;
        }
        Ok(())
    }

    /// Step 4 found a product gone: the order is not placed.
    fn abandon(
        &self,
        ctx: &Ctx,
        order: Order,
        confirmed: &[bool],
        failed: usize,
        problem: Problem,
    ) -> Result<Drive, Problem> {
        self.release_others(ctx, &order, confirmed, failed)?;
        let failed_doc = OrderDoc::Failed {
            reservation_id: order.reservation_id.clone(),
        };
        match self.settle_confirming(ctx, &order, failed_doc)? {
            Step::Mine => {
                self.remove_placements(ctx, &order.id, Self::placements(ctx, &order));
                if let Err(e) = self.store.delete(&order_key(&ctx.tenant, &order.id)) {
                    eprintln!(
                        "order: failed attempt at order '{}' of tenant '{}' not deleted (the id is free anyway): {e}",
                        order.id, ctx.tenant
                    );
                }
                Ok(Drive::NotPlaced(problem, None))
            }
            other => Ok(other.finished().unwrap_or(Drive::NotPlaced(problem, None))),
        }
    }

    /// Step 4 found a hold expired or released: the order ends live but
    /// Cancelled, its other items released, so it is never shown as
    /// placed while its stock is not held.
    fn expire(
        &self,
        ctx: &Ctx,
        order: Order,
        confirmed: &[bool],
        failed: usize,
    ) -> Result<Drive, Problem> {
        self.release_others(ctx, &order, confirmed, failed)?;
        let t = &ctx.tenant;
        let prefix = status_index(t, Status::Cancelled);
        let slot = self
            .index(prefix.clone())
            .append(&order.id, &order.created_at)?;
        let mut cancelled = order.clone();
        cancelled.status = Status::Cancelled;
        cancelled.cancellation_reason = Some(EXPIRED_REASON.to_owned());
        cancelled.stock_held = false;
        cancelled.updated_at = now_rfc3339();
        let mut gone = Vec::new();
        if let Some(s) = cancelled.slots.as_mut() {
            gone.push((status_index(t, Status::Pending), s.status));
            s.status = slot;
        }
        for item in cancelled.items.iter_mut() {
            if let Some(open) = item.open_slot.take() {
                gone.push((open_product_index(t, &item.product_id), open));
            }
        }
        match self.settle_confirming(ctx, &order, OrderDoc::Live(cancelled.clone())) {
            Ok(Step::Mine) => {
                self.remove_placements(ctx, &order.id, gone);
                self.publish(ctx, ORDER_CANCELLED, &cancelled);
                Ok(Drive::Placed(cancelled))
            }
            other => {
                self.remove_placements(ctx, &order.id, vec![(prefix, slot)]);
                Ok(other?
                    .finished()
                    .unwrap_or_else(|| Drive::NotPlaced(interrupted(ctx, &order.id), None)))
            }
        }
    }

    /// Releases one unconfirmed hold, logging a failure (it expires on its
    /// own at the product service).
    fn release_hold(&self, ctx: &Ctx, pid: &str, rid: &str, confirmed: Option<i64>) {
        if let Err(u) = self.products.release(&ctx.tenant, pid, rid, confirmed) {
            eprintln!(
                "order: compensation failed: product '{pid}' of tenant '{}' keeps hold '{rid}' until it expires: {}",
                ctx.tenant, u.0
            );
        }
    }

    /// The fallback for a key an earlier version recorded in a legacy
    /// `Idempotency-Key` record: `Some` when that record names an order,
    /// which is returned (200) after the record was converted (the order,
    /// or an alias at the keyed id, now carries the key) and deleted.
    /// `None` when there is no record, or it belonged to a request that
    /// died (its holds are released and the record deleted).
    fn legacy_key(
        &self,
        ctx: &Ctx,
        new: &NewOrder,
        key: &str,
        idem: &Idempotency,
        id: &str,
    ) -> Result<Option<Placed>, Failure> {
        let record_key = legacy_idempotency_key(&ctx.tenant, key);
        let Some(record) =
            get_json::<IdempotencyRecord>(self.store, &record_key).map_err(Problem::from)?
        else {
            return Ok(None);
        };
        if record.fingerprint != idem.fingerprint {
            return Err(key_reused(key).into());
        }
        let doc = self.doc(ctx, &record.order_id)?;
        match doc {
            Some(OrderDoc::Live(_) | OrderDoc::Deleted { .. }) => {
                let converted = if record.order_id == id {
                    self.stamp_key(ctx, id, idem)
                } else {
                    update_json(
                        self.store,
                        &order_key(&ctx.tenant, id),
                        &self.settings.retry,
                        |doc: Option<OrderDoc>| {
                            Ok::<_, Problem>(match doc {
                                None | Some(OrderDoc::Failed { .. }) => Change::Write(
                                    OrderDoc::Alias {
                                        order_id: record.order_id.clone(),
                                        idempotency: idem.clone(),
                                    },
                                    (),
                                ),
                                Some(_) => Change::Keep(()),
                            })
                        },
                    )
                    .map_err(Problem::from)
                };
                converted?;
                self.store.delete(&record_key).map_err(Problem::from)?;
                match doc {
                    Some(OrderDoc::Live(order)) => Ok(Some(Placed {
                        order: self.ensure_indexed(ctx, order)?,
                        replayed: true,
                    })),
                    _ => Err(key_used(&record.order_id).into()),
                }
            }
            other => {
                let age = self.now_ms().saturating_sub(record.claimed_at_ms);
                if age <= self.settings.idempotency_lease.as_millis() as u64 {
                    return Err(Problem::conflict(
                        "idempotency-key-in-progress",
                        "a request with this Idempotency-Key is still being processed; retry shortly to get its order",
                    )
                    .into());
                }
                // Its request died: return what it may have held.
                let rid = match &other {
                    Some(OrderDoc::Creating(d)) => d.reservation_id.clone(),
                    _ => record.order_id.clone(),
                };
                for item in &new.items {
                    self.release_hold(ctx, &item.product_id, &rid, None);
                }
                if matches!(other, Some(OrderDoc::Creating(ref d)) if d.items.is_empty()) {
                    self.store
                        .delete(&order_key(&ctx.tenant, &record.order_id))
                        .map_err(Problem::from)?;
                }
                self.store.delete(&record_key).map_err(Problem::from)?;
                Ok(None)
            }
        }
    }

    /// Records the key on a live or deleted order that lacks one.
    fn stamp_key(&self, ctx: &Ctx, id: &str, idem: &Idempotency) -> Result<(), Problem> {
        Ok(update_json(
            self.store,
            &order_key(&ctx.tenant, id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    Some(OrderDoc::Live(mut o)) if o.idempotency.is_none() => {
                        o.idempotency = Some(idem.clone());
                        Change::Write(OrderDoc::Live(o), ())
                    }
                    Some(OrderDoc::Deleted {
                        deleted_at,
                        idempotency: None,
                    }) => Change::Write(
                        OrderDoc::Deleted {
                            deleted_at,
                            idempotency: Some(idem.clone()),
                        },
                        (),
                    ),
                    _ => Change::Keep(()),
                })
            },
        )?)
    }
}

/// Whether a `confirming` or `live` document belongs to the attempt with
/// reservation id `rid`.
fn same_attempt(doc: &OrderDoc, rid: &str) -> bool {
    match doc {
        OrderDoc::Confirming(o) | OrderDoc::Live(o) => o.reservation_id == rid,
        _ => false,
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 if it is
/// before the epoch).
pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A 422 naming the field the problem is about.
fn unprocessable(slug: &str, field: &str, detail: String) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        slug,
        "Unprocessable order",
        detail.clone(),
    );
    p.errors.insert(field.to_owned(), vec![detail]);
    p
}

fn unknown_product(ctx: &Ctx, field: &str, pid: &str) -> Problem {
    unprocessable(
        "unknown-product",
        field,
        format!(
            "there is no product '{pid}' for tenant '{}'; nothing was ordered, check the product id",
            ctx.tenant
        ),
    )
}

/// The product service's 409 (usually not enough stock), naming the item.
fn refused(field: &str, pid: &str, quantity: i64, product: Problem) -> Problem {
    let slug = product
        .kind
        .strip_prefix(service_kit::problem::TYPE_PREFIX)
        .unwrap_or("insufficient-stock")
        .to_owned();
    let detail = format!(
        "product '{pid}' cannot supply {quantity}: {}; nothing was ordered",
        product.detail
    );
    let mut p = Problem::conflict(&slug, detail.clone());
    p.errors.insert(field.to_owned(), vec![detail]);
    p
}

/// The product service's 503 with `Retry-After`, naming the item.
fn busy(field: &str, pid: &str, retry_after: &str, product: Problem) -> Problem {
    let detail = format!(
        "product '{pid}' is taking too many orders at once ({}); nothing was ordered, retry after {retry_after} seconds",
        product.detail
    );
    let mut p = Problem::unavailable(detail.clone());
    p.errors.insert(field.to_owned(), vec![detail]);
    p
}

/// 409 for a create whose holds expired before they were confirmed.
fn expired(order: &Order) -> Problem {
    let detail = format!(
        "order '{}' was not placed: a stock hold expired before it could be confirmed, so the order is recorded as Cancelled ({EXPIRED_REASON}) and its stock returned; place a new order",
        order.id
    );
    let mut p = Problem::conflict("reservation-expired", detail.clone());
    p.errors.insert("items".to_owned(), vec![detail]);
    p
}

/// 409 for an attempt another request ended while this one ran.
fn interrupted(ctx: &Ctx, id: &str) -> Problem {
    Problem::conflict(
        "order-creation-interrupted",
        format!(
            "the attempt to place order '{id}' of tenant '{}' was ended by a concurrent request before it finished; nothing was ordered by it, retry",
            ctx.tenant
        ),
    )
}

fn order_exists(ctx: &Ctx, id: &str) -> Problem {
    let mut p = Problem::conflict(
        "order-exists",
        format!(
            "order '{id}' already exists (or existed) for tenant '{}'; choose another id or leave it out",
            ctx.tenant
        ),
    );
    p.errors.insert(
        "id".to_owned(),
        vec![format!("order '{id}' already exists")],
    );
    p
}

fn key_used(order_id: &str) -> Problem {
    let mut p = Problem::conflict(
        "idempotency-key-used",
        format!(
            "the order '{order_id}' created with this Idempotency-Key was deleted since; use a new key to order again"
        ),
    );
    p.errors.insert(
        crate::validation::IDEMPOTENCY_HEADER.to_owned(),
        vec!["its order was deleted since".to_owned()],
    );
    p
}

fn key_reused(key: &str) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        format!(
            "Idempotency-Key '{key}' was already used with a different request body; use a new key for a new order"
        ),
    );
    p.errors.insert(
        crate::validation::IDEMPOTENCY_HEADER.to_owned(),
        vec!["was already used with a different request body".to_owned()],
    );
    p
}
