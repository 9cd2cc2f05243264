//! Native tests of the whole API over the in-memory store: the same
//! requests the integration tests send, without a host.

use std::time::Duration;

use serde_json::{Value, json};
use service_kit::events::RecordingSink;
use service_kit::http::Method;
use service_kit::kv::{KvStore, MemoryStore, Retry};
use service_kit::web::{Request, Response};

use super::*;

struct World {
    store: MemoryStore,
    events: RecordingSink,
}

impl World {
    fn new() -> Self {
        World {
            store: MemoryStore::new(),
            events: RecordingSink::new(),
        }
    }

    fn send(&self, req: Request) -> Response {
        Api::new(&self.store, &self.events)
            .with_retry(Retry {
                max_attempts: 3,
                base_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
            })
            .handle(&req)
    }

    fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value, Response) {
        self.call_as(None, method, path, body, &[])
    }

    fn call_as(
        &self,
        tenant: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, Response) {
        let mut req = Request::new(method, path);
        if let Some(t) = tenant {
            req = req.with_header("x-tenant-id", t);
        }
        for (k, v) in headers {
            req = req.with_header(k, v);
        }
        if let Some(b) = body {
            req = req.with_body(serde_json::to_vec(&b).unwrap());
        }
        let resp = self.send(req);
        let json = if resp.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&resp.body).unwrap()
        };
        (resp.status.as_u16(), json, resp)
    }

    fn create(&self, body: Value) -> Value {
        let (status, json, _) = self.call(Method::POST, "/api/products", Some(body));
        assert_eq!(status, 201, "{json}");
        json
    }

    fn event_types(&self) -> Vec<String> {
        self.events
            .events()
            .into_iter()
            .map(|(_, e)| e.kind)
            .collect()
    }
}

#[test]
fn create_then_get_with_etag_and_location() {
    let w = World::new();
    let (status, body, resp) = w.call(
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "Pen", "price": 1.5, "stock": 3})),
    );
    assert_eq!(status, 201);
    assert_eq!(resp.header("location"), Some("/api/products/p1"));
    assert_eq!(resp.header("etag"), Some("\"1\""));
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["version"], 1);
    let (status, got, resp) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(status, 200);
    assert_eq!(got, body);
    assert_eq!(resp.header("etag"), Some("\"1\""));
}

#[test]
fn server_generates_an_id() {
    let w = World::new();
    let body = w.create(json!({"name": "Pen", "price": 1}));
    let id = body["id"].as_str().unwrap();
    assert!(is_valid_id(id));
    assert_eq!(
        w.call(Method::GET, &format!("/api/products/{id}"), None).0,
        200
    );
}

#[test]
fn duplicate_id_is_409_and_bad_body_400_first() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1}));
    let (status, body, _) = w.call(
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "Other", "price": 2})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:product-exists");
    let (status, body, _) = w.call(
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "", "price": 2})),
    );
    assert_eq!(status, 400, "validation comes before the conflict: {body}");
}

#[test]
fn unknown_product_is_404_problem() {
    let w = World::new();
    for (m, path) in [
        (Method::GET, "/api/products/nope"),
        (Method::PUT, "/api/products/nope"),
        (Method::DELETE, "/api/products/nope"),
        (Method::POST, "/api/products/nope/reservations"),
        (Method::GET, "/api/products/bad.id"),
    ] {
        let (status, body, resp) = w.call(m.clone(), path, Some(json!({"name": "x"})));
        assert_eq!(status, 404, "{m} {path}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(body["status"], 404);
    }
}

#[test]
fn routes_and_methods() {
    let w = World::new();
    let (status, _, resp) = w.call(Method::PATCH, "/api/products", None);
    assert_eq!(status, 405);
    assert_eq!(resp.header("allow"), Some("GET, POST"));
    assert_eq!(w.call(Method::GET, "/api/other", None).0, 404);
    assert_eq!(
        w.call(Method::GET, "/api/products/p/reservations/o", None)
            .0,
        405
    );
}

#[test]
fn put_updates_given_fields_and_honours_if_match() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1, "stock": 5, "category": "a"}));
    let (status, _, _) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p1",
        Some(json!({"price": 2})),
        &[("if-match", "\"7\"")],
    );
    assert_eq!(status, 412);
    let (status, body, resp) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p1",
        Some(json!({"price": 2.25, "category": "b"})),
        &[("if-match", "\"1\"")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(resp.header("etag"), Some("\"2\""));
    assert_eq!(
        (body["price"].clone(), body["stock"].clone()),
        (json!(2.25), json!(5))
    );
    assert_eq!(body["name"], "Pen");
    // The index follows the category change.
    let (_, list, _) = w.call(Method::GET, "/api/products?category=b", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list, _) = w.call(Method::GET, "/api/products?category=a", None);
    assert_eq!(list.as_array().unwrap().len(), 0);
    assert_eq!(w.event_types(), ["ProductCreated", "ProductUpdated"]);
}

#[test]
fn put_checks_run_404_then_412_then_400() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1}));
    let bad = Some(json!({"price": "free"}));
    let (s, _, _) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p2",
        bad.clone(),
        &[("if-match", "\"9\"")],
    );
    assert_eq!(s, 404);
    let (s, _, _) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p1",
        bad.clone(),
        &[("if-match", "\"9\"")],
    );
    assert_eq!(s, 412);
    let (s, body, _) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p1",
        bad,
        &[("if-match", "\"1\"")],
    );
    assert_eq!(s, 400);
    assert!(body["errors"]["price"].is_array());
}

#[test]
fn unchanged_put_keeps_version_and_emits_nothing() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1}));
    let (s, body, _) = w.call(
        Method::PUT,
        "/api/products/p1",
        Some(json!({"name": "Pen"})),
    );
    assert_eq!((s, body["version"].clone()), (200, json!(1)));
    assert_eq!(w.event_types(), ["ProductCreated"]);
}

#[test]
fn stock_change_by_put_emits_stock_changed() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1, "stock": 1}));
    w.call(Method::PUT, "/api/products/p1", Some(json!({"stock": 9})));
    assert_eq!(
        w.event_types(),
        ["ProductCreated", "ProductUpdated", "StockChanged"]
    );
}

#[test]
fn delete_with_if_match_then_gone_everywhere() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1}));
    let (s, _, _) = w.call_as(
        None,
        Method::DELETE,
        "/api/products/p1",
        None,
        &[("if-match", "\"2\"")],
    );
    assert_eq!(s, 412);
    let (s, _, _) = w.call_as(
        None,
        Method::DELETE,
        "/api/products/p1",
        None,
        &[("if-match", "*")],
    );
    assert_eq!(s, 204);
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 404);
    assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 404);
    let (_, list, _) = w.call(Method::GET, "/api/products", None);
    assert_eq!(list, json!([]));
    assert_eq!(w.event_types(), ["ProductCreated", "ProductDeleted"]);
    // The id can be used again, starting over at version 1.
    let again = w.create(json!({"id": "p1", "name": "Pen 2", "price": 1}));
    assert_eq!(again["version"], 1);
}

#[test]
fn list_is_ordered_paged_and_filtered() {
    let w = World::new();
    for i in 0..5 {
        let category = if i % 2 == 0 { "even" } else { "odd" };
        w.create(json!({"id": format!("p{i}"), "name": "x", "price": 1, "category": category}));
    }
    let ids = |q: &str| -> Vec<String> {
        let (s, list, _) = w.call(Method::GET, &format!("/api/products{q}"), None);
        assert_eq!(s, 200, "{q}");
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(""), ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(ids("?limit=2&offset=1"), ["p1", "p2"]);
    assert_eq!(ids("?category=even&offset=1"), ["p2", "p4"]);
    assert!(ids("?offset=10").is_empty());
    let (s, body, _) = w.call(Method::GET, "/api/products?limit=0", None);
    assert_eq!(s, 400);
    assert!(body["errors"]["limit"].is_array());
}

#[test]
fn listing_never_lists_keys_but_reads_the_tenant_index() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1}));
    let keys = w.store.keys();
    assert!(
        keys.contains(&"tenant/default/product-index".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"tenant/default/product/p1".to_owned()),
        "{keys:?}"
    );
}

#[test]
fn tenants_are_isolated() {
    let w = World::new();
    let (s, _, _) = w.call_as(
        Some("acme"),
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "Acme pen", "price": 1, "stock": 5})),
        &[],
    );
    assert_eq!(s, 201);
    // Another tenant sees nothing, and may create the same id.
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 404);
    assert_eq!(
        w.call_as(Some("globex"), Method::GET, "/api/products", None, &[])
            .1,
        json!([])
    );
    assert_eq!(
        w.call_as(
            Some("globex"),
            Method::PUT,
            "/api/products/p1",
            Some(json!({"name": "x"})),
            &[]
        )
        .0,
        404
    );
    assert_eq!(
        w.call_as(
            Some("globex"),
            Method::DELETE,
            "/api/products/p1",
            None,
            &[]
        )
        .0,
        404
    );
    assert_eq!(
        w.call_as(
            Some("globex"),
            Method::POST,
            "/api/products/p1/reservations",
            Some(json!({"orderId": "o1", "quantity": 1})),
            &[]
        )
        .0,
        404
    );
    w.create(json!({"id": "p1", "name": "Default pen", "price": 2}));
    let (_, acme, _) = w.call_as(Some("acme"), Method::GET, "/api/products/p1", None, &[]);
    assert_eq!(
        (acme["name"].clone(), acme["stock"].clone()),
        (json!("Acme pen"), json!(5))
    );
    let tenants: Vec<String> = w
        .events
        .events()
        .iter()
        .map(|(_, e)| e.tenantid.clone())
        .collect();
    assert_eq!(tenants, ["acme", "default"]);
}

#[test]
fn invalid_tenant_is_400_naming_the_header() {
    let w = World::new();
    let (s, body, _) = w.call_as(Some("bad tenant!"), Method::GET, "/api/products", None, &[]);
    assert_eq!(s, 400);
    assert!(body["errors"]["X-Tenant-Id"].is_array(), "{body}");
}

#[test]
fn money_is_exact() {
    let w = World::new();
    let body = w.create(json!({"id": "p1", "name": "x", "price": 0.1}));
    assert_eq!(serde_json::to_string(&body["price"]).unwrap(), "0.1");
    let raw = w.send(Request::new(Method::GET, "/api/products/p1"));
    assert!(
        String::from_utf8(raw.body)
            .unwrap()
            .contains(r#""price":0.1,"#)
    );
    let req = Request::new(Method::POST, "/api/products")
        .with_body(r#"{"id":"p2","name":"x","price":60.27}"#);
    let created = w.send(req);
    assert!(
        String::from_utf8(created.body)
            .unwrap()
            .contains(r#""price":60.27,"#)
    );
}

#[test]
fn reservations_take_and_return_stock_idempotently() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 2.5, "stock": 5}));
    let reserve = |q: i64| {
        w.call(
            Method::POST,
            "/api/products/p1/reservations",
            Some(json!({"orderId": "o1", "quantity": q})),
        )
    };
    let (s, first, resp) = reserve(2);
    assert_eq!(s, 201, "{first}");
    assert_eq!(
        resp.header("location"),
        Some("/api/products/p1/reservations/o1")
    );
    assert_eq!(first["unitPrice"], json!(2.5));
    let (s, again, _) = reserve(2);
    assert_eq!((s, &again), (200, &first));
    assert_eq!(reserve(3).0, 409);
    let stock = |w: &World| w.call(Method::GET, "/api/products/p1", None).1["stock"].clone();
    assert_eq!(stock(&w), json!(3));
    for _ in 0..2 {
        let (s, _, _) = w.call(Method::DELETE, "/api/products/p1/reservations/o1", None);
        assert_eq!(s, 204);
    }
    assert_eq!(stock(&w), json!(5));
    assert_eq!(reserve(2).0, 409, "a released order id is not reused");
    assert_eq!(
        w.event_types(),
        ["ProductCreated", "StockChanged", "StockChanged"]
    );
    assert_eq!(
        w.call(Method::DELETE, "/api/products/nope/reservations/o1", None)
            .0,
        204
    );
}

#[test]
fn insufficient_stock_is_409_and_leaves_stock() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 1}));
    let (s, body, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": "o1", "quantity": 2})),
    );
    assert_eq!(s, 409);
    assert_eq!(body["type"], "urn:wasmshop:problem:insufficient-stock");
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).1["stock"], 1);
}

#[test]
fn reservation_survives_cas_conflicts() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 1}));
    w.store.fail_next_swaps(2);
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": "o1", "quantity": 1})),
    );
    assert_eq!(s, 201);
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).1["stock"], 0);
    w.store.fail_next_swaps(100);
    let (s, body, _) = w.call(Method::PUT, "/api/products/p1", Some(json!({"stock": 4})));
    assert_eq!(s, 503, "endless contention is reported, not hidden: {body}");
}

#[test]
fn events_carry_tenant_trace_and_snapshot() {
    let w = World::new();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    w.call_as(
        Some("acme"),
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "x", "price": 0.3})),
        &[("traceparent", trace)],
    );
    let (topic, e) = &w.events.events()[0];
    assert_eq!(topic, "products");
    assert_eq!(
        (e.kind.as_str(), e.tenantid.as_str(), e.traceparent.as_str()),
        ("ProductCreated", "acme", trace)
    );
    assert_eq!(e.subject.as_deref(), Some("p1"));
    assert!(e.data.get().contains(r#""price":0.3"#));
}

#[test]
fn failed_publish_does_not_fail_the_saved_change() {
    let w = World::new();
    w.events.fail_with("broker down");
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "x", "price": 1})),
    );
    assert_eq!(s, 201);
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 200);
}

#[test]
fn store_keys_are_partitioned_by_tenant() {
    let w = World::new();
    w.call_as(
        Some("acme"),
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "x", "price": 1})),
        &[],
    );
    assert!(w.store.keys().iter().all(|k| k.starts_with("tenant/acme/")));
    assert!(w.store.get("tenant/default/product/p1").unwrap().is_none());
}
