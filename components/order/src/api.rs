//! The REST API of the order service (`/api/orders`).
//!
//! Checks run in the order DESIGN §4 fixes: 404, then 412, then 400, then
//! 409. Each tenant's orders live under its own key prefix, product calls
//! carry its id, and so do its events.

use service_kit::clock::now_rfc3339;
use service_kit::etag::etag;
use service_kit::events::EventSink;
use service_kit::http::{Method, StatusCode};
use service_kit::kv::{Change, KvStore, get_json, get_many_json, update_json};
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;
use service_kit::trace::traceparent_from;
use service_kit::web::{Request, Response};

use crate::domain::{Order, Status};
use crate::products::Transport;
use crate::service::{Ctx, OrderService, check_if_match, not_found};
use crate::store::{OrderDoc, OrderIndex, index_key, matching, order_key};
use crate::validation::{ListQuery, idempotency_key, parse_new_order, parse_status_change};

/// Orders fetched per batch while filling a list page.
const LIST_BATCH: usize = 100;

/// Reason recorded on an open order cancelled by its deletion.
pub const DELETE_REASON: &str = "Order deleted";

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// Answers one request; every failure is a problem response.
    pub fn handle(&self, req: &Request) -> Response {
        self.route(req).unwrap_or_else(|p| p.to_response())
    }

    fn route(&self, req: &Request) -> Result<Response, Problem> {
        let segments = req.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let m = &req.method;
        match segments.as_slice() {
            ["api", "orders"] => match *m {
                Method::GET => self.list(&ctx(req)?, req),
                Method::POST => self.create(&ctx(req)?, req),
                _ => not_allowed(m, "GET, POST"),
            },
            ["api", "orders", id] => match *m {
                Method::GET => self.get(&ctx(req)?, id),
                Method::PUT => self.update(&ctx(req)?, id, req),
                Method::DELETE => self.delete(&ctx(req)?, id, req),
                _ => not_allowed(m, "GET, PUT, DELETE"),
            },
            _ => Err(Problem::not_found(format!(
                "there is no endpoint at {}; order endpoints are /api/orders and /api/orders/{{id}}",
                req.path
            ))),
        }
    }

    /// `GET /api/orders`: the index gives the candidates in creation order
    /// (filtered on the fields that never change); each order is then
    /// read, so status and deletion are always current.
    fn list(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let q = ListQuery::from_request(req)?;
        let index: OrderIndex = get_json(self.store, &index_key(&ctx.tenant))?.unwrap_or_default();
        let ids = matching(&index, q.customer_id.as_deref(), q.product_id.as_deref());
        let mut skipped = 0;
        let mut page: Vec<Order> = Vec::new();
        'batches: for chunk in ids.chunks(LIST_BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| order_key(&ctx.tenant, id)).collect();
            let docs: Vec<Option<OrderDoc>> = get_many_json(self.store, &keys)?;
            for order in docs.into_iter().flatten().filter_map(OrderDoc::live) {
                if q.status.is_some_and(|s| s != order.status) {
                    continue;
                }
                if skipped < q.offset {
                    skipped += 1;
                    continue;
                }
                page.push(order);
                if page.len() == q.limit {
                    break 'batches;
                }
            }
        }
        let views: Vec<_> = page.iter().map(Order::view).collect();
        Ok(Response::json(StatusCode::OK, &views))
    }

    /// `GET /api/orders/{id}`.
    fn get(&self, ctx: &Ctx, id: &str) -> Result<Response, Problem> {
        let order = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        Ok(order_response(StatusCode::OK, &order))
    }

    /// `POST /api/orders`: 201 for a new order, 200 for a retry with the
    /// same `Idempotency-Key`.
    fn create(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let new = parse_new_order(&req.body)?;
        let key = idempotency_key(req)?;
        let placed = self.place(ctx, &new, key.as_deref())?;
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
        let if_match = req.header_joined("if-match");
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        check_if_match(if_match.as_deref(), &current)?;
        let change = parse_status_change(&req.body, id)?;
        let now = now_rfc3339();
        let (order, changed) = self.update_live(ctx, id, if_match.as_deref(), |current| {
            match current.transition(change.status, change.cancellation_reason.as_deref(), &now) {
                Ok(Some(next)) => Ok(Change::Write(OrderDoc::Live(next.clone()), (next, true))),
                Ok(None) => Ok(Change::Keep((current, false))),
                Err(bad) => Err(Problem::conflict("invalid-transition", bad.to_string())),
            }
        })?;
        if changed {
            self.publish_transition(ctx, &order);
        }
        let order = if order.status == Status::Cancelled && order.stock_held {
            self.release_stock(ctx, &order, None)?
        } else {
            order
        };
        Ok(order_response(StatusCode::OK, &order))
    }

    /// `DELETE /api/orders/{id}`. An open order is first cancelled (so no
    /// concurrent change can ship it) and its stock returned; closed
    /// orders release nothing.
    fn delete(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let if_match = req.header_joined("if-match");
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        check_if_match(if_match.as_deref(), &current)?;
        let now = now_rfc3339();
        let mut order = current;
        let mut cancelled_here = false;
        if order.status.is_open() {
            let (next, changed) = self.update_live(ctx, id, if_match.as_deref(), |current| {
                Ok(
                    match current.transition(Status::Cancelled, Some(DELETE_REASON), &now) {
                        Ok(Some(next)) => Change::Write(OrderDoc::Live(next.clone()), (next, true)),
                        _ => Change::Keep((current, false)),
                    },
                )
            })?;
            if changed {
                self.publish_transition(ctx, &next);
            }
            cancelled_here = changed;
            order = next;
        }
        if order.status == Status::Cancelled && order.stock_held {
            order = self.release_stock(ctx, &order, None)?;
        }
        // The cancellation above already checked If-Match and moved the version on.
        let if_match = if_match.as_deref().filter(|_| !cancelled_here);
        self.update_live(ctx, id, if_match, |_| {
            Ok(Change::Write(
                OrderDoc::Deleted {
                    deleted_at: now.clone(),
                },
                (),
            ))
        })?;
        let pids: Vec<String> = order.items.iter().map(|i| i.product_id.clone()).collect();
        self.unindex(ctx, id, &pids);
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }

    /// Compare-and-swaps the live order `id`: 404 once it is gone, 412 when
    /// `if_match` no longer matches it; otherwise `step` decides the change.
    fn update_live<R>(
        &self,
        ctx: &Ctx,
        id: &str,
        if_match: Option<&str>,
        mut step: impl FnMut(Order) -> Result<Change<OrderDoc, R>, Problem>,
    ) -> Result<R, Problem> {
        Ok(update_json(
            self.store,
            &order_key(&ctx.tenant, id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                let current = doc
                    .and_then(OrderDoc::live)
                    .ok_or_else(|| not_found(ctx, id))?;
                check_if_match(if_match, &current)?;
                step(current)
            },
        )?)
    }
}

fn ctx(req: &Request) -> Result<Ctx, Problem> {
    Ok(Ctx {
        tenant: TenantId::from_headers(&req.headers)?,
        traceparent: traceparent_from(&req.headers),
    })
}

fn order_response(status: StatusCode, order: &Order) -> Response {
    Response::json(status, &order.view()).with_header("etag", &etag(order.version))
}

fn not_allowed(method: &Method, allowed: &str) -> Result<Response, Problem> {
    Ok(Problem::method_not_allowed_response(method, allowed))
}
