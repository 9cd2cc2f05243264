//! The host's capabilities, tested through the capabilities fixture
//! component against the real `wasmshop` binary (issue: runtime core).

use std::time::Duration;
use wasmshop_tests::{Backend, Host, HostBuilder, Value, client, wait_for, wasm};

/// Two fixture components: `alpha` (public, may call `beta`, subscribes to
/// several topics of client `bus`) and `beta` (private: chaining only).
fn fixture_manifest() -> String {
    let fixture = wasm("capabilities-fixture");
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "capabilities"
[variables]
greeting = {{ default = "hello" }}
[[trigger.http]]
route = "/alpha/..."
component = "alpha"
[[trigger.http]]
route = {{ private = true }}
component = "beta"

[component.alpha]
source = "{fixture}"
key_value_stores = ["default", "other"]
allowed_outbound_hosts = ["http://beta.spin.internal"]
[component.alpha.variables]
message = "{{{{ greeting }}}}, world"
[component.alpha.tool.wasmshop]
messaging_clients = ["bus"]
[[component.alpha.tool.wasmshop.subscriptions]]
client = "bus"
topic = "events"
[[component.alpha.tool.wasmshop.subscriptions]]
client = "bus"
topic = "flaky"
[[component.alpha.tool.wasmshop.subscriptions]]
client = "bus"
topic = "broken"
[[component.alpha.tool.wasmshop.subscriptions]]
client = "bus"
topic = "broken.deadletter"

[component.beta]
source = "{fixture}"
key_value_stores = ["default"]
"#,
        fixture = fixture.display()
    )
}

/// The fixture's stores and client on `backend`, with fast retries so the
/// retry and dead-letter tests take about a second.
fn fixture_host_on(backend: &Backend) -> HostBuilder {
    Host::builder()
        .manifest(fixture_manifest())
        .runtime_config(backend.runtime_config(
            &["default", "other"],
            &[("bus", "max_attempts = 3\ninitial_backoff_ms = 100")],
        ))
        .arg("--request-timeout-secs")
        .arg("2")
        .arg("--max-memory-mb")
        .arg("32")
}

fn fixture_host() -> HostBuilder {
    fixture_host_on(&Backend::Embedded)
}

// The capability tests that depend on the backend run on each of them.
wasmshop_tests::backend_tests!(
    keyvalue_get_set_delete_exists_and_list_keys,
    list_keys_pages_through_more_than_one_page,
    increment_is_atomic_under_concurrency,
    compare_and_swap_succeeds_unless_the_value_changed,
    batch_sets_gets_and_deletes_many,
    stores_are_limited_to_the_manifest_list_and_private_per_component,
    published_messages_are_delivered_to_subscribers,
    messaging_clients_are_limited_to_the_manifest_list,
    a_handler_that_fails_twice_is_retried_until_it_succeeds,
    a_handler_that_always_fails_ends_in_the_dead_letter_topic,
    acknowledged_writes_and_accepted_messages_survive_kill_9,
);

fn put(host: &Host, path: &str, body: &str) -> (u16, String) {
    let r = client()
        .put(host.url(path))
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn post(host: &Host, path: &str, body: &str) -> (u16, String) {
    let r = client()
        .post(host.url(path))
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn get(host: &Host, path: &str) -> (u16, String) {
    let r = host.get(path);
    (r.status().as_u16(), r.text().unwrap())
}

fn received(host: &Host, topic: &str) -> Vec<Value> {
    let (status, body) = get(host, &format!("/alpha/received/{topic}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn keyvalue_get_set_delete_exists_and_list_keys(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    assert_eq!(get(&host, "/alpha/kv/colour").0, 404);
    assert_eq!(put(&host, "/alpha/kv/colour", "blue").0, 204);
    assert_eq!(get(&host, "/alpha/kv/colour"), (200, "blue".into()));
    assert_eq!(get(&host, "/alpha/kv-exists/colour"), (200, "true".into()));
    assert_eq!(put(&host, "/alpha/kv/size", "L").0, 204);
    assert_eq!(
        get(&host, "/alpha/kv-keys"),
        (200, r#"["colour","size"]"#.into())
    );
    assert_eq!(
        client()
            .delete(host.url("/alpha/kv/colour"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(get(&host, "/alpha/kv-exists/colour"), (200, "false".into()));
    assert_eq!(get(&host, "/alpha/kv-keys"), (200, r#"["size"]"#.into()));
}

fn list_keys_pages_through_more_than_one_page(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    let mut set = serde_json::Map::new();
    for i in 0..2500 {
        set.insert(format!("k{i:05}"), Value::String("v".into()));
    }
    let (status, _) = post(
        &host,
        "/alpha/kv-batch",
        &serde_json::json!({"set": set}).to_string(),
    );
    assert_eq!(status, 200);
    let (status, body) = get(&host, "/alpha/kv-keys");
    assert_eq!(status, 200);
    let keys: Vec<String> = serde_json::from_str(&body).unwrap();
    assert_eq!(keys.len(), 2500);
    assert_eq!(keys[2499], "k02499");
}

fn increment_is_atomic_under_concurrency(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    assert_eq!(
        post(&host, "/alpha/kv-incr/counter?delta=5", ""),
        (200, "5".into())
    );
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let url = host.url("/alpha/kv-incr/counter?delta=1");
            std::thread::spawn(move || client().post(url).send().unwrap().status().as_u16())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(get(&host, "/alpha/kv/counter"), (200, "25".into()));
    // A value that is not an integer is refused, not corrupted.
    put(&host, "/alpha/kv/word", "abc");
    let (status, body) = post(&host, "/alpha/kv-incr/word", "");
    assert_eq!(status, 500);
    assert!(body.contains("not an integer"), "{body}");
    assert_eq!(get(&host, "/alpha/kv/word"), (200, "abc".into()));
}

fn compare_and_swap_succeeds_unless_the_value_changed(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    // Absent key: swap creates it.
    let (status, body) = put(&host, "/alpha/kv-cas/doc", "v1");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""before":null"#), "{body}");
    let (status, body) = put(&host, "/alpha/kv-cas/doc", "v2");
    assert_eq!(status, 200);
    assert!(body.contains(r#""before":"v1""#), "{body}");
    // A write between cas::new and swap makes the swap fail...
    assert_eq!(
        put(&host, "/alpha/kv-cas-conflict/doc", "v3"),
        (409, "cas-failed".into())
    );
    // ...and leaves the concurrent write in place.
    assert_eq!(
        get(&host, "/alpha/kv/doc"),
        (200, "written-meanwhile".into())
    );
    // Also when the key was absent at cas::new and created meanwhile.
    assert_eq!(
        put(&host, "/alpha/kv-cas-conflict/fresh", "x"),
        (409, "cas-failed".into())
    );
}

fn batch_sets_gets_and_deletes_many(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    let (status, body) = post(
        &host,
        "/alpha/kv-batch",
        r#"{"set":{"a":"1","b":"2","c":"3"},"get":["a","b","zz"]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"[["a","1"],["b","2"],["zz",null]]"#);
    let (_, body) = post(
        &host,
        "/alpha/kv-batch",
        r#"{"delete":["a","c"],"get":["a","b","c"]}"#,
    );
    assert_eq!(body, r#"[["a",null],["b","2"],["c",null]]"#);
}

fn stores_are_limited_to_the_manifest_list_and_private_per_component(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    assert_eq!(get(&host, "/alpha/kv-open/other"), (200, "opened".into()));
    let (status, body) = get(&host, "/alpha/kv-open/secret");
    assert_eq!(status, 403);
    assert_eq!(body, "Error::AccessDenied");
    // Labels are separate namespaces.
    put(&host, "/alpha/kv/shared-name?store=default", "from-default");
    assert_eq!(get(&host, "/alpha/kv/shared-name?store=other").0, 404);
    // beta (reached by chaining) has its own "default" store.
    let (status, body) = get(
        &host,
        "/alpha/outbound?url=http://beta.spin.internal/kv/shared-name",
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 404, "beta must not see alpha's data: {v}");
}

fn published_messages_are_delivered_to_subscribers(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    assert_eq!(
        post(&host, "/alpha/publish/events?client=bus", "first").0,
        202
    );
    assert_eq!(
        post(&host, "/alpha/publish/events?client=bus", "second").0,
        202
    );
    let got = wait_for(Duration::from_secs(10), || {
        let r = received(&host, "events");
        (r.len() == 2).then_some(r)
    })
    .expect("both messages delivered");
    let mut data: Vec<&str> = got.iter().map(|m| m["data"].as_str().unwrap()).collect();
    data.sort();
    assert_eq!(data, ["first", "second"]);
    assert_eq!(got[0]["topic"], "events");
    assert_eq!(got[0]["contentType"], "text/plain");
    let metadata = got[0]["metadata"].as_array().unwrap();
    assert!(
        metadata
            .iter()
            .any(|kv| kv[0] == "sent-by" && kv[1] == "fixture")
    );
    assert!(
        metadata.iter().any(|kv| kv[0] == "traceparent"),
        "trace context travels: {metadata:?}"
    );
}

fn messaging_clients_are_limited_to_the_manifest_list(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    let (status, body) = post(&host, "/alpha/publish/events?client=elsewhere", "x");
    assert_eq!(status, 403);
    assert!(body.contains("messaging_clients"), "{body}");
}

fn a_handler_that_fails_twice_is_retried_until_it_succeeds(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    post(
        &host,
        "/alpha/publish/flaky?client=bus",
        "fail-times:2:order-7",
    );
    let got = wait_for(Duration::from_secs(10), || {
        let r = received(&host, "flaky");
        (!r.is_empty()).then_some(r)
    })
    .expect("delivered after two failures");
    assert_eq!(got.len(), 1);
    assert_eq!(
        get(&host, "/alpha/kv/attempts/fail-times:2:order-7"),
        (200, "3".into())
    );
}

fn a_handler_that_always_fails_ends_in_the_dead_letter_topic(backend: &Backend) {
    let host = fixture_host_on(backend).start();
    post(
        &host,
        "/alpha/publish/broken?client=bus",
        "always-fail:payment-9",
    );
    let dead = wait_for(Duration::from_secs(10), || {
        let r = received(&host, "broken.deadletter");
        (!r.is_empty()).then_some(r)
    })
    .expect("dead-lettered after max_attempts");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"], "always-fail:payment-9");
    let metadata = dead[0]["metadata"].as_array().unwrap();
    let meta = |k: &str| {
        metadata
            .iter()
            .find(|kv| kv[0] == k)
            .map(|kv| kv[1].as_str().unwrap().to_string())
    };
    assert_eq!(meta("deadletter-original-topic").as_deref(), Some("broken"));
    assert_eq!(meta("deadletter-attempts").as_deref(), Some("3"));
    assert!(
        meta("deadletter-reason")
            .unwrap()
            .contains("failing on purpose")
    );
    assert!(
        received(&host, "broken").is_empty(),
        "never handled successfully"
    );
}

fn acknowledged_writes_and_accepted_messages_survive_kill_9(backend: &Backend) {
    // Slow retries: the first attempt fails on purpose and the retry is due
    // 3 s later, so the message is certainly pending when the host dies.
    let mut host = Host::builder()
        .manifest(fixture_manifest())
        .runtime_config(backend.runtime_config(
            &["default", "other"],
            &[("bus", "initial_backoff_ms = 3000")],
        ))
        .start();
    assert_eq!(put(&host, "/alpha/kv/durable", "yes").0, 204);
    assert_eq!(
        post(
            &host,
            "/alpha/publish/flaky?client=bus",
            "fail-times:1:survivor"
        )
        .0,
        202
    );
    wait_for(Duration::from_secs(5), || {
        (get(&host, "/alpha/kv/attempts/fail-times:1:survivor").1 == "1").then_some(())
    })
    .expect("the first attempt ran and failed");
    assert!(
        received(&host, "flaky").is_empty(),
        "pending, not yet delivered"
    );
    host.kill9();
    host.restart();
    assert_eq!(get(&host, "/alpha/kv/durable"), (200, "yes".into()));
    let got = wait_for(Duration::from_secs(15), || {
        let r = received(&host, "flaky");
        (!r.is_empty()).then_some(r)
    })
    .expect("the accepted message is delivered after the restart");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"], "fail-times:1:survivor");
}

#[test]
fn outbound_requests_to_unlisted_hosts_are_refused_without_hanging() {
    let host = fixture_host().start();
    let started = std::time::Instant::now();
    let (status, body) = get(&host, "/alpha/outbound?url=http://example.com/");
    assert_eq!(status, 502);
    assert!(body.contains("HttpRequestDenied"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // beta has no allowed hosts at all: it cannot even call alpha.
    let (_, body) = get(
        &host,
        "/alpha/outbound?url=http://beta.spin.internal/outbound%3Furl%3Dhttp://alpha.spin.internal/echo",
    );
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

#[test]
fn chaining_reaches_private_components_in_process() {
    let host = fixture_host().start();
    // Not reachable from outside: beta has only a private route.
    assert_eq!(get(&host, "/beta/echo").0, 404);
    let (status, body) = get(&host, "/alpha/outbound?url=http://beta.spin.internal/echo");
    assert_eq!(status, 200, "{body}");
    let outer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outer["status"], 200);
    let inner: Value = serde_json::from_str(outer["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["pathInfo"], "/echo");
    assert_eq!(
        inner["headers"]["spin-full-url"],
        "http://beta.spin.internal/echo"
    );
    // The caller's trace continues in the callee.
    let callee_trace = inner["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client()
        .get(host.url("/alpha/outbound?url=http://beta.spin.internal/echo"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .unwrap();
    let outer: Value = r.json().unwrap();
    let inner: Value = serde_json::from_str(outer["body"].as_str().unwrap()).unwrap();
    let tp = inner["headers"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert_ne!(
        tp,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(callee_trace.len(), 55);
}

#[test]
fn a_trap_is_a_500_problem_and_the_next_request_succeeds() {
    let host = fixture_host().start();
    let r = host.get("/alpha/trap");
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().unwrap();
    assert_eq!(p["status"], 500);
    assert!(p["detail"].as_str().unwrap().contains("alpha"));
    assert_eq!(get(&host, "/alpha/echo").0, 200);
}

#[test]
fn a_looping_request_is_stopped_at_the_time_limit() {
    let host = fixture_host().start();
    let started = std::time::Instant::now();
    let r = host.get("/alpha/loop");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("time limit")
            || p["detail"].as_str().unwrap().contains("within"),
        "{p}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get(&host, "/alpha/echo").0, 200);
}

#[test]
fn a_guest_allocating_past_its_memory_cap_fails_alone() {
    let host = fixture_host().start();
    assert_eq!(get(&host, "/alpha/alloc?mb=4").0, 200);
    let r = host.get("/alpha/alloc?mb=64");
    assert_eq!(r.status(), 500);
    let p: Value = r.json().unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("memory limit of 32 MiB"),
        "{p}"
    );
    assert_eq!(get(&host, "/alpha/alloc?mb=4").0, 200);
}

#[test]
fn config_variables_come_from_the_manifest_and_the_environment() {
    let host = fixture_host().start();
    assert_eq!(
        get(&host, "/alpha/config/message"),
        (200, "hello, world".into())
    );
    assert_eq!(get(&host, "/alpha/config/missing").0, 404);
    let host = fixture_host()
        .env("SPIN_VARIABLE_GREETING", "bonjour")
        .start();
    assert_eq!(
        get(&host, "/alpha/config/message"),
        (200, "bonjour, world".into())
    );
}

#[test]
fn probes_answer_and_unknown_routes_are_404_problems() {
    let host = fixture_host().start();
    assert_eq!(get(&host, "/healthz").0, 200);
    let (status, body) = get(&host, "/readyz");
    assert_eq!(status, 200, "{body}");
    let r = host.get("/nowhere");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.text().unwrap().contains("/alpha/..."));
}

#[test]
fn metrics_are_served_on_their_own_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = fixture_host()
        .arg("--metrics-listen")
        .arg(&format!("127.0.0.1:{port}"))
        .start();
    get(&host, "/alpha/echo");
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("wasmshop_http_requests_total{component=\"alpha\",status=\"200\"} 1"),
        "{text}"
    );
    assert_eq!(
        get(&host, "/metrics").0,
        404,
        "metrics stay off the public listener"
    );
}

#[test]
fn a_restart_loads_components_from_the_compile_cache() {
    // Log lines reach stderr through the host's writer thread, a moment
    // after they are made: wait for them before reading.
    let loaded = |host: &Host, n: usize| {
        wait_for(Duration::from_secs(20), || {
            let logs = host.logs();
            (logs.matches("component loaded").count() >= n).then_some(logs)
        })
        .unwrap_or_else(|| host.logs())
    };
    let mut host = fixture_host().start();
    assert!(
        loaded(&host, 2).contains("Compiled"),
        "first start compiles"
    );
    host.restart();
    let logs = loaded(&host, 4);
    let loads: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("component loaded"))
        .collect();
    assert_eq!(loads.len(), 4, "two components, two starts:\n{logs}");
    assert!(
        loads[0].contains("Compiled"),
        "the first start compiles:\n{logs}"
    );
    assert!(
        loads[2..].iter().all(|l| l.contains("Hit")),
        "the restart must hit the cache:\n{logs}"
    );
    assert_eq!(get(&host, "/alpha/echo").0, 200);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut host = fixture_host().arg("--shutdown-grace-secs").arg("5").start();
    // A request that takes ~1 s: the time limit is 2 s, the loop runs until it.
    let url = host.url("/alpha/loop");
    let in_flight =
        std::thread::spawn(move || client().get(url).send().map(|r| r.status().as_u16()));
    std::thread::sleep(Duration::from_millis(300));
    let status = host.terminate();
    assert_eq!(status.code(), Some(0), "graceful exit");
    // The in-flight request got its answer (the time-limit problem), not a reset.
    assert_eq!(in_flight.join().unwrap().ok(), Some(503));
}

#[test]
fn a_bad_manifest_is_one_clear_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin.toml");
    std::fs::write(
        &path,
        fixture_manifest().replace(
            "key_value_stores = [\"default\", \"other\"]",
            "key_value_store = [\"default\"]",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(wasmshop_tests::wasmshop_bin())
        .args(["up", "--from"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(line.contains("spin.toml"), "{line}");
    assert!(line.contains("[component.alpha]"), "{line}");
    assert!(line.contains("key_value_store"), "{line}");
}

#[test]
fn dead_letters_without_a_subscriber_stay_inspectable() {
    let host = fixture_host().start();
    post(
        &host,
        "/alpha/publish/flaky?client=bus",
        "always-fail:nobody-listens",
    );
    let listed = wait_for(Duration::from_secs(10), || {
        let out = std::process::Command::new(wasmshop_tests::wasmshop_bin())
            .args(["messages", "--topic", "flaky.deadletter", "--data-dir"])
            .arg(host.data_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        (!text.trim().is_empty()).then_some(text)
    })
    .expect("the dead letter is listed");
    let lines: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["data"], "always-fail:nobody-listens");
    assert_eq!(lines[0]["topic"], "flaky.deadletter");
    assert!(listed.contains("deadletter-reason"), "{listed}");
}
