//! Native tests of the whole order service: its API, creation flow, event
//! reactions and migration, against a fake product service that keeps the
//! reserve / confirm / release contract of `docs/storage-layout.md`
//! ("Reservations"), with hold expiry and failure injection under the
//! test's control.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use service_kit::client::{Call, ClientError};
use service_kit::events::{CloudEvent, RecordingSink};
use service_kit::http::{Method, StatusCode};
use service_kit::kv::{KvError, KvStore, MemoryCas, MemoryStore, Retry, Swap, get_json, put_json};
use service_kit::money::Money;
use service_kit::pages::Position;
use service_kit::problem::Problem;
use service_kit::tenant::TenantId;
use service_kit::web::{Request, Response};

use crate::domain::Status;
use crate::products::{CallPolicy, PRODUCT_BASE, Transport};
use crate::reactions::Outcome;
use crate::service::{OrderService, Settings};
use crate::store::{
    Draft, DraftItem, IdempotencyRecord, LegacyEntry, LegacyIndex, LegacyProductOrders, OrderDoc,
    legacy_idempotency_key, legacy_index_key, legacy_product_orders_key, order_key,
};

/// What became of a reservation at the fake product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(Debug, Clone)]
struct FakeProduct {
    name: String,
    price_minor: i64,
    currency: String,
    stock: i64,
    version: u64,
    created_at: String,
    /// rid → (quantity, state).
    records: BTreeMap<String, (i64, Hold)>,
}

impl FakeProduct {
    fn view(&self, id: &str) -> Value {
        json!({
            "id": id, "name": self.name, "price": Money::from_minor(self.price_minor),
            "currency": self.currency, "stock": self.stock, "version": self.version,
            "createdAt": self.created_at,
        })
    }

    fn unconfirmed(&self) -> usize {
        self.records
            .values()
            .filter(|(_, h)| *h == Hold::Held)
            .count()
    }
}

/// The product service, faked in-process, with failure injection.
struct Peer {
    products: RefCell<BTreeMap<(String, String), FakeProduct>>,
    clock: Cell<u64>,
    max_holds: Cell<usize>,
    events: RefCell<Vec<Vec<u8>>>,
    /// Calls whose `<method> <path>` contains this string fail (`Some(status)`: that
    /// status; `None`: unreachable), while `failures` lasts.
    fail_on: RefCell<Option<(String, Option<u16>)>>,
    failures: Cell<u32>,
    calls: RefCell<Vec<String>>,
    /// Whether reserve answers carry `product` (name, version,
    /// createdAt), as the product service does since it sends them; an
    /// earlier one did not.
    names_the_product: Cell<bool>,
}

fn problem(status: StatusCode, slug: &str) -> Response {
    Problem::new(status, slug, slug, format!("fake product service: {slug}")).to_response()
}

impl Peer {
    fn new() -> Peer {
        Peer {
            products: RefCell::new(BTreeMap::new()),
            clock: Cell::new(0),
            max_holds: Cell::new(1000),
            events: RefCell::new(Vec::new()),
            fail_on: RefCell::new(None),
            failures: Cell::new(0),
            calls: RefCell::new(Vec::new()),
            names_the_product: Cell::new(true),
        }
    }

    fn tick(&self) -> String {
        self.clock.set(self.clock.get() + 1);
        format!(
            "2025-01-01T00:00:{:02}.{:03}Z",
            self.clock.get() / 1000,
            self.clock.get() % 1000
        )
    }

    fn product(&self, tenant: &str, id: &str, price: f64, stock: i64) {
        self.product_in(tenant, id, price, "USD", stock);
    }

    fn product_in(&self, tenant: &str, id: &str, price: f64, currency: &str, stock: i64) {
        self.product_named(tenant, id, &format!("{id} name"), price, currency, stock);
    }

    fn product_named(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
        price: f64,
        currency: &str,
        stock: i64,
    ) {
        let p = FakeProduct {
            name: name.to_owned(),
            price_minor: (price * 100.0).round() as i64,
            currency: currency.to_owned(),
            stock,
            version: 1,
            created_at: self.tick(),
            records: BTreeMap::new(),
        };
        self.products
            .borrow_mut()
            .insert((tenant.into(), id.into()), p);
    }

    fn stock(&self, tenant: &str, id: &str) -> i64 {
        self.products.borrow()[&(tenant.to_owned(), id.to_owned())].stock
    }

    fn hold(&self, tenant: &str, id: &str, rid: &str) -> Option<Hold> {
        self.products.borrow()[&(tenant.to_owned(), id.to_owned())]
            .records
            .get(rid)
            .map(|r| r.1)
    }

    /// Every unconfirmed hold of the tenant expires; its stock comes back.
    fn expire_holds(&self, tenant: &str) {
        for ((t, _), p) in self.products.borrow_mut().iter_mut() {
            if t != tenant {
                continue;
            }
            let mut back = 0;
            for (qty, hold) in p.records.values_mut() {
                if *hold == Hold::Held {
                    *hold = Hold::Expired;
                    back += *qty;
                }
            }
            p.stock += back;
        }
    }

    fn event(&self, tenant: &str, kind: &str, id: &str, p: &FakeProduct) -> Vec<u8> {
        let e = CloudEvent::new(
            "wasmshop/product",
            kind,
            &TenantId::parse(tenant).unwrap(),
            &service_kit::trace::new_traceparent(),
            &p.view(id),
        );
        let bytes = e.to_json();
        self.events.borrow_mut().push(bytes.clone());
        bytes
    }

    /// Renames a product; returns its `ProductUpdated`.
    fn rename(&self, tenant: &str, id: &str, name: &str) -> Vec<u8> {
        let p = {
            let mut all = self.products.borrow_mut();
            let p = all.get_mut(&(tenant.to_owned(), id.to_owned())).unwrap();
            p.name = name.to_owned();
            p.version += 1;
            p.clone()
        };
        self.event(tenant, "ProductUpdated", id, &p)
    }

    /// Deletes a product (its holds go with it); returns `ProductDeleted`.
    fn remove(&self, tenant: &str, id: &str) -> Vec<u8> {
        let p = self
            .products
            .borrow_mut()
            .remove(&(tenant.to_owned(), id.to_owned()))
            .unwrap();
        self.event(tenant, "ProductDeleted", id, &p)
    }

    fn fail(&self, path_part: &str, status: Option<u16>, times: u32) {
        *self.fail_on.borrow_mut() = Some((path_part.to_owned(), status));
        self.failures.set(times);
    }

    fn calls_to(&self, prefix: &str) -> usize {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// The fake product API.
    fn serve(&self, req: &Request) -> Response {
        let tenant = req.header("x-tenant-id").unwrap_or("default").to_owned();
        let segments = req.segments();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let mut all = self.products.borrow_mut();
        let (pid, rest) = match segs.as_slice() {
            ["api", "products", pid, rest @ ..] => (pid.to_string(), rest.to_vec()),
            _ => return problem(StatusCode::NOT_FOUND, "not-found"),
        };
        let Some(p) = all.get_mut(&(tenant, pid.clone())) else {
            return problem(StatusCode::NOT_FOUND, "not-found");
        };
        match (req.method.clone(), rest.as_slice()) {
            (Method::GET, []) => Response::json(StatusCode::OK, &p.view(&pid)),
            (Method::POST, ["reservations"]) => {
                let body: Value = serde_json::from_slice(&req.body).unwrap();
                let rid = body["orderId"].as_str().unwrap().to_owned();
                let qty = body["quantity"].as_i64().unwrap();
                let names_the_product = self.names_the_product.get();
                let answer = |p: &FakeProduct, status: StatusCode, hold: &str| {
                    let mut body = json!({"orderId": rid, "productId": pid, "quantity": qty,
                        "unitPrice": Money::from_minor(p.price_minor), "currency": p.currency,
                        "status": hold});
                    if names_the_product {
                        body["product"] = json!({"name": p.name, "version": p.version,
                            "createdAt": p.created_at});
                    }
                    Response::json(status, &body)
                };
                match p.records.get(&rid).copied() {
                    Some((q, _)) if q != qty => {
                        problem(StatusCode::CONFLICT, "reservation-conflict")
                    }
                    Some((_, Hold::Held)) => answer(p, StatusCode::OK, "held"),
                    Some((_, Hold::Confirmed)) => answer(p, StatusCode::OK, "confirmed"),
                    Some(_) => problem(StatusCode::CONFLICT, "reservation-released"),
                    None if p.unconfirmed() >= self.max_holds.get() => {
                        problem(StatusCode::SERVICE_UNAVAILABLE, "too-many-holds")
                            .with_header("retry-after", "2")
                    }
                    None if p.stock < qty => problem(StatusCode::CONFLICT, "insufficient-stock"),
                    None => {
                        p.stock -= qty;
                        p.records.insert(rid.clone(), (qty, Hold::Held));
                        answer(p, StatusCode::CREATED, "held")
                    }
                }
            }
            (Method::POST, ["reservations", rid, "confirm"]) => match p.records.get_mut(*rid) {
                Some((_, h @ (Hold::Held | Hold::Confirmed))) => {
                    *h = Hold::Confirmed;
                    Response::json(StatusCode::OK, &json!({"status": "confirmed"}))
                }
                Some((_, Hold::Expired)) => problem(StatusCode::CONFLICT, "reservation-expired"),
                Some((_, Hold::Released)) => problem(StatusCode::CONFLICT, "reservation-released"),
                None => problem(StatusCode::CONFLICT, "reservation-unknown"),
            },
            (Method::DELETE, ["reservations", rid]) => {
                let confirmed: Option<i64> = req
                    .query_param("confirmedQuantity")
                    .unwrap()
                    .map(|v| v.parse().unwrap());
                match p.records.get_mut(*rid) {
                    Some((q, h @ (Hold::Held | Hold::Confirmed))) => {
                        p.stock += *q;
                        *h = Hold::Released;
                    }
                    Some(_) => {}
                    None => {
                        p.stock += confirmed.unwrap_or(0);
                        p.records
                            .insert(rid.to_string(), (confirmed.unwrap_or(0), Hold::Released));
                    }
                }
                Response::empty(StatusCode::NO_CONTENT)
            }
            _ => problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
        }
    }
}

impl Transport for Peer {
    fn send(&self, call: &Call) -> Result<Response, ClientError> {
        let path = call
            .url
            .strip_prefix(PRODUCT_BASE)
            .expect("calls go to the product service");
        let line = format!("{} {path}", call.method);
        self.calls.borrow_mut().push(line.clone());
        if let Some((part, status)) = self.fail_on.borrow().clone()
            && line.contains(&part)
            && self.failures.get() > 0
        {
            self.failures.set(self.failures.get() - 1);
            return match status {
                Some(s) => Ok(Response::empty(s.try_into().unwrap())),
                None => Err(ClientError::Unreachable("connection refused".into())),
            };
        }
        let mut r = Request::new(call.method.clone(), path).with_body(call.body.clone());
        r.headers = call.headers.clone();
        Ok(self.serve(&r))
    }
}

/// A [`MemoryStore`] that remembers which keys were read and every value
/// written.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    reads: RefCell<Vec<String>>,
    written: RefCell<Vec<Vec<u8>>>,
}

impl KvStore for CountingStore {
    type Cas = MemoryCas;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.reads.borrow_mut().push(key.to_owned());
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.reads.borrow_mut().extend(keys.iter().cloned());
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.written.borrow_mut().push(value.to_vec());
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn cas_read(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        self.reads.borrow_mut().push(key.to_owned());
        self.inner.cas_read(key)
    }
    fn cas_write(&self, cas: Self::Cas, value: &[u8]) -> Result<Swap, KvError> {
        self.written.borrow_mut().push(value.to_vec());
        self.inner.cas_write(cas, value)
    }
}

/// The order service under test, with its own store and event recorder.
struct World {
    peer: Peer,
    store: CountingStore,
    events: RecordingSink,
    settings: Settings,
}

impl World {
    fn new() -> World {
        World {
            peer: Peer::new(),
            store: CountingStore::default(),
            events: RecordingSink::new(),
            settings: Settings {
                retry: Retry {
                    max_attempts: 20,
                    base_delay: Duration::ZERO,
                    max_delay: Duration::ZERO,
                },
                calls: CallPolicy {
                    attempts: 3,
                    pause: Duration::ZERO,
                    timeout: Duration::from_secs(1),
                },
                page_capacity: 4,
                idempotency_lease: Duration::from_secs(60),
                migration_chunk: 10,
                unfinished_grace: Duration::from_secs(10),
            },
        }
    }

    fn service(&self) -> OrderService<'_, CountingStore, RecordingSink, Peer> {
        OrderService::with_settings(&self.store, &self.events, &self.peer, self.settings)
    }

    fn send(&self, req: Request) -> (u16, Value, Response) {
        let r = self.service().handle(&req);
        let body = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap()
        };
        (r.status.as_u16(), body, r)
    }

    fn post(&self, tenant: &str, body: Value) -> (u16, Value, Response) {
        self.send(
            Request::new(Method::POST, "/api/orders")
                .with_header("x-tenant-id", tenant)
                .with_body(body.to_string()),
        )
    }

    fn post_keyed(&self, tenant: &str, key: &str, body: Value) -> (u16, Value, Response) {
        self.send(
            Request::new(Method::POST, "/api/orders")
                .with_header("x-tenant-id", tenant)
                .with_header("idempotency-key", key)
                .with_body(body.to_string()),
        )
    }

    /// Places an order that must be created; returns its id.
    fn place(&self, tenant: &str, items: &[(&str, i64)]) -> String {
        let (status, body, _) = self.post(tenant, order_body(items));
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn put(&self, tenant: &str, id: &str, body: Value) -> (u16, Value, Response) {
        self.send(
            Request::new(Method::PUT, &format!("/api/orders/{id}"))
                .with_header("x-tenant-id", tenant)
                .with_body(body.to_string()),
        )
    }

    fn status(&self, tenant: &str, id: &str, status: &str) {
        let (s, body, _) = self.put(tenant, id, json!({ "status": status }));
        assert_eq!(s, 200, "{body}");
    }

    fn get(&self, tenant: &str, path: &str) -> (u16, Value, Response) {
        self.send(Request::new(Method::GET, path).with_header("x-tenant-id", tenant))
    }

    fn order(&self, tenant: &str, id: &str) -> Value {
        let (s, body, _) = self.get(tenant, &format!("/api/orders/{id}"));
        assert_eq!(s, 200, "{body}");
        body
    }

    fn delete(&self, tenant: &str, id: &str) -> (u16, Value, Response) {
        self.send(
            Request::new(Method::DELETE, &format!("/api/orders/{id}"))
                .with_header("x-tenant-id", tenant),
        )
    }

    fn doc(&self, tenant: &str, id: &str) -> Option<OrderDoc> {
        get_json(
            &self.store.inner,
            &order_key(&TenantId::parse(tenant).unwrap(), id),
        )
        .unwrap()
    }

    fn order_events(&self) -> Vec<(String, Value)> {
        self.events
            .events()
            .into_iter()
            .map(|(topic, e)| {
                assert_eq!(topic, "orders");
                let data: Value = e.data_as().unwrap();
                (e.kind, data)
            })
            .collect()
    }

    fn order_keys(&self) -> Vec<String> {
        self.store
            .inner
            .keys()
            .into_iter()
            .filter(|k| k.contains("/order/"))
            .collect()
    }

    fn migration_phase(&self) -> crate::migration::Phase {
        get_json::<crate::migration::Marker>(
            &self.store.inner,
            &crate::store::migration_key(&tenant("t")),
        )
        .unwrap()
        .unwrap_or_default()
        .phase
    }

    /// Every id of a list, page by page following `Link: rel=next`.
    fn walk_by_cursor(&self, tenant: &str, query: &str, limit: usize) -> Vec<String> {
        let sep = if query.is_empty() { "?" } else { "&" };
        let mut path = format!("/api/orders{query}{sep}limit={limit}");
        let mut ids = Vec::new();
        for _ in 0..1000 {
            let (s, body, r) = self.get(tenant, &path);
            assert_eq!(s, 200, "{path}: {body}");
            let page = ids_of(&body);
            assert!(page.len() <= limit);
            ids.extend(page);
            match r.header("link") {
                Some(link) => {
                    path = link
                        .strip_prefix('<')
                        .and_then(|l| l.split_once(">; rel=\"next\""))
                        .unwrap()
                        .0
                        .to_owned();
                }
                None => return ids,
            }
        }
        panic!("the list never ended");
    }

    /// Every id of a list, page by page by offset.
    fn walk_by_offset(&self, tenant: &str, query: &str, limit: usize) -> Vec<String> {
        let sep = if query.is_empty() { "?" } else { "&" };
        let mut ids = Vec::new();
        loop {
            let path = format!("/api/orders{query}{sep}limit={limit}&offset={}", ids.len());
            let (s, body, _) = self.get(tenant, &path);
            assert_eq!(s, 200, "{path}: {body}");
            let page = ids_of(&body);
            let done = page.len() < limit;
            ids.extend(page);
            if done {
                return ids;
            }
        }
    }
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

fn order_body(items: &[(&str, i64)]) -> Value {
    json!({
        "customerId": "cust-1",
        "items": items.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>()
    })
}

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

/// A creating document as a request that died after step 1 leaves it.
fn crashed_draft(w: &World, id: &str, rid: &str, items: &[(&str, i64)]) {
    let draft = Draft {
        reservation_id: rid.into(),
        customer_id: "cust-1".into(),
        items: items
            .iter()
            .map(|(p, q)| DraftItem {
                product_id: (*p).into(),
                quantity: *q,
            })
            .collect(),
        created_at: service_kit::clock::now_rfc3339(),
        idempotency: None,
    };
    put_json(
        &w.store.inner,
        &order_key(&tenant("t"), id),
        &OrderDoc::Creating(draft),
    )
    .unwrap();
}

fn reserve_directly(w: &World, pid: &str, rid: &str, qty: i64) {
    let r = w.peer.send(
        &Call::post(format!("{PRODUCT_BASE}/api/products/{pid}/reservations"))
            .tenant(&tenant("t"))
            .json(&json!({"orderId": rid, "quantity": qty})),
    );
    assert_eq!(r.unwrap().status, 201);
}

#[test]
fn creates_with_snapshots_exact_totals_and_confirmed_holds() {
    let w = World::new();
    w.peer.product("t", "a", 0.1, 10);
    w.peer.product("t", "b", 19.99, 5);
    let (status, body, r) = w.post("t", order_body(&[("a", 3), ("b", 2)]));
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap();
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.header("location").unwrap(), format!("/api/orders/{id}"));
    assert_eq!(body["status"], "Pending");
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["cancellationReason"], Value::Null);
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.contains(r#""total":40.28"#), "{text}");
    assert!(text.contains(r#""lineTotal":0.3"#), "{text}");
    assert!(
        !text.contains("Slot") && !text.contains("incarnation"),
        "{text}"
    );
    assert_eq!(body["items"][1]["productName"], "b name");
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (7, 3));
    // 201 only once every hold is confirmed.
    let Some(OrderDoc::Live(order)) = w.doc("t", id) else {
        panic!("not live")
    };
    assert_eq!(
        w.peer.hold("t", "a", &order.reservation_id),
        Some(Hold::Confirmed)
    );
    assert_eq!(
        w.peer.hold("t", "b", &order.reservation_id),
        Some(Hold::Confirmed)
    );
    assert!(
        order
            .items
            .iter()
            .all(|i| i.incarnation.is_some() && i.open_slot.is_some())
    );
    let events = w.order_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "OrderCreated");
    assert_eq!(events[0].1["id"], id);
    assert_eq!(w.events.events()[0].1.tenantid, "t");
    let (s, got, _) = w.get("t", &format!("/api/orders/{id}"));
    assert_eq!((s, got), (200, body.clone()));
    assert_eq!(
        w.get("other", &format!("/api/orders/{id}")).0,
        404,
        "tenants are isolated"
    );
}

#[test]
fn an_order_reads_the_product_only_when_the_hold_does_not_name_it() {
    let w = World::new();
    w.peer.product_named("t", "a", "Lamp", 1.0, "USD", 10);
    let (s, body, _) = w.post("t", order_body(&[("a", 1)]));
    assert_eq!(
        (s, body["items"][0]["productName"].clone()),
        (201, json!("Lamp"))
    );
    assert_eq!(
        w.peer.calls_to("GET /api/products/"),
        0,
        "the hold named it"
    );
    // A product service of an earlier version answers holds without the
    // product: the order reads it, and keeps the same snapshot.
    w.peer.names_the_product.set(false);
    let (s, older, _) = w.post("t", order_body(&[("a", 1)]));
    assert_eq!(
        (s, older["items"][0]["productName"].clone()),
        (201, json!("Lamp"))
    );
    assert_eq!(w.peer.calls_to("GET /api/products/a"), 1);
    let incarnation = |body: &Value| {
        let Some(OrderDoc::Live(o)) = w.doc("t", body["id"].as_str().unwrap()) else {
            panic!("not live")
        };
        (o.items[0].incarnation.clone(), o.items[0].name_version)
    };
    assert_eq!(incarnation(&body), incarnation(&older));
    assert!(incarnation(&body).0.is_some());
    // A product deleted before an older service's GET: 422, hold released.
    w.peer.fail("GET /api/products/a", Some(404), 1);
    let (s, p, _) = w.post("t", order_body(&[("a", 1)]));
    assert_eq!(s, 422, "{p}");
    assert_eq!(
        w.peer.stock("t", "a"),
        8,
        "the hold of the failed order went back"
    );
}

#[test]
fn product_calls_carry_the_tenant() {
    let w = World::new();
    w.peer.product("acme", "a", 1.0, 1);
    // The same product id in another tenant does not exist for this one.
    assert_eq!(w.post("other", order_body(&[("a", 1)])).0, 422);
    assert_eq!(w.post("acme", order_body(&[("a", 1)])).0, 201);
    assert_eq!(w.peer.stock("acme", "a"), 0);
}

#[test]
fn failed_item_releases_earlier_holds_and_saves_nothing() {
    let w = World::new();
    w.peer.product("t", "a", 2.5, 10);
    w.peer.product("t", "b", 1.0, 1);
    // Second item short of stock → 409 naming it; first item's stock restored.
    let (s, p, r) = w.post("t", order_body(&[("a", 4), ("b", 2)]));
    assert_eq!(s, 409, "{p}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(p["type"], "urn:wasmshop:problem:insufficient-stock");
    assert!(p["errors"]["items[1].productId"].is_array(), "{p}");
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (10, 1));
    // Unknown product → 422 naming it.
    let (s, p, _) = w.post("t", order_body(&[("a", 4), ("ghost", 1)]));
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["type"], "urn:wasmshop:problem:unknown-product");
    assert!(p["errors"]["items[1].productId"].is_array(), "{p}");
    assert_eq!(w.peer.stock("t", "a"), 10);
    // Nothing saved, nothing listed, no event.
    assert!(w.order_keys().is_empty(), "{:?}", w.order_keys());
    assert_eq!(w.get("t", "/api/orders").1, json!([]));
    assert!(w.order_events().is_empty());
}

#[test]
fn product_service_down_is_503_after_bounded_retries() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 5);
    w.peer.product("t", "b", 1.0, 5);
    w.peer.fail("/api/products/b/reservations", Some(503), 100);
    let (s, p, r) = w.post("t", order_body(&[("a", 1), ("b", 1)]));
    assert_eq!(s, 503, "{p}");
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(
        w.peer.calls_to("POST /api/products/b/reservations"),
        3,
        "bounded retry"
    );
    w.peer.fail("", None, 0);
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (5, 5));
    assert!(w.order_keys().is_empty());
    // Unreachable then recovering within the retry budget still succeeds.
    w.peer.fail("/api/products/a", None, 2);
    let (s, p, _) = w.post("t", order_body(&[("a", 1)]));
    assert_eq!(s, 201, "{p}");
    assert_eq!(w.peer.stock("t", "a"), 4);
}

#[test]
fn a_busy_product_passes_its_retry_after_on() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 5);
    w.peer.product("t", "b", 1.0, 5);
    w.peer.max_holds.set(0);
    let (s, p, r) = w.post("t", order_body(&[("b", 1)]));
    assert_eq!(s, 503, "{p}");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(p["errors"]["items[0].productId"].is_array(), "{p}");
    assert_eq!(
        w.peer.calls_to("POST /api/products/b/reservations"),
        1,
        "not retried here"
    );
    w.peer.max_holds.set(1000);
    assert_eq!(w.post("t", order_body(&[("a", 1), ("b", 1)])).0, 201);
}

#[test]
fn mixed_currencies_are_refused_and_compensated() {
    let w = World::new();
    w.peer.product("t", "usd", 1.0, 5);
    w.peer.product_in("t", "eur", 1.0, "EUR", 5);
    let (s, p, _) = w.post("t", order_body(&[("usd", 1), ("eur", 1)]));
    assert_eq!(
        (s, p["type"].as_str()),
        (422, Some("urn:wasmshop:problem:mixed-currencies"))
    );
    assert_eq!((w.peer.stock("t", "usd"), w.peer.stock("t", "eur")), (5, 5));
}

#[test]
fn a_crash_mid_creation_is_finished_by_the_next_get() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.peer.product("t", "b", 1.0, 10);
    // Died after step 1 and the first hold.
    crashed_draft(&w, "o-crash", "r1", &[("a", 2), ("b", 3)]);
    reserve_directly(&w, "a", "r1", 2);
    assert_eq!(
        w.get("t", "/api/orders").1,
        json!([]),
        "lists show only live orders"
    );
    let o = w.order("t", "o-crash");
    assert_eq!(
        (o["status"].as_str(), o["total"].as_f64()),
        (Some("Pending"), Some(5.0))
    );
    assert_eq!(
        (w.peer.stock("t", "a"), w.peer.stock("t", "b")),
        (8, 7),
        "held once"
    );
    assert_eq!(w.peer.hold("t", "b", "r1"), Some(Hold::Confirmed));
    assert_eq!(w.order("t", "o-crash"), o);
    assert_eq!(ids_of(&w.get("t", "/api/orders").1), vec!["o-crash"]);
    assert_eq!(w.order_events().len(), 1);

    // Died during step 4 (the confirmations could not get through): the
    // POST says 503 and the order is not shown until a GET finishes it.
    w.peer.fail("/confirm", None, 100);
    let mut body = order_body(&[("a", 1), ("b", 1)]);
    body["id"] = json!("o2");
    let (s, p, _) = w.post("t", body);
    assert_eq!(s, 503, "{p}");
    assert!(matches!(w.doc("t", "o2"), Some(OrderDoc::Confirming(_))));
    assert_eq!(w.get("t", "/api/orders").1.as_array().unwrap().len(), 1);
    w.peer.fail("", None, 0);
    assert_eq!(w.order("t", "o2")["status"], "Pending");
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (7, 6));
    let listed = ids_of(&w.get("t", "/api/orders").1);
    assert_eq!(listed.len(), 2, "{listed:?}");
}

/// The ids of the tenant's order documents in `confirming`: what a crash
/// mid-confirmation leaves, unknown to every client.
fn confirming_ids(w: &World) -> Vec<String> {
    w.order_keys()
        .iter()
        .filter_map(|k| k.strip_prefix("tenant/t/order/"))
        .filter(|id| matches!(w.doc("t", id), Some(OrderDoc::Confirming(_))))
        .map(str::to_owned)
        .collect()
}

/// Moves the `createdAt` of an unfinished order document a minute back,
/// past the grace period lists give a creation that may still be running.
fn age(w: &World, id: &str) {
    let old =
        service_kit::clock::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(60));
    let doc = match w.doc("t", id).unwrap() {
        OrderDoc::Confirming(mut o) => {
            o.created_at = old.clone();
            o.updated_at = old;
            OrderDoc::Confirming(o)
        }
        OrderDoc::Creating(mut d) => {
            d.created_at = old;
            OrderDoc::Creating(d)
        }
        other => panic!("{id} is not unfinished: {other:?}"),
    };
    put_json(&w.store.inner, &order_key(&tenant("t"), id), &doc).unwrap();
}

/// Units of `pid` the tenant's live orders hold (open, or cancelled with
/// their stock not back yet).
fn units_in_live_orders(w: &World, pid: &str) -> i64 {
    w.order_keys()
        .iter()
        .filter_map(|k| get_json::<OrderDoc>(&w.store.inner, k).unwrap())
        .filter_map(OrderDoc::live)
        .filter(|o| o.stock_held)
        .flat_map(|o| o.items)
        .filter(|i| i.product_id == pid)
        .map(|i| i.quantity)
        .sum()
}

#[test]
fn a_list_finishes_an_overdue_confirmation_nobody_else_can_find() {
    let w = World::new();
    for p in ["a", "b", "c"] {
        w.peer.product("t", p, 1.0, 100);
    }
    // Server ids, no Idempotency-Key: the creating requests die after
    // confirming a and b (c's confirmation never gets through), so no
    // client knows these orders' ids.
    w.peer.fail("/api/products/c/reservations/", None, 1000);
    for _ in 0..6 {
        let (s, p, _) = w.post("t", order_body(&[("a", 1), ("b", 2), ("c", 3)]));
        assert_eq!(s, 503, "{p}");
    }
    w.peer.fail("", None, 0);
    let stuck = confirming_ids(&w);
    assert_eq!(stuck.len(), 6, "{:?}", w.order_keys());
    let sold = |p: &str| 100 - w.peer.stock("t", p);
    assert_eq!((sold("a"), sold("b"), sold("c")), (6, 12, 18));
    assert_eq!(units_in_live_orders(&w, "a"), 0, "sold to invisible orders");

    // Young ones may still be finished by their own request: lists skip
    // them.
    assert_eq!(w.get("t", "/api/orders?status=Pending").1, json!([]));
    assert_eq!(confirming_ids(&w).len(), 6);

    // Past the grace period a list finishes them, a bounded number per
    // request, and lists the orders it placed.
    for id in &stuck {
        age(&w, id);
    }
    let first = ids_of(&w.get("t", "/api/orders?status=Pending").1);
    assert_eq!(first.len(), crate::api::MAX_FINISHED_PER_LIST, "{first:?}");
    assert_eq!(confirming_ids(&w).len(), 6 - first.len());
    let all = w.walk_by_cursor("t", "", 2);
    assert!(confirming_ids(&w).is_empty());
    let mut sorted = all.clone();
    sorted.sort();
    let mut expected = stuck.clone();
    expected.sort();
    assert_eq!(sorted, expected, "every finished order is listed once");
    for id in &stuck {
        assert_eq!(w.order("t", id)["status"], "Pending");
        assert!(matches!(w.doc("t", id), Some(OrderDoc::Live(_))));
    }
    for p in ["a", "b", "c"] {
        assert_eq!(sold(p), units_in_live_orders(&w, p), "product {p}");
    }
    assert_eq!(w.order_events().len(), 6, "one OrderCreated each");

    // A hold that expired meanwhile: the list ends the order Cancelled
    // ("reservation expired") and returns the confirmed units too.
    w.peer.fail("/api/products/c/reservations/", None, 1000);
    let (s, _, _) = w.post("t", order_body(&[("a", 5), ("c", 1)]));
    assert_eq!(s, 503);
    w.peer.fail("", None, 0);
    let [id] = <[String; 1]>::try_from(confirming_ids(&w)).unwrap();
    w.peer.expire_holds("t");
    age(&w, &id);
    let listed = w.get("t", "/api/orders?customerId=cust-1&limit=100").1;
    let order = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id.as_str())
        .expect("listed once finished");
    assert_eq!(
        (
            order["status"].as_str(),
            order["cancellationReason"].as_str()
        ),
        (Some("Cancelled"), Some("reservation expired"))
    );
    for p in ["a", "b", "c"] {
        assert_eq!(sold(p), units_in_live_orders(&w, p), "product {p}");
    }
    assert_eq!((sold("a"), sold("c")), (6, 18));

    // A request that died while appending its index entries, right after
    // writing its `creating` document: a list meets it through the entry
    // and finishes it too (its holds are still there: it is placed).
    crashed_draft(&w, "o-late", "r-late", &[("b", 4)]);
    reserve_directly(&w, "b", "r-late", 4);
    let created_at = match w.doc("t", "o-late") {
        Some(OrderDoc::Creating(d)) => d.created_at,
        other => panic!("{other:?}"),
    };
    w.service()
        .index(crate::store::all_index(&tenant("t")))
        .append("o-late", &created_at)
        .unwrap();
    assert!(!ids_of(&w.get("t", "/api/orders?limit=100").1).contains(&"o-late".to_owned()));
    age(&w, "o-late");
    w.get("t", "/api/orders?limit=100");
    assert!(matches!(w.doc("t", "o-late"), Some(OrderDoc::Live(_))));
    let listed = w.walk_by_cursor("t", "", 3);
    assert_eq!(listed.iter().filter(|id| *id == "o-late").count(), 1);
    assert_eq!(sold("b"), units_in_live_orders(&w, "b"));
}

#[test]
fn only_ids_others_may_name_are_claimed_before_the_holds() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let creating = |w: &World| {
        w.store
            .written
            .borrow()
            .iter()
            .filter(|v| String::from_utf8_lossy(v).contains(r#""state":"creating""#))
            .count()
    };
    // A server id without a key: nobody else can name it, so it is never
    // written as `creating`: its document is written once every hold is
    // taken and its index entries are appended, straight as
    // `confirming`, and an attempt that fails before leaves nothing
    // stored and wrote nothing.
    w.place("t", &[("a", 1)]);
    assert_eq!(creating(&w), 0);
    assert_eq!(w.post("t", order_body(&[("a", 1), ("nope", 1)])).0, 422);
    assert_eq!(w.post("t", order_body(&[("a", 100)])).0, 409);
    w.peer.fail("/api/products/a/reservations", None, 3);
    assert_eq!(w.post("t", order_body(&[("a", 1)])).0, 503);
    w.peer.fail("", None, 0);
    assert_eq!(creating(&w), 0, "no creating document for failed attempts");
    assert_eq!(w.order_keys().len(), 1, "{:?}", w.order_keys());
    assert_eq!(w.peer.stock("t", "a"), 9, "failed attempts hold nothing");
    // A client's id and a keyed id are claimed before the holds, so a
    // failed attempt there writes one.
    let mut body = order_body(&[("a", 100)]);
    body["id"] = json!("mine");
    assert_eq!(w.post("t", body).0, 409);
    assert_eq!(creating(&w), 1);
    assert_eq!(w.post_keyed("t", "k", order_body(&[("a", 100)])).0, 409);
    assert_eq!(creating(&w), 2);
    assert_eq!(w.order_keys().len(), 1, "failed attempts are deleted");
}

/// Live entries of the index under `prefix`, by order id.
fn entry_ids(w: &World, prefix: String) -> Vec<String> {
    let service = w.service();
    let index = service.index(prefix);
    let mut scan = index.scan(&Position::start()).unwrap();
    let batch = scan.next_batch(1_000).unwrap();
    batch.into_iter().map(|(e, _)| e.id).collect()
}

/// The service of `w` with its clock `ahead_ms` ahead of the system's.
fn service_ahead(w: &World, ahead_ms: u64) -> OrderService<'_, CountingStore, RecordingSink, Peer> {
    OrderService::with_settings(&w.store, &w.events, &w.peer, w.settings)
        .with_clock(move || crate::create::system_now_ms() + ahead_ms)
}

/// A fresh order writes its index entries before its document
/// (docs/storage-layout.md, "Entries before the record"): lists and
/// product reactions leave the entries of an absent document alone while
/// they are young and remove them after, and a create whose entries took
/// past the deadline removes them and returns its holds.
#[test]
fn a_fresh_order_appends_its_entries_before_its_document() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let t = tenant("t");
    let placed = w.place("t", &[("a", 1)]);
    let only_placed = vec![placed.clone()];
    let documents = |w: &World, state: &str| {
        let tag = format!(r#""state":"{state}""#);
        w.store
            .written
            .borrow()
            .iter()
            .filter(|v| String::from_utf8_lossy(v).contains(&tag))
            .count()
    };
    assert_eq!(
        (documents(&w, "creating"), documents(&w, "confirming")),
        (0, 1),
        "one write as confirming, none as creating"
    );
    assert!(matches!(w.doc("t", &placed), Some(OrderDoc::Live(_))));

    // A request that died right after appending its entries: young, they
    // are neither listed nor removed, by a list or by a product event.
    let ghost = "o-ghost";
    let young = service_kit::clock::now_rfc3339();
    for prefix in [
        crate::store::all_index(&t),
        crate::store::open_product_index(&t, "a"),
    ] {
        w.service().index(prefix).append(ghost, &young).unwrap();
    }
    assert_eq!(ids_of(&w.get("t", "/api/orders?limit=100").1), only_placed);
    let renamed = w.peer.rename("t", "a", "A2");
    assert!(w.service().on_product_event(&renamed).is_ok());
    assert!(entry_ids(&w, crate::store::all_index(&t)).contains(&ghost.to_owned()));
    assert!(entry_ids(&w, crate::store::open_product_index(&t, "a")).contains(&ghost.to_owned()));
    // Once past the grace, both remove them.
    let later = service_ahead(&w, service_kit::pages::ABSENT_RECORD_GRACE_MS);
    let list = Request::new(Method::GET, "/api/orders?limit=100").with_header("x-tenant-id", "t");
    assert_eq!(later.handle(&list).status, StatusCode::OK);
    assert!(
        later
            .on_product_event(&w.peer.rename("t", "a", "A3"))
            .is_ok()
    );
    assert_eq!(entry_ids(&w, crate::store::all_index(&t)), only_placed);
    assert_eq!(
        entry_ids(&w, crate::store::open_product_index(&t, "a")),
        only_placed
    );

    // Entries that took past the deadline: nothing is placed, the
    // entries are removed and the hold is returned.
    let slow = service_ahead(&w, service_kit::pages::RECORD_WRITE_DEADLINE_MS);
    let post = Request::new(Method::POST, "/api/orders")
        .with_header("x-tenant-id", "t")
        .with_body(order_body(&[("a", 1)]).to_string());
    let r = slow.handle(&post);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&r.body).contains("nothing was ordered"));
    assert_eq!(w.order_keys().len(), 1, "{:?}", w.order_keys());
    assert_eq!(entry_ids(&w, crate::store::all_index(&t)), only_placed);
    assert_eq!(
        w.peer.stock("t", "a"),
        9,
        "the slow attempt's hold is released"
    );
    let unconfirmed = w.peer.products.borrow()[&("t".to_owned(), "a".to_owned())].unconfirmed();
    assert_eq!(unconfirmed, 0);
}

#[test]
fn holds_that_expired_before_confirmation_end_cancelled_or_not_placed() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.peer.product("t", "b", 1.0, 10);
    // Item a is confirmed, b's confirmation cannot get through; then b's
    // hold expires. The next GET ends the order Cancelled and returns a.
    w.peer.fail("/api/products/b/reservations/", None, 100);
    let mut body = order_body(&[("a", 2), ("b", 1)]);
    body["id"] = json!("o3");
    assert_eq!(w.post("t", body).0, 503);
    w.peer.fail("", None, 0);
    w.peer.expire_holds("t");
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (8, 10));
    let o = w.order("t", "o3");
    assert_eq!(
        (o["status"].as_str(), o["cancellationReason"].as_str()),
        (Some("Cancelled"), Some("reservation expired"))
    );
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (10, 10));
    assert_eq!(
        ids_of(&w.get("t", "/api/orders?status=Cancelled").1),
        vec!["o3"]
    );
    assert!(
        w.get("t", "/api/orders?status=Pending")
            .1
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Repeats change nothing and return no stock twice.
    assert_eq!(w.order("t", "o3"), o);
    assert_eq!(w.put("t", "o3", json!({"status": "Cancelled"})).0, 200);
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (10, 10));

    // Died in step 2 and its hold expired: redoing the reserve is refused,
    // so the order ends not placed.
    crashed_draft(&w, "o4", "r4", &[("a", 1)]);
    reserve_directly(&w, "a", "r4", 1);
    w.peer.expire_holds("t");
    assert_eq!(w.get("t", "/api/orders/o4").0, 404);
    assert_eq!(w.doc("t", "o4"), None);
    assert_eq!(w.peer.stock("t", "a"), 10);

    // The POST that sees its own hold expire gets a 409, never a 201.
    w.peer.product("t", "c", 1.0, 10);
    let w2 = &w;
    w2.peer.fail("/api/products/c/reservations/", None, 3);
    let mut body = order_body(&[("c", 1)]);
    body["id"] = json!("o5");
    assert_eq!(w.post("t", body.clone()).0, 503);
    w.peer.expire_holds("t");
    let (s, p, _) = w.post("t", body);
    assert_eq!(s, 409, "{p}");
    assert_eq!(w.order("t", "o5")["status"], "Cancelled");
    assert_eq!(w.peer.stock("t", "c"), 10);
}

#[test]
fn a_product_deleted_before_confirmation_leaves_nothing_placed() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.peer.product("t", "b", 1.0, 10);
    w.peer.fail("/confirm", None, 100);
    let mut body = order_body(&[("a", 2), ("b", 1)]);
    body["id"] = json!("o1");
    assert_eq!(w.post("t", body).0, 503);
    w.peer.fail("", None, 0);
    // The ProductDeleted reaction finds the order in `confirming`, finishes
    // it first: b's confirmation is a 404, so it ends not placed.
    let deleted = w.peer.remove("t", "b");
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(0))
    );
    assert_eq!(w.get("t", "/api/orders/o1").0, 404);
    assert_eq!(w.peer.stock("t", "a"), 10);
    assert!(w.order_keys().is_empty(), "{:?}", w.order_keys());
    assert_eq!(w.get("t", "/api/orders").1, json!([]));
    assert!(w.order_events().is_empty());
}

#[test]
fn idempotency_key_returns_the_same_order_and_reserves_once() {
    let w = World::new();
    w.peer.product("t", "a", 3.0, 10);
    let (s1, first, _) = w.post_keyed("t", "k1", order_body(&[("a", 2)]));
    let (s2, again, r2) = w.post_keyed("t", "k1", order_body(&[("a", 2)]));
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(r2.header("idempotent-replayed"), Some("true"));
    assert_eq!(w.peer.stock("t", "a"), 8, "reserved once");
    let (s, p, _) = w.post_keyed("t", "k1", order_body(&[("a", 3)]));
    assert_eq!(s, 422, "{p}");
    assert!(p["errors"]["Idempotency-Key"].is_array());
    // Keys are per tenant.
    w.peer.product("u", "a", 3.0, 10);
    let (s, other, _) = w.post_keyed("u", "k1", order_body(&[("a", 2)]));
    assert_eq!(s, 201);
    assert_ne!(other["id"], first["id"]);
    // A failed attempt frees the key: the retry runs afresh.
    assert_eq!(w.post_keyed("t", "k2", order_body(&[("a", 100)])).0, 409);
    assert_eq!(w.post_keyed("t", "k2", order_body(&[("a", 100)])).0, 409);
    assert_eq!(w.post_keyed("t", "k2", order_body(&[("a", 1)])).0, 201);
    assert_eq!(w.order_events().len(), 3);
    // No record per key: only order documents (and index pages).
    assert!(
        w.store
            .inner
            .keys()
            .iter()
            .all(|k| !k.contains("idempotency")),
        "{:?}",
        w.store.inner.keys()
    );
    // A deleted order's key says so.
    let id = first["id"].as_str().unwrap();
    assert_eq!(w.delete("t", id).0, 204);
    let (s, p, _) = w.post_keyed("t", "k1", order_body(&[("a", 2)]));
    assert_eq!(
        (s, p["type"].as_str()),
        (409, Some("urn:wasmshop:problem:idempotency-key-used"))
    );
}

#[test]
fn a_retry_finishes_the_creation_its_first_attempt_left() {
    let w = World::new();
    w.peer.product("t", "a", 3.0, 10);
    w.peer.fail("/confirm", None, 3);
    let (s, p, _) = w.post_keyed("t", "k", order_body(&[("a", 2)]));
    assert_eq!(s, 503, "{p}");
    let (s, o, r) = w.post_keyed("t", "k", order_body(&[("a", 2)]));
    assert_eq!((s, o["status"].as_str()), (200, Some("Pending")), "{o}");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(w.peer.stock("t", "a"), 8, "held once");
    assert_eq!(
        w.post_keyed("t", "k", order_body(&[("a", 2)])).1["id"],
        o["id"]
    );
}

#[test]
fn legacy_idempotency_records_are_read_then_converted() {
    let w = World::new();
    w.peer.product("t", "a", 3.0, 10);
    let id = w.place("t", &[("a", 2)]);
    let body = order_body(&[("a", 2)]);
    let new = crate::validation::parse_new_order(body.to_string().as_bytes()).unwrap();
    let record_key = legacy_idempotency_key(&tenant("t"), "old-key");
    let record = IdempotencyRecord {
        fingerprint: new.fingerprint(),
        order_id: id.clone(),
        claimed_at_ms: 0,
    };
    put_json(&w.store.inner, &record_key, &record).unwrap();
    let (s, p, _) = w.post_keyed("t", "old-key", order_body(&[("a", 1)]));
    assert_eq!(s, 422, "{p}");
    let (s, o, _) = w.post_keyed("t", "old-key", body.clone());
    assert_eq!((s, o["id"].as_str()), (200, Some(id.as_str())));
    assert_eq!(
        w.store.inner.get(&record_key).unwrap(),
        None,
        "record deleted"
    );
    let (s, o, _) = w.post_keyed("t", "old-key", body.clone());
    assert_eq!(
        (s, o["id"].as_str()),
        (200, Some(id.as_str())),
        "found again without it"
    );
    assert_eq!(w.peer.stock("t", "a"), 8);

    // A record whose request died long ago: its holds are returned and the
    // order placed afresh.
    let record_key = legacy_idempotency_key(&tenant("t"), "dead");
    put_json(
        &w.store.inner,
        &record_key,
        &IdempotencyRecord {
            fingerprint: new.fingerprint(),
            order_id: "dead-order".into(),
            claimed_at_ms: 0,
        },
    )
    .unwrap();
    reserve_directly(&w, "a", "dead-order", 2);
    assert_eq!(w.peer.stock("t", "a"), 6);
    assert_eq!(w.post_keyed("t", "dead", body).0, 201);
    assert_eq!(
        w.peer.stock("t", "a"),
        6,
        "the dead request's units came back"
    );
    assert_eq!(w.store.inner.get(&record_key).unwrap(), None);
}

#[test]
fn client_chosen_ids_are_unique_and_survive_a_failed_attempt() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 3);
    let mut body = order_body(&[("a", 5)]);
    body["id"] = json!("mine");
    assert_eq!(w.post("t", body.clone()).0, 409, "not enough stock");
    body["items"][0]["quantity"] = json!(2);
    let (s, o, r) = w.post("t", body.clone());
    assert_eq!((s, o["id"].as_str()), (201, Some("mine")), "{o}");
    assert_eq!(r.header("location"), Some("/api/orders/mine"));
    let (s, p, _) = w.post("t", body.clone());
    assert_eq!(
        (s, p["type"].as_str()),
        (409, Some("urn:wasmshop:problem:order-exists"))
    );
    assert!(p["errors"]["id"].is_array(), "{p}");
    assert_eq!(w.peer.stock("t", "a"), 1);
    assert_eq!(w.delete("t", "mine").0, 204);
    assert_eq!(w.peer.stock("t", "a"), 3);
    assert_eq!(w.post("t", body).0, 409, "a deleted order's id stays taken");
}

#[test]
fn status_machine_events_and_release_on_cancel() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 4)]);
    let (s, p, _) = w.put("t", &id, json!({"status": "Shipped"}));
    assert_eq!(s, 409);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("Pending") && detail.contains("Shipped"),
        "{detail}"
    );
    let (s, o, r) = w.put("t", &id, json!({"status": "Confirmed"}));
    assert_eq!(
        (s, o["status"].as_str(), r.header("etag")),
        (200, Some("Confirmed"), Some("\"2\""))
    );
    // A repeat changes nothing.
    let (s, o, _) = w.put("t", &id, json!({"status": "Confirmed"}));
    assert_eq!((s, o["version"].as_i64()), (200, Some(2)));
    // 412 before 400 before 409.
    let stale = Request::new(Method::PUT, &format!("/api/orders/{id}"))
        .with_header("x-tenant-id", "t")
        .with_header("if-match", "\"1\"")
        .with_body("{bad");
    assert_eq!(w.send(stale).0, 412);
    assert_eq!(w.put("t", &id, json!({"status": "nope"})).0, 400);
    let (s, o, _) = w.put(
        "t",
        &id,
        json!({"status": "Cancelled", "cancellationReason": "too slow"}),
    );
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["cancellationReason"], "too slow");
    assert_eq!(w.peer.stock("t", "a"), 10, "released before answering");
    assert_eq!(w.put("t", &id, json!({"status": "Confirmed"})).0, 409);
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        vec![
            "OrderCreated",
            "OrderStatusChanged",
            "OrderStatusChanged",
            "OrderCancelled"
        ]
    );
    // Deleting a closed order releases nothing (there is nothing left).
    assert_eq!(w.delete("t", &id).0, 204);
    assert_eq!(w.peer.stock("t", "a"), 10);
    assert_eq!(w.get("t", &format!("/api/orders/{id}")).0, 404);
    assert_eq!(w.delete("t", &id).0, 404);
}

#[test]
fn a_failed_release_keeps_the_debt_and_a_retry_pays_it() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 4)]);
    w.peer.fail("/reservations/", Some(500), 100);
    let (s, p, _) = w.put("t", &id, json!({"status": "Cancelled"}));
    assert_eq!(s, 503, "{p}");
    assert_eq!(w.peer.stock("t", "a"), 6);
    w.peer.fail("", None, 0);
    let (s, o, _) = w.put("t", &id, json!({"status": "Cancelled"}));
    assert_eq!((s, o["status"].as_str()), (200, Some("Cancelled")));
    assert_eq!(w.peer.stock("t", "a"), 10);
    let (s, _, _) = w.put("t", &id, json!({"status": "Cancelled"}));
    assert_eq!(s, 200);
    assert_eq!(w.peer.stock("t", "a"), 10, "released once");
}

#[test]
fn confirmed_sales_come_back_even_when_the_product_forgot_them() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 4)]);
    for p in w.peer.products.borrow_mut().values_mut() {
        p.records.clear();
    }
    assert_eq!(w.delete("t", &id).0, 204);
    assert_eq!(w.peer.stock("t", "a"), 10);
}

#[test]
fn deleting_an_open_order_releases_its_stock() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.peer.product("t", "b", 1.0, 10);
    let id = w.place("t", &[("a", 4), ("b", 1)]);
    let stale = Request::new(Method::DELETE, &format!("/api/orders/{id}"))
        .with_header("x-tenant-id", "t")
        .with_header("if-match", "\"7\"");
    assert_eq!(w.send(stale).0, 412);
    assert_eq!(w.delete("t", &id).0, 204);
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (10, 10));
    assert_eq!(w.get("t", "/api/orders").1, json!([]));
    for q in ["?productId=a", "?status=Cancelled", "?customerId=cust-1"] {
        assert_eq!(w.get("t", &format!("/api/orders{q}")).1, json!([]), "{q}");
    }
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"OrderCancelled".to_owned()), "{kinds:?}");
}

#[test]
fn lists_by_every_filter_page_through_everything_exactly_once() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10_000);
    w.peer.product("t", "b", 1.0, 10_000);
    w.peer.product("t", "c", 1.0, 10_000);
    let mut ids = Vec::new();
    for i in 0..40 {
        let items: Vec<(&str, i64)> = match i % 4 {
            0 => vec![("a", 1)],
            1 => vec![("b", 1)],
            2 => vec![("a", 1), ("b", 2)],
            _ => vec![("c", 1), ("a", 1)],
        };
        let mut body = order_body(&items);
        body["customerId"] = json!(format!("customer {}", i % 3));
        let (s, o, _) = w.post("t", body);
        assert_eq!(s, 201, "{o}");
        let id = o["id"].as_str().unwrap().to_owned();
        match i % 5 {
            1 => w.status("t", &id, "Confirmed"),
            2 => {
                w.status("t", &id, "Confirmed");
                w.status("t", &id, "Shipped");
            }
            3 => w.status("t", &id, "Cancelled"),
            _ => {}
        }
        ids.push(id);
    }
    for gone in [&ids[4], &ids[17], &ids[33]] {
        assert_eq!(w.delete("t", gone).0, 204);
    }
    // Another tenant's orders never show.
    w.peer.product("u", "a", 1.0, 10);
    w.post("u", order_body(&[("a", 1)]));

    let orders: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            let (s, o, _) = w.get("t", &format!("/api/orders/{id}"));
            (s == 200).then_some(o)
        })
        .collect();
    assert_eq!(orders.len(), 37);
    for query in [
        "",
        "?status=Pending",
        "?status=Cancelled",
        "?customerId=customer%201",
        "?productId=a",
        "?productId=b&status=Confirmed",
        "?customerId=customer%202&status=Shipped",
        "?productId=zzz",
    ] {
        let req = Request::new(Method::GET, &format!("/api/orders{query}"));
        let wanted: BTreeSet<String> = orders
            .iter()
            .filter(|o| {
                req.query.iter().all(|(k, v)| match k.as_str() {
                    "status" => o["status"] == *v,
                    "customerId" => o["customerId"] == *v,
                    "productId" => o["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|i| i["productId"] == *v),
                    _ => true,
                })
            })
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        for limit in [1, 3, 7, 100] {
            let by_cursor = w.walk_by_cursor("t", query, limit);
            let unique: BTreeSet<String> = by_cursor.iter().cloned().collect();
            assert_eq!(
                unique.len(),
                by_cursor.len(),
                "{query} limit {limit}: listed twice"
            );
            assert_eq!(unique, wanted, "{query} limit {limit}");
            let by_offset = w.walk_by_offset("t", query, limit);
            assert_eq!(
                by_offset, by_cursor,
                "{query} limit {limit}: offset and cursor agree"
            );
        }
    }
    // Creation order: the unfiltered list follows createdAt.
    let all = w.walk_by_cursor("t", "", 5);
    let created: Vec<String> = all
        .iter()
        .map(|id| w.order("t", id)["createdAt"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(created, sorted);
    // A cursor is bound to its tenant and filter.
    let (_, _, r) = w.get("t", "/api/orders?productId=a&limit=2");
    let next = r.header("link").unwrap().to_owned();
    let cursor = next
        .split("cursor=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    for (t, q) in [("t", "productId=b"), ("u", "productId=a"), ("t", "")] {
        let (s, p, _) = w.get(t, &format!("/api/orders?{q}&cursor={cursor}"));
        assert_eq!(s, 400, "{t} {q}: {p}");
        assert!(p["errors"]["cursor"].is_array(), "{p}");
    }
    assert_eq!(
        w.get("t", &format!("/api/orders?offset=1&cursor={cursor}"))
            .0,
        400
    );
}

#[test]
fn product_rename_refreshes_open_orders_only_and_keeps_prices() {
    let w = World::new();
    w.peer.product("t", "a", 2.5, 100);
    let open = w.place("t", &[("a", 1)]);
    let shipped = w.place("t", &[("a", 1)]);
    w.status("t", &shipped, "Confirmed");
    w.status("t", &shipped, "Shipped");
    let renamed = w.peer.rename("t", "a", "Renamed");
    assert_eq!(
        w.service().on_product_event(&renamed),
        Ok(Outcome::Applied(1))
    );
    let writes = w.store.inner.writes();
    assert_eq!(
        w.service().on_product_event(&renamed),
        Ok(Outcome::Applied(0))
    );
    assert_eq!(w.store.inner.writes(), writes, "a repeat writes nothing");
    let o = w.order("t", &open);
    assert_eq!(
        (
            o["items"][0]["productName"].as_str(),
            o["items"][0]["unitPrice"].as_f64()
        ),
        (Some("Renamed"), Some(2.5))
    );
    assert_eq!(o["version"], 2);
    assert_eq!(
        w.order("t", &shipped)["items"][0]["productName"],
        "a name",
        "closed orders stay as they are"
    );
    // An older rename delivered late does not win.
    let newest = w.peer.rename("t", "a", "Newest");
    w.service().on_product_event(&newest).unwrap();
    w.service().on_product_event(&renamed).unwrap();
    assert_eq!(w.order("t", &open)["items"][0]["productName"], "Newest");
    // A change that leaves the name alone writes no order.
    let writes = w.store.inner.writes();
    let same = w.peer.rename("t", "a", "Newest");
    assert_eq!(w.service().on_product_event(&same), Ok(Outcome::Applied(0)));
    assert_eq!(w.store.inner.writes(), writes);
}

#[test]
fn reactions_touch_only_open_orders() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 100);
    w.peer.product("t", "b", 1.0, 100);
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for i in 0..12 {
        let id = w.place("t", &[("a", 1), ("b", 1)]);
        match i % 3 {
            0 => open.push(id),
            1 => {
                w.status("t", &id, "Confirmed");
                w.status("t", &id, "Shipped");
                closed.push(id);
            }
            _ => {
                w.status("t", &id, "Cancelled");
                closed.push(id);
            }
        }
    }
    w.place("t", &[("b", 1)]);
    w.store.reads.borrow_mut().clear();
    let deleted = w.peer.remove("t", "a");
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(4))
    );
    let read: BTreeSet<String> = w
        .store
        .reads
        .borrow()
        .iter()
        .filter_map(|k| k.strip_prefix("tenant/t/order/").map(str::to_owned))
        .collect();
    assert_eq!(
        read,
        open.iter().cloned().collect(),
        "only open orders with a are read"
    );
    for id in &open {
        let o = w.order("t", id);
        assert_eq!(o["status"], "Cancelled");
        assert!(
            o["cancellationReason"].as_str().unwrap().contains("'a'"),
            "{o}"
        );
    }
    assert_eq!(
        w.peer.stock("t", "b"),
        100 - 1 - 4,
        "the open orders' b came back"
    );
    // Now nothing is open with a: the walk reads no order at all.
    w.store.reads.borrow_mut().clear();
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(0))
    );
    assert!(
        !w.store.reads.borrow().iter().any(|k| k.contains("/order/")),
        "{:?}",
        w.store.reads.borrow()
    );
    assert_eq!(w.peer.stock("t", "b"), 95, "released once");
    let cancelled = w
        .order_events()
        .into_iter()
        .filter(|(k, _)| k == "OrderCancelled")
        .count();
    assert_eq!(cancelled, 4 + 4);
}

#[test]
fn a_late_product_deleted_spares_orders_of_the_re_created_product() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.peer.product("t", "k", 1.0, 10);
    let old = w.place("t", &[("a", 1), ("k", 2)]);
    let deleted = w.peer.remove("t", "a");
    w.peer.product("t", "a", 1.0, 10);
    let new = w.place("t", &[("a", 1)]);
    // A transient failure is an error (the host retries) …
    w.peer.fail("/reservations/", None, 100);
    assert!(w.service().on_product_event(&deleted).is_err());
    w.peer.fail("", None, 0);
    // … and the retry finishes the job exactly once.
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(0))
    );
    assert_eq!(w.order("t", &old)["status"], "Cancelled");
    assert_eq!(
        w.peer.stock("t", "k"),
        10,
        "the other item's stock came back"
    );
    assert_eq!(
        w.order("t", &new)["status"],
        "Pending",
        "another incarnation"
    );
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(0))
    );
    assert_eq!(w.order("t", &new)["status"], "Pending");
    assert_eq!(w.peer.stock("t", "a"), 9);
}

#[test]
fn legacy_orders_migrate_in_chunks_while_lists_stay_complete() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 1000);
    // Orders as an earlier version stored them: no slots, one tenant index
    // and one productId → orders document.
    let t = tenant("t");
    let template = {
        let id = w.place("t", &[("a", 1)]);
        let Some(OrderDoc::Live(o)) = w.doc("t", &id) else {
            panic!()
        };
        w.delete("t", &id);
        o
    };
    let mut legacy = LegacyIndex::default();
    let mut by_product = LegacyProductOrders::default();
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut o = template.clone();
        o.id = format!("old-{i:02}");
        o.created_at = format!("2024-01-01T00:00:00.{i:03}Z");
        o.slots = None;
        o.idempotency = None;
        for item in o.items.iter_mut() {
            item.product_slot = None;
            item.open_slot = None;
            item.incarnation = None;
        }
        if i % 2 == 1 {
            o.status = Status::Confirmed;
        }
        put_json(
            &w.store.inner,
            &order_key(&t, &o.id),
            &OrderDoc::Live(o.clone()),
        )
        .unwrap();
        legacy.upsert(LegacyEntry::of(&o));
        by_product.add(&o.id);
        ids.push(o.id);
    }
    put_json(&w.store.inner, &legacy_index_key(&t), &legacy).unwrap();
    put_json(
        &w.store.inner,
        &legacy_product_orders_key(&t, "a"),
        &by_product,
    )
    .unwrap();
    w.store
        .inner
        .delete(&crate::store::migration_key(&t))
        .unwrap();

    // A new order while migrating shows too.
    let fresh = w.place("t", &[("a", 1)]);
    ids.push(fresh.clone());
    let mut rounds = 0;
    let everything: BTreeSet<String> = ids.iter().cloned().collect();
    loop {
        rounds += 1;
        let listed = ids_of(&w.get("t", "/api/orders?limit=1000").1);
        if w.migration_phase() == crate::migration::Phase::Index {
            assert_eq!(
                listed, ids,
                "round {rounds}: the legacy index, in creation order"
            );
        }
        // Orders placed during the migration may list a little out of
        // creation order once it is done (their entries went in first).
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            (listed.len(), &unique),
            (ids.len(), &everything),
            "round {rounds}"
        );
        if w.store.inner.get(&legacy_index_key(&t)).unwrap().is_none() {
            break;
        }
        assert!(rounds < 20);
    }
    assert_eq!(
        rounds, 6,
        "3 chunks of 10 over 26 entries, then 3 of cleanup"
    );
    assert_eq!(w.migration_phase(), crate::migration::Phase::Done);
    assert_eq!(
        w.store
            .inner
            .get(&legacy_product_orders_key(&t, "a"))
            .unwrap(),
        None
    );
    let walked = w.walk_by_cursor("t", "", 4);
    assert_eq!(walked.iter().cloned().collect::<BTreeSet<_>>(), everything);
    assert_eq!(walked.len(), 26);
    assert_eq!(
        ids_of(&w.get("t", "/api/orders?status=Confirmed&limit=1000").1).len(),
        12
    );
    assert_eq!(
        w.walk_by_cursor("t", "?productId=a&status=Pending", 4)
            .len(),
        14
    );
    // Reactions find migrated orders through the new index.
    let renamed = w.peer.rename("t", "a", "Renamed");
    assert_eq!(
        w.service().on_product_event(&renamed),
        Ok(Outcome::Applied(26))
    );
}

#[test]
fn the_largest_stored_value_stays_under_64_kib() {
    let w = World::new();
    let nasty = [
        "\"".repeat(200),
        "😀".repeat(200),
        "\\".repeat(200),
        "é".repeat(200),
    ];
    let mut items = Vec::new();
    for i in 0..100 {
        let id = format!("{i:02}{}", "p".repeat(62));
        w.peer.product_named(
            "t",
            &id,
            &nasty[i % nasty.len()],
            99_999.99,
            "USD",
            2_147_483_647,
        );
        items.push(json!({"productId": id, "quantity": 2_147_483_647 / 100}));
    }
    let body = json!({
        "id": "x".repeat(64),
        "customerId": "😀".repeat(100),
        "items": items,
    });
    let (s, o, _) = w.send(
        Request::new(Method::POST, "/api/orders")
            .with_header("x-tenant-id", "t")
            .with_header("idempotency-key", &"k".repeat(255))
            .with_body(body.to_string()),
    );
    assert_eq!(s, 201, "{o}");
    let id = o["id"].as_str().unwrap();
    let reason = "\"".repeat(500);
    let (s, o, _) = w.put(
        "t",
        id,
        json!({"status": "Cancelled", "cancellationReason": reason}),
    );
    assert_eq!(s, 200, "{o}");
    let largest = w
        .store
        .inner
        .keys()
        .into_iter()
        .map(|k| (w.store.inner.get(&k).unwrap().unwrap().len(), k))
        .max()
        .unwrap();
    assert!(largest.0 < 64 * 1024, "{largest:?}");
    assert!(
        largest.1.contains("/order/"),
        "the order is the largest: {largest:?}"
    );
}

#[test]
fn unusable_events_are_dropped_not_retried() {
    let w = World::new();
    let s = w.service();
    assert!(matches!(
        s.on_product_event(b"not json"),
        Ok(Outcome::Ignored(_))
    ));
    let e = CloudEvent::new(
        "x",
        "ProductDeleted",
        &TenantId::default(),
        "tp",
        &json!({"nope": 1}),
    );
    assert!(matches!(
        s.on_product_event(&e.to_json()),
        Ok(Outcome::Ignored(_))
    ));
    let e = CloudEvent::new("x", "StockChanged", &TenantId::default(), "tp", &json!({}));
    assert_eq!(s.on_product_event(&e.to_json()), Ok(Outcome::NotRelevant));
}

#[test]
fn bad_input_is_a_4xx_problem_never_a_500() {
    let w = World::new();
    for (req, status) in [
        (
            Request::new(Method::POST, "/api/orders").with_body("{"),
            400,
        ),
        (
            Request::new(Method::POST, "/api/orders").with_body("[]"),
            400,
        ),
        (
            Request::new(Method::POST, "/api/orders")
                .with_header("x-tenant-id", "a b")
                .with_body("{}"),
            400,
        ),
        (
            Request::new(Method::POST, "/api/orders")
                .with_body(r#"{"customerId":"a\nb","items":[{"productId":"a","quantity":1}]}"#),
            400,
        ),
        (Request::new(Method::GET, "/api/orders/a%2Fb"), 404),
        (Request::new(Method::PATCH, "/api/orders/x"), 405),
        (Request::new(Method::GET, "/api/orders/x/y"), 404),
        (Request::new(Method::GET, "/api/orders?cursor=nope"), 400),
        (
            Request::new(Method::PUT, "/api/orders/none").with_body("{}"),
            404,
        ),
    ] {
        let (s, p, r) = w.send(req.clone());
        assert_eq!(s, status, "{req:?}: {p}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
}

#[test]
fn head_answers_as_get_and_405_names_head_in_allow() {
    let w = World::new();
    w.peer.product("t", "a", 1.5, 10);
    let id = w.place("t", &[("a", 2)]);
    for path in [
        format!("/api/orders/{id}"),
        "/api/orders?limit=1".to_owned(),
    ] {
        let get = w.get("t", &path).2;
        let head = w
            .send(Request::new(Method::HEAD, &path).with_header("x-tenant-id", "t"))
            .2;
        assert_eq!(get.status, 200, "{path}");
        assert_eq!(head, get, "{path}: HEAD is GET before the body is dropped");
    }
    for (path, allow) in [
        ("/api/orders", "GET, HEAD, POST"),
        ("/api/orders/x", "GET, HEAD, PUT, DELETE"),
    ] {
        let (s, _, r) = w.send(Request::new(Method::PATCH, path));
        assert_eq!((s, r.header("allow")), (405, Some(allow)), "{path}");
    }
}

#[test]
fn if_none_match_is_304_on_get_and_412_on_put_and_delete() {
    let w = World::new();
    w.peer.product("t", "a", 1.5, 10);
    let id = w.place("t", &[("a", 2)]);
    let path = format!("/api/orders/{id}");
    for inm in ["\"1\"", "W/\"1\"", "*"] {
        let (s, body, r) = w.send(
            Request::new(Method::GET, &path)
                .with_header("x-tenant-id", "t")
                .with_header("if-none-match", inm),
        );
        assert_eq!((s, r.header("etag")), (304, Some("\"1\"")), "{inm}");
        assert_eq!(body, Value::Null);
        let (s, p, _) = w.send(
            Request::new(Method::PUT, &path)
                .with_header("x-tenant-id", "t")
                .with_header("if-none-match", inm)
                .with_body(json!({"status": "Confirmed"}).to_string()),
        );
        assert_eq!(s, 412, "{inm}: {p}");
        let (s, _, _) = w.send(
            Request::new(Method::DELETE, &path)
                .with_header("x-tenant-id", "t")
                .with_header("if-none-match", inm),
        );
        assert_eq!(s, 412, "{inm}");
    }
    let order = w.order("t", &id);
    assert_eq!(
        (order["status"].as_str(), order["version"].as_u64()),
        (Some("Pending"), Some(1))
    );
    let (s, _, _) = w.send(
        Request::new(Method::PUT, &path)
            .with_header("x-tenant-id", "t")
            .with_header("if-none-match", "\"5\"")
            .with_body(json!({"status": "Confirmed"}).to_string()),
    );
    assert_eq!(s, 200);
}

#[test]
fn integral_quantities_are_whole_numbers() {
    let w = World::new();
    w.peer.product("t", "a", 1.5, 300);
    let (s, body, _) = w.post(
        "t",
        serde_json::from_str(r#"{"customerId":"c","items":[{"productId":"a","quantity":283.0}]}"#)
            .unwrap(),
    );
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["items"][0]["quantity"], 283);
    let (s, p, _) = w.post(
        "t",
        json!({"customerId":"c","items":[{"productId":"a","quantity":2.5}]}),
    );
    assert_eq!(s, 400);
    assert!(p["errors"]["items[0].quantity"].is_array(), "{p}");
}

#[test]
fn offsets_past_32_bits_are_an_empty_page() {
    let w = World::new();
    w.peer.product("t", "a", 1.5, 10);
    w.place("t", &[("a", 1)]);
    let (s, body, r) = w.get("t", "/api/orders?offset=4294967296");
    assert_eq!((s, body), (200, json!([])));
    assert_eq!(r.header("link"), None);
}

fn pending_kinds(w: &World, id: &str) -> Vec<String> {
    match w.doc("t", id) {
        Some(OrderDoc::Live(o)) => o.pending_events.iter().map(|e| e.kind.clone()).collect(),
        other => panic!("not a live order: {other:?}"),
    }
}

#[test]
fn a_refused_cancel_event_is_kept_in_the_order_503_and_the_next_get_publishes_it() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 2)]);
    w.events.fail_with("stream full");
    let (s, body, r) = w.put("t", &id, json!({"status": "Cancelled"}));
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:event-pending");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("OrderStatusChanged"),
        "{body}"
    );
    // The change is saved and its stock returned; both events are kept.
    assert_eq!(w.peer.stock("t", "a"), 10);
    assert_eq!(
        pending_kinds(&w, &id),
        ["OrderStatusChanged", "OrderCancelled"]
    );
    let kept: Vec<String> = match w.doc("t", &id) {
        Some(OrderDoc::Live(o)) => o.pending_events.iter().map(|e| e.id.clone()).collect(),
        _ => unreachable!(),
    };
    // A read answers while the broker refuses; a write is refused.
    assert_eq!(w.order("t", &id)["status"], "Cancelled");
    let (s, body, _) = w.delete("t", &id);
    assert_eq!(
        (s, body["type"].as_str()),
        (503, Some("urn:wasmshop:problem:event-pending"))
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{body}"
    );
    w.events.recover();
    let got = w.order("t", &id);
    let events = w.events.events();
    let after_create: Vec<(String, String)> = events[1..]
        .iter()
        .map(|(_, e)| (e.kind.clone(), e.id.clone()))
        .collect();
    assert_eq!(
        after_create,
        [
            ("OrderStatusChanged".to_owned(), kept[0].clone()),
            ("OrderCancelled".to_owned(), kept[1].clone()),
        ]
    );
    let data: Value = events[2].1.data_as().unwrap();
    assert_eq!(data, got);
    assert!(pending_kinds(&w, &id).is_empty());
}

#[test]
fn a_retried_delete_publishes_the_kept_cancellation_and_answers_204() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 1)]);
    w.events.fail_with("stream full");
    let (s, body, _) = w.delete("t", &id);
    assert_eq!(s, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("delete is not done yet"),
        "{body}"
    );
    assert_eq!(w.order("t", &id)["status"], "Cancelled");
    w.events.recover();
    assert_eq!(w.delete("t", &id).0, 204);
    assert_eq!(w.get("t", &format!("/api/orders/{id}")).0, 404);
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["OrderCreated", "OrderStatusChanged", "OrderCancelled"]
    );
}

#[test]
fn a_reaction_whose_event_is_refused_fails_so_the_broker_redelivers_it() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    let id = w.place("t", &[("a", 1)]);
    let deleted = w.peer.remove("t", "a");
    w.events.fail_with("stream full");
    let err = w.service().on_product_event(&deleted).unwrap_err();
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        pending_kinds(&w, &id),
        ["OrderStatusChanged", "OrderCancelled"]
    );
    // Redelivered while the broker still refuses: fails again, nothing lost.
    assert!(w.service().on_product_event(&deleted).is_err());
    w.events.recover();
    assert_eq!(
        w.service().on_product_event(&deleted),
        Ok(Outcome::Applied(0))
    );
    assert!(pending_kinds(&w, &id).is_empty());
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["OrderCreated", "OrderStatusChanged", "OrderCancelled"]
    );
}

#[test]
fn a_create_whose_order_created_is_refused_is_503_and_a_keyed_retry_publishes_it() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 10);
    w.events.fail_with("stream full");
    let (s, body, r) = w.post_keyed("t", "k1", order_body(&[("a", 1)]));
    assert_eq!(s, 503, "{body}");
    assert_eq!(r.header("retry-after"), Some("5"));
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("was placed") && detail.contains("OrderCreated"),
        "{detail}"
    );
    // Placed (its stock confirmed), the event kept with it.
    assert_eq!(w.peer.stock("t", "a"), 9);
    let (s, again, _) = w.post_keyed("t", "k1", order_body(&[("a", 1)]));
    assert_eq!(s, 503, "still refused: {again}");
    w.events.recover();
    let (s, replay, r) = w.post_keyed("t", "k1", order_body(&[("a", 1)]));
    assert_eq!(s, 200, "{replay}");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    let id = replay["id"].as_str().unwrap();
    assert!(pending_kinds(&w, id).is_empty());
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["OrderCreated"]);
    assert_eq!(w.peer.stock("t", "a"), 9, "ordered once");
}
