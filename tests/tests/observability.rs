//! Issue 16: what the host tells an operator. One `POST /api/orders` with
//! a `traceparent` is one trace through the order request, the chained
//! product calls, every key-value call, the publish and the delivery it
//! caused, exported over OTLP/HTTP (received here by a real-protobuf
//! receiver, `wasmshop_tests::otlp`) with semantic-convention attributes
//! and no stored value in any attribute; each request writes one JSON
//! access line, and every log line of a request carries its trace id.

use std::collections::BTreeSet;
use std::time::Duration;
use wasmshop_tests::otlp::{Receiver, Span};
use wasmshop_tests::{
    Backend, Deployment, Host, HostBuilder, Value, app_manifest_with_recorder, client, json,
    wait_for,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SECRET_NAME: &str = "Observable Widget 7f3a";
const CUSTOMER: &str = "customer-9d41";

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The app with the recorder, exporting to `otlp` with short batch delays.
fn traced(otlp: &Receiver) -> HostBuilder {
    Host::builder()
        .manifest(app_manifest_with_recorder())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
}

fn traced_host(otlp: &Receiver) -> Host {
    traced(otlp)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .start()
}

fn send(
    host: &impl Base,
    method: reqwest::Method,
    path: &str,
    traceparent: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, host.url(path))
        .header("x-tenant-id", "obs");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().expect("the host answers");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The JSON access lines of `trace` in `host`'s log, once there are at
/// least `count` (lines reach the log a moment after the response), or
/// what there is after 10 s.
fn access_lines(host: &Host, trace: &str, count: usize) -> Vec<Value> {
    let lines = || -> Vec<Value> {
        host.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "wasmshop::access" && v["trace_id"] == trace)
            .collect()
    };
    wait_for(Duration::from_secs(10), || {
        let found = lines();
        (found.len() >= count).then_some(found)
    })
    .unwrap_or_else(lines)
}

/// Where a request goes: one host, or the deployment's host of the path.
trait Base {
    fn url(&self, path: &str) -> String;
}

impl Base for Host {
    fn url(&self, path: &str) -> String {
        Host::url(self, path)
    }
}

impl Base for Deployment {
    fn url(&self, path: &str) -> String {
        Deployment::url(self, path)
    }
}

/// Whether `trace` has the delivery of a `topic` message (a consumer span)
/// and the server span of `service` (which may end after the delivery: the
/// handler goes on after it published). Other topics' deliveries in the
/// same trace may still be on their way: a test looks only at `topic`.
fn complete(spans: &[Span], trace: &str, service: &str, topic: &str) -> bool {
    let trace: Vec<&Span> = in_trace(spans, trace);
    trace
        .iter()
        .any(|s| s.kind == CONSUMER && destination(s) == topic)
        && trace
            .iter()
            .any(|s| s.kind == SERVER && s.service == service && s.parent == CALLER_SPAN)
}

/// The `messaging.destination.name` of a messaging span ("" for others).
fn destination(span: &Span) -> &str {
    span.attributes
        .get("messaging.destination.name")
        .map_or("", String::as_str)
}

fn in_trace<'a>(spans: &'a [Span], trace: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn describe(spans: &[&Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} kind={} span={} parent={} {:?}",
                s.service, s.name, s.kind, s.span_id, s.parent, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn one_order_is_one_trace_from_the_incoming_traceparent_to_the_delivery_it_caused() {
    let otlp = Receiver::start();
    let host = traced_host(&otlp);
    let (status, product) = send(
        &host,
        reqwest::Method::POST,
        "/api/products",
        None,
        Some(json!({"name": SECRET_NAME, "price": 12.5, "stock": 10, "category": "tools"})),
    );
    assert_eq!(status, 201, "{product}");
    let id = product["id"].as_str().unwrap().to_string();

    let incoming = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, order) = send(
        &host,
        reqwest::Method::POST,
        "/api/orders",
        Some(&incoming),
        Some(json!({"customerId": CUSTOMER, "items": [{"productId": id, "quantity": 2}]})),
    );
    assert_eq!(status, 201, "{order}");

    // The order's events reach the recorder: the trace is complete once a
    // consumer span of `orders` is in it.
    let spans = otlp.wait_for_spans(Duration::from_secs(30), |spans| {
        complete(spans, TRACE, "orderservice", "orders")
    });
    let trace = in_trace(&spans, TRACE);
    let all = describe(&trace);

    // The order request: a server span, child of the caller's span,
    // exported as orderservice.
    let server = trace
        .iter()
        .find(|s| s.kind == SERVER && s.service == "orderservice")
        .unwrap_or_else(|| panic!("no orderservice server span in\n{all}"));
    assert_eq!(server.parent, CALLER_SPAN, "{all}");
    assert_eq!(server.attributes["http.request.method"], "POST");
    assert_eq!(server.attributes["http.route"], "/api/orders");
    assert_eq!(server.attributes["http.response.status_code"], "201");
    assert_eq!(server.attributes["wasmshop.tenant"], "obs");
    assert_eq!(server.resource["wasmshop.component"], "order");

    // Each chained product call: a client span of the order, parent of a
    // productservice server span.
    let calls: Vec<&&Span> = trace
        .iter()
        .filter(|s| {
            s.kind == CLIENT
                && s.attributes.get("server.address").map(String::as_str)
                    == Some("product.spin.internal")
        })
        .collect();
    assert!(!calls.is_empty(), "no chained call span in\n{all}");
    for call in &calls {
        assert_eq!(call.service, "orderservice", "{all}");
        assert!(call.attributes.contains_key("http.response.status_code"));
        let callee = trace
            .iter()
            .find(|s| s.kind == SERVER && s.parent == call.span_id)
            .unwrap_or_else(|| panic!("no server span under {}\n{all}", call.span_id));
        assert_eq!(callee.service, "productservice", "{all}");
    }

    // Key-value calls of both services, on SQLite, named by operation.
    let kv: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.attributes.contains_key("db.system"))
        .collect();
    let services: BTreeSet<&str> = kv.iter().map(|s| s.service.as_str()).collect();
    assert!(
        services.contains("orderservice") && services.contains("productservice"),
        "{all}"
    );
    for s in &kv {
        assert_eq!(s.kind, CLIENT);
        assert_eq!(s.attributes["db.system"], "sqlite");
        assert!(s.attributes.contains_key("db.operation.name"), "{all}");
        assert!(s.attributes.contains_key("db.namespace"), "{all}");
    }

    // The order's publish (`OrderCreated` on `orders`; the chained
    // reservation publishes on `products` too) and its delivery to the
    // recorder: consumer child of the delivered traceparent and linked to
    // the producer.
    let producer = trace
        .iter()
        .find(|s| s.kind == PRODUCER && destination(s) == "orders")
        .unwrap_or_else(|| panic!("no producer span of `orders` in\n{all}"));
    assert_eq!(producer.attributes["messaging.system"], "embedded");
    assert_eq!(producer.service, "orderservice", "{all}");
    let consumer = trace
        .iter()
        .find(|s| s.kind == CONSUMER && destination(s) == "orders")
        .unwrap_or_else(|| panic!("no consumer span of `orders` in\n{all}"));
    assert_eq!(consumer.parent, producer.span_id, "{all}");
    assert!(
        consumer
            .links
            .contains(&(TRACE.to_string(), producer.span_id.clone())),
        "{all}"
    );
    assert_eq!(
        consumer.attributes.get("messaging.message.id"),
        producer.attributes.get("messaging.message.id"),
        "{all}"
    );

    // Renaming and deleting the product: server spans with the route
    // template, and the products events they publish.
    let rename = format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32));
    let (status, body) = send(
        &host,
        reqwest::Method::PUT,
        &format!("/api/products/{id}"),
        Some(&rename),
        Some(json!({"name": "Renamed Widget", "price": 12.5, "stock": 8, "category": "tools"})),
    );
    assert_eq!(status, 200, "{body}");
    let delete = format!("00-{}-{CALLER_SPAN}-01", "2".repeat(32));
    let (status, body) = send(
        &host,
        reqwest::Method::DELETE,
        &format!("/api/products/{id}"),
        Some(&delete),
        None,
    );
    assert!(status == 204 || status == 200, "{status} {body}");
    for tp in [&rename, &delete] {
        let trace_id = tp.split('-').nth(1).unwrap().to_string();
        let spans = otlp.wait_for_spans(Duration::from_secs(30), |spans| {
            complete(spans, &trace_id, "productservice", "products")
        });
        let trace = in_trace(&spans, &trace_id);
        let all = describe(&trace);
        let server = trace
            .iter()
            .find(|s| s.kind == SERVER && s.service == "productservice")
            .unwrap_or_else(|| panic!("no productservice server span in\n{all}"));
        assert_eq!(
            server.attributes["http.route"], "/api/products/:id",
            "{all}"
        );
        assert!(
            trace
                .iter()
                .any(|s| s.kind == PRODUCER
                    && s.attributes["messaging.destination.name"] == "products"),
            "{all}"
        );
    }

    // No stored value, customer or secret in any attribute.
    let spans = otlp.spans();
    for s in &spans {
        for (k, v) in s.attributes.iter().chain(s.resource.iter()) {
            for secret in [
                SECRET_NAME,
                CUSTOMER,
                "Renamed Widget",
                wasmshop_tests::APP_API_TOKEN,
            ] {
                assert!(
                    !v.contains(secret),
                    "{k}={v} of span {} leaks a value",
                    s.name
                );
            }
        }
    }
}

#[test]
fn every_request_writes_one_access_line_and_its_log_lines_carry_the_trace_id() {
    let otlp = Receiver::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = traced(&otlp)
        .log_format("json")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{port}"))
        .start();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-{CALLER_SPAN}-01");
    let (status, product) = send(
        &host,
        reqwest::Method::POST,
        "/api/products",
        Some(&tp),
        Some(json!({"name": "Logged", "price": 1.0, "stock": 1, "category": "tools"})),
    );
    assert_eq!(status, 201, "{product}");
    // A request the component refuses still gets its access line.
    let (status, _) = send(
        &host,
        reqwest::Method::GET,
        "/api/products/does-not-exist",
        Some(&tp),
        None,
    );
    assert_eq!(status, 404);

    let lines = access_lines(&host, trace, 2);
    assert_eq!(lines.len(), 2, "{}", host.logs());
    let created = lines.iter().find(|l| l["method"] == "POST").unwrap();
    assert_eq!(created["route"], "/api/products");
    assert_eq!(created["status"], 201);
    assert_eq!(created["component"], "product");
    assert_eq!(created["tenant"], "obs");
    assert_eq!(created["span_id"].as_str().unwrap().len(), 16);
    assert!(created["duration_ms"].as_f64().unwrap() > 0.0);
    let missing = lines.iter().find(|l| l["method"] == "GET").unwrap();
    assert_eq!(missing["route"], "/api/products/:id");
    assert_eq!(missing["status"], 404);

    // Every line written inside a request names its trace and span, at
    // the top level (no span lists: they cost too much per line).
    let mut inside = 0;
    for line in host.logs().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        assert!(
            v.get("spans").is_none() && v.get("span").is_none(),
            "a log line with span lists: {line}"
        );
        if v["trace_id"] != trace {
            continue;
        }
        inside += 1;
        assert!(
            matches!(v["span_id"].as_str(), Some(s) if s.len() == 16),
            "a log line of a request without its span id: {line}"
        );
    }
    assert!(inside >= 2, "{}", host.logs());

    // The access lines and the request's spans also went out as OTLP log
    // records and spans, under the component's service name.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let found = loop {
        let logs = otlp.logs();
        let hit = logs.iter().any(|l| {
            l.trace_id == trace
                && l.service == "productservice"
                && l.attributes.get("route").map(String::as_str) == Some("/api/products")
        });
        if hit || std::time::Instant::now() > deadline {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(found, "no OTLP access record: {:?}", otlp.logs());

    // The new metrics moved.
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for needle in [
        "wasmshop_kv_operations_total{backend=\"embedded\",operation=",
        "wasmshop_instances_in_use",
        "wasmshop_telemetry_dropped_total{signal=\"span\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // Exports every 500 ms; a loaded CI machine can be much slower.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The messaging metrics go out too: the product's ProductCreated was
    // published and delivered to the order service.
    let wanted = [
        "wasmshop.kv.operations",
        "http.server.request.duration",
        "wasmshop.messaging.published",
        "wasmshop.messaging.delivered",
    ];
    let all = |names: &[String]| wanted.iter().all(|w| names.iter().any(|m| m == w));
    while !all(&otlp.metric_names()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let names = otlp.metric_names();
    assert!(all(&names), "{wanted:?} not all in {names:?}");
}

/// The JSON log lines of `host` whose `message` is `message`, once there
/// is one (or none after 10 s).
fn lines_saying(host: &Host, message: &str) -> Vec<Value> {
    let lines = || -> Vec<Value> {
        host.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    };
    wait_for(Duration::from_secs(10), || {
        let found = lines();
        (!found.is_empty()).then_some(found)
    })
    .unwrap_or_default()
}

/// The first JSON log line saying `message`, checked to carry `trace`
/// and a span id.
fn logged_in_trace(host: &Host, message: &str, trace: &str) -> Value {
    let line = lines_saying(host, message)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no line saying {message:?}: {}", host.logs()));
    assert_eq!(line["trace_id"], trace, "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    line
}

#[test]
fn failures_are_logged_under_the_trace_of_their_request() {
    let host = Host::builder()
        .manifest(wasmshop_tests::recorder_manifest(&["products"]))
        .log_format("json")
        .start();
    // A component that traps: the host's line with the cause.
    let trapped = "8bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .get(host.url("/recorder/trap"))
        .header("traceparent", format!("00-{trapped}-{CALLER_SPAN}-01"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 500);
    logged_in_trace(&host, "component failed", trapped);

    // A delivery whose handler fails once.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-{CALLER_SPAN}-01");
    let r = client()
        .post(host.url("/recorder/publish/products?client=product-pubsub"))
        .header("traceparent", &tp)
        .body("fail-times:1:traced")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let failed = logged_in_trace(&host, "a subscriber's handler failed on a delivery", trace);
    assert_eq!(failed["topic"], "products");
    // The second attempt succeeds.
    let delivered = wait_for(Duration::from_secs(30), || {
        let events = host.recorded_events("products");
        (!events.is_empty()).then_some(events)
    });
    assert!(delivered.is_some(), "{}", host.logs());
}

#[test]
fn a_request_without_a_traceparent_is_a_root_span_under_the_root_sampler() {
    // parentbased_always_off: a trace the caller sampled is kept, and a
    // request that starts a trace is not sampled (the root rule).
    let otlp = Receiver::start();
    let host = traced(&otlp)
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
        .start();
    let sampled = "9bf92f3577b34da6a3ce929d0e0e4736";
    for _ in 0..5 {
        let (status, _) = send(&host, reqwest::Method::GET, "/api/products", None, None);
        assert_eq!(status, 200);
    }
    let tp = format!("00-{sampled}-{CALLER_SPAN}-01");
    let (status, _) = send(
        &host,
        reqwest::Method::GET,
        "/api/products",
        Some(&tp),
        None,
    );
    assert_eq!(status, 200);
    let kept = wait_for(Duration::from_secs(30), || {
        let spans = otlp.spans();
        spans
            .iter()
            .any(|s| s.trace_id == sampled && s.kind == SERVER)
            .then_some(spans)
    })
    .unwrap_or_else(|| panic!("the sampled trace was not exported: {:?}", otlp.spans()));
    let servers: Vec<&Span> = kept.iter().filter(|s| s.kind == SERVER).collect();
    assert!(
        servers.iter().all(|s| s.trace_id == sampled),
        "requests without a traceparent were sampled under parentbased_always_off: {}",
        describe(&servers)
    );
    assert_eq!(servers[0].parent, CALLER_SPAN);

    // Under the default sampler such a request is exported as a root.
    let otlp = Receiver::start();
    let host = traced(&otlp).start();
    let (status, _) = send(&host, reqwest::Method::GET, "/api/products", None, None);
    assert_eq!(status, 200);
    let root = wait_for(Duration::from_secs(30), || {
        otlp.spans().into_iter().find(|s| s.kind == SERVER)
    })
    .unwrap_or_else(|| panic!("no server span: {:?}", otlp.spans()));
    assert_eq!(root.parent, "", "a made-up parent: {root:?}");
}

#[test]
fn otel_service_name_names_the_hosts_own_records_over_resource_attributes() {
    let otlp = Receiver::start();
    let host = traced(&otlp)
        .env("OTEL_SERVICE_NAME", "shop-host")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=not-this,deployment.environment.name=test",
        )
        .start();
    // The host's own lines (start-up, no component) go out under it.
    let services = wait_for(Duration::from_secs(30), || {
        let services: BTreeSet<String> = otlp.logs().into_iter().map(|l| l.service).collect();
        services.contains("shop-host").then_some(services)
    })
    .unwrap_or_else(|| panic!("no record of the host's resource: {:?}", otlp.logs()));
    assert!(!services.contains("not-this"), "{services:?}");
    // Components keep their Dapr app ids.
    let (status, _) = send(&host, reqwest::Method::GET, "/api/products", None, None);
    assert_eq!(status, 200);
    let component = wait_for(Duration::from_secs(30), || {
        otlp.logs()
            .into_iter()
            .any(|l| l.service == "productservice")
            .then_some(())
    });
    assert!(component.is_some(), "{:?}", otlp.logs());
}

#[test]
fn a_traceparent_w3c_calls_invalid_starts_a_new_trace() {
    let host = Host::builder().log_format("json").start();
    let upper = "00-7BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    for tp in [upper, zeros] {
        let (status, _) = send(&host, reqwest::Method::GET, "/api/products", Some(tp), None);
        assert_eq!(status, 200);
    }
    let lines = wait_for(Duration::from_secs(10), || {
        let access: Vec<Value> = host
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["route"] == "/api/products")
            .collect();
        (access.len() == 2).then_some(access)
    })
    .unwrap_or_else(|| panic!("two access lines expected: {}", host.logs()));
    for line in &lines {
        let id = line["trace_id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{line}");
        assert!(
            id != "7bf92f3577b34da6a3ce929d0e0e4736" && id.bytes().any(|b| b != b'0'),
            "an invalid traceparent was continued: {line}"
        );
    }
    assert_ne!(lines[0]["trace_id"], lines[1]["trace_id"]);
}

#[test]
fn across_the_two_processes_of_the_dapr_deployment_the_order_is_still_one_trace() {
    let otlp = Receiver::start();
    let base = Host::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_METRICS_EXPORTER", "none");
    let app = Deployment::start_with(
        &Backend::Dapr,
        Some(app_manifest_with_recorder()),
        &["product", "order", "recorder"],
        base,
    );
    let (status, product) = send(
        &app,
        reqwest::Method::POST,
        "/api/products",
        None,
        Some(json!({"name": SECRET_NAME, "price": 3.0, "stock": 5, "category": "tools"})),
    );
    assert_eq!(status, 201, "{product}");
    let id = product["id"].as_str().unwrap().to_string();
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let (status, order) = send(
        &app,
        reqwest::Method::POST,
        "/api/orders",
        Some(&format!("00-{trace}-{CALLER_SPAN}-01")),
        Some(json!({"customerId": CUSTOMER, "items": [{"productId": id, "quantity": 1}]})),
    );
    assert_eq!(status, 201, "{order}");
    // Each host exports on its own schedule: the product host's server
    // span ends after its state spans and may come a batch later than the
    // order's delivery, so wait for it too (CI once checked in between).
    let spans = otlp.wait_for_spans(Duration::from_secs(30), |spans| {
        complete(spans, trace, "orderservice", "orders")
            && in_trace(spans, trace)
                .iter()
                .any(|s| s.kind == SERVER && s.service == "productservice")
    });
    let spans = in_trace(&spans, trace);
    let all = describe(&spans);
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER && s.service == "orderservice")
        .unwrap_or_else(|| panic!("no orderservice server span in\n{all}"));
    assert_eq!(server.parent, CALLER_SPAN, "{all}");
    // The product host, another process, continues the same trace.
    assert!(
        spans
            .iter()
            .any(|s| s.kind == SERVER && s.service == "productservice"),
        "{all}"
    );
    let kv: Vec<&&Span> = spans
        .iter()
        .filter(|s| s.attributes.contains_key("db.system"))
        .collect();
    assert!(!kv.is_empty(), "{all}");
    assert!(
        kv.iter().all(|s| s.attributes["db.system"] == "dapr"),
        "{all}"
    );
    let producer = spans
        .iter()
        .find(|s| s.kind == PRODUCER && destination(s) == "orders")
        .unwrap_or_else(|| panic!("no producer span of `orders` in\n{all}"));
    assert_eq!(producer.attributes["messaging.system"], "dapr");
    // daprd's own span sits between the publish and the delivery: the
    // consumer is its child, and links back to the producer.
    let consumer = spans
        .iter()
        .find(|s| s.kind == CONSUMER && destination(s) == "orders")
        .unwrap_or_else(|| panic!("no consumer span of `orders` in\n{all}"));
    assert_ne!(consumer.parent, producer.span_id, "{all}");
    assert!(!consumer.parent.is_empty(), "{all}");
    assert!(
        consumer
            .links
            .contains(&(trace.to_string(), producer.span_id.clone())),
        "{all}"
    );
}

/// A port where a "collector" accepts connections and never answers (the
/// accepted sockets are kept open until the test ends).
fn hanging_collector() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.extend(conn.ok());
        }
    });
    port
}

#[test]
fn sigterm_exits_promptly_although_the_collector_never_answers() {
    let port = hanging_collector();
    let mut host = Host::builder()
        .manifest(app_manifest_with_recorder())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .start();
    for _ in 0..50 {
        let (status, body) = send(&host, reqwest::Method::GET, "/api/products", None, None);
        assert_eq!(status, 200, "{body}");
    }
    let pid = host.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = host.terminate();
        let _ = tx.send(status);
        host
    });
    // A liveness bound (a stuck exporter used to hold the exit for 20 s
    // and more), well inside a 30 s termination grace period.
    let Ok(status) = rx.recv_timeout(Duration::from_secs(15)) else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let host = waiter.join().unwrap();
        panic!(
            "the host did not exit within 15 s of SIGTERM:\n{}",
            host.logs()
        );
    };
    let host = waiter.join().unwrap();
    assert!(status.success(), "{status:?}\n{}", host.logs());
    assert!(
        host.logs().contains("telemetry shutdown deadline reached"),
        "the lost telemetry is not reported:\n{}",
        host.logs()
    );
}

#[test]
fn failed_metric_exports_are_counted_and_bad_otel_values_warned() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = Host::builder()
        .manifest(app_manifest_with_recorder())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{dead}"),
        )
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_SDK_DISABLED", "maybe")
        .env("OTEL_TRACES_EXPORTER", "zipkin")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "abc")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "NaN")
        .env("OTEL_RESOURCE_ATTRIBUTES", "garbage,,=x")
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{metrics}"))
        .start();
    let (status, _) = send(&host, reqwest::Method::GET, "/api/products", None, None);
    assert_eq!(status, 200);

    let needle = "wasmshop_telemetry_export_failures_total{signal=\"metrics\"} ";
    let counted = wasmshop_tests::wait_for(Duration::from_secs(20), || {
        let text = client()
            .get(format!("http://127.0.0.1:{metrics}/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let line = text.lines().find(|l| l.starts_with(needle))?.to_string();
        (line != format!("{needle}0")).then_some(line)
    });
    assert!(counted.is_some(), "no metrics export failure counted");
    let logs = host.logs_once(|l| l.contains("OTLP export failed") && l.contains("metrics"));
    assert!(
        logs.lines()
            .any(|l| l.contains("OTLP export failed") && l.contains("metrics")),
        "no warning about the failed metrics export:\n{logs}"
    );

    // One warning line per bad variable, naming it and its value.
    for var in [
        "OTEL_SDK_DISABLED=\"maybe\"",
        "OTEL_TRACES_EXPORTER=\"zipkin\"",
        "OTEL_BSP_MAX_QUEUE_SIZE=\"abc\"",
        "OTEL_EXPORTER_OTLP_TIMEOUT=\"NaN\"",
        "OTEL_RESOURCE_ATTRIBUTES=\"garbage,,=x\"",
    ] {
        let n = logs.lines().filter(|l| l.contains(var)).count();
        assert_eq!(n, 1, "{var}: {n} lines in\n{logs}");
    }
}

#[test]
fn each_request_gets_its_own_server_span_id_with_export_off() {
    // The default set-up: JSON logs, no OTLP endpoint. Every request's
    // server span is a child of the caller's span, with an id of its own
    // (W3C Trace Context: each hop names itself), request after request.
    let host = Host::builder()
        .manifest(app_manifest_with_recorder())
        .log_format("json")
        .start();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4737";
    let tp = format!("00-{trace}-{CALLER_SPAN}-01");
    for i in 0..6 {
        let (status, _) = send(
            &host,
            reqwest::Method::GET,
            &format!("/api/products/missing-{i}"),
            Some(&tp),
            None,
        );
        assert_eq!(status, 404);
    }
    let ids: Vec<String> = access_lines(&host, trace, 6)
        .iter()
        .filter_map(|v| v["span_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 6, "{}", host.logs());
    for id in &ids {
        assert_ne!(
            id, CALLER_SPAN,
            "a server span took its caller's id: {ids:?}"
        );
    }
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 6, "{ids:?}");
}

#[test]
fn the_grpc_protocol_delivers_spans_and_logs_as_the_managed_agent_takes_them() {
    // Azure Container Apps' managed OpenTelemetry agent takes OTLP over
    // gRPC only (docs/observability.md).
    let otlp = Receiver::start();
    let host = traced(&otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "200")
        .start();
    let trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let tp = format!("00-{trace}-{CALLER_SPAN}-01");
    let (status, product) = send(
        &host,
        reqwest::Method::POST,
        "/api/products",
        Some(&tp),
        Some(json!({"name": "Over gRPC", "price": 1.0, "stock": 1})),
    );
    assert_eq!(status, 201, "{product}");
    let spans = otlp.wait_for_spans(Duration::from_secs(20), |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.kind == SERVER && s.parent == CALLER_SPAN)
    });
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.kind == SERVER && s.parent == CALLER_SPAN),
        "no server span over gRPC; requests: {:?}\n{}",
        otlp.requests(),
        host.logs()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !otlp.logs().iter().any(|l| l.trace_id == trace) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        otlp.logs().iter().any(|l| l.trace_id == trace),
        "no log record of the request over gRPC; requests: {:?}",
        otlp.requests()
    );
    let requests = otlp.requests();
    assert!(
        requests.iter().all(|r| r.starts_with("grpc:")),
        "everything went over gRPC: {requests:?}"
    );
}
