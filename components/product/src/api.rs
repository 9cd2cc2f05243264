//! The REST API of the product catalog (`/api/products`), over any
//! [`KvStore`] and [`EventSink`] so it runs natively in unit tests.
//!
//! Checks run in the order DESIGN §4 fixes: 404, then 412, then 400, then
//! 409. Each tenant's data lives under its own key prefix, including its
//! index document, and its events carry its id.

use service_kit::clock::now_rfc3339;
use service_kit::etag::{etag, if_match_allows};
use service_kit::events::{CloudEvent, EventSink};
use service_kit::http::{Method, StatusCode};
use service_kit::ids::{is_valid_id, new_id};
use service_kit::kv::{Change, KvStore, Retry, get_json, get_many_json, update_json};
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;
use service_kit::trace::traceparent_from;
use service_kit::web::{Request, Response};

use crate::domain::product::Product;
use crate::index::{IndexEntry, ProductIndex, page};
use crate::reservation::{self, Reserved};
use crate::validation::{ListQuery, parse_new_product, parse_patch};

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
/// Event type: a product's stock changed (PUT, reservation or release).
pub const STOCK_CHANGED: &str = "StockChanged";

/// Key of a product document.
pub fn product_key(tenant: &TenantId, id: &str) -> String {
    format!("tenant/{tenant}/product/{id}")
}

/// Key of a tenant's product index document.
pub fn index_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/product-index")
}

/// The product API over a store and an event sink.
pub struct Api<'a, S, E> {
    store: &'a S,
    events: &'a E,
    retry: Retry,
}

/// What one request is about: its tenant and trace.
struct Ctx {
    tenant: TenantId,
    traceparent: String,
}

impl<'a, S: KvStore, E: EventSink> Api<'a, S, E> {
    /// An API over `store` and `events` with the default CAS retry policy.
    pub fn new(store: &'a S, events: &'a E) -> Self {
        Api {
            store,
            events,
            retry: Retry::default(),
        }
    }

    /// Overrides the CAS retry policy (tests).
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Answers one request; every failure is a problem response.
    pub fn handle(&self, req: &Request) -> Response {
        self.route(req).unwrap_or_else(|p| p.to_response())
    }

    fn route(&self, req: &Request) -> Result<Response, Problem> {
        let segments = req.segments();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let m = &req.method;
        match segments.as_slice() {
            ["api", "products"] => match *m {
                Method::GET => self.list(&ctx(req)?, req),
                Method::POST => self.create(&ctx(req)?, req),
                _ => not_allowed(m, "GET, POST"),
            },
            ["api", "products", id] => match *m {
                Method::GET => self.get(&ctx(req)?, id),
                Method::PUT => self.update(&ctx(req)?, id, req),
                Method::DELETE => self.delete(&ctx(req)?, id, req),
                _ => not_allowed(m, "GET, PUT, DELETE"),
            },
            ["api", "products", id, "reservations"] => match *m {
                Method::POST => self.reserve(&ctx(req)?, id, req),
                _ => not_allowed(m, "POST"),
            },
            ["api", "products", id, "reservations", order_id] => match *m {
                Method::DELETE => self.release(&ctx(req)?, id, order_id),
                _ => not_allowed(m, "DELETE"),
            },
            _ => Err(Problem::not_found(format!(
                "there is no endpoint at {}; product endpoints are /api/products, /api/products/{{id}} and /api/products/{{id}}/reservations",
                req.path
            ))),
        }
    }

    /// `GET /api/products`.
    fn list(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let query = ListQuery::from_request(req)?;
        let index: ProductIndex =
            get_json(self.store, &index_key(&ctx.tenant))?.unwrap_or_default();
        let keys: Vec<String> = page(&index, query.category.as_deref(), query.offset, query.limit)
            .iter()
            .map(|id| product_key(&ctx.tenant, id))
            .collect();
        let products: Vec<Option<Product>> = get_many_json(self.store, &keys)?;
        // The index may lag a crashed write; the products themselves decide.
        let views: Vec<_> = products
            .iter()
            .flatten()
            .filter(|p| !p.deleted)
            .filter(|p| query.category.as_ref().is_none_or(|c| &p.category == c))
            .map(Product::view)
            .collect();
        Ok(Response::json(StatusCode::OK, &views))
    }

    /// `GET /api/products/{id}`.
    fn get(&self, ctx: &Ctx, id: &str) -> Result<Response, Problem> {
        let product = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        Ok(product_response(StatusCode::OK, &product))
    }

    /// `POST /api/products`.
    fn create(&self, ctx: &Ctx, req: &Request) -> Result<Response, Problem> {
        let new = parse_new_product(&req.body)?;
        let id = new.id.clone().unwrap_or_else(new_id);
        if self.live(ctx, &id)?.is_some() {
            return Err(exists(ctx, &id));
        }
        let product = new.into_product(id.clone(), &now_rfc3339());
        // Index first: an entry whose product write then fails is skipped
        // by lists, while a product missing from the index would be lost.
        self.update_index(ctx, |ix| {
            ix.upsert(IndexEntry {
                id: id.clone(),
                created_at: product.created_at.clone(),
                category: product.category.clone(),
            })
        })?;
        update_json(
            self.store,
            &product_key(&ctx.tenant, &id),
            &self.retry,
            |current: Option<Product>| match current {
                Some(p) if !p.deleted => Err(exists(ctx, &id)),
                _ => Ok(Change::Write(product.clone(), ())),
            },
        )?;
        self.publish(ctx, PRODUCT_CREATED, &product);
        Ok(product_response(StatusCode::CREATED, &product)
            .with_header("location", &format!("/api/products/{id}")))
    }

    /// `PUT /api/products/{id}`.
    fn update(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let if_match = req.header_joined("if-match");
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        check_if_match(if_match.as_deref(), &current)?;
        let patch = parse_patch(&req.body, id)?;
        let now = now_rfc3339();
        let (product, previous) = update_json(
            self.store,
            &product_key(&ctx.tenant, id),
            &self.retry,
            |current: Option<Product>| {
                let current = current
                    .filter(|p| !p.deleted)
                    .ok_or_else(|| not_found(ctx, id))?;
                check_if_match(if_match.as_deref(), &current)?;
                Ok::<_, Problem>(match current.apply(&patch, &now) {
                    None => Change::Keep((current, None)),
                    Some(next) => Change::Write(next.clone(), (next, Some(current))),
                })
            },
        )?;
        if let Some(previous) = previous {
            if previous.category != product.category {
                self.update_index_after_write(ctx, |ix| {
                    ix.upsert(IndexEntry {
                        id: product.id.clone(),
                        created_at: product.created_at.clone(),
                        category: product.category.clone(),
                    })
                });
            }
            self.publish(ctx, PRODUCT_UPDATED, &product);
            if previous.stock != product.stock {
                self.publish(ctx, STOCK_CHANGED, &product);
            }
        }
        Ok(product_response(StatusCode::OK, &product))
    }

    /// `DELETE /api/products/{id}`.
    fn delete(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        let if_match = req.header_joined("if-match");
        let current = self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        check_if_match(if_match.as_deref(), &current)?;
        let now = now_rfc3339();
        let last = update_json(
            self.store,
            &product_key(&ctx.tenant, id),
            &self.retry,
            |current: Option<Product>| {
                let current = current
                    .filter(|p| !p.deleted)
                    .ok_or_else(|| not_found(ctx, id))?;
                check_if_match(if_match.as_deref(), &current)?;
                Ok::<_, Problem>(Change::Write(current.tombstone(&now), current))
            },
        )?;
        self.update_index_after_write(ctx, |ix| ix.remove(id));
        self.publish(ctx, PRODUCT_DELETED, &last);
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }

    /// `POST /api/products/{id}/reservations`.
    fn reserve(&self, ctx: &Ctx, id: &str, req: &Request) -> Result<Response, Problem> {
        self.live(ctx, id)?.ok_or_else(|| not_found(ctx, id))?;
        let request = reservation::parse_request(&req.body)?;
        let now = now_rfc3339();
        let outcome = update_json(
            self.store,
            &product_key(&ctx.tenant, id),
            &self.retry,
            |current: Option<Product>| {
                let current = current
                    .filter(|p| !p.deleted)
                    .ok_or_else(|| not_found(ctx, id))?;
                match reservation::reserve(&current, &request, &now) {
                    Ok(Reserved::New(next, r)) => {
                        Ok(Change::Write((*next).clone(), Reserved::New(next, r)))
                    }
                    Ok(repeat @ Reserved::Repeat(_)) => Ok(Change::Keep(repeat)),
                    Err(refusal) => Err(refusal.to_problem(id, &request)),
                }
            },
        )?;
        let order_id = &request.order_id;
        Ok(match outcome {
            Reserved::New(product, r) => {
                self.publish(ctx, STOCK_CHANGED, &product);
                Response::json(StatusCode::CREATED, &r.view(id, order_id)).with_header(
                    "location",
                    &format!("/api/products/{id}/reservations/{order_id}"),
                )
            }
            Reserved::Repeat(r) => Response::json(StatusCode::OK, &r.view(id, order_id)),
        })
    }

    /// `DELETE /api/products/{id}/reservations/{orderId}`: 204 whether or
    /// not there was anything to release, so retries are safe.
    fn release(&self, ctx: &Ctx, id: &str, order_id: &str) -> Result<Response, Problem> {
        if is_valid_id(id) && is_valid_id(order_id) {
            let now = now_rfc3339();
            let released = update_json(
                self.store,
                &product_key(&ctx.tenant, id),
                &self.retry,
                |current: Option<Product>| {
                    let next = current
                        .filter(|p| !p.deleted)
                        .and_then(|p| reservation::release(&p, order_id, &now));
                    Ok::<_, Problem>(match next {
                        Some(next) => Change::Write(next.clone(), Some(next)),
                        None => Change::Keep(None),
                    })
                },
            )?;
            if let Some(product) = released {
                self.publish(ctx, STOCK_CHANGED, &product);
            }
        }
        Ok(Response::empty(StatusCode::NO_CONTENT))
    }

    /// The product unless absent or deleted. Ids outside the id rule can
    /// never exist, so they are not looked up.
    fn live(&self, ctx: &Ctx, id: &str) -> Result<Option<Product>, Problem> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let product: Option<Product> = get_json(self.store, &product_key(&ctx.tenant, id))?;
        Ok(product.filter(|p| !p.deleted))
    }

    /// Changes the tenant's index with CAS; `change` returns whether it
    /// changed anything.
    fn update_index(
        &self,
        ctx: &Ctx,
        change: impl Fn(&mut ProductIndex) -> bool,
    ) -> Result<(), Problem> {
        update_json(
            self.store,
            &index_key(&ctx.tenant),
            &self.retry,
            |index: Option<ProductIndex>| {
                let mut index = index.unwrap_or_default();
                Ok::<_, Problem>(if change(&mut index) {
                    Change::Write(index, ())
                } else {
                    Change::Keep(())
                })
            },
        )?;
        Ok(())
    }

    /// Index maintenance after the product itself was written: the change
    /// stands even if this fails (lists re-check each product), so a
    /// failure is logged rather than reported as a failed request.
    fn update_index_after_write(&self, ctx: &Ctx, change: impl Fn(&mut ProductIndex) -> bool) {
        if let Err(p) = self.update_index(ctx, change) {
            eprintln!(
                "product: index of tenant '{}' not updated: {}",
                ctx.tenant, p.detail
            );
        }
    }

    /// Publishes an event with the product snapshot. The change is already
    /// stored, so a broker failure is logged, not turned into an error the
    /// client would retry.
    fn publish(&self, ctx: &Ctx, kind: &str, product: &Product) {
        let event = CloudEvent::new(
            EVENT_SOURCE,
            kind,
            &ctx.tenant,
            &ctx.traceparent,
            &product.view(),
        )
        .with_subject(&product.id);
        if let Err(e) = self.events.publish(TOPIC, &event) {
            eprintln!(
                "product: {kind} for product '{}' of tenant '{}' was saved but not published: {e}",
                product.id, ctx.tenant
            );
        }
    }
}

fn ctx(req: &Request) -> Result<Ctx, Problem> {
    Ok(Ctx {
        tenant: TenantId::from_headers(&req.headers)?,
        traceparent: traceparent_from(&req.headers),
    })
}

fn product_response(status: StatusCode, product: &Product) -> Response {
    Response::json(status, &product.view()).with_header("etag", &etag(product.version))
}

fn not_allowed(method: &Method, allowed: &str) -> Result<Response, Problem> {
    Ok(Problem::method_not_allowed_response(method, allowed))
}

fn not_found(ctx: &Ctx, id: &str) -> Problem {
    Problem::not_found(format!(
        "there is no product '{id}' for tenant '{}'; check the id and the X-Tenant-Id header",
        ctx.tenant
    ))
}

fn exists(ctx: &Ctx, id: &str) -> Problem {
    Problem::conflict(
        "product-exists",
        format!(
            "product '{id}' already exists for tenant '{}'; choose another id or update it with PUT",
            ctx.tenant
        ),
    )
}

fn check_if_match(if_match: Option<&str>, current: &Product) -> Result<(), Problem> {
    if if_match_allows(if_match, current.version) {
        Ok(())
    } else {
        Err(Problem::precondition_failed(format!(
            "If-Match {} does not match the current ETag {} of product '{}'; GET it again and retry with the new ETag",
            if_match.unwrap_or_default(),
            etag(current.version),
            current.id
        )))
    }
}

#[cfg(test)]
mod tests;
