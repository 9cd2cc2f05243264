//! The REST API of the order service (`/api/orders`).
//!
//! Checks run in this order: 404, then 412 (or 304 on a read: RFC 9110
//! §13.2.2, see [`Conditions`]), then 400, then 409. HEAD is served
//! wherever GET is, as GET. Each
//! tenant's orders live under its own key prefix, product calls carry its
//! id, and so do its events.

use service_kit::clock::now_rfc3339;
use service_kit::cursor::{self, Scope};
use service_kit::etag::etag;
use service_kit::events::EventSink;
use service_kit::http::{Method, StatusCode};
use service_kit::kv::{Change, KvStore, get_many_json};
use service_kit::pages::{Entry, Position, Slot, Verdict, absent_record_verdict, collect_page};
use service_kit::paging::{Start, next_link};
use service_kit::problem::Problem;
use service_kit::rest::{Conditions, is_read, not_allowed, update_live};
use service_kit::web::{Request, Response};

use crate::create::{Drive, Failure};
use crate::domain::{Order, Status};
use crate::migration::Phase;
use crate::products::Transport;
use crate::service::{Ctx, OrderService, check_write, not_found, saved_not_published, what};
use crate::store::{OrderDoc, all_index, customer_index, order_key, product_index, status_index};
use crate::validation::{ListQuery, idempotency_key, parse_new_order, parse_status_change};

/// Reason recorded on an open order cancelled by its deletion.
pub const DELETE_REASON: &str = "Order deleted";

/// Most unfinished creations one list request finishes
/// ([`OrderService::finish_overdue`]): each costs a few product calls per
/// item, so a list never does more than this much of that work; the
/// others are skipped and left to the next request that meets them.
pub const MAX_FINISHED_PER_LIST: usize = 4;

/// Which paged index a list reads, chosen by its most selective filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListIndex {
    /// `orders/product/<productId>`.
    Product,
    /// `orders/customer/<sha256(customerId)>`.
    Customer,
    /// `orders/status/<status>`.
    Status(Status),
    /// `orders/all`.
    All,
}

impl ListIndex {
    fn of(q: &ListQuery) -> ListIndex {
        if q.product_id.is_some() {
            ListIndex::Product
        } else if q.customer_id.is_some() {
            ListIndex::Customer
        } else if let Some(s) = q.status {
            ListIndex::Status(s)
        } else {
            ListIndex::All
        }
    }

    /// Stable name a cursor is bound to.
    fn name(self) -> &'static str {
        match self {
            ListIndex::Product => "orders/product",
            ListIndex::Customer => "orders/customer",
            ListIndex::Status(_) => "orders/status",
            ListIndex::All => "orders/all",
        }
    }

    fn prefix(self, ctx: &Ctx, q: &ListQuery) -> String {
        let t = &ctx.tenant;
        match self {
            ListIndex::Product => product_index(t, q.product_id.as_deref().unwrap_or_default()),
            ListIndex::Customer => customer_index(t, q.customer_id.as_deref().unwrap_or_default()),
            ListIndex::Status(s) => status_index(t, s),
            ListIndex::All => all_index(t),
        }
    }

    /// Whether `order` stores the entry at `slot` of this index: `Some`
    /// answers it, `None` when that cannot be told yet (a legacy order
    /// being re-indexed, or a status change to this index's status may be
    /// in flight).
    fn owns(self, q: &ListQuery, order: &Order, slot: Slot) -> Option<bool> {
        // A legacy order being re-indexed: its entries may be about to
        // count.
        let slots = order.slots?;
        Some(match self {
            ListIndex::All => slots.all == slot,
            ListIndex::Customer => slots.customer == slot,
            ListIndex::Product => order.items.iter().any(|i| {
                Some(i.product_id.as_str()) == q.product_id.as_deref()
                    && i.product_slot == Some(slot)
            }),
            ListIndex::Status(s) if order.status == s => slots.status == slot,
            // A change to `s` may be in flight; statuses never come back.
            ListIndex::Status(s) if order.status.can_reach(s) => return None,
            ListIndex::Status(_) => false,
        })
    }

    /// Whether `order`, found through an entry at `slot` of this index,
    /// is listed by it: `Valid` when it stores that slot and passes every
    /// filter, `Stale` when the entry can never count again.
    fn judge(self, q: &ListQuery, order: Order, slot: Slot) -> Verdict<Order> {
        match self.owns(q, &order, slot) {
            None => Verdict::Skip,
            Some(false) => Verdict::Stale,
            Some(true) if q.passes(&order) => Verdict::Valid(order),
            Some(true) => Verdict::Skip,
        }
    }
}

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// Answers one request; every failure is a problem response.
    pub fn handle(&self, req: &Request) -> Response {
        self.route(req)
            .unwrap_or_else(|p| service_kit::outbox::problem_response(&p))
    }

    fn route(&self, req: &Request) -> Result<Response, Problem> {
        let segments = req.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let m = &req.method;
        match segments.as_slice() {
            ["api", "orders"] => match *m {
                _ if is_read(m) => self.list(&Ctx::from_request(req)?, req),
                Method::POST => self.create(&Ctx::from_request(req)?, req),
                _ => not_allowed(m, "GET, HEAD, POST"),
            },
            ["api", "orders", id] => match *m {
                _ if is_read(m) => self.get(&Ctx::from_request(req)?, id, req),
                Method::PUT => self.update(&Ctx::from_request(req)?, id, req),
                Method::DELETE => self.delete(&Ctx::from_request(req)?, id, req),
                _ => not_allowed(m, "GET, HEAD, PUT, DELETE"),
            },
            _ => Err(Problem::not_found(format!(
                "there is no endpoint at {}; order endpoints are /api/orders and /api/orders/{{id}}",
                req.path
            ))),
        }
    }

    /// `GET /api/orders`: one page from the most selective paged index
    /// (productId, then customerId, then status, else all); each candidate
    /// is read and counts only when it stores the entry's slot and passes
    /// the other filters. A further page is linked with `Link: rel=next`.
    /// An unfinished creation met on the way is finished once overdue (at
    /// most [`MAX_FINISHED_PER_LIST`]), and listed if it is then placed
    /// and passes the filters.
    /// While the tenant's legacy data is being migrated the page comes
    /// from the legacy index instead (offset only).
    fn list(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let q = ListQuery::from_request(req)?;
        if self.migrate_step(ctx)?.phase == Phase::Index {
            let offset = match &q.start {
                Start::Offset(n) => *n,
                Start::Cursor(_) => {
                    return Err(Problem::validation_one(
                        cursor::PARAM,
                        "is not valid while this tenant's orders are being migrated; list with offset, or retry shortly",
                    ));
                }
            };
            let page = self.list_legacy(ctx, &q, offset)?;
            let views: Vec<_> = page.iter().map(Order::view).collect();
            return Ok(Response::json(StatusCode::OK, &views));
        }
        let which = ListIndex::of(&q);
        let filter = q.filter_text();
        let scope = Scope {
            tenant: &ctx.tenant,
            index: which.name(),
            filter: &filter,
        };
        let (from, offset) = match &q.start {
            Start::Offset(n) => (Position::start(), *n),
            Start::Cursor(c) => (cursor::decode(c, scope)?, 0),
        };
        let index = self.index(which.prefix(ctx, &q));
        let mut scan = index.scan(&from)?;
        let mut budget = MAX_FINISHED_PER_LIST;
        let now = self.now_ms();
        let page = collect_page(
            &index,
            &mut scan,
            q.limit,
            offset,
            |batch: &[(Entry, Slot)]| -> Result<Vec<Verdict<Order>>, Problem> {
                let keys: Vec<String> = batch
                    .iter()
                    .map(|(e, _)| order_key(&ctx.tenant, &e.id))
                    .collect();
                let docs: Vec<Option<OrderDoc>> = get_many_json(self.store, &keys)?;
                Ok(batch
                    .iter()
                    .zip(docs)
                    .map(|((entry, slot), doc)| match doc {
                        Some(OrderDoc::Live(o)) => which.judge(&q, o, *slot),
                        Some(doc @ (OrderDoc::Creating(_) | OrderDoc::Confirming(_))) => {
                            // Not placed yet: may become valid. One left by
                            // a request that died is finished here once it
                            // is overdue, when this entry is its own (a
                            // `creating` one stores no slots yet: any entry
                            // naming it leads to it).
                            let own = match &doc {
                                OrderDoc::Confirming(o) => which.owns(&q, o, *slot) == Some(true),
                                _ => true,
                            };
                            if !own {
                                return Verdict::Skip;
                            }
                            match self.finish_overdue(ctx, &entry.id, doc, &mut budget) {
                                Some(Drive::Placed(o)) => which.judge(&q, o, *slot),
                                _ => Verdict::Skip,
                            }
                        }
                        // Entries come before the document of a fresh
                        // order ([`OrderService::confirm_entries_first`]).
                        None => absent_record_verdict(entry, now),
                        _ => Verdict::Stale,
                    })
                    .collect())
            },
        )?;
        let views: Vec<_> = page.items.iter().map(Order::view).collect();
        let mut r = Response::json(StatusCode::OK, &views);
        if let Some(next) = page.next {
            r = r.with_header("link", &next_link(req, &cursor::encode(&next, scope)));
        }
        Ok(r)
    }

    /// `GET /api/orders/{id}` (and HEAD), finishing an unfinished
    /// creation first; 304 with the ETag when `If-None-Match` names the
    /// current one.
    fn get(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let order = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        let order = match self.flush(ctx, &order) {
            Ok(()) => Order {
                pending_events: Vec::new(),
                ..order
            },
            Err(s) => {
                // Reads never fail because of the broker.
                eprintln!(
                    "order: {} of order '{id}' of tenant '{}' is still refused by the message broker ({}); it stays pending",
                    s.kind, ctx.tenant, s.error
                );
                order
            }
        };
        Conditions::from_request(req).respond_read(order.version, &what(id), || {
            order_response(StatusCode::OK, &order)
        })
    }

    /// `POST /api/orders`: 201 for a new order, 200 for a retry with the
    /// same `Idempotency-Key`.
    fn create(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let new = parse_new_order(&req.body)?;
        let key = idempotency_key(req)?;
        let placed = match self.place(ctx, &new, key.as_deref()) {
            Ok(placed) => placed,
            Err(Failure {
                problem,
                retry_after,
            }) => {
                let mut r = problem.to_response();
                // A busy product service says when to come back.
                if let Some(after) = retry_after {
                    r = r.with_header("retry-after", &after);
                }
                return Ok(r);
            }
        };
        let id = &placed.order.id;
        if placed.replayed {
            // A retry with the key: the order's events go out first.
            self.flush(ctx, &placed.order)
                .map_err(|s| saved_not_published(ctx, id, "placed", &s))?;
        } else if let Some((_, s)) = self.refused.take().filter(|(o, _)| o == id) {
            return Err(saved_not_published(ctx, id, "placed", &s));
        }
        let status = if placed.replayed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let mut r = order_response(status, &placed.order)
            .with_header("location", &format!("/api/orders/{}", placed.order.id));
        if placed.replayed {
            r = r.with_header("idempotent-replayed", "true");
        }
        Ok(r)
    }

    /// `PUT /api/orders/{id}`: a status change. Cancelling returns the
    /// stock before answering; repeating a cancel finishes a release that
    /// failed before.
    fn update(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let conditions = Conditions::from_request(req);
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        self.flush_before_write(ctx, &current)?;
        check_write(&conditions, &current)?;
        let change = parse_status_change(&req.body, id)?;
        let now = now_rfc3339();
        let (order, changed) = self.change_status(ctx, current, &conditions, |o| {
            o.transition(change.status, change.cancellation_reason.as_deref(), &now)
                .map_err(|bad| Problem::conflict("invalid-transition", bad.to_string()))
        })?;
        let published = if changed {
            self.publish_transition(ctx, &order)
        } else {
            Ok(())
        };
        let order = if order.status == Status::Cancelled && order.stock_held {
            self.release_stock(ctx, &order, None)?
        } else {
            order
        };
        published.map_err(|s| {
            saved_not_published(ctx, id, &format!("changed to {}", order.status), &s)
        })?;
        Ok(order_response(StatusCode::OK, &order))
    }

    /// `DELETE /api/orders/{id}`. An open order is first cancelled (so no
    /// concurrent change can ship it) and its stock returned; closed
    /// orders release nothing. Its index entries go last.
    fn delete(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let conditions = Conditions::from_request(req);
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        self.flush_before_write(ctx, &current)?;
        check_write(&conditions, &current)?;
        let now = now_rfc3339();
        let (order, cancelled_here) = self.change_status(ctx, current, &conditions, |o| {
            Ok(if o.status.is_open() {
                o.transition(Status::Cancelled, Some(DELETE_REASON), &now)
                    .ok()
                    .flatten()
            } else {
                None
            })
        })?;
        let published = if cancelled_here {
            self.publish_transition(ctx, &order)
        } else {
            Ok(())
        };
        if order.status == Status::Cancelled && order.stock_held {
            self.release_stock(ctx, &order, None)?;
        }
        // The cancellation is saved; the delete waits until its events are
        // out (a deleted order could not keep them): a retry finishes it.
        published.map_err(|s| {
            saved_not_published(ctx, id, "cancelled (the delete is not done yet)", &s)
        })?;
        // The cancellation above already checked the preconditions and
        // moved the version on.
        let conditions = if cancelled_here {
            &Conditions::NONE
        } else {
            &conditions
        };
        let deleted = update_live(
            self.store,
            &order_key(&ctx.tenant, id),
            &self.settings.retry,
            conditions,
            &what(id),
            || not_found(ctx, id),
            |current: Order| {
                // A deleted order could not keep its events: events kept
                // meanwhile (a concurrent request's) go out first.
                if let Some(e) = current.pending_events.first() {
                    return Err(service_kit::outbox::event_pending(format!(
                        "order '{id}' has a {} event that the message broker refused, kept by a request that ran meanwhile; the order was not deleted. Retry in a few seconds",
                        e.kind
                    )));
                }
                Ok(Change::Write(
                    OrderDoc::Deleted {
                        deleted_at: now.clone(),
                        idempotency: current.idempotency.clone(),
                    },
                    current,
                ))
            },
        )?;
        self.remove_placements(ctx, id, Self::placements(ctx, &deleted));
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }
}

fn order_response(status: StatusCode, order: &Order) -> Response {
    Response::json(status, &order.view()).with_header("etag", &etag(order.version))
}
