//! Native tests of the whole API over the in-memory store: the same
//! requests the integration tests send, without a host.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use serde_json::{Value, json};
use service_kit::events::RecordingSink;
use service_kit::http::Method;
use service_kit::kv::{KvError, KvStore, MemoryCas, MemoryStore, Retry, Swap, put_json};
use service_kit::web::{Request, Response};

use super::*;

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600_000;

fn settings() -> Settings {
    Settings {
        retry: Retry {
            max_attempts: 3,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        },
        ..Settings::default()
    }
}

struct World {
    store: MemoryStore,
    events: RecordingSink,
    settings: Settings,
    /// Milliseconds since the epoch; every read of the clock moves it on
    /// by 1 ms, so creation times differ.
    now: Cell<u64>,
}

impl World {
    fn new() -> Self {
        World::with(settings())
    }

    fn with(settings: Settings) -> Self {
        World {
            store: MemoryStore::new(),
            events: RecordingSink::new(),
            settings,
            now: Cell::new(T0),
        }
    }

    fn api<'a, St: KvStore>(&'a self, store: &'a St) -> Api<'a, St, RecordingSink> {
        Api::new(store, &self.events, self.settings.clone()).with_clock(|| {
            self.now.set(self.now.get() + 1);
            self.now.get()
        })
    }

    fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    fn send(&self, req: Request) -> Response {
        self.api(&self.store).handle(&req)
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
        let resp = self.send(request(tenant, method, path, body, headers));
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

    /// Ids of one list page and its `Link` header.
    fn page(&self, tenant: Option<&str>, path: &str) -> (Vec<String>, Option<String>) {
        let (s, list, resp) = self.call_as(tenant, Method::GET, path, None, &[]);
        assert_eq!(s, 200, "{path}: {list}");
        let ids = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        (ids, resp.header("link").map(str::to_owned))
    }

    /// Every id of a list, following `Link` headers from `path`.
    fn walk(&self, tenant: Option<&str>, path: &str) -> Vec<String> {
        let mut all = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(path) = next {
            let (ids, link) = self.page(tenant, &path);
            assert!(
                !ids.is_empty() || all.is_empty(),
                "a page with a Link is never empty"
            );
            all.extend(ids);
            next = link.map(|l| {
                let target = l.strip_prefix('<').unwrap().split_once('>').unwrap();
                assert_eq!(target.1, "; rel=\"next\"");
                target.0.to_owned()
            });
            pages += 1;
            assert!(pages < 1000, "the walk ends");
        }
        all
    }

    fn ids(&self, path: &str) -> Vec<String> {
        self.page(None, path).0
    }

    fn largest_value(&self) -> usize {
        self.store
            .keys()
            .iter()
            .map(|k| self.store.get(k).unwrap().unwrap().len())
            .max()
            .unwrap_or(0)
    }
}

fn request(
    tenant: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Request {
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
    req
}

/// A store that runs `hook` once, just before the first CAS read of
/// `key`: another request sneaking in between a read and a write.
struct Racing<'a> {
    inner: &'a MemoryStore,
    key: String,
    hook: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl KvStore for Racing<'_> {
    type Cas = MemoryCas;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn cas_read(&self, key: &str) -> Result<(MemoryCas, Option<Vec<u8>>), KvError> {
        let read = self.inner.cas_read(key)?;
        if key == self.key
            && let Some(hook) = self.hook.borrow_mut().take()
        {
            hook();
        }
        Ok(read)
    }
    fn cas_write(&self, cas: MemoryCas, value: &[u8]) -> Result<Swap, KvError> {
        self.inner.cas_write(cas, value)
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
    assert_eq!(resp.header("allow"), Some("GET, HEAD, POST"));
    let (status, _, resp) = w.call(Method::POST, "/api/products/p", None);
    assert_eq!(status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    let (status, _, resp) = w.call(Method::GET, "/api/products/p/reservations", None);
    assert_eq!(status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    assert_eq!(w.call(Method::GET, "/api/other", None).0, 404);
    assert_eq!(
        w.call(Method::GET, "/api/products/p/reservations/o", None)
            .0,
        405
    );
}

#[test]
fn head_answers_as_get_on_items_and_lists() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1.5}));
    for path in ["/api/products/p1", "/api/products", "/api/products?limit=1"] {
        let get = w.send(request(None, Method::GET, path, None, &[]));
        let head = w.send(request(None, Method::HEAD, path, None, &[]));
        assert_eq!(get.status, 200, "{path}");
        assert_eq!(head, get, "{path}: HEAD is GET before the body is dropped");
        let sent = head.without_body();
        assert!(sent.body.is_empty());
        assert_eq!(sent.headers, get.headers);
    }
    let head = w.send(request(None, Method::HEAD, "/api/products/p1", None, &[]));
    assert_eq!(head.header("etag"), Some("\"1\""));
    assert_eq!(
        w.send(request(None, Method::HEAD, "/api/products/nope", None, &[]))
            .status,
        404
    );
}

#[test]
fn if_none_match_on_get_is_304_with_the_etag() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1.5}));
    for inm in ["\"1\"", "W/\"1\"", "*", "\"9\", \"1\""] {
        for m in [Method::GET, Method::HEAD] {
            let (s, body, resp) = w.call_as(
                None,
                m.clone(),
                "/api/products/p1",
                None,
                &[("if-none-match", inm)],
            );
            assert_eq!(s, 304, "{m} {inm}");
            assert_eq!(resp.header("etag"), Some("\"1\""));
            assert_eq!(body, Value::Null, "no body");
        }
    }
    let (s, body, _) = w.call_as(
        None,
        Method::GET,
        "/api/products/p1",
        None,
        &[("if-none-match", "\"2\"")],
    );
    assert_eq!((s, body["id"].as_str()), (200, Some("p1")));
    // If-Match is evaluated first (RFC 9110 §13.2.2).
    let (s, _, _) = w.call_as(
        None,
        Method::GET,
        "/api/products/p1",
        None,
        &[("if-match", "\"2\""), ("if-none-match", "\"1\"")],
    );
    assert_eq!(s, 412);
    // A product that does not exist is 404 whatever the conditions.
    let (s, _, _) = w.call_as(
        None,
        Method::GET,
        "/api/products/nope",
        None,
        &[("if-none-match", "*")],
    );
    assert_eq!(s, 404);
}

#[test]
fn if_none_match_on_put_and_delete_is_412_and_changes_nothing() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "Pen", "price": 1.5}));
    let before = w.event_types().len();
    for inm in ["*", "\"1\"", "W/\"1\""] {
        let (s, p, _) = w.call_as(
            None,
            Method::PUT,
            "/api/products/p1",
            Some(json!({"name": "Pencil"})),
            &[("if-none-match", inm)],
        );
        assert_eq!(s, 412, "{inm}: {p}");
        assert_eq!(p["type"], "urn:wasmshop:problem:precondition-failed");
        let (s, _, _) = w.call_as(
            None,
            Method::DELETE,
            "/api/products/p1",
            None,
            &[("if-none-match", inm)],
        );
        assert_eq!(s, 412, "{inm}");
    }
    let (_, got, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(
        (got["name"].as_str(), got["version"].as_u64()),
        (Some("Pen"), Some(1))
    );
    assert_eq!(w.event_types().len(), before, "no event");
    let (s, got, _) = w.call_as(
        None,
        Method::PUT,
        "/api/products/p1",
        Some(json!({"name": "Pencil"})),
        &[("if-none-match", "\"7\"")],
    );
    assert_eq!((s, got["version"].as_u64()), (200, Some(2)));
    let (s, _, _) = w.call_as(
        None,
        Method::DELETE,
        "/api/products/p1",
        None,
        &[("if-none-match", "\"1\"")],
    );
    assert_eq!(s, 204);
}

#[test]
fn integral_numbers_are_whole_numbers_for_stock_and_quantity() {
    let w = World::new();
    let body = w.create(json!({"id": "p1", "name": "Pen", "price": 1.5, "stock": 283.0}));
    assert_eq!(body["stock"], 283);
    let (s, got, _) = w.call(
        Method::PUT,
        "/api/products/p1",
        Some(serde_json::from_str(r#"{"stock": 2e1}"#).unwrap()),
    );
    assert_eq!((s, got["stock"].as_i64()), (200, Some(20)));
    let (s, p, _) = w.call(Method::PUT, "/api/products/p1", Some(json!({"stock": 2.5})));
    assert_eq!(s, 400);
    assert!(p["errors"]["stock"].is_array(), "{p}");
    let (s, r, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": "o1", "quantity": 3.0})),
    );
    assert_eq!((s, r["quantity"].as_i64()), (201, Some(3)), "{r}");
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
    assert_eq!(w.ids("/api/products"), ["p1"]);
    assert_eq!(
        entry_ids(&w, None),
        ["p1"],
        "only the new incarnation's entry"
    );
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
fn listing_never_lists_keys_but_reads_paged_indexes() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "category": "tools"}));
    let keys = w.store.keys();
    let has = |prefix: &str| keys.iter().any(|k| k.starts_with(prefix));
    assert!(has("tenant/default/products/all/page/"), "{keys:?}");
    let tools = format!(
        "tenant/default/products/category/{}/page/",
        service_kit::pages::key_hash("tools")
    );
    assert!(has(&tools), "{keys:?}");
    assert!(
        !has("tenant/default/product-index"),
        "no legacy document: {keys:?}"
    );
    assert_eq!(w.ids("/api/products"), ["p1"]);
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
    assert_eq!(first["status"], "held");
    // The product as the hold left it, so the order needs no GET.
    let (_, product, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(
        first["product"],
        json!({"name": "x", "version": product["version"], "createdAt": product["createdAt"]})
    );
    assert_eq!(first["product"]["version"], 2, "the hold made version 2");
    let expires = first["expiresAt"].as_str().unwrap();
    assert!(
        expires.starts_with("2025-01-01T00:02:00.0"),
        "120 s after the reserve: {expires}"
    );
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

fn stored(w: &World, id: &str) -> Product {
    get_json(
        &w.store,
        &product_key(&service_kit::tenant::TenantId::default(), id),
    )
    .unwrap()
    .unwrap()
}

fn pending_kinds(w: &World, id: &str) -> Vec<String> {
    stored(w, id)
        .pending_events
        .iter()
        .map(|e| e.kind.clone())
        .collect()
}

fn assert_event_pending(s: u16, body: &Value, resp: &Response, says: &str) {
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:event-pending");
    assert_eq!(resp.header("retry-after"), Some("5"));
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail}");
}

#[test]
fn a_refused_event_is_kept_in_the_product_503_and_the_next_get_publishes_it() {
    let w = World::new();
    w.events.fail_with("stream full");
    let (s, body, resp) = w.call(
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "x", "price": 1})),
    );
    assert_event_pending(
        s,
        &body,
        &resp,
        "was created, but its ProductCreated event was refused",
    );
    assert!(body["detail"].as_str().unwrap().contains("stream full"));
    assert_eq!(pending_kinds(&w, "p1"), ["ProductCreated"]);
    // A read answers even while the broker refuses.
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 200);
    assert_eq!(pending_kinds(&w, "p1"), ["ProductCreated"]);
    let kept = stored(&w, "p1").pending_events[0].id.clone();
    w.events.recover();
    let (s, got, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(s, 200);
    let events = w.events.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].1.kind.as_str(), events[0].1.id.as_str()),
        ("ProductCreated", kept.as_str())
    );
    let data: Value = events[0].1.data_as().unwrap();
    assert_eq!(data, got);
    assert!(stored(&w, "p1").pending_events.is_empty());
    // Published once: another read publishes nothing.
    w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(w.events.events().len(), 1);
}

#[test]
fn a_write_while_the_broker_still_refuses_is_503_and_changes_nothing() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    w.events.fail_with("stream full");
    let (s, body, resp) = w.call(Method::PUT, "/api/products/p1", Some(json!({"name": "y"})));
    assert_event_pending(s, &body, &resp, "was updated, but its ProductUpdated event");
    assert_eq!(stored(&w, "p1").name, "y");
    let before = stored(&w, "p1");
    let (s, body, resp) = w.call(Method::PUT, "/api/products/p1", Some(json!({"name": "z"})));
    assert_event_pending(s, &body, &resp, "nothing was changed");
    let (s, body, resp) = w.call(Method::DELETE, "/api/products/p1", None);
    assert_event_pending(s, &body, &resp, "nothing was changed");
    assert_eq!(stored(&w, "p1"), before);
    // A reservation goes ahead; its StockChanged is kept too, after the
    // update's event, and the data of each stays its own.
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": "o1", "quantity": 2})),
    );
    assert_eq!(s, 201);
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": "o2", "quantity": 1})),
    );
    assert_eq!(s, 201);
    assert_eq!(pending_kinds(&w, "p1"), ["ProductUpdated", "StockChanged"]);
    w.events.recover();
    let (s, _, _) = w.call(Method::PUT, "/api/products/p1", Some(json!({"name": "z"})));
    assert_eq!(s, 200);
    let events = w.events.events();
    let seen: Vec<(String, i64, String)> = events[1..]
        .iter()
        .map(|(_, e)| {
            let d: Value = e.data_as().unwrap();
            (
                e.kind.clone(),
                d["stock"].as_i64().unwrap(),
                d["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ProductUpdated".to_owned(), 5, "y".to_owned()),
            ("StockChanged".to_owned(), 2, "y".to_owned()),
            ("ProductUpdated".to_owned(), 2, "z".to_owned()),
        ]
    );
    assert!(stored(&w, "p1").pending_events.is_empty());
}

#[test]
fn a_retried_delete_publishes_the_kept_event_and_answers_204() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1}));
    w.events.fail_with("stream full");
    let (s, body, resp) = w.call(Method::DELETE, "/api/products/p1", None);
    assert_event_pending(s, &body, &resp, "was deleted, but its ProductDeleted event");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("GET /api/products/p1")
    );
    // Gone for readers; the tombstone keeps the event.
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 404);
    let (s, body, resp) = w.call(Method::DELETE, "/api/products/p1", None);
    assert_event_pending(s, &body, &resp, "ProductDeleted");
    assert_eq!(pending_kinds(&w, "p1"), ["ProductDeleted"]);
    w.events.recover();
    assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 204);
    assert_eq!(w.event_types(), ["ProductCreated", "ProductDeleted"]);
    assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 404);
    assert_eq!(w.event_types(), ["ProductCreated", "ProductDeleted"]);
}

#[test]
fn the_404_of_a_tombstone_publishes_its_kept_event() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1}));
    w.events.fail_with("stream full");
    assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 503);
    w.events.recover();
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 404);
    assert_eq!(w.event_types(), ["ProductCreated", "ProductDeleted"]);
    assert!(stored(&w, "p1").pending_events.is_empty());
}

#[test]
fn a_retried_create_publishes_the_kept_event_and_answers_201_as_the_first() {
    let w = World::new();
    w.events.fail_with("stream full");
    let body = json!({"id": "p1", "name": "x", "price": 1});
    assert_eq!(
        w.call(Method::POST, "/api/products", Some(body.clone())).0,
        503
    );
    let first = stored(&w, "p1");
    w.events.recover();
    let (s, json, resp) = w.call(Method::POST, "/api/products", Some(body.clone()));
    assert_eq!(s, 201, "{json}");
    assert_eq!(resp.header("etag"), Some("\"1\""));
    assert_eq!(resp.header("location"), Some("/api/products/p1"));
    assert_eq!(json["createdAt"], first.created_at);
    assert_eq!(w.event_types(), ["ProductCreated"]);
    // Once out, the same POST is an ordinary conflict.
    assert_eq!(w.call(Method::POST, "/api/products", Some(body)).0, 409);
    // Another body on a product whose creation is pending: 409 too.
    w.events.fail_with("stream full");
    let q = json!({"id": "q1", "name": "x", "price": 1});
    assert_eq!(w.call(Method::POST, "/api/products", Some(q)).0, 503);
    w.events.recover();
    let other = json!({"id": "q1", "name": "other", "price": 1});
    assert_eq!(w.call(Method::POST, "/api/products", Some(other)).0, 409);
}

#[test]
fn a_refused_stock_change_does_not_fail_a_reservation_call() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    w.events.fail_with("stream full");
    let reserve = |o: &str| {
        w.call(
            Method::POST,
            "/api/products/p1/reservations",
            Some(json!({"orderId": o, "quantity": 1})),
        )
        .0
    };
    assert_eq!(reserve("o1"), 201);
    assert_eq!(reserve("o2"), 201);
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations/o1/confirm",
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(
        w.call(Method::DELETE, "/api/products/p1/reservations/o2", None)
            .0,
        204
    );
    // Only the newest StockChanged is kept: it carries the current stock.
    assert_eq!(pending_kinds(&w, "p1"), ["StockChanged"]);
    w.events.recover();
    let (_, got, _) = w.call(Method::GET, "/api/products/p1", None);
    let events = w.events.events();
    assert_eq!(events.len(), 2);
    let data: Value = events[1].1.data_as().unwrap();
    assert_eq!(
        (data["stock"].clone(), data["version"].clone()),
        (json!(4), got["version"].clone())
    );
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

#[test]
fn the_loser_of_a_same_id_create_race_changes_nothing() {
    let w = World::new();
    let racing = Racing {
        inner: &w.store,
        key: "tenant/default/product/p1".into(),
        hook: RefCell::new(Some(Box::new(|| {
            let (s, _, _) = w.call(
                Method::POST,
                "/api/products",
                Some(json!({"id": "p1", "name": "Winner", "price": 1})),
            );
            assert_eq!(s, 201);
        }))),
    };
    let req = request(
        None,
        Method::POST,
        "/api/products",
        Some(json!({"id": "p1", "name": "Loser", "price": 2, "category": "x"})),
        &[],
    );
    let resp = w.api(&racing).handle(&req);
    assert_eq!(resp.status, 409);
    let (_, got, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(got["name"], "Winner");
    assert_eq!(w.ids("/api/products"), ["p1"]);
    assert!(w.ids("/api/products?category=x").is_empty());
    assert_eq!(w.event_types(), ["ProductCreated"]);
    // The loser appended its entries before it lost, and removed them.
    assert_eq!(entry_ids(&w, None), ["p1"]);
    assert!(entry_ids(&w, Some("x")).is_empty());
}

#[test]
fn category_moves_follow_in_lists() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "category": "a"}));
    w.create(json!({"id": "p2", "name": "x", "price": 1, "category": "a"}));
    for (to, a, b) in [
        ("b", vec!["p2"], vec!["p1"]),
        ("a", vec!["p1", "p2"], vec![]),
    ] {
        let (s, _, _) = w.call(
            Method::PUT,
            "/api/products/p1",
            Some(json!({"category": to})),
        );
        assert_eq!(s, 200);
        // A product that moves into a category is appended to a random
        // shard of that category's index: when it meets an item appended
        // earlier in the same shard (1 time in 8), it is listed after it
        // even though it was created before (docs/storage-layout.md,
        // "Scan"). Membership is exact; order among moved items is not.
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(w.ids("/api/products?category=a")), a);
        assert_eq!(sorted(w.ids("/api/products?category=b")), b);
        assert_eq!(w.ids("/api/products"), ["p1", "p2"]);
    }
}

#[test]
fn a_put_racing_a_delete_never_resurrects_the_product() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "category": "a"}));
    let racing = Racing {
        inner: &w.store,
        key: "tenant/default/product/p1".into(),
        hook: RefCell::new(Some(Box::new(|| {
            assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 204);
        }))),
    };
    let req = request(
        None,
        Method::PUT,
        "/api/products/p1",
        Some(json!({"category": "b"})),
        &[],
    );
    let resp = w.api(&racing).handle(&req);
    assert_eq!(resp.status, 404);
    for q in ["", "?category=a", "?category=b"] {
        assert!(w.ids(&format!("/api/products{q}")).is_empty(), "{q}");
    }
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).0, 404);
}

#[test]
fn a_cursor_walk_lists_every_item_exactly_once() {
    let w = World::with(Settings {
        page_capacity: 4,
        ..settings()
    });
    let mut all = Vec::new();
    for i in 0..60 {
        let id = format!("p{i:02}");
        let category = ["a", "b", "c"][i % 3];
        w.create(json!({"id": id, "name": "x", "price": 1, "category": category}));
        all.push(id);
    }
    // Some churn: deletes and moves leave removed and stale entries.
    for i in [5, 17, 42] {
        assert_eq!(
            w.call(Method::DELETE, &format!("/api/products/p{i:02}"), None)
                .0,
            204
        );
        all.retain(|id| *id != format!("p{i:02}"));
    }
    w.call(
        Method::PUT,
        "/api/products/p00",
        Some(json!({"category": "c"})),
    );
    assert_eq!(w.walk(None, "/api/products?limit=7"), all);
    assert_eq!(w.walk(None, "/api/products?limit=1000"), all);
    let in_a: Vec<String> = all
        .iter()
        .filter(|id| {
            let n: usize = id[1..].parse().unwrap();
            n.is_multiple_of(3) && n != 0
        })
        .cloned()
        .collect();
    assert_eq!(w.walk(None, "/api/products?category=a&limit=3"), in_a);
    // The last page has no Link; a full last page neither.
    let (ids, link) = w.page(None, &format!("/api/products?limit={}", all.len()));
    assert_eq!((ids.len(), link), (all.len(), None));
    let (_, link) = w.page(None, "/api/products?limit=2");
    let link = link.unwrap();
    assert!(link.starts_with("</api/products?limit=2&cursor="), "{link}");
}

#[test]
fn cursors_are_bound_and_exclusive_with_offset() {
    let w = World::new();
    for i in 0..3 {
        w.create(json!({"id": format!("p{i}"), "name": "x", "price": 1, "category": "a"}));
    }
    let (_, link) = w.page(None, "/api/products?limit=1&category=a");
    let link = link.unwrap();
    let cursor = link
        .split("cursor=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    for path in [
        format!("/api/products?cursor={cursor}&category=b"),
        format!("/api/products?cursor={cursor}"),
        "/api/products?cursor=garbage".to_owned(),
    ] {
        let (s, body, _) = w.call(Method::GET, &path, None);
        assert_eq!(s, 400, "{path}");
        assert!(body["errors"]["cursor"].is_array(), "{body}");
    }
    let (s, _, _) = w.call_as(
        Some("other"),
        Method::GET,
        &format!("/api/products?cursor={cursor}&category=a"),
        None,
        &[],
    );
    assert_eq!(s, 400, "another tenant");
    let (s, body, _) = w.call(
        Method::GET,
        &format!("/api/products?cursor={cursor}&category=a&offset=1"),
        None,
    );
    assert_eq!(s, 400);
    assert!(body["errors"]["cursor"].is_array() && body["errors"]["offset"].is_array());
    assert_eq!(
        w.ids(&format!("/api/products?cursor={cursor}&category=a")),
        ["p1", "p2"]
    );
}

#[test]
fn offset_paging_skips_and_ends() {
    let w = World::with(Settings {
        page_capacity: 4,
        ..settings()
    });
    for i in 0..20 {
        w.create(json!({"id": format!("p{i:02}"), "name": "x", "price": 1}));
    }
    assert_eq!(
        w.ids("/api/products?offset=10&limit=3"),
        ["p10", "p11", "p12"]
    );
    let (ids, link) = w.page(None, "/api/products?offset=18&limit=5");
    assert_eq!(
        (ids, link),
        (vec!["p18".to_owned(), "p19".to_owned()], None)
    );
    let (ids, link) = w.page(None, "/api/products?offset=9223372036854775807");
    assert!(ids.is_empty() && link.is_none());
    let (_, link) = w.page(None, "/api/products?offset=5&limit=5");
    assert!(
        !link.unwrap().contains("offset"),
        "the next link drops offset"
    );
}

fn reserve(w: &World, order: &str, quantity: i64) -> (u16, Value, Response) {
    w.call(
        Method::POST,
        "/api/products/p1/reservations",
        Some(json!({"orderId": order, "quantity": quantity})),
    )
}

#[test]
fn expired_holds_return_stock_with_a_new_version_on_read() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    assert_eq!(reserve(&w, "o1", 2).0, 201);
    let (_, p, resp) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(
        (p["stock"].clone(), resp.header("etag")),
        (json!(3), Some("\"2\""))
    );
    w.advance(120_000);
    let (_, p, resp) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(
        (p["stock"].clone(), resp.header("etag")),
        (json!(5), Some("\"3\""))
    );
    assert_eq!(
        w.event_types(),
        ["ProductCreated", "StockChanged", "StockChanged"]
    );
    let (s, body, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations/o1/confirm",
        None,
    );
    assert_eq!(s, 409);
    assert_eq!(body["type"], "urn:wasmshop:problem:reservation-expired");
    assert_eq!(
        reserve(&w, "o1", 2).1["type"],
        "urn:wasmshop:problem:reservation-released"
    );
}

#[test]
fn lists_return_expired_stock_too() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    reserve(&w, "o1", 5);
    w.advance(200_000);
    let (_, list, _) = w.call(Method::GET, "/api/products", None);
    assert_eq!(
        (list[0]["stock"].clone(), list[0]["version"].clone()),
        (json!(5), json!(3))
    );
}

#[test]
fn release_before_reserve_refuses_the_late_reserve() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    let (s, _, _) = w.call(Method::DELETE, "/api/products/p1/reservations/o1", None);
    assert_eq!(s, 204);
    let (s, body, _) = reserve(&w, "o1", 1);
    assert_eq!(s, 409);
    assert_eq!(body["type"], "urn:wasmshop:problem:reservation-released");
    let (_, p, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(
        (p["stock"].clone(), p["version"].clone()),
        (json!(5), json!(1))
    );
}

#[test]
fn confirm_is_idempotent_and_a_confirmed_sale_can_be_returned() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 2.5, "stock": 5}));
    reserve(&w, "o1", 2);
    let confirm = || {
        w.call(
            Method::POST,
            "/api/products/p1/reservations/o1/confirm",
            None,
        )
    };
    let (s, first, _) = confirm();
    assert_eq!(s, 200, "{first}");
    assert_eq!(
        (first["status"].clone(), first["quantity"].clone()),
        (json!("confirmed"), json!(2))
    );
    assert!(first.get("expiresAt").is_none());
    let (s, again, _) = confirm();
    assert_eq!((s, &again), (200, &first));
    w.advance(1_000_000);
    assert_eq!(confirm().0, 200, "a confirmed sale never expires");
    let (s, repeat, _) = reserve(&w, "o1", 2);
    assert_eq!((s, repeat["status"].clone()), (200, json!("confirmed")));
    let (_, p, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(p["stock"], 3);
    let (s, body, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations/zz/confirm",
        None,
    );
    assert_eq!(
        (s, body["type"].clone()),
        (409, json!("urn:wasmshop:problem:reservation-unknown"))
    );
    // Cancelling the confirmed order returns its units, once.
    for _ in 0..2 {
        assert_eq!(
            w.call(Method::DELETE, "/api/products/p1/reservations/o1", None)
                .0,
            204
        );
    }
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).1["stock"], 5);
    // A sale older than the product's memory is returned by quantity.
    w.call(
        Method::DELETE,
        "/api/products/p1/reservations/ancient?confirmedQuantity=4",
        None,
    );
    assert_eq!(w.call(Method::GET, "/api/products/p1", None).1["stock"], 9);
    let (s, body, _) = w.call(
        Method::DELETE,
        "/api/products/p1/reservations/x?confirmedQuantity=0",
        None,
    );
    assert_eq!(s, 400);
    assert!(body["errors"]["confirmedQuantity"].is_array());
}

#[test]
fn a_deleted_product_drops_its_holds() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    reserve(&w, "o1", 2);
    assert_eq!(w.call(Method::DELETE, "/api/products/p1", None).0, 204);
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p1/reservations/o1/confirm",
        None,
    );
    assert_eq!(s, 404);
    assert_eq!(
        w.call(Method::DELETE, "/api/products/p1/reservations/o1", None)
            .0,
        204
    );
}

#[test]
fn too_many_holds_is_503_with_retry_after() {
    let w = World::with(Settings {
        max_holds: 2,
        ..settings()
    });
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 50}));
    assert_eq!(reserve(&w, "o1", 1).0, 201);
    w.advance(30_000);
    assert_eq!(reserve(&w, "o2", 1).0, 201);
    let (s, body, resp) = reserve(&w, "o3", 1);
    assert_eq!(s, 503, "{body}");
    assert_eq!(resp.header("retry-after"), Some("90"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    w.call(
        Method::POST,
        "/api/products/p1/reservations/o1/confirm",
        None,
    );
    assert_eq!(
        reserve(&w, "o3", 1).0,
        201,
        "a confirmed hold frees its place"
    );
}

#[test]
fn stored_values_stay_under_64_kib_after_many_operations() {
    let w = World::new();
    let long = "\u{1D11E}".repeat(2000);
    w.create(
        json!({"id": "p1", "name": "\u{1D11E}".repeat(200), "description": long,
        "category": "\u{1D11E}".repeat(100), "price": 999999999.99, "stock": 2147483647}),
    );
    for i in 0..400 {
        let order = format!("{i:0>64}");
        reserve(&w, &order, 1);
        if i % 3 == 0 {
            w.call(
                Method::POST,
                &format!("/api/products/p1/reservations/{order}/confirm"),
                None,
            );
        } else if i % 3 == 1 {
            w.call(
                Method::DELETE,
                &format!("/api/products/p1/reservations/{order}"),
                None,
            );
        }
    }
    for i in 0..300 {
        w.create(json!({"id": format!("{i:0>64}"), "name": "x", "price": 1}));
    }
    let largest = w.largest_value();
    assert!(
        largest < 64 * 1024,
        "largest stored value is {largest} bytes"
    );
}

#[test]
fn outcomes_stored_as_an_object_still_answer_repeats_and_are_rewritten_as_text() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    let key = product_key(&service_kit::tenant::TenantId::default(), "p1");
    // The record as the previous version stored it: outcomes as an object.
    let mut record: Value = get_json(&w.store, &key).unwrap().unwrap();
    record["recent"] = json!({"o-sold": {"s": "confirmed", "q": 2, "p": 100, "c": "USD", "at": 5},
        "o-gone": {"s": "released", "at": 6}});
    put_json(&w.store, &key, &record).unwrap();
    let (s, repeat, _) = reserve(&w, "o-sold", 2);
    assert_eq!((s, repeat["status"].clone()), (200, json!("confirmed")));
    assert_eq!(
        reserve(&w, "o-gone", 1).0,
        409,
        "a released order stays refused"
    );
    let raw = String::from_utf8(w.store.get(&key).unwrap().unwrap()).unwrap();
    assert!(
        raw.contains(r#""outcomes":"o-gone:6:r o-sold:5:c:2:100:USD""#) && !raw.contains("recent"),
        "{raw}"
    );
    let (_, p, _) = w.call(Method::GET, "/api/products/p1", None);
    assert_eq!(p["stock"], 5, "repeats moved no stock");
}

/// A product record as the previous version stored it: a reservation
/// ledger, no incarnation, no slots.
fn legacy_record(id: &str, i: usize) -> Value {
    json!({"id": id, "name": format!("Legacy {i}"), "description": "", "category": if i.is_multiple_of(2) { "even" } else { "odd" },
        "priceMinor": 100, "currency": "USD", "stock": 10, "version": 3,
        "createdAt": format!("2024-01-01T00:{:02}:{:02}.000Z", i / 60 % 60, i % 60),
        "updatedAt": "2024-06-01T00:00:00.000Z",
        "reservations": {"old-order": {"quantity": 2, "unitPriceMinor": 100, "currency": "USD", "createdAt": "2024-05-01T00:00:00.000Z"}}})
}

#[test]
fn a_legacy_tenant_is_migrated_in_chunks() {
    let w = World::with(Settings {
        migration_chunk: 150,
        page_capacity: 16,
        ..settings()
    });
    let mut legacy = crate::index::LegacyIndex::default();
    let mut ids = Vec::new();
    for i in 0..1000 {
        let id = format!("p{i:04}");
        let record = legacy_record(&id, i);
        legacy.upsert(crate::index::IndexEntry {
            id: id.clone(),
            created_at: record["createdAt"].as_str().unwrap().to_owned(),
            category: record["category"].as_str().unwrap().to_owned(),
        });
        put_json(&w.store, &format!("tenant/acme/product/{id}"), &record).unwrap();
        ids.push(id);
    }
    put_json(&w.store, "tenant/acme/product-index", &legacy).unwrap();
    let acme = Some("acme");
    // While migrating, lists are served from the legacy document.
    let (first, link) = w.page(acme, "/api/products?limit=5&offset=2");
    assert_eq!((first, link), (ids[2..7].to_vec(), None));
    assert!(
        w.store
            .get("tenant/acme/product-index-migration")
            .unwrap()
            .is_some()
    );
    // A product created meanwhile is listed too.
    let (s, _, _) = w.call_as(
        acme,
        Method::POST,
        "/api/products",
        Some(json!({"id": "zz-new", "name": "n", "price": 1})),
        &[],
    );
    assert_eq!(s, 201);
    let mut requests = 2;
    while w.store.get("tenant/acme/product-index").unwrap().is_some() {
        let (page, _) = w.page(acme, "/api/products?limit=1&category=odd");
        assert_eq!(page, ["p0001"]);
        requests += 1;
        assert!(requests < 20, "the migration ends");
    }
    assert!(
        w.store
            .get("tenant/acme/product-index-migration")
            .unwrap()
            .is_none()
    );
    assert!(
        (7..=9).contains(&requests),
        "1000 entries in chunks of 150: {requests}"
    );
    let mut expected = ids.clone();
    expected.push("zz-new".into());
    assert_eq!(w.walk(acme, "/api/products?limit=100"), expected);
    let odd: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(w.walk(acme, "/api/products?category=odd&limit=100"), odd);
    // A legacy reservation became a confirmed sale on the record's next use.
    let (s, r, _) = w.call_as(
        acme,
        Method::POST,
        "/api/products/p0007/reservations/old-order/confirm",
        None,
        &[],
    );
    assert_eq!((s, r["quantity"].clone()), (200, json!(2)));
    let stored =
        String::from_utf8(w.store.get("tenant/acme/product/p0007").unwrap().unwrap()).unwrap();
    assert!(
        !stored.contains("reservations") && stored.contains("incarnation"),
        "{stored}"
    );
}

#[test]
fn a_product_left_without_slots_is_reindexed_on_its_next_read() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "category": "a"}));
    w.create(json!({"id": "p2", "name": "x", "price": 1, "category": "a"}));
    // A crash between the append and the slot write: entries, no slots.
    let key = "tenant/default/product/p2";
    let mut record: Value = serde_json::from_slice(&w.store.get(key).unwrap().unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("slots");
    put_json(&w.store, key, &record).unwrap();
    assert_eq!(
        w.ids("/api/products"),
        ["p1"],
        "not listed while it may be in progress"
    );
    w.advance(60_000);
    w.ids("/api/products");
    assert_eq!(w.ids("/api/products"), ["p1", "p2"]);
    assert_eq!(w.ids("/api/products?category=a"), ["p1", "p2"]);
    // A record with no entries at all is re-indexed by a read of it.
    let mut lost: Value = serde_json::from_slice(&w.store.get(key).unwrap().unwrap()).unwrap();
    lost["id"] = json!("p3");
    lost.as_object_mut().unwrap().remove("slots");
    put_json(&w.store, "tenant/default/product/p3", &lost).unwrap();
    assert_eq!(w.ids("/api/products").len(), 2);
    assert_eq!(w.call(Method::GET, "/api/products/p3", None).0, 200);
    assert_eq!(w.ids("/api/products").len(), 3);
}

/// What a reserve does besides taking a hold, as any read or write of a
/// product does: it publishes the `StockChanged` of holds it finds
/// expired (also when it only repeats an earlier hold), publishes a
/// tombstone's kept event before its 404, and re-indexes a product left
/// without index slots. The order service makes no other request to a
/// product it orders, so nothing else would.
#[test]
fn a_reserve_settles_publishes_and_reindexes_like_any_read() {
    let w = World::new();
    w.create(json!({"id": "p1", "name": "x", "price": 1, "stock": 5}));
    assert_eq!(reserve(&w, "o1", 2).0, 201);
    w.advance(60_000);
    assert_eq!(reserve(&w, "o2", 1).0, 201);
    w.advance(61_000);
    // o1's hold expired; the repeat of o2 returns its stock and says so.
    let (s, again, _) = reserve(&w, "o2", 1);
    assert_eq!((s, again["status"].clone()), (200, json!("held")));
    assert_eq!(stored(&w, "p1").stock, 4);
    assert_eq!(
        w.event_types(),
        [
            "ProductCreated",
            "StockChanged",
            "StockChanged",
            "StockChanged"
        ]
    );
    // A deleted product whose ProductDeleted the broker refused: the
    // reserve's 404 publishes it.
    w.create(json!({"id": "gone", "name": "x", "price": 1, "stock": 5}));
    w.events.fail_with("stream full");
    assert_eq!(w.call(Method::DELETE, "/api/products/gone", None).0, 503);
    w.events.recover();
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/gone/reservations",
        Some(json!({"orderId": "o3", "quantity": 1})),
    );
    assert_eq!(s, 404);
    assert_eq!(w.event_types().last().unwrap(), "ProductDeleted");
    assert!(stored(&w, "gone").pending_events.is_empty());
    // A product left without index slots is listed once reserved.
    w.create(json!({"id": "p4", "name": "x", "price": 1, "stock": 5}));
    let key = "tenant/default/product/p4";
    let mut record: Value = serde_json::from_slice(&w.store.get(key).unwrap().unwrap()).unwrap();
    record["id"] = json!("p3");
    record.as_object_mut().unwrap().remove("slots");
    put_json(&w.store, "tenant/default/product/p3", &record).unwrap();
    w.advance(60_000);
    assert!(!w.ids("/api/products").contains(&"p3".to_owned()));
    let (s, _, _) = w.call(
        Method::POST,
        "/api/products/p3/reservations",
        Some(json!({"orderId": "o4", "quantity": 1})),
    );
    assert_eq!(s, 201);
    assert!(w.ids("/api/products").contains(&"p3".to_owned()));
}

#[test]
fn concurrent_writers_keep_at_most_one_pending_event_per_type_the_newest() {
    // Each writer loaded the product before the others' events were kept,
    // so each adds its own: 3 updates with stock changes, then a delete.
    let tenant = service_kit::tenant::TenantId::default();
    let event = |kind: &str, n: i64| {
        outbox::Pending::new(
            TOPIC,
            CloudEvent::new(EVENT_SOURCE, kind, &tenant, "tp", &json!({"n": n})).with_subject("p1"),
        )
    };
    let mut pending = Vec::new();
    for n in 1..=3 {
        let change = vec![event(PRODUCT_UPDATED, n), event(STOCK_CHANGED, n)];
        pending = outbox::merge(pending, change, supersedes);
    }
    let kinds = |p: &[outbox::Pending]| -> Vec<(String, i64)> {
        p.iter()
            .map(|e| {
                let data = serde_json::to_value(&e.event).unwrap()["data"]["n"].clone();
                (e.event.kind.clone(), data.as_i64().unwrap())
            })
            .collect()
    };
    assert_eq!(
        kinds(&pending),
        [
            (PRODUCT_UPDATED.to_owned(), 3),
            (STOCK_CHANGED.to_owned(), 3)
        ],
        "the newest of each type, nothing dropped for room"
    );
    let pending = outbox::merge(pending, vec![event(PRODUCT_DELETED, 4)], supersedes);
    assert_eq!(kinds(&pending), [(PRODUCT_DELETED.to_owned(), 4)]);
}

/// A store that logs every key it writes, runs `on_page_write` before each
/// write of an index page, and can fail every write of one key with a
/// store error.
struct Logged<'a> {
    inner: &'a MemoryStore,
    written: RefCell<Vec<String>>,
    on_page_write: Box<dyn Fn() + 'a>,
    failing: Option<String>,
}

impl<'a> Logged<'a> {
    fn new(inner: &'a MemoryStore) -> Self {
        Logged {
            inner,
            written: RefCell::new(Vec::new()),
            on_page_write: Box::new(|| {}),
            failing: None,
        }
    }

    fn writes_of(&self, key: &str) -> usize {
        self.written.borrow().iter().filter(|k| *k == key).count()
    }
}

impl KvStore for Logged<'_> {
    type Cas = (String, MemoryCas);
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.written.borrow_mut().push(key.to_owned());
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn cas_read(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let (cas, value) = self.inner.cas_read(key)?;
        Ok(((key.to_owned(), cas), value))
    }
    fn cas_write(&self, (key, cas): Self::Cas, value: &[u8]) -> Result<Swap, KvError> {
        if self.failing.as_deref() == Some(key.as_str()) {
            return Err(KvError::Store {
                op: "cas-write".into(),
                message: "injected failure".into(),
            });
        }
        if key.contains("/page/") {
            (self.on_page_write)();
        }
        self.written.borrow_mut().push(key.clone());
        self.inner.cas_write(cas, value)
    }
}

/// The request context of the default tenant.
fn default_ctx() -> Ctx {
    Ctx::from_request(&request(None, Method::GET, "/api/products", None, &[])).unwrap()
}

/// Live entries of the index of every product (`None`) or of a category.
fn entry_ids(w: &World, category: Option<&str>) -> Vec<String> {
    let api = w.api(&w.store);
    let index = api.index_of(&default_ctx(), category);
    let mut scan = index.scan(&Position::start()).unwrap();
    scan.next_batch(1_000)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e.id)
        .collect()
}

/// A new product appends its index entries before its record and writes
/// the record once, slots included (docs/storage-layout.md, "Entries
/// before the record"), with a fresh id or the client's; a duplicate id
/// is refused before any entry is appended. Lists leave the entries of an absent record alone while they
/// are young and remove them after; a create whose entries took past the
/// deadline removes them and creates nothing.
#[test]
fn a_fresh_product_appends_its_entries_before_its_record() {
    let w = World::new();
    let store = Logged::new(&w.store);
    let post = |body: Value| {
        let r = w.api(&store).handle(&request(
            None,
            Method::POST,
            "/api/products",
            Some(body),
            &[],
        ));
        let json: Value = serde_json::from_slice(&r.body).unwrap();
        (r.status.as_u16(), json)
    };
    let (s, fresh) = post(json!({"name": "Pen", "price": 1, "category": "a"}));
    assert_eq!(s, 201, "{fresh}");
    let id = fresh["id"].as_str().unwrap().to_owned();
    assert_eq!(store.writes_of(&format!("tenant/default/product/{id}")), 1);
    let record = stored(&w, &id);
    assert!(record.slots.all.is_some() && record.slots.category.is_some());
    let (s, _) = post(json!({"id": "named", "name": "Pen", "price": 1, "category": "a"}));
    assert_eq!(s, 201);
    assert_eq!(store.writes_of("tenant/default/product/named"), 1);
    let pages = |store: &Logged| {
        store
            .written
            .borrow()
            .iter()
            .filter(|k| k.contains("/page/"))
            .count()
    };
    let before = pages(&store);
    let (s, _) = post(json!({"id": "named", "name": "Again", "price": 1, "category": "a"}));
    assert_eq!(s, 409);
    assert_eq!(pages(&store), before, "a duplicate appends nothing");
    assert_eq!(w.ids("/api/products"), [id.clone(), "named".into()]);
    assert_eq!(
        w.ids("/api/products?category=a"),
        [id.clone(), "named".into()]
    );

    // A create that died after its appends: young entries stay unlisted
    // and in place; past the grace a list removes them.
    let young = rfc3339_of_ms(w.now.get());
    let api = w.api(&w.store);
    let ctx = default_ctx();
    api.index_of(&ctx, None).append("ghost", &young).unwrap();
    api.index_of(&ctx, Some("a"))
        .append("ghost", &young)
        .unwrap();
    assert_eq!(
        w.ids("/api/products?category=a"),
        [id.clone(), "named".into()]
    );
    assert_eq!(w.ids("/api/products"), [id.clone(), "named".into()]);
    assert!(entry_ids(&w, None).contains(&"ghost".to_owned()));
    w.advance(service_kit::pages::ABSENT_RECORD_GRACE_MS);
    assert_eq!(w.ids("/api/products"), [id.clone(), "named".into()]);
    assert_eq!(
        w.ids("/api/products?category=a"),
        [id.clone(), "named".into()]
    );
    assert_eq!(entry_ids(&w, None), [id.clone(), "named".into()]);
    assert_eq!(entry_ids(&w, Some("a")), [id.clone(), "named".into()]);

    // Appends that took past the deadline: 503, nothing created, the
    // entries removed.
    let mut slow = Logged::new(&w.store);
    slow.on_page_write = Box::new(|| w.advance(service_kit::pages::RECORD_WRITE_DEADLINE_MS));
    let keys_before = w.store.keys().len();
    let r = w.api(&slow).handle(&request(
        None,
        Method::POST,
        "/api/products",
        Some(json!({"name": "Slow", "price": 1, "category": "a"})),
        &[],
    ));
    assert_eq!(r.status.as_u16(), 503);
    assert!(String::from_utf8_lossy(&r.body).contains("nothing was created"));
    assert_eq!(entry_ids(&w, None), [id.clone(), "named".into()]);
    assert_eq!(entry_ids(&w, Some("a")), [id.clone(), "named".into()]);
    assert!(
        w.store.keys().len() <= keys_before + 2,
        "at most new index pages or heads, no record"
    );
    assert!(w.event_types().iter().all(|k| k == "ProductCreated"));
    assert_eq!(w.event_types().len(), 2);
}
