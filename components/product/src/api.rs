//! The REST API of the product catalog (`/api/products`), over any
//! [`KvStore`] and [`EventSink`] so it runs natively in unit tests.
//!
//! Checks run in the order 404, then 412 (or 304 on a read: RFC 9110
//! §13.2.2, see [`Conditions`]), then 400, then 409. HEAD is served
//! wherever GET is, as GET. Each
//! tenant's data lives under its own key prefix (docs/storage-layout.md,
//! "Products"), and its events carry its id. Every read or write of a
//! product first settles it ([`Product::settle`]): a legacy ledger is
//! converted and expired holds return their stock, written in the same
//! compare-and-swap; a product missing its index slots is re-indexed.

mod indexing;

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use service_kit::cursor::{self, Scope};
use service_kit::etag::etag;
use service_kit::events::{CloudEvent, EventSink};
use service_kit::http::{Method, StatusCode};
use service_kit::ids::{is_valid_id, new_id};
use service_kit::kv::{Change, KvStore, Retry, get_json, get_many_json, update_json};
use service_kit::outbox::{self, Pending, Stalled, event_pending};
use service_kit::pages::{DEFAULT_PAGE_CAPACITY, Position, collect_page};
use service_kit::paging::{Start, next_link};
use service_kit::problem::Problem;
use service_kit::rest::{Conditions, Ctx, Document, is_read, not_allowed, update_live};
use service_kit::web::{Request, Response};

use crate::domain::product::{MAX_HOLDS_CEILING, Product, Refusal, Reserved, rfc3339_of_ms};
use crate::index::{product_key, verdict};
use crate::validation::{
    ListQuery, parse_confirmed_quantity, parse_new_product, parse_patch, parse_reservation,
};

/// CloudEvents `source` of this service's events.
pub const EVENT_SOURCE: &str = "wasmshop/product";
/// Topic product events are published on.
pub const TOPIC: &str = "products";

/// Event type: a product was created.
pub const PRODUCT_CREATED: &str = "ProductCreated";
/// Event type: a product's fields changed.
pub const PRODUCT_UPDATED: &str = "ProductUpdated";
/// Event type: a product was deleted (data is its last state).
pub const PRODUCT_DELETED: &str = "ProductDeleted";
/// Event type: a product's stock changed (PUT, hold, release, expiry).
pub const STOCK_CHANGED: &str = "StockChanged";

/// Name of the paged-index list in cursors.
const LIST_NAME: &str = "products";

/// Tunables of the service, from component variables in production
/// (see `lib.rs`) and set directly by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `reservation_hold_seconds`: how long an unconfirmed hold keeps its
    /// units (default 120).
    pub hold_seconds: u64,
    /// `reservation_max_holds`: most unconfirmed holds per product
    /// (default 100, never above [`MAX_HOLDS_CEILING`]); beyond, reserve
    /// answers 503 with `Retry-After`.
    pub max_holds: usize,
    /// `index_page_capacity`: entries per index page (default 32, at most
    /// [`service_kit::pages::MAX_PAGE_CAPACITY`]).
    pub page_capacity: usize,
    /// Legacy index entries one list or create request migrates
    /// (default 200).
    pub migration_chunk: usize,
    /// Compare-and-swap retry policy.
    pub retry: Retry,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold_seconds: 120,
            max_holds: MAX_HOLDS_CEILING,
            page_capacity: DEFAULT_PAGE_CAPACITY,
            migration_chunk: 200,
            retry: Retry::default(),
        }
    }
}

/// The product API over a store and an event sink.
pub struct Api<'a, S, E> {
    store: &'a S,
    events: &'a E,
    settings: Settings,
    clock: Box<dyn Fn() -> u64 + 'a>,
}

/// The stored document is a live product unless it is a tombstone.
impl Document for Product {
    type Live = Product;
    fn into_live(self) -> Option<Product> {
        (!self.deleted).then_some(self)
    }
    fn version_of(live: &Product) -> u64 {
        live.version
    }
}

/// What [`Api::write_live`] returns: the step's result, whether
/// settling returned expired stock, and the record as stored afterwards
/// (its pending events packed against its own view).
struct Written<R> {
    result: R,
    expired: bool,
    record: Product,
}

/// What a request does when it finds events of an earlier change pending
/// in a product and the broker still refuses them
/// (docs/messaging.md, "Events of a saved change").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touch {
    /// A read: answered anyway (reads never fail because of the broker).
    Read,
    /// A public write: refused with 503 `event-pending` before it changes
    /// anything, so a record never holds more than one change's events.
    Write,
    /// A reservation call from the order service: goes ahead; the
    /// pending `StockChanged` is coalesced with its own (the newer one
    /// carries the current stock) and published by the next touch.
    Internal,
}

/// Which pending events a newer one of the same product replaces: each
/// event carries the product's whole view, so the newest says all a
/// subscriber needs. A newer `StockChanged` replaces an older one; a newer
/// `ProductUpdated` an older one; a `ProductDeleted` both. So a product
/// keeps at most one pending event of each type (four), even when
/// concurrent writers each add theirs before any of them sees the others'
/// (docs/messaging.md, "Events of a saved change").
fn supersedes(old: &CloudEvent, new: &CloudEvent) -> bool {
    match new.kind.as_str() {
        STOCK_CHANGED => old.kind == STOCK_CHANGED,
        PRODUCT_UPDATED => old.kind == PRODUCT_UPDATED,
        PRODUCT_DELETED => old.kind == PRODUCT_UPDATED || old.kind == STOCK_CHANGED,
        _ => false,
    }
}

fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<'a, S: KvStore, E: EventSink> Api<'a, S, E> {
    /// An API over `store` and `events` with these settings, on the
    /// system clock.
    pub fn new(store: &'a S, events: &'a E, settings: Settings) -> Self {
        Api {
            store,
            events,
            settings,
            clock: Box::new(system_now_ms),
        }
    }

    /// Replaces the clock (milliseconds since the Unix epoch), so tests
    /// can let holds expire without waiting.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + 'a) -> Self {
        self.clock = Box::new(clock);
        self
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Answers one request; every failure is a problem response.
    pub fn handle(&self, req: &Request) -> Response {
        self.route(req)
            .unwrap_or_else(|p| outbox::problem_response(&p))
    }

    fn route(&self, req: &Request) -> Result<Response, Problem> {
        let segments = req.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let m = &req.method;
        let ctx = || Ctx::from_request(req);
        match segments.as_slice() {
            ["api", "products"] => match *m {
                _ if is_read(m) => self.list(&ctx()?, req),
                Method::POST => self.create(&ctx()?, req),
                _ => not_allowed(m, "GET, HEAD, POST"),
            },
            ["api", "products", id] => match *m {
                _ if is_read(m) => self.get(&ctx()?, id, req),
                Method::PUT => self.update(&ctx()?, id, req),
                Method::DELETE => self.delete(&ctx()?, id, req),
                _ => not_allowed(m, "GET, HEAD, PUT, DELETE"),
            },
            ["api", "products", id, "reservations"] => match *m {
                Method::POST => self.reserve(&ctx()?, id, req),
                _ => not_allowed(m, "POST"),
            },
            ["api", "products", id, "reservations", rid] => match *m {
                Method::DELETE => self.release(&ctx()?, id, rid, req),
                _ => not_allowed(m, "DELETE"),
            },
            ["api", "products", id, "reservations", rid, "confirm"] => match *m {
                Method::POST => self.confirm(&ctx()?, id, rid),
                _ => not_allowed(m, "POST"),
            },
            _ => Err(Problem::not_found(format!(
                "there is no endpoint at {}; product endpoints are /api/products, /api/products/{{id}} and /api/products/{{id}}/reservations",
                req.path
            ))),
        }
    }

    /// `GET /api/products?category=&limit=&offset=&cursor=`: one page from
    /// the paged index of every product or of one category, with a
    /// `Link: <...>; rel="next"` header while more may follow. Costs about
    /// one page per shard plus the page's records, whatever the tenant
    /// holds. While the tenant's legacy index is being migrated, lists are
    /// served from it (offset paging, no cursor).
    fn list(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let query = ListQuery::from_request(req)?;
        let filter = query
            .category
            .as_ref()
            .map(|c| format!("category={c}"))
            .unwrap_or_default();
        let scope = Scope {
            tenant: &ctx.tenant,
            index: LIST_NAME,
            filter: &filter,
        };
        let (position, offset) = match &query.start {
            Start::Offset(n) => (Position::start(), *n),
            Start::Cursor(text) => (cursor::decode(text, scope)?, 0),
        };
        if self.migrate_some(ctx)? && matches!(query.start, Start::Offset(_)) {
            return self.legacy_list(ctx, &query, offset);
        }
        let category = query.category.as_deref();
        let index = self.index_of(ctx, category);
        let mut scan = index.scan(&position)?;
        let now = self.now_ms();
        let mut to_repair: Vec<Product> = Vec::new();
        let page = collect_page(&index, &mut scan, query.limit, offset, |batch| {
            let keys: Vec<String> = batch
                .iter()
                .map(|(e, _)| product_key(&ctx.tenant, &e.id))
                .collect();
            let records: Vec<Option<Product>> = get_many_json(self.store, &keys)?;
            Ok::<_, Problem>(
                batch
                    .iter()
                    .zip(records)
                    .map(|((entry, slot), record)| {
                        let v = verdict(entry, *slot, record.as_ref(), category, now);
                        match (v, record) {
                            (service_kit::pages::Verdict::Valid(()), Some(p)) => {
                                service_kit::pages::Verdict::Valid(p)
                            }
                            (service_kit::pages::Verdict::Skip, Some(p)) => {
                                if !p.deleted && !p.slots.complete() && self.past_grace(&p, now) {
                                    to_repair.push(p);
                                }
                                service_kit::pages::Verdict::Skip
                            }
                            (service_kit::pages::Verdict::Stale, _) => {
                                service_kit::pages::Verdict::Stale
                            }
                            _ => service_kit::pages::Verdict::Skip,
                        }
                    })
                    .collect(),
            )
        })?;
        for p in to_repair.into_iter().take(8) {
            self.repair_logged(ctx, p);
        }
        let products = self.settle_listed(ctx, page.items, now)?;
        let views: Vec<_> = products.iter().map(Product::view).collect();
        let mut resp = Response::json(StatusCode::OK, &views);
        if let Some(next) = page.next {
            resp = resp.with_header("link", &next_link(req, &cursor::encode(&next, scope)));
        }
        Ok(resp)
    }

    /// Settles listed products that hold expired holds (one
    /// compare-and-swap each); a product deleted meanwhile is left out.
    fn settle_listed(
        &self,
        ctx: &Ctx,
        products: Vec<Product>,
        now: u64,
    ) -> Result<Vec<Product>, Problem> {
        let mut out = Vec::with_capacity(products.len());
        for mut p in products {
            if !p.pending_events.is_empty() && self.emit(ctx, &p, Vec::new()).is_ok() {
                p.pending_events.clear();
            }
            if p.needs_settling(now) {
                if let Some(p) = self.settle_stored(ctx, &p.id)? {
                    out.push(p);
                }
            } else {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// `GET /api/products/{id}` (and HEAD): 304 with the ETag when
    /// `If-None-Match` names the current one.
    fn get(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let product = self
            .live(ctx, id, Touch::Read)?
            .ok_or_else(|| not_found(ctx, id))?;
        Conditions::from_request(req).respond_read(product.version, &what(id), || {
            product_response(StatusCode::OK, &product)
        })
    }

    /// `POST /api/products`: the index entries first, then the record
    /// with their slots, written once by compare-and-swap on the absent
    /// key (or a tombstone), so the loser of a same-id race writes no
    /// record, removes its entries and gets 409
    /// ([`Api::create_entries_first`]). While the tenant's legacy index is
    /// being migrated: the record first, then the entries, then their
    /// slots (the migration indexes new products in creation order).
    fn create(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let new = parse_new_product(&req.body)?;
        let migrating = self.migrate_some(ctx)?;
        let id = match &new.id {
            Some(id) => match self.prior(ctx, id, &new)? {
                Prior::Replay(first) => return Ok(created_response(&first)),
                Prior::Taken => return Err(exists(ctx, id)),
                Prior::Free => id.clone(),
            },
            None => new_id(),
        };
        let now = rfc3339_of_ms(self.now_ms());
        let product = new.into_product(id.clone(), &now);
        if !migrating {
            let product = self.create_entries_first(ctx, product)?;
            return self.announce_created(ctx, product);
        }
        update_json(
            self.store,
            &product_key(&ctx.tenant, &id),
            &self.settings.retry,
            |current: Option<Product>| match current {
                Some(p) if !p.deleted => Err(exists(ctx, &id)),
                Some(p) if !p.pending_events.is_empty() => Err(earlier_pending(ctx, &id)),
                _ => Ok(Change::Write(product.clone(), ())),
            },
        )?;
        // During a migration the product joins the legacy document, and
        // the migration indexes it in creation order.
        let deferred = self.legacy_record(ctx, &product).unwrap_or_else(|p| {
            eprintln!(
                "product: '{id}' of tenant '{}' not recorded in the legacy index; indexing it now: {}",
                ctx.tenant, p.detail
            );
            false
        });
        let indexed = if deferred {
            Ok(None)
        } else {
            self.index_product(ctx, product.clone())
        };
        let product = match indexed {
            Ok(Some(indexed)) => indexed,
            Ok(None) => product,
            Err(p) => {
                eprintln!(
                    "product: '{id}' of tenant '{}' was saved but not indexed yet (it is re-indexed on its next read or write): {}",
                    ctx.tenant, p.detail
                );
                product
            }
        };
        self.announce_created(ctx, product)
    }

    /// What a create with the client's `id` finds there before it writes
    /// anything: a retry of a create whose `ProductCreated` was refused by
    /// the broker gets the product as the first request created it, once
    /// that event is published here ([`Prior::Replay`]); a live product
    /// makes it a 409 before any index entry is appended, so repeated
    /// duplicates leave no removed entries behind in the index pages
    /// ([`Prior::Taken`]). 503 when the replay's event is still refused.
    fn prior(
        &self,
        ctx: &Ctx,
        id: &str,
        new: &crate::domain::product::NewProduct,
    ) -> Result<Prior, Problem> {
        if !is_valid_id(id) {
            return Ok(Prior::Free);
        }
        let (record, flushed) = self.touch(ctx, id, Touch::Write)?;
        let Some(p) = record.filter(|p| !p.deleted) else {
            return Ok(Prior::Free);
        };
        if p.version != 1 || !flushed.iter().any(|k| k == PRODUCT_CREATED) {
            return Ok(Prior::Taken);
        }
        let same = new.clone().into_product(id.to_owned(), &p.created_at);
        let same_view =
            serde_json::to_value(same.view()).ok() == serde_json::to_value(p.view()).ok();
        Ok(if same_view {
            Prior::Replay(Box::new(p))
        } else {
            Prior::Taken
        })
    }

    /// Publishes `ProductCreated` for a product just written: 201, or
    /// 503 when the broker refused the event (it stays in the record and
    /// goes out with the next request that touches the product).
    fn announce_created(&self, ctx: &Ctx, product: Product) -> Result<Response, Problem> {
        let event = self.event(ctx, PRODUCT_CREATED, &product);
        self.emit(ctx, &product, vec![event])
            .map_err(|s| saved_not_published(ctx, &product.id, "created", &s))?;
        Ok(created_response(&product))
    }

    /// `PUT /api/products/{id}`. A category change appends to the new
    /// category's index first, writes the record with the new category and
    /// slot (only if category and slot are still those the append was
    /// decided on), then removes the old entry.
    fn update(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let conditions = Conditions::from_request(req);
        let mut base = self
            .live(ctx, id, Touch::Write)?
            .ok_or_else(|| not_found(ctx, id))?;
        conditions.check_write(base.version, &what(id))?;
        let patch = parse_patch(&req.body, id)?;
        const MOVE_ATTEMPTS: u32 = 5;
        for _ in 0..MOVE_ATTEMPTS {
            let moving = patch.category.clone().filter(|c| *c != base.category);
            let new_slot = match &moving {
                Some(c) => Some(self.index_of(ctx, Some(c)).append(id, &base.incarnation)?),
                None => None,
            };
            let now = rfc3339_of_ms(self.now_ms());
            let written = self.write_live(ctx, id, &conditions, |current| {
                if moving.is_some()
                    && (current.category != base.category
                        || current.slots.category != base.slots.category)
                {
                    return Ok(Change::Keep(None));
                }
                Ok(match current.apply(&patch, &now) {
                    None => Change::Keep(Some((current, None))),
                    Some(mut next) => {
                        if next.category != current.category {
                            next.slots.category = new_slot;
                        }
                        Change::Write(next.clone(), Some((next, Some(current))))
                    }
                })
            });
            let written = match written {
                Ok(w) => w,
                Err(p) => {
                    self.unindex(ctx, moving.as_deref(), new_slot, id);
                    return Err(p);
                }
            };
            let Some((product, previous)) = written.result else {
                // Moved or re-indexed meanwhile: our entry is unused.
                self.unindex(ctx, moving.as_deref(), new_slot, id);
                base = self
                    .live(ctx, id, Touch::Write)?
                    .ok_or_else(|| not_found(ctx, id))?;
                continue;
            };
            let mut stock_changed = written.expired;
            let mut events = Vec::new();
            if let Some(previous) = previous {
                if previous.category != product.category {
                    self.unindex(ctx, Some(&previous.category), previous.slots.category, id);
                    if let Err(p) = self.legacy_record(ctx, &product) {
                        eprintln!(
                            "product: legacy index of tenant '{}' keeps the old category of '{id}' (lists re-check each product): {}",
                            ctx.tenant, p.detail
                        );
                    }
                }
                events.push(self.event(ctx, PRODUCT_UPDATED, &product));
                stock_changed |= previous.stock != product.stock;
            }
            if stock_changed {
                events.push(self.event(ctx, STOCK_CHANGED, &product));
            }
            self.emit(ctx, &written.record, events)
                .map_err(|s| saved_not_published(ctx, id, "updated", &s))?;
            return Ok(product_response(StatusCode::OK, &product));
        }
        Err(Problem::unavailable(format!(
            "product '{id}' kept changing category while this update ran ({MOVE_ATTEMPTS} attempts); retry shortly"
        )))
    }

    /// `DELETE /api/products/{id}`: a tombstone keeping the incarnation
    /// (holds go with it), then the index entries are removed, best effort.
    fn delete(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let conditions = Conditions::from_request(req);
        if !is_valid_id(id) {
            return Err(not_found(ctx, id));
        }
        // A retry of a delete whose ProductDeleted was refused: the
        // tombstone keeps the event; publishing it finishes the delete.
        let (record, flushed) = self.touch(ctx, id, Touch::Write)?;
        if record.is_some_and(|p| p.deleted) {
            return if flushed.iter().any(|k| k == PRODUCT_DELETED) {
                Ok(Response::empty(StatusCode::NO_CONTENT))
            } else {
                Err(not_found(ctx, id))
            };
        }
        let current = self
            .live(ctx, id, Touch::Write)?
            .ok_or_else(|| not_found(ctx, id))?;
        conditions.check_write(current.version, &what(id))?;
        let now = rfc3339_of_ms(self.now_ms());
        let written = self.write_live(ctx, id, &conditions, |current| {
            Ok(Change::Write(current.tombstone(&now), current))
        })?;
        let last = written.result;
        self.unindex(ctx, None, last.slots.all, id);
        self.unindex(ctx, Some(&last.category), last.slots.category, id);
        let event = self.event(ctx, PRODUCT_DELETED, &last);
        self.emit(ctx, &written.record, vec![event])
            .map_err(|s| saved_not_published(ctx, id, "deleted", &s))?;
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }

    /// `POST /api/products/{id}/reservations`: hold units for an order.
    fn reserve(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        self.live(ctx, id, Touch::Internal)?
            .ok_or_else(|| not_found(ctx, id))?;
        let request = parse_reservation(&req.body)?;
        let now = self.now_ms();
        let hold_ms = self.settings.hold_seconds.saturating_mul(1000);
        let max_holds = self.settings.max_holds;
        let written = self.write_live(ctx, id, &Conditions::NONE, |current| {
            Ok(match current.reserve(&request, now, hold_ms, max_holds) {
                Ok(Reserved::New(next, r)) => {
                    Change::Write((*next).clone(), Ok(Reserved::New(next, r)))
                }
                Ok(repeat @ Reserved::Repeat(_)) => Change::Keep(Ok(repeat)),
                Err(refusal) => Change::Keep(Err((refusal, current))),
            })
        })?;
        let order_id = &request.order_id;
        let stock_event = |product: &Product| vec![self.event(ctx, STOCK_CHANGED, product)];
        match written.result {
            Ok(Reserved::New(product, r)) => {
                self.emit_logged(ctx, &written.record, stock_event(&product));
                let view = r.view(id, order_id).naming(&product);
                Ok(Response::json(StatusCode::CREATED, &view).with_header(
                    "location",
                    &format!("/api/products/{id}/reservations/{order_id}"),
                ))
            }
            Ok(Reserved::Repeat(r)) => {
                self.emit_logged(ctx, &written.record, Vec::new());
                let view = r.view(id, order_id).naming(&written.record);
                Ok(Response::json(StatusCode::OK, &view))
            }
            Err((refusal, product)) => {
                let events = if written.expired {
                    stock_event(&product)
                } else {
                    Vec::new()
                };
                self.emit_logged(ctx, &written.record, events);
                Ok(refusal_response(&refusal, id, order_id, request.quantity))
            }
        }
    }

    /// `POST /api/products/{id}/reservations/{orderId}/confirm`.
    fn confirm(&self, ctx: &Ctx, id: &str, order_id: &str) -> Result<Response, Problem> {
        if !is_valid_id(id) {
            return Err(not_found(ctx, id));
        }
        let now = self.now_ms();
        let written = self.write_live(ctx, id, &Conditions::NONE, |current| {
            Ok(match current.confirm(order_id, now) {
                Ok((Some(next), r)) => Change::Write(next.clone(), Ok((r, next))),
                Ok((None, r)) => Change::Keep(Ok((r, current))),
                Err(refusal) => Change::Keep(Err((refusal, current))),
            })
        })?;
        let (result, product) = match written.result {
            Ok((r, p)) => (Ok(r), p),
            Err((refusal, p)) => (Err(refusal), p),
        };
        let events = if written.expired {
            vec![self.event(ctx, STOCK_CHANGED, &product)]
        } else {
            Vec::new()
        };
        self.emit_logged(ctx, &written.record, events);
        Ok(match result {
            Ok(r) => Response::json(StatusCode::OK, &r.view(id, order_id)),
            Err(refusal) => refusal_response(&refusal, id, order_id, 0),
        })
    }

    /// `DELETE /api/products/{id}/reservations/{orderId}[?confirmedQuantity=n]`:
    /// 204 whether or not there was anything to release, so retries are
    /// safe.
    fn release(
        &self,
        ctx: &Ctx,
        id: &str,
        order_id: &str,
        req: &Request,
    ) -> Result<Response, Problem> {
        let confirmed = parse_confirmed_quantity(req)?;
        if !(is_valid_id(id) && is_valid_id(order_id)) {
            return Ok(Response::empty(StatusCode::NO_CONTENT));
        }
        let now = self.now_ms();
        let written = self.write_live(ctx, id, &Conditions::NONE, |current| {
            Ok(match current.release(order_id, confirmed, now) {
                Some((next, moved)) => Change::Write(next.clone(), (next, moved)),
                None => Change::Keep((current, false)),
            })
        });
        match written {
            Ok(Written {
                result: (product, moved),
                expired,
                record,
            }) => {
                let events = if moved || expired {
                    vec![self.event(ctx, STOCK_CHANGED, &product)]
                } else {
                    Vec::new()
                };
                self.emit_logged(ctx, &record, events);
            }
            Err(p) if p.status == 404 => {}
            Err(p) => return Err(p),
        }
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }

    /// The live product, settled (written when that changed it; a
    /// `StockChanged` event when expired holds returned stock) and
    /// re-indexed when it lacks its slots. Ids outside the id rule can
    /// never exist, so they are not looked up.
    fn live(&self, ctx: &Ctx, id: &str, touch: Touch) -> Result<Option<Product>, Problem> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let (product, _) = self.touch(ctx, id, touch)?;
        let Some(mut product) = product.filter(|p| !p.deleted) else {
            return Ok(None);
        };
        let now = self.now_ms();
        if product.needs_settling(now) {
            match self.settle_stored(ctx, id)? {
                Some(p) => product = p,
                None => return Ok(None),
            }
        }
        if !product.slots.complete() && self.past_grace(&product, now) && !self.migrating(ctx)? {
            product = self.repair_logged(ctx, product);
        }
        Ok(Some(product))
    }

    /// Settles the stored product `id` with compare-and-swap; `None` when
    /// it is gone.
    fn settle_stored(&self, ctx: &Ctx, id: &str) -> Result<Option<Product>, Problem> {
        let now = self.now_ms();
        let settled = update_json(
            self.store,
            &product_key(&ctx.tenant, id),
            &self.settings.retry,
            |current: Option<Product>| {
                let Some(mut p) = current.filter(|p| !p.deleted) else {
                    return Ok::<_, Problem>(Change::Keep(None));
                };
                let s = p.settle(now);
                Ok(if s.changed {
                    Change::Write(p.clone(), Some((p, s.stock_changed)))
                } else {
                    Change::Keep(Some((p, false)))
                })
            },
        )?;
        Ok(settled.map(|(p, stock_changed)| {
            if stock_changed {
                self.publish(ctx, STOCK_CHANGED, &p);
            }
            p
        }))
    }

    /// Compare-and-swaps the live product `id`: 404 once it is gone, 412
    /// when `conditions` no longer hold; the product is settled before
    /// `step` sees it, and a settle that changed it is written even when
    /// `step` keeps it.
    fn write_live<R>(
        &self,
        ctx: &Ctx,
        id: &str,
        conditions: &Conditions,
        mut step: impl FnMut(Product) -> Result<Change<Product, R>, Problem>,
    ) -> Result<Written<R>, Problem> {
        let now = self.now_ms();
        let mut expired = false;
        let record = RefCell::new(None);
        let result = update_live(
            self.store,
            &product_key(&ctx.tenant, id),
            &self.settings.retry,
            conditions,
            &what(id),
            || not_found(ctx, id),
            |mut current: Product| {
                let settled = current.settle(now);
                expired = settled.stock_changed;
                let change = match step(current.clone())? {
                    Change::Keep(r) if settled.changed => Change::Write(current.clone(), r),
                    other => other,
                };
                Ok(match change {
                    Change::Write(mut next, r) => {
                        // Pending events stay exact whatever the step changed.
                        let mut pending = std::mem::take(&mut next.pending_events);
                        outbox::rebase(&mut pending, &current.view(), &next.view());
                        next.pending_events = pending;
                        *record.borrow_mut() = Some(next.clone());
                        Change::Write(next, r)
                    }
                    Change::Keep(r) => {
                        *record.borrow_mut() = Some(current);
                        Change::Keep(r)
                    }
                })
            },
        )?;
        let record = record
            .into_inner()
            .expect("a successful update ran its step at least once");
        Ok(Written {
            result,
            expired,
            record,
        })
    }

    /// The event `kind` with the snapshot of `product` (its data).
    fn event(&self, ctx: &Ctx, kind: &str, product: &Product) -> Pending {
        Pending::new(
            TOPIC,
            CloudEvent::new(
                EVENT_SOURCE,
                kind,
                &ctx.tenant,
                &ctx.traceparent,
                &product.view(),
            )
            .with_subject(&product.id),
        )
    }

    /// Publishes, best effort, the event `kind` of a change already
    /// saved in `record` (as stored): when the broker refuses it, it is
    /// kept in the product for the next request that touches it.
    pub(crate) fn publish(&self, ctx: &Ctx, kind: &str, record: &Product) {
        let event = self.event(ctx, kind, record);
        self.emit_logged(ctx, record, vec![event]);
    }

    /// [`Api::emit`] for calls that do not fail on a refused event (reads,
    /// reservation calls): the event is pending in the product, logged.
    fn emit_logged(&self, ctx: &Ctx, record: &Product, new: Vec<Pending>) {
        if record.pending_events.is_empty() && new.is_empty() {
            return;
        }
        if let Err(s) = self.emit(ctx, record, new) {
            eprintln!(
                "product: {} of product '{}' of tenant '{}' was refused by the message broker ({}); it is kept with the product and published by the next request that touches it",
                s.kind, record.id, ctx.tenant, s.error
            );
        }
    }

    /// Publishes, in order, the events pending in `record` (the product as
    /// stored) and then `new` (the events of the change just saved in it);
    /// then records the outcome in the product with one compare-and-swap,
    /// only when something changed: published pending events removed,
    /// refused new ones added (docs/messaging.md, "Events of a saved
    /// change"). `Ok` with the types of the pending events published;
    /// `Err` says which event the broker refused (those after it were not
    /// tried, and are kept too).
    fn emit(&self, ctx: &Ctx, record: &Product, new: Vec<Pending>) -> Result<Vec<String>, Stalled> {
        let earlier = outbox::unpack(&record.pending_events, &record.view());
        let emitted = outbox::emit(self.events, earlier, new, |sent, kept| {
            self.save_pending(ctx, &record.id, sent, kept)
        });
        if let Some(p) = emitted.save_failed {
            eprintln!(
                "product: the outbox of product '{}' of tenant '{}' could not be updated ({}); an event refused by the broker may be lost, and a published one may be published again",
                record.id, ctx.tenant, p.detail
            );
        }
        let kinds = emitted.published_earlier.into_iter().map(|p| p.event.kind);
        emitted.outcome.map(|()| kinds.collect())
    }

    /// Removes the events `sent` from the product's pending list and adds
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
            &product_key(&ctx.tenant, id),
            &self.settings.retry,
            |current: Option<Product>| {
                let Some(mut p) = current else {
                    return Ok::<_, Problem>(Change::Keep(()));
                };
                let removed = outbox::remove_published(&mut p.pending_events, sent);
                if kept.is_empty() {
                    return Ok(if removed {
                        Change::Write(p, ())
                    } else {
                        Change::Keep(())
                    });
                }
                let pending = outbox::unpack(&p.pending_events, &p.view());
                let merged = outbox::merge(pending, kept.clone(), supersedes);
                p.pending_events = outbox::pack(&merged, &p.view());
                Ok(Change::Write(p, ()))
            },
        )?;
        Ok(())
    }

    /// The stored record of `id`, tombstone included, once the events
    /// pending in it are published (then cleared), with the types of
    /// those published. When the broker still refuses them: a
    /// [`Touch::Write`] is refused (503 `event-pending`, nothing changed),
    /// the others go on with the events still pending.
    fn touch(
        &self,
        ctx: &Ctx,
        id: &str,
        touch: Touch,
    ) -> Result<(Option<Product>, Vec<String>), Problem> {
        let record: Option<Product> = get_json(self.store, &product_key(&ctx.tenant, id))?;
        let Some(mut p) = record else {
            return Ok((None, Vec::new()));
        };
        if p.pending_events.is_empty() {
            return Ok((Some(p), Vec::new()));
        }
        match self.emit(ctx, &p, Vec::new()) {
            Ok(flushed) => {
                p.pending_events.clear();
                Ok((Some(p), flushed))
            }
            Err(s) if touch == Touch::Write => Err(event_pending(format!(
                "product '{id}' has a {} event of an earlier change that the message broker still refuses ({}); nothing was changed. The event is kept with the product: retry this request in a few seconds, once the broker accepts events again",
                s.kind, s.error
            ))),
            Err(s) => {
                eprintln!(
                    "product: {} of product '{id}' of tenant '{}' is still refused by the message broker ({}); it stays pending",
                    s.kind, ctx.tenant, s.error
                );
                Ok((Some(p), Vec::new()))
            }
        }
    }
}

fn created_response(product: &Product) -> Response {
    product_response(StatusCode::CREATED, product)
        .with_header("location", &format!("/api/products/{}", product.id))
}

/// The 503 of a public write whose change is saved but whose event `s`
/// the broker refused; `done` says what happened (`deleted`, ...).
fn saved_not_published(ctx: &Ctx, id: &str, done: &str, s: &Stalled) -> Problem {
    event_pending(format!(
        "product '{id}' of tenant '{}' was {done}, but its {} event was refused by the message broker ({}); the event is kept with the product and is published by the next request that reads or writes it: retry this request or GET /api/products/{id}",
        ctx.tenant, s.kind, s.error
    ))
}

/// The 503 of a re-create over a tombstone whose events are still pending.
pub(super) fn earlier_pending(ctx: &Ctx, id: &str) -> Problem {
    event_pending(format!(
        "product '{id}' of tenant '{}' was deleted and its ProductDeleted event is not published yet; nothing was created. Retry in a few seconds, once the message broker accepts events again",
        ctx.tenant
    ))
}

fn product_response(status: StatusCode, product: &Product) -> Response {
    Response::json(status, &product.view()).with_header("etag", &etag(product.version))
}

fn what(id: &str) -> String {
    format!("product '{id}'")
}

fn not_found(ctx: &Ctx, id: &str) -> Problem {
    Problem::not_found(format!(
        "there is no product '{id}' for tenant '{}'; check the id and the X-Tenant-Id header",
        ctx.tenant
    ))
}

/// What a create with the client's id finds at that id ([`Api::prior`]).
enum Prior {
    /// Nothing live: the create goes on.
    Free,
    /// The product this very body created, whose `ProductCreated` was
    /// published only now: answered as the create's 201.
    Replay(Box<Product>),
    /// Another live product: 409.
    Taken,
}

pub(super) fn exists(ctx: &Ctx, id: &str) -> Problem {
    Problem::conflict(
        "product-exists",
        format!(
            "product '{id}' already exists for tenant '{}'; choose another id or update it with PUT",
            ctx.tenant
        ),
    )
}

/// The answer to a refused reserve or confirm: 409 with a slug the order
/// service branches on, or 503 with `Retry-After` for too many holds.
fn refusal_response(refusal: &Refusal, product_id: &str, order: &str, quantity: i64) -> Response {
    let problem = match refusal {
        Refusal::OtherQuantity { reserved } => Problem::conflict(
            "reservation-conflict",
            format!(
                "order '{order}' already reserved {reserved} of product '{product_id}', not {quantity}; release it first to reserve a different quantity"
            ),
        ),
        Refusal::Released => Problem::conflict(
            "reservation-released",
            format!(
                "the reservation of order '{order}' on product '{product_id}' was released or expired already; use a new order id to reserve again"
            ),
        ),
        Refusal::Expired => Problem::conflict(
            "reservation-expired",
            format!(
                "the hold of order '{order}' on product '{product_id}' expired and its stock was returned; reserve again under a new order id"
            ),
        ),
        Refusal::Unknown => Problem::conflict(
            "reservation-unknown",
            format!(
                "product '{product_id}' holds nothing for order '{order}'; reserve before confirming"
            ),
        ),
        Refusal::InsufficientStock { available } => Problem::conflict(
            "insufficient-stock",
            format!(
                "product '{product_id}' has {available} in stock, {quantity} requested; reserve fewer or restock first"
            ),
        ),
        Refusal::TooManyHolds { retry_after_secs } => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-holds",
                "Service unavailable",
                format!(
                    "product '{product_id}' already has the most unconfirmed holds allowed; retry after {retry_after_secs} s, when one has expired or been confirmed"
                ),
            )
            .to_response()
            .with_header("retry-after", &retry_after_secs.to_string());
        }
    };
    problem.to_response()
}

#[cfg(test)]
mod tests;
