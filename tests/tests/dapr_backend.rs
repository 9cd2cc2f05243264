//! The Dapr backend end to end: the real `wasmshop` binary next to the
//! sidecar double of `wasmshop_tests::daprd`. Run
//! `cargo build -p wasmshop-host` and
//! `cargo build --target wasm32-wasip2 --release -p product -p order -p capabilities-fixture` first.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmshop_tests::daprd::{
    DaprCluster, MAX_BODY_BYTES, PUBSUB, STATE_STORE, Sidecar, SidecarOptions,
};
use wasmshop_tests::{
    APP_API_TOKEN, Backend, Deployment, Host, HostBuilder, Value, client, json, run_expecting_exit,
    start_next_to, wait_for, wasm, wasmshop_bin,
};

/// The runtime config the deployment uses (infra/runtime-config/dapr.toml).
fn dapr_runtime_config() -> String {
    Backend::Dapr.app_runtime_config().unwrap()
}

/// A host running `components` next to `sidecar`, its app channel attached.
fn start_host(
    sidecar: &Sidecar,
    mut builder: HostBuilder,
    app_token: Option<&str>,
    dapr_token: Option<&str>,
) -> Host {
    if let Some(t) = app_token {
        builder = builder.env("APP_API_TOKEN", t);
    }
    if let Some(t) = dapr_token {
        builder = builder.env("DAPR_API_TOKEN", t);
    }
    start_next_to(sidecar, builder)
}

/// The capabilities fixture alone, as app `recorder`, subscribed to `products`.
fn recorder_manifest() -> String {
    wasmshop_tests::recorder_manifest(&["products"])
}

/// The recorder as Dapr app `recorder`, next to its own sidecar, sharing
/// the deployment's APP_API_TOKEN (as in Azure Container Apps).
fn recorder_app(cluster: &DaprCluster) -> (Sidecar, Host) {
    let sidecar = cluster.sidecar(
        "recorder",
        SidecarOptions {
            app_token: Some(APP_API_TOKEN.into()),
            ..Default::default()
        },
    );
    let host = start_host(
        &sidecar,
        Host::builder().manifest(recorder_manifest()),
        Some(APP_API_TOKEN),
        None,
    );
    (sidecar, host)
}

/// The recorder without tokens, opened with `--dapr-allow-unauthenticated`
/// (local `dapr run` without APP_API_TOKEN).
fn open_recorder_app(cluster: &DaprCluster) -> (Sidecar, Host) {
    let sidecar = cluster.sidecar("recorder", SidecarOptions::default());
    let host = start_next_to(
        &sidecar,
        Host::builder()
            .manifest(recorder_manifest())
            .arg("--dapr-allow-unauthenticated"),
    );
    (sidecar, host)
}

// ---------------------------------------------------------------- the double

#[test]
fn the_sidecar_double_follows_the_reference() {
    let cluster = DaprCluster::new();
    let d = cluster.sidecar(
        "app",
        SidecarOptions {
            dapr_token: Some("tok".into()),
            ..Default::default()
        },
    );
    let c = client();
    let state = |p: &str| d.url(&format!("/v1.0/state/{STATE_STORE}{p}"));
    let send =
        |r: reqwest::blocking::RequestBuilder| r.header("dapr-api-token", "tok").send().unwrap();

    // Tokens: 401 plain text without it, except the two health endpoints.
    let r = c.get(state("/k")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().unwrap(), "invalid api token");
    assert_eq!(
        c.get(d.url("/v1.0/healthz/outbound"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(d.url("/v1.0/healthz")).send().unwrap().status(),
        500,
        "no app channel yet"
    );

    // Save, get with ETag, 204 on a missing key.
    assert_eq!(
        send(
            c.post(state(""))
                .json(&json!([{"key": "product-42", "value": {"name": "Widget"}}]))
        )
        .status(),
        204
    );
    let r = send(c.get(state("/product-42")));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "1");
    assert_eq!(r.json::<Value>().unwrap(), json!({"name": "Widget"}));
    assert_eq!(send(c.get(state("/missing"))).status(), 204);
    // A `/` in the key is an unknown route (dapr#8746).
    assert_eq!(send(c.get(state("/a/b"))).status(), 404);

    // ETags: a wrong one is 409, a non-numeric one 400, the right one saves.
    let save = |etag: &str| {
        send(c.post(state("")).json(&json!([{"key": "product-42", "value": 2, "etag": etag, "options": {"concurrency": "first-write"}}]))).status()
    };
    assert_eq!(save("7"), 409);
    assert_eq!(save("x"), 400);
    assert_eq!(save("1"), 204);
    // First-write without an etag is create-only; afterwards the key needs its etag.
    let create =
        |k: &str| {
            send(c.post(state("")).json(
                &json!([{"key": k, "value": "v", "options": {"concurrency": "first-write"}}]),
            ))
            .status()
        };
    assert_eq!(create("fresh"), 204);
    assert_eq!(create("fresh"), 500);
    assert_eq!(
        send(
            c.post(state(""))
                .json(&json!([{"key": "fresh", "value": "w"}]))
        )
        .status(),
        500
    );

    // Bulk get answers `data`; a missing key is just its key.
    let r: Value = send(
        c.post(state("/bulk"))
            .json(&json!({"keys": ["product-42", "nope"], "parallelism": 10})),
    )
    .json()
    .unwrap();
    assert_eq!(
        r,
        json!([{"key": "product-42", "data": 2, "etag": "2"}, {"key": "nope"}])
    );

    // Transaction; an etag mismatch in it is 500, not 409.
    let tx = json!({"operations": [{"operation": "upsert", "request": {"key": "k1", "value": "v"}}, {"operation": "delete", "request": {"key": "product-42"}}]});
    assert_eq!(send(c.post(state("/transaction")).json(&tx)).status(), 204);
    assert_eq!(send(c.get(state("/product-42"))).status(), 204);
    let bad = json!({"operations": [{"operation": "upsert", "request": {"key": "k1", "value": "v", "etag": "9"}}]});
    assert_eq!(send(c.post(state("/transaction")).json(&bad)).status(), 500);
    // Delete with If-Match.
    assert_eq!(
        send(c.delete(state("/k1")).header("if-match", "5")).status(),
        409
    );
    assert_eq!(
        send(c.delete(state("/k1")).header("if-match", "1")).status(),
        204
    );

    // Publish: text is wrapped in a CloudEvent; a CloudEvent passes with `source` defaulted.
    let publish = |ct: &str, body: &str| {
        send(
            c.post(d.url(&format!("/v1.0/publish/{PUBSUB}/t")))
                .header("content-type", ct)
                .body(body.to_string()),
        )
        .status()
    };
    assert_eq!(publish("text/plain", "hello"), 204);
    assert_eq!(
        publish(
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"e1","type":"X","data":{"a":1}}"#
        ),
        204
    );
    let events = cluster.published("t");
    assert_eq!(events[0]["data"], "hello");
    assert_eq!(events[0]["datacontenttype"], "text/plain");
    assert_eq!(events[0]["type"], "com.dapr.event.sent");
    assert_eq!(
        (
            events[1]["id"].clone(),
            events[1]["source"].clone(),
            events[1]["data"].clone()
        ),
        (json!("e1"), json!("Dapr"), json!({"a": 1}))
    );
    assert_eq!(
        send(c.post(d.url("/v1.0/publish/nope/t")).body("x")).status(),
        404
    );
    // Invocation of an unknown app id.
    assert_eq!(
        send(c.get(d.url("/v1.0/invoke/ghost/method/x"))).status(),
        500
    );
}

#[test]
fn the_sidecar_double_limits_bodies_and_stamps_invocations_as_daprd_does() {
    let cluster = DaprCluster::new();
    let (sidecar, _host) = recorder_app(&cluster);
    let c = client();
    // A body of exactly --max-body-size (4Mi) passes; one byte more is
    // refused, each API answering as daprd does (docs/dapr-reference.md).
    let save = |len: usize| {
        let (head, tail) = (r#"[{"key":"big","value":""#, r#""}]"#);
        let body = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
        assert_eq!(body.len(), len);
        c.post(sidecar.url(&format!("/v1.0/state/{STATE_STORE}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(save(MAX_BODY_BYTES).status(), 204);
    let r = save(MAX_BODY_BYTES + 1);
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["errorCode"],
        "ERR_MALFORMED_REQUEST"
    );
    let r = c
        .post(sidecar.url(&format!("/v1.0/publish/{PUBSUB}/t")))
        .header("content-type", "text/plain")
        .body("x".repeat(MAX_BODY_BYTES + 1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<Value>().unwrap()["errorCode"],
        "ERR_PUBSUB_PUBLISH_MESSAGE"
    );
    assert!(cluster.published("t").is_empty());

    // Invocation: the app sees daprd's caller and callee app ids, whatever
    // the caller claimed.
    let caller = cluster.sidecar("caller", SidecarOptions::default());
    let r = c
        .post(caller.url("/v1.0/invoke/recorder/method/recorder/echo"))
        .header("dapr-caller-app-id", "spoofed")
        .header("dapr-callee-app-id", "elsewhere")
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "caller", "{echo}");
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "recorder", "{echo}");
    assert_eq!(echo["body"], "hi");
}

// --------------------------------------------------- two-process deployment
// product_api.rs and order_api.rs run their whole suites on this deployment
// (`mod dapr`, see `app_tests!`); this test pins what is Dapr-specific in it.

fn create_product(host: &Host, id: &str, stock: i64) {
    let r = client()
        .post(host.url("/api/products"))
        .json(&json!({"id": id, "name": format!("{id} v1"), "price": 4.5, "stock": stock}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

fn order(host: &Host, customer: &str, product: &str, quantity: i64) -> (u16, Value) {
    let r = client()
        .post(host.url("/api/orders"))
        .json(&json!({"customerId": customer, "items": [{"productId": product, "quantity": quantity}]}))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn each_service_is_its_own_dapr_app() {
    let d = Deployment::app(&Backend::Dapr);
    let (product, order_host) = (d.host_of("product"), d.host_of("order"));
    let cluster = d.dapr_cluster().expect("a Dapr deployment");
    // Only the order service subscribes, to `products`, with a dead-letter
    // topic, and one routing rule per event type it names in spin.toml (no
    // default route: daprd pushes it nothing else). The app channel needs
    // the deployment's APP_API_TOKEN.
    let subscriptions = |host: &Host| -> Value {
        client()
            .get(host.url("/dapr/subscribe"))
            .header("dapr-api-token", APP_API_TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let subs = subscriptions(order_host);
    assert_eq!(
        subs,
        json!([{"pubsubname": "product-pubsub", "topic": "products",
                "routes": {"rules": [
                    {"match": "event.type == \"ProductUpdated\"", "path": "/dapr/events/order/products"},
                    {"match": "event.type == \"ProductDeleted\"", "path": "/dapr/events/order/products"}]},
                "deadLetterTopic": "products.deadletter"}])
    );
    assert_eq!(subscriptions(product), json!([]));
    // The order host does not run `product`: it is reached by service invocation.
    assert_eq!(
        order_host.get("/api/products/x").status(),
        404,
        "no local route"
    );

    create_product(product, "widget", 5);
    let (status, created) = order(order_host, "alice", "widget", 2);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["items"][0]["productName"], "widget v1");
    // State lives in the shared store under each app id.
    assert!(
        cluster
            .stored(
                "productservice",
                "product.default.tenant/default/product/widget"
            )
            .is_some()
    );
    let id = created["id"].as_str().unwrap();
    assert!(
        cluster
            .stored(
                "orderservice",
                &format!("order.default.tenant/default/order/{id}")
            )
            .is_some(),
        "order keys are under orderservice"
    );
    // Deleting the product reaches the order service through the broker.
    assert_eq!(
        client()
            .delete(product.url("/api/products/widget"))
            .send()
            .unwrap()
            .status(),
        204
    );
    let cancelled = wait_for(Duration::from_secs(30), || {
        let o: Value = order_host.get(&format!("/api/orders/{id}")).json().ok()?;
        (o["status"] == "Cancelled").then_some(o)
    });
    assert!(
        cancelled.is_some(),
        "ProductDeleted did not cancel the order; deliveries: {:?}\n{}",
        cluster.deliveries(),
        d.logs()
    );
    // Events went out as CloudEvents with the services' own types, and
    // every delivery was answered SUCCESS by orderservice.
    let types: Vec<Value> = cluster
        .published("products")
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert!(
        types.contains(&json!("ProductCreated")) && types.contains(&json!("ProductDeleted")),
        "{types:?}"
    );
    // The order is cancelled while the handler still runs, before daprd has
    // its answer: wait for the outcome of the ProductDeleted delivery.
    let deleted_id = cluster
        .published("products")
        .iter()
        .find(|e| e["type"] == "ProductDeleted")
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .unwrap();
    let answered = wait_for(Duration::from_secs(10), || {
        let deliveries = cluster.deliveries();
        deliveries
            .iter()
            .any(|x| x.event_id == deleted_id)
            .then_some(deliveries)
    });
    let deliveries =
        answered.unwrap_or_else(|| panic!("never answered: {:?}", cluster.deliveries()));
    assert!(
        deliveries
            .iter()
            .all(|x| x.outcome == "SUCCESS" && x.app_id == "orderservice"),
        "{deliveries:?}"
    );
}

// ------------------------------------------------------------------ tokens

#[test]
fn tokens_are_required_both_ways() {
    let cluster = DaprCluster::new();
    let opts = SidecarOptions {
        dapr_token: Some("to-dapr".into()),
        app_token: Some("to-app".into()),
        ..Default::default()
    };
    let sidecar = cluster.sidecar("productservice", opts);
    // attach_app sends the app token on GET /dapr/subscribe.
    let host = start_host(
        &sidecar,
        Host::builder().component_ids(&["product"]),
        Some("to-app"),
        Some("to-dapr"),
    );
    let c = client();

    // What comes (or claims to come) from the sidecar needs the app token.
    let r = c.get(host.url("/dapr/subscribe")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let as_invocation = c
        .get(host.url("/api/products"))
        .header("dapr-caller-app-id", "orderservice")
        .send()
        .unwrap();
    assert_eq!(as_invocation.status(), 401);
    let wrong = c
        .get(host.url("/api/products"))
        .header("dapr-api-token", "to-apq")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let r = c
        .post(host.url("/dapr/events/product/products"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Plain ingress traffic and probes are served (Azure Container Apps
    // injects APP_API_TOKEN while its ingress calls the app directly).
    assert_eq!(host.get("/api/products").status(), 200);
    assert_eq!(host.get("/healthz").status(), 200);
    assert_eq!(host.get("/readyz").status(), 200);

    // Through the sidecar (invocation carries the app token) it works, and
    // the host's own state calls carry DAPR_API_TOKEN, or the double would 401.
    let r = c
        .post(sidecar.url("/v1.0/invoke/productservice/method/api/products"))
        .header("dapr-api-token", "to-dapr")
        .json(&json!({"id": "p1", "name": "P", "price": 1, "stock": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    assert!(
        cluster
            .stored(
                "productservice",
                "product.default.tenant/default/product/p1"
            )
            .is_some()
    );

    // With WASMSHOP_APP_API_TOKEN_SCOPE=all, plain requests need it too.
    let strict = cluster.sidecar(
        "strict",
        SidecarOptions {
            app_token: Some("to-app".into()),
            ..Default::default()
        },
    );
    let host = start_host(
        &strict,
        Host::builder()
            .component_ids(&["product"])
            .env("WASMSHOP_APP_API_TOKEN_SCOPE", "all"),
        Some("to-app"),
        None,
    );
    assert_eq!(host.get("/api/products").status(), 401);
    assert_eq!(host.get("/healthz").status(), 200);
    let r = c
        .get(host.url("/api/products"))
        .header("dapr-api-token", "to-app")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_wrong_dapr_token_fails_backend_calls_clearly() {
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar(
        "recorder",
        SidecarOptions {
            dapr_token: Some("right".into()),
            ..Default::default()
        },
    );
    let host = start_host(
        &sidecar,
        Host::builder().manifest(recorder_manifest()),
        None,
        Some("wrong"),
    );
    let r = host.get("/recorder/kv/k");
    assert_eq!(r.status(), 500);
    // The component gets a fixed text without the sidecar's answer; the
    // host log has it (the 401), with the request's trace id.
    let text = r.text().unwrap();
    assert!(!text.contains("401"), "{text}");
    assert!(text.contains("the host log has the detail"), "{text}");
    let logs = host.logs_once(|l| l.contains("a backend call failed") && l.contains("401"));
    assert!(
        logs.lines()
            .any(|l| l.contains("a backend call failed") && l.contains("401")),
        "{logs}"
    );
}

// ------------------------------------------------------------- key-value

#[test]
fn key_value_maps_onto_the_state_api() {
    let cluster = DaprCluster::new();
    let (_sidecar, host) = recorder_app(&cluster);
    let c = client();
    // PUT `body` at `path`; the status code.
    let put = |path: &str, body: &str| {
        c.put(host.url(path))
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };

    // CAS conflict → cas-failed; a clean CAS swaps (also creating a key).
    let r = c
        .put(host.url("/recorder/kv-cas-conflict/doc"))
        .body("{\"v\":2}")
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (409, "cas-failed".to_string())
    );
    assert_eq!(put("/recorder/kv-cas/new", "{\"v\":1}"), 200);
    assert_eq!(put("/recorder/kv-cas/new", "{\"v\":2}"), 200);
    assert_eq!(
        cluster.stored("recorder", "recorder.default.new"),
        Some(json!({"v": 2}))
    );
    // A plain set on a key created with first-write still works.
    assert_eq!(put("/recorder/kv/new", "{\"v\":3}") / 100, 2);
    assert_eq!(
        cluster.stored("recorder", "recorder.default.new"),
        Some(json!({"v": 3}))
    );

    // JSON stays JSON; other bytes are enveloped and come back intact; keys may contain '/'.
    assert_eq!(put("/recorder/kv/a/json", "[1,2]") / 100, 2);
    assert_eq!(
        cluster.stored("recorder", "recorder.default.a/json"),
        Some(json!([1, 2]))
    );
    assert_eq!(put("/recorder/kv/a/text", "plain text") / 100, 2);
    assert_eq!(
        cluster.stored("recorder", "recorder.default.a/text"),
        Some(json!({"$wasmshop.bytes": "cGxhaW4gdGV4dA=="}))
    );
    assert_eq!(
        host.get("/recorder/kv/a/text").text().unwrap(),
        "plain text"
    );
    assert_eq!(
        host.get("/recorder/kv-exists/a/text").text().unwrap(),
        "true"
    );
    assert_eq!(host.get("/recorder/kv/absent").status(), 404);
    assert_eq!(
        c.delete(host.url("/recorder/kv/a/text"))
            .send()
            .unwrap()
            .status()
            .as_u16()
            / 100,
        2
    );
    assert_eq!(host.get("/recorder/kv/a/text").status(), 404);

    // increment is a CAS loop; batch uses bulk and transaction.
    for _ in 0..3 {
        c.post(host.url("/recorder/kv-incr/n?delta=2"))
            .send()
            .unwrap();
    }
    assert_eq!(host.get("/recorder/kv/n").text().unwrap(), "6");
    let r: Value = c
        .post(host.url("/recorder/kv-batch"))
        .json(&json!({"set": {"b1": "x", "b2": "{\"y\":1}"}, "delete": ["n"], "get": ["b1", "b2", "n"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r, json!([["b1", "x"], ["b2", "{\"y\":1}"], ["n", null]]));
    // A batch write over a key created with first-write (CAS) still lands.
    let r = c
        .post(host.url("/recorder/kv-batch"))
        .json(&json!({"set": {"new": "{\"v\":4}", "b3": "z"}, "get": ["new", "b3"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().unwrap();
    assert_eq!(r, json!([["new", "{\"v\":4}"], ["b3", "z"]]));

    // list-keys has no Dapr equivalent.
    // The component is told it is unsupported (a fixed text, see
    // docs/spin-parity.md); the log says why.
    let r = host.get("/recorder/kv-keys/");
    let text = r.text().unwrap();
    assert!(text.contains("does not support list-keys"), "{text}");
    let logs = host.logs_once(|l| l.contains("not supported by the Dapr state API"));
    assert!(
        logs.contains("not supported by the Dapr state API"),
        "{logs}"
    );
}

#[test]
fn state_calls_carry_the_trace_of_their_request() {
    // daprd continues a caller's traceparent in its own state spans; a
    // call without one starts a trace of its own in Application Insights.
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar("productservice", SidecarOptions::default());
    let host = start_host(
        &sidecar,
        Host::builder().component_ids(&["product"]),
        None,
        None,
    );
    let trace = "3bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .post(host.url("/api/products"))
        .header("x-tenant-id", "traced")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(r#"{"name": "Traced", "price": 1.0, "stock": 1, "category": "tools"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let calls = cluster.state_traceparents();
    assert!(!calls.is_empty(), "no state call recorded");
    assert!(
        calls.iter().all(|tp| tp
            .as_deref()
            .is_some_and(|tp| tp.split('-').nth(1) == Some(trace))),
        "a state call without the request's trace: {calls:?}"
    );
}

// ---------------------------------------------------------------- delivery

#[test]
fn a_failing_delivery_is_retried_until_it_succeeds() {
    let cluster = DaprCluster::new();
    cluster.set_max_attempts(20);
    let (_sidecar, host) = recorder_app(&cluster);
    // The handler needs the state store: while it is down, the handler fails.
    cluster.set_state_fault(true);
    let r = client()
        .post(host.url("/recorder/publish/products?client=product-pubsub"))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
    let retried = wait_for(Duration::from_secs(30), || {
        cluster
            .deliveries()
            .iter()
            .any(|d| d.outcome == "RETRY")
            .then_some(())
    });
    assert!(retried.is_some(), "no RETRY: {:?}", cluster.deliveries());
    cluster.set_state_fault(false);
    let ok = wait_for(Duration::from_secs(60), || {
        cluster
            .deliveries()
            .iter()
            .any(|d| d.outcome == "SUCCESS")
            .then_some(())
    });
    assert!(ok.is_some(), "never SUCCESS: {:?}", cluster.deliveries());
    // The handler saw the CloudEvent (once successfully), with the payload as `data`.
    let events = host.recorded_events("products");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"], "hello");
    assert_eq!(events[0]["topic"], "products");
    assert!(cluster.published("products.deadletter").is_empty());
    // The publish carried the request's trace context.
    let tp = cluster.published("products")[0]["traceparent"].clone();
    assert!(tp.as_str().is_some_and(|t| t.len() == 55), "{tp}");
}

#[test]
fn an_event_that_keeps_failing_is_dead_lettered() {
    let cluster = DaprCluster::new();
    cluster.set_max_attempts(3);
    let (_sidecar, host) = recorder_app(&cluster);
    cluster.set_state_fault(true);
    let r = client()
        .post(host.url("/recorder/publish/products?client=product-pubsub"))
        .body("doomed")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let dead = wait_for(Duration::from_secs(30), || {
        let d = cluster.published("products.deadletter");
        (!d.is_empty()).then_some(d)
    });
    let dead = dead.unwrap_or_else(|| panic!("not dead-lettered: {:?}", cluster.deliveries()));
    assert_eq!(dead[0]["data"], "doomed");
    let attempts: Vec<String> = cluster
        .deliveries()
        .iter()
        .map(|d| d.outcome.clone())
        .collect();
    assert_eq!(attempts, ["RETRY", "RETRY", "RETRY"]);
}

#[test]
fn an_undecodable_event_is_dropped() {
    // Without tokens, with the explicit opt-in: deliveries are accepted
    // from anyone who reaches the port, and the host says so once.
    let cluster = DaprCluster::new();
    let (_sidecar, host) = open_recorder_app(&cluster);
    let logs = host.logs_once(|l| l.contains("the Dapr app channel is open"));
    assert_eq!(
        logs.matches("the Dapr app channel is open").count(),
        1,
        "{logs}"
    );
    let r = client()
        .post(host.url("/dapr/events/recorder/products"))
        .body("not json {")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({"status": "DROP"}));
    // A route nobody subscribes at is 404 (Dapr drops it too).
    assert_eq!(
        client()
            .post(host.url("/dapr/events/recorder/nope"))
            .body("{}")
            .send()
            .unwrap()
            .status(),
        404
    );
    // A valid CloudEvent posted the way daprd does is SUCCESS and recorded.
    let r = client()
        .post(host.url("/dapr/events/recorder/products"))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": "x"})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({"status": "SUCCESS"}));
    assert_eq!(host.recorded_events("products").len(), 1);
}

/// The product and order hosts of the shop on Dapr, each next to its
/// sidecar: the product side shares APP_API_TOKEN with its sidecar, the
/// order side has no token (started from `order_builder`).
struct TokenlessOrderSide {
    product: Host,
    order: Host,
    // After the hosts: sidecars outlive the processes they serve.
    _sidecars: (Sidecar, Sidecar),
}

fn shop_with_tokenless_order_side(
    cluster: &DaprCluster,
    order_builder: HostBuilder,
) -> TokenlessOrderSide {
    let product_sidecar = cluster.sidecar(
        "productservice",
        SidecarOptions {
            app_token: Some(APP_API_TOKEN.into()),
            ..Default::default()
        },
    );
    let product = start_host(
        &product_sidecar,
        Host::builder().component_ids(&["product"]),
        Some(APP_API_TOKEN),
        None,
    );
    let order_sidecar = cluster.sidecar("orderservice", SidecarOptions::default());
    let order = start_next_to(&order_sidecar, order_builder.component_ids(&["order"]));
    TokenlessOrderSide {
        product,
        order,
        _sidecars: (product_sidecar, order_sidecar),
    }
}

/// A `ProductDeleted` for `product`'s current incarnation, forged from the
/// `ProductCreated` the product service published.
fn forged_product_deleted(cluster: &DaprCluster, product: &str) -> Value {
    let created = cluster
        .published("products")
        .into_iter()
        .find(|e| e["type"] == "ProductCreated" && e["data"]["id"] == product)
        .expect("the ProductCreated event");
    let mut forged = created.clone();
    forged["type"] = json!("ProductDeleted");
    forged["id"] = json!("forged-1");
    forged
}

#[test]
fn without_app_api_token_a_forged_delivery_is_refused_and_changes_nothing() {
    let cluster = DaprCluster::new();
    let shop = shop_with_tokenless_order_side(&cluster, Host::builder());
    let (product, order_host) = (&shop.product, &shop.order);
    create_product(product, "widget", 5);
    let (status, created) = order(order_host, "alice", "widget", 2);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let before: Value = order_host.get(&format!("/api/orders/{id}")).json().unwrap();

    // Anyone who reaches the order host's port posts a ProductDeleted the
    // way daprd would: 401, and the order stays as it was.
    let forged = forged_product_deleted(&cluster, "widget");
    let r = client()
        .post(order_host.url("/dapr/events/order/products"))
        .header("content-type", "application/cloudevents+json")
        .body(forged.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().unwrap();
    assert_eq!(
        problem["type"],
        "urn:wasmshop:problem:app-api-token-required"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("APP_API_TOKEN") && detail.contains("--dapr-allow-unauthenticated"),
        "{detail}"
    );
    let after: Value = order_host.get(&format!("/api/orders/{id}")).json().unwrap();
    assert_eq!(after, before, "the forged event changed the order");
    assert_ne!(after["status"], "Cancelled");
    // The subscription list stays readable (daprd reads it at start), and
    // the host said at start what it refuses.
    assert_eq!(
        client()
            .get(order_host.url("/dapr/subscribe"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let refused = "Dapr deliveries (POST /dapr/events/...) and internal endpoints will be refused";
    let logs = order_host.logs_once(|l| l.contains(refused));
    assert!(logs.contains(refused), "{logs}");
}

#[test]
fn with_app_api_token_a_forged_delivery_is_refused_and_changes_nothing() {
    let d = Deployment::app(&Backend::Dapr);
    let (product, order_host) = (d.host_of("product"), d.host_of("order"));
    let cluster = d.dapr_cluster().expect("a Dapr deployment");
    create_product(product, "widget", 5);
    let (status, created) = order(order_host, "alice", "widget", 2);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let forged = forged_product_deleted(cluster, "widget");
    let right = APP_API_TOKEN;
    // No token, a wrong one, and the right one followed by a second
    // header (only one may be given: a proxy could read the other).
    for tokens in [vec![], vec!["guessed"], vec![right, "guessed"]] {
        let mut req = client()
            .post(order_host.url("/dapr/events/order/products"))
            .header("content-type", "application/cloudevents+json")
            .body(forged.to_string());
        for t in &tokens {
            req = req.header("dapr-api-token", *t);
        }
        assert_eq!(req.send().unwrap().status(), 401, "{tokens:?}");
    }
    let after: Value = order_host.get(&format!("/api/orders/{id}")).json().unwrap();
    assert_eq!(after["status"], created["status"]);
}

#[test]
fn token_scope_all_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), recorder_manifest()).unwrap();
    for (scope, why) in [("all", "APP_API_TOKEN"), ("everything", "'dapr' or 'all'")] {
        let mut cmd = Command::new(wasmshop_bin());
        cmd.args(["up", "--listen", "127.0.0.1:0"])
            .arg("--from")
            .arg(dir.path().join("spin.toml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("WASMSHOP_APP_API_TOKEN_SCOPE", scope)
            .env_remove("APP_API_TOKEN")
            .stdin(Stdio::null());
        let out = run_expecting_exit(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{scope}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(why), "{scope}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("Serving"));
    }
}

// ---------------------------------------------------------------- chaining

/// `alpha` (public, may chain to any `*.spin.internal`) and `beta`
/// (private), each its own Dapr app.
fn chaining_manifest() -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "chain"
[[trigger.http]]
route = "/alpha/..."
component = "alpha"
[[trigger.http]]
route = {{ private = true }}
component = "beta"
[component.alpha]
source = "{fixture}"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.alpha.tool.wasmshop]
dapr_app_id = "alphaservice"
[component.beta]
source = "{fixture}"
[component.beta.tool.wasmshop]
dapr_app_id = "betaservice"
"#,
        fixture = wasm("capabilities-fixture").display()
    )
}

#[test]
fn chaining_through_dapr_reaches_only_components_of_the_manifest() {
    let cluster = DaprCluster::new();
    let with_token = || SidecarOptions {
        app_token: Some(APP_API_TOKEN.into()),
        ..Default::default()
    };
    let alpha_sidecar = cluster.sidecar("alphaservice", with_token());
    let alpha = start_host(
        &alpha_sidecar,
        Host::builder()
            .manifest(chaining_manifest())
            .component_ids(&["alpha"]),
        Some(APP_API_TOKEN),
        None,
    );
    let beta_sidecar = cluster.sidecar("betaservice", with_token());
    let _beta = start_host(
        &beta_sidecar,
        Host::builder()
            .manifest(chaining_manifest())
            .component_ids(&["beta"]),
        Some(APP_API_TOKEN),
        None,
    );
    // Another app in the same Dapr namespace, which no component of
    // alpha's manifest is: the recorder as app id `other`.
    let other_sidecar = cluster.sidecar("other", with_token());
    let other = start_host(
        &other_sidecar,
        Host::builder().manifest(recorder_manifest()),
        Some(APP_API_TOKEN),
        None,
    );
    assert_eq!(other.get("/recorder/echo").status(), 200);

    let call = |url: &str| -> (u16, String) {
        let r = client()
            .get(alpha.url(&format!("/alpha/outbound?url={url}")))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // A component of the manifest, by its Dapr app id.
    let (status, body) = call("http://beta.spin.internal/echo");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":200"), "{body}");
    // Not a component of the manifest: refused before any invocation,
    // though `http://*.spin.internal` lets it past the outbound check.
    let (status, body) = call("http://other.spin.internal/recorder/echo");
    assert_eq!(status, 502, "reached another Dapr app: {body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let logs = alpha.logs_once(|l| {
        l.contains("'http://other.spin.internal' names no component of the manifest")
    });
    assert!(
        logs.contains("'http://other.spin.internal' names no component of the manifest"),
        "{logs}"
    );
}

// ---------------------------------------------------------------- start-up

#[test]
fn startup_waits_for_outbound_health() {
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar(
        "recorder",
        SidecarOptions {
            outbound_not_ready: true,
            ..Default::default()
        },
    );
    let port = sidecar.port().to_string();
    let started = std::thread::spawn(move || {
        Host::builder()
            .manifest(recorder_manifest())
            .runtime_config(dapr_runtime_config())
            .env("DAPR_HTTP_PORT", &port)
            .start()
    });
    // The host keeps asking /v1.0/healthz/outbound and does not serve meanwhile.
    assert!(
        wait_for(Duration::from_secs(120), || (sidecar.outbound_checks()
            >= 4)
            .then_some(()))
        .is_some()
    );
    assert!(
        !started.is_finished(),
        "the host served before the sidecar was ready"
    );
    sidecar.set_outbound_ready(true);
    let host = started.join().unwrap();
    assert_eq!(host.get("/readyz").status(), 200);
    let logs = host.logs_once(|l| l.contains("waiting for the Dapr sidecar"));
    assert!(logs.contains("waiting for the Dapr sidecar"), "{logs}");
    // Readiness follows the sidecar.
    sidecar.set_outbound_ready(false);
    assert_eq!(host.get("/readyz").status(), 503);
}

#[test]
fn startup_gives_up_when_the_sidecar_never_gets_ready() {
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar(
        "recorder",
        SidecarOptions {
            outbound_not_ready: true,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), recorder_manifest()).unwrap();
    std::fs::write(dir.path().join("rc.toml"), dapr_runtime_config()).unwrap();
    let started = Instant::now();
    let out = Command::new(wasmshop_bin())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--dapr-startup-timeout-secs",
            "2",
        ])
        .arg("--from")
        .arg(dir.path().join("spin.toml"))
        .arg("--runtime-config-file")
        .arg(dir.path().join("rc.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DAPR_HTTP_PORT", sidecar.port().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Serving"));
    assert!(
        stderr.contains("gave up waiting for the Dapr sidecar"),
        "{stderr}"
    );
    assert!(stderr.contains("healthz/outbound"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(170),
        "the timeout was not honoured"
    );
}

#[test]
fn an_unreachable_product_service_is_503() {
    // daprd answers 500 ERR_DIRECT_INVOKE for an app id it cannot reach.
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar("orderservice", SidecarOptions::default());
    let host = start_host(
        &sidecar,
        Host::builder().component_ids(&["order"]),
        None,
        None,
    );
    let (status, body) = order(&host, "alice", "widget", 1);
    assert_eq!(status, 503, "{body}");
    let list: Value = host.get("/api/orders").json().unwrap();
    assert_eq!(list, json!([]), "nothing is saved");
}

// ------------------------------------------------- slow deliveries (issue 14)

/// The recorder without tokens (the explicit opt-in) and with at most
/// `instances` instances at once.
fn open_recorder_with_instances(instances: u32) -> wasmshop_tests::HostBuilder {
    Host::builder()
        .manifest(recorder_manifest())
        .arg("--dapr-allow-unauthenticated")
        .arg("--max-instances")
        .arg(&instances.to_string())
}

#[test]
fn a_delivery_finding_every_instance_busy_waits_instead_of_spending_an_attempt() {
    // daprd counts every RETRY as an attempt, so a pushed delivery that
    // finds the pool full waits for an instance rather than refuse.
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar("recorder", SidecarOptions::default());
    let host = start_next_to(
        &sidecar,
        open_recorder_with_instances(1)
            .arg("--request-timeout-secs")
            .arg("3"),
    );
    // Holds the only instance until its 3 s time limit stops it.
    let busy = {
        let url = host.url("/recorder/loop");
        std::thread::spawn(move || client().get(url).send().map(|r| r.status().as_u16()))
    };
    // An HTTP request waits 1 s for an instance: its 503 shows the loop
    // holds the only one.
    let c = client();
    let refused = wait_for(Duration::from_secs(5), || {
        (c.get(host.url("/recorder/echo")).send().unwrap().status() == 503).then_some(())
    });
    assert!(refused.is_some(), "the loop never held the instance");
    let r = c
        .post(sidecar.url(&format!("/v1.0/publish/{PUBSUB}/products")))
        .body("while busy")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let delivered = wait_for(Duration::from_secs(30), || {
        let d = cluster.deliveries();
        d.iter().any(|d| d.outcome == "SUCCESS").then_some(d)
    });
    let deliveries =
        delivered.unwrap_or_else(|| panic!("never delivered: {:?}", cluster.deliveries()));
    assert_eq!(
        deliveries.len(),
        1,
        "delivered at the first attempt: {deliveries:?}"
    );
    assert_eq!(deliveries[0].attempt, 1, "{deliveries:?}");
    assert_eq!(
        busy.join().unwrap().unwrap(),
        503,
        "the loop hit its time limit"
    );
    let events = host.recorded_events("products");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"], "while busy");
}

#[test]
fn slow_deliveries_hold_a_socket_never_an_instance() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar("recorder", SidecarOptions::default());
    let host = start_next_to(
        &sidecar,
        open_recorder_with_instances(2)
            .arg("--body-read-timeout-secs")
            .arg("3"),
    );
    let addr = host.base().trim_start_matches("http://").to_string();
    // Eight deliveries, four times the instances, each announcing a
    // 100000-byte CloudEvent and sending one byte of it.
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "POST /dapr/events/recorder/products HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100000\r\n\r\n{{"
            )
            .unwrap();
            s
        })
        .collect();
    for i in 0..6 {
        let r = host.get("/recorder/received/products");
        assert!(
            r.status().is_success(),
            "GET #{i} while deliveries trickle: {}",
            r.status()
        );
    }
    assert_eq!(host.get("/healthz").status(), 200);
    // Each is answered 408 (which daprd retries) once its body deadline
    // passes, and none reached the component.
    for (i, s) in slow.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("slow delivery #{i}: no response ({other:?})"),
            }
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 408"),
            "slow delivery #{i}: {head}"
        );
    }
    let received: Value = host.get("/recorder/received/products").json().unwrap();
    assert_eq!(received, json!([]), "a partial event was delivered");
}
