//! Where Spin's own conformance tests found our host behaving unlike Spin
//! (issue 14, item 6), against the real `wasmshop` binary with the
//! capabilities fixture: `{{ variable }}` templates in
//! `allowed_outbound_hosts`, and the cap on what one `get-many` returns.
//! (The route header names are in `front_door.rs`.) Run
//! `cargo build -p wasmshop-host` and
//! `cargo build --target wasm32-wasip2 --release -p capabilities-fixture` first.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use wasmshop_tests::{Host, Value, client, run_expecting_exit, wasm, wasmshop_bin};

/// A one-route HTTP server on a free local port that answers every
/// request `200 pong`; returns the port.
fn pong_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
            );
        }
    });
    port
}

/// The fixture as `alpha`, allowed to reach `{{ upstream_host }}:{{ upstream_port }}`
/// and an optional `{{ optional }}` endpoint (default empty).
fn templated_manifest() -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "parity"
[variables]
upstream_host = {{ default = "127.0.0.1" }}
upstream_port = {{ required = true }}
optional = {{ default = "" }}
[[trigger.http]]
route = "/alpha/..."
component = "alpha"
[component.alpha]
source = "{}"
key_value_stores = ["default"]
allowed_outbound_hosts = ["http://{{{{ upstream_host }}}}:{{{{ upstream_port }}}}", "{{{{ optional }}}}"]
"#,
        wasm("capabilities-fixture").display()
    )
}

/// `GET /alpha/outbound?url=<url>` on `host`: the fixture's status and body.
fn outbound(host: &Host, url: &str) -> (u16, String) {
    let r = client()
        .get(host.url(&format!("/alpha/outbound?url={url}")))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn templates_in_allowed_outbound_hosts_are_expanded_from_the_variables() {
    let allowed = pong_server();
    let other = pong_server();
    let host = Host::builder()
        .manifest(templated_manifest())
        .env("SPIN_VARIABLE_UPSTREAM_PORT", &allowed.to_string())
        .start();
    // The template resolved to http://127.0.0.1:<allowed>: that destination
    // is reached (matched literally, it would be refused).
    let (status, body) = outbound(&host, &format!("http://127.0.0.1:{allowed}/ping"));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], 200, "{body}");
    assert_eq!(answer["body"], "pong");
    // Nothing else is: another port, and the empty optional entry (which
    // Spin drops rather than refusing to start).
    let (status, body) = outbound(&host, &format!("http://127.0.0.1:{other}/ping"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

/// `wasmshop up` of `manifest` with `env`, expected to fail: its stderr.
fn fails_to_start(manifest: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    let mut cmd = Command::new(wasmshop_bin());
    cmd.args(["up", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .arg("--from")
        .arg(dir.path().join("spin.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_expecting_exit(&mut cmd);
    assert!(!out.status.success(), "started");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Serving"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_template_that_cannot_resolve_to_a_host_refuses_to_start_with_one_clear_line() {
    // A value that is not a host name: the error names the component, the
    // key and the template (not the value, which may be a secret).
    let stderr = fails_to_start(
        &templated_manifest(),
        &[
            ("SPIN_VARIABLE_UPSTREAM_PORT", "8080"),
            ("SPIN_VARIABLE_UPSTREAM_HOST", "zoinks, Scooby!"),
        ],
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("[component.alpha] key 'allowed_outbound_hosts'"),
        "{line}"
    );
    assert!(line.contains("{{ upstream_host }}"), "{line}");
    assert!(!stderr.contains("Scooby"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A required variable without a value.
    let stderr = fails_to_start(&templated_manifest(), &[]);
    assert!(stderr.contains("SPIN_VARIABLE_UPSTREAM_PORT"), "{stderr}");
}

/// Spin's cap on what one `get-many` returns (`MAX_HOST_BUFFERED_BYTES`).
const SPIN_GET_MANY_CAP: usize = 128 << 20;

#[test]
fn a_get_many_over_spins_cap_is_an_error_the_guest_handles_not_a_trap() {
    let manifest = templated_manifest();
    let host = Host::builder()
        .manifest(manifest)
        .env("SPIN_VARIABLE_UPSTREAM_PORT", "1")
        .arg("--request-timeout-secs")
        .arg("120")
        .arg("--max-memory-mb")
        .arg("64")
        .start();
    // 256 values of 1 MiB: twice the cap (the guest holds one at a time).
    const MIB: usize = 1 << 20;
    let slow = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap();
    let r = slow
        .post(host.url(&format!("/alpha/kv-fill/big?count=256&size={MIB}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    let r = slow
        .get(host.url("/alpha/kv-get-many/big?count=256"))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    // The fixture answers a keyvalue error as 500 with the error it got; a
    // trap would be the host's component-failed problem instead. The
    // limit is a quarter of the instance's 64 MiB: Spin's 128 MiB would
    // not fit.
    let limit = (64 << 20) / 4;
    assert!(limit < SPIN_GET_MANY_CAP);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(&format!("query result exceeds limit of {limit} bytes")),
        "the guest got Spin's error, not a trap: {body}"
    );
    assert!(!body.contains("component-failed"), "{body}");
    // 60 MiB: under Spin's cap, but more than the instance could take.
    let r = slow
        .get(host.url("/alpha/kv-get-many/big?count=60"))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(&format!("query result exceeds limit of {limit} bytes")),
        "an error the guest handles, not a trap on its memory: {body}"
    );
    // Under the cap, get-many answers; the instance and host are fine.
    let r = slow
        .get(host.url("/alpha/kv-get-many/big?count=15"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().unwrap();
    assert_eq!(got["entries"], 15);
    assert_eq!(got["bytes"], 15 * MIB);
}
