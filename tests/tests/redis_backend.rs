//! What only the Redis backend has to show (issue 5): several host
//! processes share one Redis — each event is handled once across them, a
//! killed host's unacknowledged deliveries are finished by another — and a
//! Redis outage is a fast 503 and "not ready", from which the host
//! recovers by itself. Each test starts its own redis-server.

use std::time::{Duration, Instant};
use wasmshop_tests::{
    Backend, Host, HostBuilder, Value, app_manifest_with_recorder, client, json, wait_for,
};

/// The recorder (capabilities fixture, subscribed to `orders`) alone, on
/// `backend`, with `messaging` settings for client `product-pubsub`.
fn recorder_host(backend: &Backend, messaging: &str) -> HostBuilder {
    Host::builder()
        .manifest(app_manifest_with_recorder())
        .component_ids(&["recorder"])
        .runtime_config(backend.runtime_config(&["default"], &[("product-pubsub", messaging)]))
}

fn publish(host: &Host, payload: &str) {
    let r = client()
        .post(host.url("/recorder/publish/orders?client=product-pubsub"))
        .body(payload.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
}

/// Payloads the recorder handled successfully on `orders` (its store is in
/// Redis, so every host sees the same list).
fn received(host: &Host) -> Vec<String> {
    let list: Value = host.get("/recorder/received/orders").json().unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Successful deliveries to the recorder, from a host's metrics.
fn handled(metrics_port: u16) -> u64 {
    let text = client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("wasmshop_deliveries_total{"))
        .filter(|l| l.contains("component=\"recorder\"") && l.contains("outcome=\"success\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn pending(backend: &Backend) -> String {
    let redis = backend.redis_server().unwrap();
    redis.cli(&[
        "XPENDING",
        "wasmshop:topic:product-pubsub:orders",
        "recorder",
    ])
}

#[test]
fn two_hosts_share_the_deliveries_and_handle_each_event_once() {
    let backend = Backend::redis();
    let (port_a, port_b) = (free_port(), free_port());
    let a = recorder_host(&backend, "")
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{port_a}"))
        .start();
    let b = recorder_host(&backend, "")
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{port_b}"))
        .start();
    let sent: Vec<String> = (0..40).map(|i| format!("event-{i:02}")).collect();
    for (i, payload) in sent.iter().enumerate() {
        publish(if i % 2 == 0 { &a } else { &b }, payload);
    }
    wait_for(Duration::from_secs(20), || {
        (handled(port_a) + handled(port_b) >= 40 && pending(&backend).starts_with('0'))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "40 events handled and acknowledged; handled {} + {}, pending: {}",
            handled(port_a),
            handled(port_b),
            pending(&backend)
        )
    });
    let mut got = received(&a);
    got.sort();
    assert_eq!(got, sent, "each event handled exactly once");
    assert_eq!(handled(port_a) + handled(port_b), 40);
    assert!(
        handled(port_a) > 0 && handled(port_b) > 0,
        "both hosts take deliveries: {} and {}",
        handled(port_a),
        handled(port_b)
    );

    // A host stopping cleanly with nothing pending leaves the group, so
    // restarts do not pile up consumer names.
    let consumers = || {
        backend
            .redis_server()
            .unwrap()
            .cli(&[
                "XINFO",
                "CONSUMERS",
                "wasmshop:topic:product-pubsub:orders",
                "recorder",
            ])
            .lines()
            .filter(|l| l.trim() == "name")
            .count()
    };
    assert_eq!(consumers(), 2);
    let mut b = b;
    assert_eq!(b.terminate().code(), Some(0));
    assert_eq!(consumers(), 1);
}

#[test]
fn a_killed_hosts_unacknowledged_deliveries_are_finished_by_another_host() {
    let backend = Backend::redis();
    // The first attempt fails on purpose and the retry is due 3 s later,
    // so host A certainly holds the deliveries, unacknowledged, when it dies.
    let slow_retry = "initial_backoff_ms = 3000";
    let mut a = recorder_host(&backend, slow_retry).start();
    let payloads: Vec<String> = (0..3).map(|i| format!("fail-times:1:held-{i}")).collect();
    for p in &payloads {
        publish(&a, p);
    }
    wait_for(Duration::from_secs(10), || {
        payloads
            .iter()
            .all(|p| {
                let r = a.get(&format!("/recorder/kv/attempts/{p}"));
                r.status() == 200 && r.text().unwrap() == "1"
            })
            .then_some(())
    })
    .expect("host A ran and failed the first attempt of each");
    // Killed before its retry is due: the deliveries stay pending, owned by
    // a consumer that no longer exists. Host B (a new consumer of the same
    // group) takes them over once they are idle past the visibility timeout.
    a.kill9();
    let b = recorder_host(&backend, slow_retry).start();
    let got = wait_for(Duration::from_secs(30), || {
        let r = received(&b);
        (r.len() >= 3).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "host B finishes A's deliveries; pending: {}",
            pending(&backend)
        )
    });
    let mut got = got;
    got.sort();
    assert_eq!(got, payloads, "each finished once");
    let logs = b.logs_once(|l| l.contains("took over a delivery"));
    assert!(
        logs.contains("took over a delivery"),
        "B reclaimed them:\n{logs}"
    );
}

#[test]
fn a_redis_outage_is_a_fast_503_and_not_ready_and_the_host_recovers_by_itself() {
    let mut backend = Backend::redis();
    let host = Host::builder()
        .manifest(app_manifest_with_recorder())
        .component_ids(&["product", "recorder"])
        .backend(&backend)
        .start();
    let create = |name: &str| {
        client()
            .post(host.url("/api/products"))
            .header("x-tenant-id", "t1")
            .json(&json!({"name": name, "price": 2.5, "stock": 3, "category": "tools"}))
            .send()
            .unwrap()
    };
    assert_eq!(create("before").status(), 201);
    assert_eq!(host.get("/readyz").status(), 200);

    backend.redis_server_mut().unwrap().stop();
    let started = Instant::now();
    let r = client()
        .get(host.url("/api/products"))
        .header("x-tenant-id", "t1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within a few seconds, not hanging: {:?}",
        started.elapsed()
    );
    let ready = host.get("/readyz");
    assert_eq!(ready.status(), 503);
    let ready = ready.text().unwrap();
    assert!(ready.contains("(redis)"), "names the backend: {ready}");
    assert!(
        !ready.contains("127.0.0.1"),
        "no address on the public port: {ready}"
    );

    // Redis returns (empty: it has no persistence here); no host restart.
    backend.redis_server_mut().unwrap().restart();
    wait_for(Duration::from_secs(15), || {
        (host.get("/readyz").status() == 200).then_some(())
    })
    .expect("ready again once Redis is back");
    let r = create("after");
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    // The consumers survived the outage too: the new product's event arrives.
    let events = wait_for(Duration::from_secs(15), || {
        let e: Vec<Value> = host
            .recorded_events("products")
            .into_iter()
            .filter(|e| e["data"]["name"] == "after")
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .expect("events are delivered again after the outage");
    assert_eq!(events.len(), 1);
}
