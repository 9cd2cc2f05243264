//! Placing an order (the seed's "Order Creation Flow"): for each item read
//! the product (name snapshot), then reserve its stock (price snapshot,
//! taken atomically with the stock). If any step fails, the reservations
//! already made are released and nothing is saved.
//!
//! `Idempotency-Key`: the first request claims the key with a
//! compare-and-swap create, binding it to the order id it will create; a
//! concurrent or later request with the key reads that binding and returns
//! that order instead of reserving anything. Reservations are made under
//! an id fixed by the claim, so product-side idempotency also protects a
//! retried call.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use service_kit::clock::now_rfc3339;
use service_kit::events::EventSink;
use service_kit::http::StatusCode;
use service_kit::ids::new_id;
use service_kit::kv::{Change, KvStore, get_json, update_json};
use service_kit::money::Money;
use service_kit::problem::Problem;

use crate::domain::{Order, OrderItem, Status};
use crate::products::{Refused, Transport};
use crate::service::{Ctx, ORDER_CREATED, OrderService};
use crate::store::{IdempotencyRecord, OrderDoc, idempotency_key, order_key};
use crate::validation::NewOrder;

/// How often a request waiting on a concurrent one with the same key looks.
const POLL: Duration = Duration::from_millis(50);

/// The result of a create: the order, and whether it was made now (201)
/// or earlier under the same `Idempotency-Key` (200).
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// `true` when an earlier request with the same key created it.
    pub replayed: bool,
}

/// Who holds an idempotency key.
enum Claim {
    /// This request; it creates the order with this id.
    Mine(String),
    /// An earlier request.
    Theirs(IdempotencyRecord),
}

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// Places `new`, honouring an `Idempotency-Key` when given.
    pub fn place(&self, ctx: &Ctx, new: &NewOrder, key: Option<&str>) -> Result<Placed, Problem> {
        match key {
            None => {
                let id = new.id.clone().unwrap_or_else(new_id);
                self.place_once(ctx, new, &id).map(|order| Placed {
                    order,
                    replayed: false,
                })
            }
            Some(key) => self.place_idempotent(ctx, new, key),
        }
    }

    fn place_idempotent(&self, ctx: &Ctx, new: &NewOrder, key: &str) -> Result<Placed, Problem> {
        let record_key = idempotency_key(&ctx.tenant, key);
        let fingerprint = new.fingerprint();
        let deadline = Instant::now() + self.settings.idempotency_wait;
        loop {
            let candidate = new.id.clone().unwrap_or_else(new_id);
            let claimed = IdempotencyRecord {
                fingerprint: fingerprint.clone(),
                order_id: candidate.clone(),
                claimed_at_ms: now_ms(),
            };
            let claim = update_json(
                self.store,
                &record_key,
                &self.settings.retry,
                |current: Option<IdempotencyRecord>| match current {
                    None => Ok(Change::Write(
                        claimed.clone(),
                        Claim::Mine(candidate.clone()),
                    )),
                    Some(r) if r.fingerprint != fingerprint => Err(key_reused(key)),
                    Some(r) => Ok(Change::Keep(Claim::Theirs(r))),
                },
            )?;
            let id = match claim {
                Claim::Mine(id) => id,
                Claim::Theirs(theirs) => {
                    let doc: Option<OrderDoc> =
                        get_json(self.store, &order_key(&ctx.tenant, &theirs.order_id))?;
                    match doc {
                        Some(OrderDoc::Live(order)) => {
                            return Ok(Placed {
                                order,
                                replayed: true,
                            });
                        }
                        Some(OrderDoc::Deleted { .. }) => {
                            return Err(Problem::conflict(
                                "idempotency-key-used",
                                format!(
                                    "the order '{}' created with this Idempotency-Key was deleted since; use a new key to order again",
                                    theirs.order_id
                                ),
                            ));
                        }
                        Some(OrderDoc::Creating { .. }) | None => {}
                    }
                    let age = now_ms().saturating_sub(theirs.claimed_at_ms);
                    if age > self.settings.idempotency_lease.as_millis() as u64 {
                        match self.take_over(ctx, new, &record_key, &theirs, doc)? {
                            Some(id) => id,
                            None => continue,
                        }
                    } else if Instant::now() >= deadline {
                        return Err(Problem::conflict(
                            "idempotency-key-in-progress",
                            "a request with this Idempotency-Key is still being processed; retry shortly to get its order",
                        ));
                    } else {
                        std::thread::sleep(POLL);
                        continue;
                    }
                }
            };
            return match self.place_once(ctx, new, &id) {
                Ok(order) => Ok(Placed {
                    order,
                    replayed: false,
                }),
                Err(p) => {
                    // Nothing was saved: free the key so a retry starts afresh.
                    if let Err(e) = self.store.delete(&record_key) {
                        eprintln!(
                            "order: Idempotency-Key record of tenant '{}' not freed: {e}",
                            ctx.tenant
                        );
                    }
                    Err(p)
                }
            };
        }
    }

    /// Takes over a key whose creating request died: returns what that
    /// request may have reserved, drops its placeholder, then claims the
    /// key for this request if it still holds the stale claim. Returns the
    /// order id now claimed, or `None` when someone else got there first.
    fn take_over(
        &self,
        ctx: &Ctx,
        new: &NewOrder,
        record_key: &str,
        stale: &IdempotencyRecord,
        doc: Option<OrderDoc>,
    ) -> Result<Option<String>, Problem> {
        let reservation_id = match &doc {
            Some(OrderDoc::Creating { reservation_id }) => reservation_id.clone(),
            _ => stale.order_id.clone(),
        };
        for item in &new.items {
            self.products
                .release(&ctx.tenant, &item.product_id, &reservation_id)?;
        }
        if doc.is_some() {
            self.store
                .delete(&order_key(&ctx.tenant, &stale.order_id))?;
        }
        let id = new.id.clone().unwrap_or_else(new_id);
        let fresh = IdempotencyRecord {
            fingerprint: stale.fingerprint.clone(),
            order_id: id.clone(),
            claimed_at_ms: now_ms(),
        };
        let claimed = update_json(
            self.store,
            record_key,
            &self.settings.retry,
            |current: Option<IdempotencyRecord>| {
                Ok::<_, Problem>(if current.as_ref() == Some(stale) {
                    Change::Write(fresh.clone(), true)
                } else {
                    Change::Keep(false)
                })
            },
        )?;
        Ok(claimed.then_some(id))
    }

    /// Places the order `id` without idempotency bookkeeping.
    fn place_once(&self, ctx: &Ctx, new: &NewOrder, id: &str) -> Result<Order, Problem> {
        let key = order_key(&ctx.tenant, id);
        let client_id = new.id.is_some();
        // A client-chosen id may have been used (and its reservations
        // released) before, so reserve under a fresh id and take the order
        // id with a placeholder first.
        let reservation_id = if client_id { new_id() } else { id.to_owned() };
        if client_id {
            update_json(
                self.store,
                &key,
                &self.settings.retry,
                |current: Option<OrderDoc>| match current {
                    None => Ok(Change::Write(
                        OrderDoc::Creating {
                            reservation_id: reservation_id.clone(),
                        },
                        (),
                    )),
                    Some(_) => Err(order_exists(ctx, id)),
                },
            )?;
        }
        let drop_placeholder = || {
            if client_id && let Err(e) = self.store.delete(&key) {
                eprintln!(
                    "order: placeholder of order '{id}' of tenant '{}' not removed: {e}",
                    ctx.tenant
                );
            }
        };
        let mut held = Vec::new();
        let (items, currency) = match self.reserve_all(ctx, new, &reservation_id, &mut held) {
            Ok(done) => done,
            Err(problem) => {
                self.compensate(ctx, &held, &reservation_id);
                drop_placeholder();
                return Err(problem);
            }
        };
        let now = now_rfc3339();
        let order = Order {
            id: id.to_owned(),
            customer_id: new.customer_id.clone(),
            items,
            currency,
            status: Status::Pending,
            cancellation_reason: None,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
            reservation_id: reservation_id.clone(),
            stock_held: true,
        };
        let all: Vec<String> = order.items.iter().map(|i| i.product_id.clone()).collect();
        let saved = self.index(ctx, &order).and_then(|()| {
            update_json(
                self.store,
                &key,
                &self.settings.retry,
                |current: Option<OrderDoc>| match current {
                    None if !client_id => Ok(Change::Write(OrderDoc::Live(order.clone()), ())),
                    Some(OrderDoc::Creating { reservation_id: r }) if r == reservation_id => {
                        Ok(Change::Write(OrderDoc::Live(order.clone()), ()))
                    }
                    _ => Err(order_exists(ctx, id)),
                },
            )
            .map_err(Problem::from)
        });
        if let Err(p) = saved {
            self.compensate(ctx, &all, &reservation_id);
            self.unindex(ctx, id, &all);
            if p.status != StatusCode::CONFLICT.as_u16() {
                drop_placeholder();
            }
            return Err(p);
        }
        self.publish(ctx, ORDER_CREATED, &order);
        Ok(order)
    }

    /// Reads and reserves every item in turn. `held` collects the products
    /// that may hold a reservation (including one whose outcome is
    /// unknown), for release when this fails.
    fn reserve_all(
        &self,
        ctx: &Ctx,
        new: &NewOrder,
        reservation_id: &str,
        held: &mut Vec<String>,
    ) -> Result<(Vec<OrderItem>, String), Problem> {
        let mut items = Vec::new();
        let mut currency: Option<String> = None;
        let mut total = Money::ZERO;
        for (i, item) in new.items.iter().enumerate() {
            let pid = &item.product_id;
            let field = format!("items[{i}].productId");
            let info = match self.products.product(&ctx.tenant, pid) {
                Ok(Some(info)) => info,
                Ok(None) => return Err(unknown_product(ctx, &field, pid)),
                Err(u) => return Err(u.into()),
            };
            let reserved =
                match self
                    .products
                    .reserve(&ctx.tenant, pid, reservation_id, item.quantity)
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(Refused::NotFound)) => {
                        return Err(unknown_product(ctx, &field, pid));
                    }
                    Ok(Err(Refused::Conflict(p))) => {
                        return Err(refused(&field, pid, item.quantity, p));
                    }
                    Err(u) => {
                        held.push(pid.clone());
                        return Err(u.into());
                    }
                };
            held.push(pid.clone());
            if let Some(c) = &currency
                && *c != reserved.currency
            {
                return Err(unprocessable(
                    "mixed-currencies",
                    &field,
                    format!(
                        "product '{pid}' is priced in {}, but earlier items in {c}; an order has one currency, so order them separately",
                        reserved.currency
                    ),
                ));
            }
            currency = Some(reserved.currency.clone());
            let line = reserved.unit_price.checked_mul(item.quantity);
            match line.and_then(|l| total.checked_add(l)) {
                Some(t) => total = t,
                None => {
                    return Err(unprocessable(
                        "order-too-large",
                        &format!("items[{i}].quantity"),
                        "the order total is too large to represent; order fewer units".to_owned(),
                    ));
                }
            }
            items.push(OrderItem {
                product_id: pid.clone(),
                product_name: info.name,
                unit_price_minor: reserved.unit_price.minor(),
                quantity: item.quantity,
                name_version: info.version,
            });
        }
        Ok((items, currency.unwrap_or_default()))
    }
}

fn now_ms() -> u64 {
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

fn order_exists(ctx: &Ctx, id: &str) -> Problem {
    Problem::conflict(
        "order-exists",
        format!(
            "order '{id}' already exists (or existed) for tenant '{}'; choose another id or leave it out",
            ctx.tenant
        ),
    )
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
