//! Native tests of the whole order service: its API, creation flow and
//! event reactions, against the real product API running in-process over
//! an in-memory store (the peer the host would reach at
//! `product.spin.internal`).

use std::cell::{Cell, RefCell};
use std::time::Duration;

use serde_json::{Value, json};
use service_kit::client::{Call, ClientError};
use service_kit::events::{CloudEvent, RecordingSink};
use service_kit::http::Method;
use service_kit::kv::{MemoryStore, Retry, put_json};
use service_kit::tenant::TenantId;
use service_kit::web::{Request, Response};

use crate::products::{CallPolicy, PRODUCT_BASE, Transport};
use crate::reactions::Outcome;
use crate::service::{OrderService, Settings};
use crate::store::{IdempotencyRecord, idempotency_key};

/// The product service in-process, with failure injection.
struct Peer {
    store: MemoryStore,
    events: RecordingSink,
    /// Calls whose path contains this string fail (`Some(status)`: that
    /// status; `None`: unreachable), while `failures` lasts.
    fail_on: RefCell<Option<(String, Option<u16>)>>,
    failures: Cell<u32>,
    calls: RefCell<Vec<String>>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            store: MemoryStore::new(),
            events: RecordingSink::new(),
            fail_on: RefCell::new(None),
            failures: Cell::new(0),
            calls: RefCell::new(Vec::new()),
        }
    }

    fn api(&self) -> product::api::Api<'_, MemoryStore, RecordingSink> {
        product::api::Api::new(&self.store, &self.events)
    }

    fn call(&self, method: Method, path: &str, tenant: &str, body: Option<Value>) -> Response {
        let mut r = Request::new(method, path).with_header("x-tenant-id", tenant);
        if let Some(b) = body {
            r = r.with_body(b.to_string());
        }
        self.api().handle(&r)
    }

    fn product(&self, tenant: &str, id: &str, price: f64, stock: i64) {
        let r = self.call(
            Method::POST,
            "/api/products",
            tenant,
            Some(json!({"id": id, "name": format!("{id} name"), "price": price, "stock": stock})),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    fn stock(&self, tenant: &str, id: &str) -> i64 {
        let r = self.call(Method::GET, &format!("/api/products/{id}"), tenant, None);
        r.json_body::<Value>().unwrap()["stock"].as_i64().unwrap()
    }

    fn fail(&self, path_part: &str, status: Option<u16>, times: u32) {
        *self.fail_on.borrow_mut() = Some((path_part.to_owned(), status));
        self.failures.set(times);
    }

    /// The product events published so far, as the host would deliver them.
    fn product_events(&self, kind: &str) -> Vec<Vec<u8>> {
        self.events
            .events()
            .into_iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(_, e)| e.to_json())
            .collect()
    }
}

impl Transport for Peer {
    fn send(&self, call: &Call) -> Result<Response, ClientError> {
        let path = call
            .url
            .strip_prefix(PRODUCT_BASE)
            .expect("calls go to the product service");
        self.calls
            .borrow_mut()
            .push(format!("{} {path}", call.method));
        if let Some((part, status)) = self.fail_on.borrow().clone()
            && path.contains(&part)
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
        Ok(self.api().handle(&r))
    }
}

/// The order service under test, with its own store and event recorder.
struct World {
    peer: Peer,
    store: MemoryStore,
    events: RecordingSink,
    settings: Settings,
}

impl World {
    fn new() -> World {
        World {
            peer: Peer::new(),
            store: MemoryStore::new(),
            events: RecordingSink::new(),
            settings: Settings {
                retry: Retry {
                    max_attempts: 5,
                    base_delay: Duration::ZERO,
                    max_delay: Duration::ZERO,
                },
                calls: CallPolicy {
                    attempts: 3,
                    pause: Duration::ZERO,
                    timeout: Duration::from_secs(1),
                },
                idempotency_wait: Duration::ZERO,
                idempotency_lease: Duration::from_secs(60),
            },
        }
    }

    fn service(&self) -> OrderService<'_, MemoryStore, RecordingSink, Peer> {
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

    fn get(&self, tenant: &str, path: &str) -> (u16, Value, Response) {
        self.send(Request::new(Method::GET, path).with_header("x-tenant-id", tenant))
    }

    fn delete(&self, tenant: &str, id: &str) -> (u16, Value, Response) {
        self.send(
            Request::new(Method::DELETE, &format!("/api/orders/{id}"))
                .with_header("x-tenant-id", tenant),
        )
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
            .keys()
            .into_iter()
            .filter(|k| k.contains("/order/"))
            .collect()
    }
}

fn order_body(items: &[(&str, i64)]) -> Value {
    json!({
        "customerId": "cust-1",
        "items": items.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>()
    })
}

#[test]
fn creates_with_snapshots_exact_totals_and_reservations() {
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
    assert_eq!(body["items"][1]["productName"], "b name");
    assert_eq!((w.peer.stock("t", "a"), w.peer.stock("t", "b")), (7, 3));
    // The tenant travels on every product call.
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
fn product_calls_carry_the_tenant() {
    let w = World::new();
    w.peer.product("acme", "a", 1.0, 1);
    // The same product id in another tenant does not exist for this one.
    assert_eq!(w.post("other", order_body(&[("a", 1)])).0, 422);
    assert_eq!(w.post("acme", order_body(&[("a", 1)])).0, 201);
    assert_eq!(w.peer.stock("acme", "a"), 0);
}

#[test]
fn failed_item_releases_earlier_reservations_and_saves_nothing() {
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
    let (s, p, _) = w.post("t", order_body(&[("a", 1), ("b", 1)]));
    assert_eq!(s, 503, "{p}");
    let attempts = w
        .peer
        .calls
        .borrow()
        .iter()
        .filter(|c| c.starts_with("POST /api/products/b/reservations"))
        .count();
    assert_eq!(attempts, 3, "bounded retry");
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
fn mixed_currencies_are_refused_and_compensated() {
    let w = World::new();
    w.peer.product("t", "usd", 1.0, 5);
    let r = w.peer.call(
        Method::POST,
        "/api/products",
        "t",
        Some(json!({"id": "eur", "name": "E", "price": 1, "currency": "EUR", "stock": 5})),
    );
    assert_eq!(r.status, 201);
    let (s, p, _) = w.post("t", order_body(&[("usd", 1), ("eur", 1)]));
    assert_eq!(
        (s, p["type"].as_str()),
        (422, Some("urn:wasmshop:problem:mixed-currencies"))
    );
    assert_eq!((w.peer.stock("t", "usd"), w.peer.stock("t", "eur")), (5, 5));
}

#[test]
fn idempotency_key_returns_the_same_order_and_reserves_once() {
    let w = World::new();
    w.peer.product("t", "a", 3.0, 10);
    let post = |tenant: &str, key: &str, body: Value| {
        w.send(
            Request::new(Method::POST, "/api/orders")
                .with_header("x-tenant-id", tenant)
                .with_header("idempotency-key", key)
                .with_body(body.to_string()),
        )
    };
    let (s1, first, _) = post("t", "k1", order_body(&[("a", 2)]));
    let (s2, again, r2) = post("t", "k1", order_body(&[("a", 2)]));
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(r2.header("idempotent-replayed"), Some("true"));
    assert_eq!(w.peer.stock("t", "a"), 8, "reserved once");
    let (s, p, _) = post("t", "k1", order_body(&[("a", 3)]));
    assert_eq!(s, 422, "{p}");
    assert!(p["errors"]["Idempotency-Key"].is_array());
    // Keys are per tenant.
    w.peer.product("u", "a", 3.0, 10);
    let (s, other, _) = post("u", "k1", order_body(&[("a", 2)]));
    assert_eq!(s, 201);
    assert_ne!(other["id"], first["id"]);
    // A failed attempt frees the key: the retry runs afresh.
    let (s, _, _) = post("t", "k2", order_body(&[("a", 100)]));
    assert_eq!(s, 409);
    assert_eq!(post("t", "k2", order_body(&[("a", 100)])).0, 409);
    assert_eq!(post("t", "k2", order_body(&[("a", 1)])).0, 201);
    assert_eq!(w.order_events().len(), 3);
}

#[test]
fn a_concurrent_claim_makes_the_second_request_wait_not_reserve() {
    let w = World::new();
    w.peer.product("t", "a", 3.0, 10);
    let body = order_body(&[("a", 2)]);
    let new = crate::validation::parse_new_order(body.to_string().as_bytes()).unwrap();
    let tenant = TenantId::parse("t").unwrap();
    // Another request holds the key and is still reserving.
    let record = IdempotencyRecord {
        fingerprint: new.fingerprint(),
        order_id: "in-flight".into(),
        claimed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    };
    put_json(&w.store, &idempotency_key(&tenant, "k"), &record).unwrap();
    let req = Request::new(Method::POST, "/api/orders")
        .with_header("x-tenant-id", "t")
        .with_header("idempotency-key", "k")
        .with_body(body.to_string());
    let (s, p, _) = w.send(req.clone());
    assert_eq!(
        (s, p["type"].as_str()),
        (
            409,
            Some("urn:wasmshop:problem:idempotency-key-in-progress")
        )
    );
    assert_eq!(
        w.peer.stock("t", "a"),
        10,
        "the waiting request reserved nothing"
    );

    // The claim's owner died after reserving: once the lease is over, a
    // retry returns what it held and places the order once.
    let r = w.peer.call(
        Method::POST,
        "/api/products/a/reservations",
        "t",
        Some(json!({"orderId": "in-flight", "quantity": 2})),
    );
    assert_eq!(r.status, 201);
    let mut stale = record.clone();
    stale.claimed_at_ms = 0;
    put_json(&w.store, &idempotency_key(&tenant, "k"), &stale).unwrap();
    let (s, placed, _) = w.send(req.clone());
    assert_eq!(s, 201, "{placed}");
    assert_eq!(
        w.peer.stock("t", "a"),
        8,
        "the dead request's units came back"
    );
    assert_eq!(w.send(req).0, 200);
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
    let kinds: Vec<String> = w.order_events().into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"OrderCancelled".to_owned()), "{kinds:?}");
}

#[test]
fn lists_filter_and_page_in_creation_order() {
    let w = World::new();
    w.peer.product("t", "a", 1.0, 100);
    w.peer.product("t", "b", 1.0, 100);
    let mut ids = Vec::new();
    for (i, items) in [
        vec![("a", 1)],
        vec![("b", 1)],
        vec![("a", 1), ("b", 1)],
        vec![("a", 2)],
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = order_body(&items);
        body["customerId"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        ids.push(w.post("t", body).1["id"].as_str().unwrap().to_owned());
    }
    let list = |q: &str| -> Vec<String> {
        let (s, body, _) = w.get("t", &format!("/api/orders{q}"));
        assert_eq!(s, 200, "{q}: {body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Creation order, or id order for orders created in the same millisecond.
    let all = list("");
    assert_eq!(all.len(), 4);
    assert_eq!(list(""), all, "stable");
    assert_eq!(list("?limit=2&offset=1"), all[1..3].to_vec());
    assert_eq!(list("?customerId=even").len(), 2);
    let with_b = list("?productId=b");
    assert_eq!(with_b.len(), 2);
    assert!(with_b.contains(&ids[1]) && with_b.contains(&ids[2]));
    w.put("t", &ids[3], json!({"status": "Confirmed"}));
    assert_eq!(list("?status=Confirmed"), vec![ids[3].clone()]);
    assert_eq!(list("?status=Pending&productId=a").len(), 2);
    assert_eq!(list("?status=Pending&offset=2&limit=1").len(), 1);
    assert_eq!(w.get("t", "/api/orders?limit=0").0, 400);
    assert!(list("?customerId=nobody").is_empty());
}

#[test]
fn product_rename_refreshes_open_orders_only_and_keeps_prices() {
    let w = World::new();
    w.peer.product("t", "a", 2.5, 100);
    let open = w.place("t", &[("a", 1)]);
    let shipped = w.place("t", &[("a", 1)]);
    w.put("t", &shipped, json!({"status": "Confirmed"}));
    w.put("t", &shipped, json!({"status": "Shipped"}));
    let r = w.peer.call(
        Method::PUT,
        "/api/products/a",
        "t",
        Some(json!({"name": "Renamed", "price": 9})),
    );
    assert_eq!(r.status, 200);
    let updates = w.peer.product_events("ProductUpdated");
    assert_eq!(
        w.service().on_product_event(&updates[0]),
        Ok(Outcome::Applied(1))
    );
    assert_eq!(
        w.service().on_product_event(&updates[0]),
        Ok(Outcome::Duplicate)
    );
    let o = w.get("t", &format!("/api/orders/{open}")).1;
    assert_eq!(
        (
            o["items"][0]["productName"].as_str(),
            o["items"][0]["unitPrice"].as_f64()
        ),
        (Some("Renamed"), Some(2.5))
    );
    assert_eq!(o["version"], 2);
    let s = w.get("t", &format!("/api/orders/{shipped}")).1;
    assert_eq!(
        s["items"][0]["productName"], "a name",
        "closed orders stay as they are"
    );
    // An older rename delivered late does not win (a new event id each time).
    let r = w.peer.call(
        Method::PUT,
        "/api/products/a",
        "t",
        Some(json!({"name": "Newest"})),
    );
    assert_eq!(r.status, 200);
    let updates = w.peer.product_events("ProductUpdated");
    w.service().on_product_event(&updates[1]).unwrap();
    let mut late = CloudEvent::from_json(&updates[0]).unwrap();
    late.id = "redelivered-copy".into();
    w.service().on_product_event(&late.to_json()).unwrap();
    assert_eq!(
        w.get("t", &format!("/api/orders/{open}")).1["items"][0]["productName"],
        "Newest"
    );
}

#[test]
fn product_deletion_cancels_open_orders_and_releases_other_items() {
    let w = World::new();
    w.peer.product("t", "gone", 1.0, 10);
    w.peer.product("t", "kept", 1.0, 10);
    let open = w.place("t", &[("gone", 1), ("kept", 3)]);
    let other = w.place("t", &[("kept", 1)]);
    let delivered = w.place("t", &[("gone", 1)]);
    for s in ["Confirmed", "Shipped", "Delivered"] {
        assert_eq!(w.put("t", &delivered, json!({"status": s})).0, 200);
    }
    assert_eq!(w.peer.stock("t", "kept"), 6);
    assert_eq!(
        w.peer
            .call(Method::DELETE, "/api/products/gone", "t", None)
            .status,
        204
    );
    let deleted = w.peer.product_events("ProductDeleted");
    // A transient failure is an error (the host retries) …
    w.peer.fail("/reservations/", None, 100);
    assert!(w.service().on_product_event(&deleted[0]).is_err());
    w.peer.fail("", None, 0);
    // … and the retry finishes the job exactly once.
    assert_eq!(
        w.service().on_product_event(&deleted[0]),
        Ok(Outcome::Applied(0))
    );
    assert_eq!(
        w.service().on_product_event(&deleted[0]),
        Ok(Outcome::Duplicate)
    );
    let o = w.get("t", &format!("/api/orders/{open}")).1;
    assert_eq!(o["status"], "Cancelled");
    assert!(
        o["cancellationReason"].as_str().unwrap().contains("gone"),
        "{o}"
    );
    assert_eq!(
        w.peer.stock("t", "kept"),
        9,
        "the other item's stock came back"
    );
    assert_eq!(
        w.get("t", &format!("/api/orders/{other}")).1["status"],
        "Pending"
    );
    assert_eq!(
        w.get("t", &format!("/api/orders/{delivered}")).1["status"],
        "Delivered"
    );
    let cancelled = w
        .order_events()
        .into_iter()
        .filter(|(k, _)| k == "OrderCancelled")
        .count();
    assert_eq!(cancelled, 1);
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
        (Request::new(Method::GET, "/api/orders/a%2Fb"), 404),
        (Request::new(Method::PATCH, "/api/orders/x"), 405),
        (Request::new(Method::GET, "/api/orders/x/y"), 404),
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
