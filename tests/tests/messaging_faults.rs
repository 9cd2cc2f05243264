//! Messaging under faults (issue 14 items 2 and 3, issue 17's event-type
//! filter), against the real binary: no event is silently lost while a
//! subscriber is down (real `redis-server`), a topic nobody subscribes to
//! stores nothing, and a subscription that names its event types never
//! runs for the others (embedded, and Dapr through the sidecar double's
//! routing rules). The guarantees tested are written in docs/messaging.md.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use wasmshop_tests::{
    Backend, Deployment, Host, HostBuilder, app_manifest_with_recorder, client, wait_for, wasm,
    with_absolute_paths, workspace_root,
};

/// The capabilities fixture twice: `publisher` (subscribes to nothing) and
/// `recorder` (subscribed to `orders`), so one can run while the other is
/// down.
fn publisher_and_recorder() -> String {
    let fixture = wasm("capabilities-fixture");
    let component = |id: &str| {
        format!(
            r#"[[trigger.http]]
route = "/{id}/..."
component = "{id}"

[component.{id}]
source = "{}"
key_value_stores = ["default"]
[component.{id}.tool.wasmshop]
messaging_clients = ["product-pubsub"]
"#,
            fixture.display()
        )
    };
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"faults\"\n{}\n{}[[component.recorder.tool.wasmshop.subscriptions]]\nclient = \"product-pubsub\"\ntopic = \"orders\"\n",
        component("publisher"),
        component("recorder"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of the samples of `name` whose labels contain every one of
/// `labels` (`key="value"`), from a host's `/metrics`.
fn metric(port: u16, name: &str, labels: &[&str]) -> u64 {
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Payloads the recorder handled on `orders`.
fn received(host: &Host) -> Vec<String> {
    let list: Value = host.get("/recorder/received/orders").json().unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn redis_publishes_past_max_len_while_the_subscriber_is_down_are_refused_and_none_is_lost() {
    let backend = Backend::redis();
    let max_len = 100;
    let extra = format!("max_len = {max_len}");
    let rc = backend.runtime_config(&["default"], &[("product-pubsub", extra.as_str())]);
    let metrics_port = free_port();
    let publisher = Host::builder()
        .manifest(publisher_and_recorder())
        .component_ids(&["publisher"])
        .runtime_config(rc.clone())
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{metrics_port}"))
        .start();

    // The subscriber is down: 10 x max_len events.
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for i in 0..10 * max_len {
        let payload = format!("event-{i:04}");
        let r = client()
            .post(publisher.url("/publisher/publish/orders?client=product-pubsub"))
            .body(payload.clone())
            .send()
            .unwrap();
        match r.status() {
            StatusCode::ACCEPTED => accepted.push(payload),
            StatusCode::SERVICE_UNAVAILABLE => {
                let text = r.text().unwrap();
                assert!(
                    text.contains("not yet acknowledged") && text.contains("max_len"),
                    "a refusal says why and what to do: {text}"
                );
                refused += 1;
            }
            other => panic!("publish {i}: {other} {}", r.text().unwrap_or_default()),
        }
    }
    assert_eq!(accepted.len() + refused, 10 * max_len);
    assert_eq!(
        accepted.len(),
        max_len,
        "the stream takes max_len unacknowledged events, then refuses"
    );
    // The backlog is visible while the subscriber is away.
    let depth = wait_for(Duration::from_secs(15), || {
        let d = metric(
            metrics_port,
            "wasmshop_messaging_queue_depth",
            &["topic=\"orders\"", "subscription=\"recorder\""],
        );
        (d == max_len as u64).then_some(d)
    });
    assert_eq!(
        depth,
        Some(max_len as u64),
        "queue depth of the recorder's group on /metrics"
    );
    assert_eq!(
        metric(
            metrics_port,
            "wasmshop_messaging_consumer_lag",
            &["topic=\"orders\"", "subscription=\"recorder\""],
        ),
        max_len as u64
    );

    // The subscriber comes back: every accepted event is delivered.
    let subscriber = Host::builder()
        .manifest(publisher_and_recorder())
        .component_ids(&["recorder"])
        .runtime_config(rc)
        .start();
    wait_for(Duration::from_secs(60), || {
        (received(&subscriber).len() >= accepted.len()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "every accepted event delivered: {} of {}",
            received(&subscriber).len(),
            accepted.len()
        )
    });
    let mut got = received(&subscriber);
    got.sort();
    assert_eq!(
        got, accepted,
        "each accepted event delivered once, none lost"
    );

    // Acknowledged entries are trimmed: the topic takes events again.
    wait_for(Duration::from_secs(20), || {
        let r = client()
            .post(publisher.url("/publisher/publish/orders?client=product-pubsub"))
            .body("after-the-outage")
            .send()
            .unwrap();
        (r.status() == StatusCode::ACCEPTED).then_some(())
    })
    .expect("publishes accepted once the subscriber caught up");
    wait_for(Duration::from_secs(20), || {
        received(&subscriber)
            .contains(&"after-the-outage".to_string())
            .then_some(())
    })
    .expect("the new event is delivered");
}

fn tenant_call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = client()
        .request(method, url)
        .header("X-Tenant-Id", "faults");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// The repository's `spin.toml` on a fresh redis-server whose
/// `product-pubsub` streams hold at most `max_len` unacknowledged entries.
struct RedisApp {
    _backend: Backend,
    manifest: String,
    runtime_config: String,
}

impl RedisApp {
    fn new(max_len: usize) -> RedisApp {
        let backend = Backend::redis();
        let extra = format!("max_len = {max_len}");
        let runtime_config =
            backend.runtime_config(&["default"], &[("product-pubsub", extra.as_str())]);
        let manifest = with_absolute_paths(
            &std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap(),
        );
        RedisApp {
            _backend: backend,
            manifest,
            runtime_config,
        }
    }

    /// A host running both services.
    fn start(&self) -> Host {
        self.builder().start()
    }

    /// A host running only `components` (the others are down).
    fn start_only(&self, components: &[&str]) -> Host {
        self.builder().component_ids(components).start()
    }

    fn builder(&self) -> HostBuilder {
        Host::builder()
            .manifest(self.manifest.clone())
            .runtime_config(self.runtime_config.clone())
    }
}

/// Creates products `ids` (stock 1,000 each) in the test tenant.
fn create_products(app: &Host, ids: &[&str]) {
    for id in ids {
        let (s, b) = tenant_call(
            reqwest::Method::POST,
            app.url("/api/products"),
            Some(json!({"id": id, "name": id, "price": 2.5, "stock": 1000})),
        );
        assert_eq!(s, 201, "{b}");
    }
}

#[test]
fn redis_product_deleted_during_an_order_outage_still_cancels_the_order() {
    let redis = RedisApp::new(100);
    let both = || redis.start();
    let mut app = both();
    create_products(&app, &["doomed", "other"]);
    let (s, order) = tenant_call(
        reqwest::Method::POST,
        app.url("/api/orders"),
        Some(json!({"customerId": "alice", "items": [{"productId": "doomed", "quantity": 1}]})),
    );
    assert_eq!(s, 201, "{order}");
    let order_id = order["id"].as_str().unwrap().to_string();
    assert_eq!(order["status"], "Pending");
    assert_eq!(app.terminate().code(), Some(0));

    // The order service is down; the product service deletes the product
    // the order holds, then 300 updates.
    let products = redis.start_only(&["product"]);
    let (s, b) = tenant_call(
        reqwest::Method::DELETE,
        products.url("/api/products/doomed"),
        None,
    );
    assert_eq!(s, 204, "{b}");
    // Once the stream holds max_len unread entries an update is saved
    // but its event refused: 503 event-pending (see
    // `redis_a_refused_product_deleted_is_kept_with_the_product_and_cancels_the_order_later`).
    for i in 0..300 {
        let (s, b) = tenant_call(
            reqwest::Method::PUT,
            products.url("/api/products/other"),
            Some(json!({"name": format!("other v{i}"), "price": 2.5})),
        );
        assert!(
            s == 200 || (s == 503 && b["type"] == "urn:wasmshop:problem:event-pending"),
            "update {i}: {s} {b}"
        );
    }
    drop(products);

    // The order service returns: the ProductDeleted it missed cancels the order.
    let app = both();
    let cancelled = wait_for(Duration::from_secs(60), || {
        let (_, o) = tenant_call(
            reqwest::Method::GET,
            app.url(&format!("/api/orders/{order_id}")),
            None,
        );
        (o["status"] == "Cancelled").then_some(o)
    })
    .unwrap_or_else(|| {
        let (_, o) = tenant_call(
            reqwest::Method::GET,
            app.url(&format!("/api/orders/{order_id}")),
            None,
        );
        panic!("the order is cancelled after the outage: {o}")
    });
    assert!(
        cancelled["cancellationReason"]
            .as_str()
            .unwrap_or_default()
            .contains("doomed"),
        "{cancelled}"
    );
}

/// A call as tenant `faults` that also returns the `Retry-After` header.
fn tenant_call_with_retry_after(
    method: reqwest::Method,
    url: String,
) -> (u16, Value, Option<String>) {
    let r = client()
        .request(method, url)
        .header("X-Tenant-Id", "faults")
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().unwrap_or(Value::Null), retry_after)
}

/// The name the order shows for `product`.
fn item_name(order: &Value, product: &str) -> String {
    order["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["productId"] == product)
        .map(|i| i["productName"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn redis_a_refused_product_deleted_is_kept_with_the_product_and_cancels_the_order_later() {
    let max_len = 20;
    let redis = RedisApp::new(max_len);
    let both = || redis.start();
    let mut app = both();
    create_products(&app, &["held", "busy"]);
    let (s, order) = tenant_call(
        reqwest::Method::POST,
        app.url("/api/orders"),
        Some(json!({"customerId": "alice", "items": [
            {"productId": "held", "quantity": 1},
            {"productId": "busy", "quantity": 1}
        ]})),
    );
    assert_eq!(s, 201, "{order}");
    let order_id = order["id"].as_str().unwrap().to_string();
    let order_url = |app: &Host| app.url(&format!("/api/orders/{order_id}"));
    assert_eq!(app.terminate().code(), Some(0));

    // The order service is down. Updates of `busy` fill the stream until
    // the broker refuses one: that update is saved, answered 503, and its
    // event kept with the product.
    let products = redis.start_only(&["product"]);
    let mut refused_name = None;
    for i in 0..max_len + 10 {
        let name = format!("busy v{i}");
        let (s, b) = tenant_call(
            reqwest::Method::PUT,
            products.url("/api/products/busy"),
            Some(json!({"name": name})),
        );
        match s {
            200 => continue,
            503 => {
                assert_eq!(b["type"], "urn:wasmshop:problem:event-pending", "{b}");
                assert_eq!(
                    b["detail"].as_str().map(|d| d.contains("ProductUpdated")),
                    Some(true),
                    "{b}"
                );
                refused_name = Some(name);
                break;
            }
            other => panic!("update {i}: {other} {b}"),
        }
    }
    let refused_name = refused_name.expect("an update is refused once max_len events are unread");
    let (s, busy) = tenant_call(
        reqwest::Method::GET,
        products.url("/api/products/busy"),
        None,
    );
    assert_eq!(
        (s, busy["name"].as_str()),
        (200, Some(refused_name.as_str())),
        "the change is saved"
    );

    // The delete of the product the order holds: saved, its ProductDeleted
    // refused, the client told so.
    let (s, b, retry_after) =
        tenant_call_with_retry_after(reqwest::Method::DELETE, products.url("/api/products/held"));
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["type"], "urn:wasmshop:problem:event-pending");
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.contains("was deleted")
            && detail.contains("ProductDeleted")
            && detail.contains("retry"),
        "{detail}"
    );
    assert!(retry_after.is_some_and(|r| r.parse::<u32>().is_ok_and(|n| n > 0)));
    let (s, _) = tenant_call(
        reqwest::Method::GET,
        products.url("/api/products/held"),
        None,
    );
    assert_eq!(s, 404, "deleted for readers while its event is pending");
    drop(products);

    // The order service returns and drains the stream. A read of `busy`
    // publishes its kept update: the order shows the name the 503'd update set.
    let app = both();
    wait_for(Duration::from_secs(60), || {
        let (s, _) = tenant_call(reqwest::Method::GET, app.url("/api/products/busy"), None);
        assert_eq!(s, 200);
        let (_, o) = tenant_call(reqwest::Method::GET, order_url(&app), None);
        (item_name(&o, "busy") == refused_name).then_some(())
    })
    .unwrap_or_else(|| {
        let (_, o) = tenant_call(reqwest::Method::GET, order_url(&app), None);
        panic!("the kept ProductUpdated reaches the order: {o}")
    });

    // The DELETE retried publishes the kept ProductDeleted: 204.
    let deleted = wait_for(Duration::from_secs(30), || {
        let (s, b) = tenant_call(reqwest::Method::DELETE, app.url("/api/products/held"), None);
        match s {
            204 => Some(()),
            503 => None,
            other => panic!("DELETE retried: {other} {b}"),
        }
    });
    assert!(deleted.is_some(), "the DELETE retried completes");
    let (s, _) = tenant_call(reqwest::Method::DELETE, app.url("/api/products/held"), None);
    assert_eq!(s, 404, "published once: a further DELETE finds nothing");

    let cancelled = wait_for(Duration::from_secs(60), || {
        let (_, o) = tenant_call(reqwest::Method::GET, order_url(&app), None);
        (o["status"] == "Cancelled").then_some(o)
    })
    .unwrap_or_else(|| {
        let (_, o) = tenant_call(reqwest::Method::GET, order_url(&app), None);
        panic!("the order is cancelled once the kept ProductDeleted is out: {o}")
    });
    assert!(
        cancelled["cancellationReason"]
            .as_str()
            .unwrap_or_default()
            .contains("held"),
        "{cancelled}"
    );
}

#[test]
fn embedded_a_topic_without_subscribers_stores_nothing() {
    let mut host = Host::start_app();
    let (s, b) = tenant_call(
        reqwest::Method::POST,
        host.url("/api/products"),
        Some(json!({"id": "widget", "name": "widget", "price": 1.0, "stock": 1000})),
    );
    assert_eq!(s, 201, "{b}");
    for _ in 0..16 {
        let (s, b) = tenant_call(
            reqwest::Method::POST,
            host.url("/api/orders"),
            Some(json!({"customerId": "alice", "items": [{"productId": "widget", "quantity": 1}]})),
        );
        assert_eq!(s, 201, "{b}");
    }
    // Every event was handled or not stored: nothing waits in the queue.
    let db = host.data_dir().join("wasmshop.db");
    let count = |sql: &str| -> i64 {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    wait_for(Duration::from_secs(20), || {
        (count("SELECT COUNT(*) FROM deliveries") == 0).then_some(())
    })
    .expect("every delivery done");
    assert_eq!(host.terminate().code(), Some(0));
    assert_eq!(
        count("SELECT COUNT(*) FROM messages WHERE topic = 'orders'"),
        0,
        "nothing subscribes to orders in spin.toml: no message row"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM messages"),
        0,
        "delivered messages are removed too"
    );
}

/// Creates `widget`, places an order for it (a StockChanged), renames it
/// (a ProductUpdated) through `url`.
fn order_then_rename(url: impl Fn(&str) -> String) {
    let (s, b) = tenant_call(
        reqwest::Method::POST,
        url("/api/products"),
        Some(json!({"id": "widget", "name": "widget", "price": 1.0, "stock": 10})),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = tenant_call(
        reqwest::Method::POST,
        url("/api/orders"),
        Some(json!({"customerId": "alice", "items": [{"productId": "widget", "quantity": 1}]})),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = tenant_call(
        reqwest::Method::PUT,
        url("/api/products/widget"),
        Some(json!({"name": "renamed", "price": 1.0})),
    );
    assert_eq!(s, 200, "{b}");
}

/// The event types the recorder (subscribed to `products` without a
/// filter) has seen, to show what was published.
fn recorded_types(events: Vec<Value>) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["type"].as_str().map(String::from))
        .collect()
}

#[test]
fn embedded_the_order_never_runs_for_stock_changed() {
    let metrics_port = free_port();
    let host = Host::builder()
        .manifest(app_manifest_with_recorder())
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{metrics_port}"))
        .start();
    order_then_rename(|p| host.url(p));
    let published = wait_for(Duration::from_secs(20), || {
        let types = recorded_types(host.recorded_events("products"));
        (types.contains("StockChanged") && types.contains("ProductUpdated")).then_some(types)
    })
    .expect("the recorder saw the StockChanged and the ProductUpdated");
    assert!(published.contains("ProductCreated"), "{published:?}");
    let order_ran = || {
        metric(
            metrics_port,
            "wasmshop_deliveries_total",
            &["component=\"order\""],
        )
    };
    wait_for(Duration::from_secs(20), || (order_ran() >= 1).then_some(()))
        .expect("the order handles the ProductUpdated");
    assert_eq!(
        order_ran(),
        1,
        "the order ran for the ProductUpdated only, not for ProductCreated or StockChanged"
    );
}

#[test]
fn dapr_the_order_is_never_pushed_stock_changed() {
    let app = Deployment::app_with_recorder(&Backend::Dapr);
    order_then_rename(|p| app.url(p));
    let cluster = app.dapr_cluster().expect("a Dapr deployment");
    let types_by_id = || -> BTreeMap<String, String> {
        cluster
            .published("products")
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or_default().to_string(),
                    e["type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let pushed_to_order = || -> Vec<String> {
        let types = types_by_id();
        cluster
            .deliveries()
            .iter()
            .filter(|d| d.app_id == "orderservice" && d.topic == "products")
            .map(|d| types.get(&d.event_id).cloned().unwrap_or_default())
            .collect()
    };
    wait_for(Duration::from_secs(20), || {
        pushed_to_order()
            .contains(&"ProductUpdated".to_string())
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the ProductUpdated pushed to the order: {:?}",
            pushed_to_order()
        )
    });
    let published: BTreeSet<String> = types_by_id().into_values().collect();
    assert!(published.contains("StockChanged"), "{published:?}");
    let pushed = pushed_to_order();
    assert!(
        pushed.iter().all(|t| t == "ProductUpdated"),
        "daprd pushes the order only the types it names: {pushed:?}"
    );
}
