//! What clients and logs are told when a backend fails (issue 14, "Clear
//! start-up errors"): problem details never carry a backend address or a
//! sidecar's response text, and do carry the request's trace id
//! (`traceId`), which the host's log lines of that failure carry too;
//! passwords in Redis URLs are never printed. Against the real `wasmshop`
//! binary. Run `cargo build -p wasmshop-host` and
//! `cargo build --target wasm32-wasip2 --release -p product -p order` first.

use std::process::{Command, Stdio};
use wasmshop_tests::daprd::{DaprCluster, SidecarOptions};
use wasmshop_tests::{APP_API_TOKEN, Host, Value, client, start_next_to, wasmshop_bin};

const PASSWORD: &str = "s3cretpass";

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The app's store and client on a Redis that is not there, reached with
/// a password.
fn unreachable_redis_config(port: u16) -> String {
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    format!(
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n\n[messaging.product-pubsub]\ntype = \"redis\"\nurl = \"{url}\"\n"
    )
}

/// A problem response: its JSON, after checking the media type.
fn problem_of(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    (status, r.json().unwrap())
}

fn is_trace_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn a_store_failure_reaches_the_client_without_address_or_password_but_with_a_trace_id() {
    let port = closed_port();
    let host = Host::builder()
        .runtime_config(unreachable_redis_config(port))
        .start();
    let address = format!("127.0.0.1:{port}");

    // With the client's own trace context: its trace id comes back.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .post(host.url("/api/products"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"id": "p", "name": "P", "price": 1, "stock": 1}))
        .send()
        .unwrap();
    let (status, problem) = problem_of(r);
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["traceId"], trace_id, "{problem}");
    let text = problem.to_string();
    for leak in [address.as_str(), PASSWORD, "Connection refused", "redis://"] {
        assert!(!text.contains(leak), "the problem shows {leak:?}: {text}");
    }
    // Without one: the host starts a trace and the problem names it.
    let r = client().get(host.url("/api/products/p")).send().unwrap();
    let (status, problem) = problem_of(r);
    assert_eq!(status, 503, "{problem}");
    assert!(is_trace_id(&problem["traceId"]), "{problem}");
    let second = problem["traceId"].as_str().unwrap().to_string();
    assert!(!problem.to_string().contains(&address), "{problem}");

    // The detail is in the host's log, under each trace id (the second
    // request's line comes last); the password is nowhere.
    let logs = host.logs_once(|l| l.contains(&second) && l.contains(&address));
    for id in [trace_id, second.as_str()] {
        let line = logs
            .lines()
            .find(|l| l.contains(id) && l.contains(&address))
            .unwrap_or_else(|| panic!("no log line with {id} and the address:\n{logs}"));
        assert!(line.contains("a backend call failed"), "{line}");
    }
    assert!(!logs.contains(PASSWORD), "{logs}");

    // Problems the host makes itself carry the trace id too.
    let r = client()
        .get(host.url("/no/such/path"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .unwrap();
    let (status, problem) = problem_of(r);
    assert_eq!(status, 404);
    assert_eq!(problem["traceId"], trace_id, "{problem}");
}

#[test]
fn a_password_in_a_bad_redis_url_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("rc.toml");
    std::fs::write(
        &rc,
        format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://:{PASSWORD}@127.0.0.1:notaport\"\n"),
    )
    .unwrap();
    let out = Command::new(wasmshop_bin())
        .args(["up", "--listen", "127.0.0.1:0"])
        .arg("--from")
        .arg(wasmshop_tests::workspace_root().join("spin.toml"))
        .arg("--runtime-config-file")
        .arg(&rc)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("redis://:***@127.0.0.1:notaport"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD));
}

#[test]
fn a_sidecar_failure_reaches_the_client_without_its_response_text() {
    let cluster = DaprCluster::new();
    let sidecar = cluster.sidecar(
        "productservice",
        SidecarOptions {
            app_token: Some(APP_API_TOKEN.into()),
            ..Default::default()
        },
    );
    let host = start_next_to(
        &sidecar,
        Host::builder()
            .component_ids(&["product"])
            .env("APP_API_TOKEN", APP_API_TOKEN),
    );
    // The double's state API answers 500 ERR_STATE_GET "state store is
    // down (test fault)".
    cluster.set_state_fault(true);
    let r = client().get(host.url("/api/products/p")).send().unwrap();
    let (status, problem) = problem_of(r);
    assert!(status >= 500, "{problem}");
    let text = problem.to_string();
    let sidecar_address = format!("127.0.0.1:{}", sidecar.port());
    for leak in ["test fault", "ERR_STATE_GET", sidecar_address.as_str()] {
        assert!(!text.contains(leak), "the problem shows {leak:?}: {text}");
    }
    assert!(is_trace_id(&problem["traceId"]), "{problem}");
    let id = problem["traceId"].as_str().unwrap();
    let logs = host.logs_once(|l| l.contains(id) && l.contains("test fault"));
    assert!(
        logs.lines()
            .any(|l| l.contains(id) && l.contains("test fault")),
        "the sidecar's answer is logged under {id}:\n{logs}"
    );
}
