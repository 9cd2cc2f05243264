//! Starting and stopping `wasmshop up` as an operator meets it (issue 14,
//! items 5 and the data-directory lock and clean stop): a bad flag or
//! environment value is one line and exit code 2, never a panic; no
//! secret is printed; one host per data directory, while read-only
//! commands still work; SIGTERM lets a request in flight finish and
//! exits 0 with its data kept.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use wasmshop_tests::{Host, json, wasmshop_bin, workspace_root};

/// `wasmshop up` on the repository's app with a scratch data directory,
/// no `WASMSHOP_*` variables from the environment, and `args`.
fn up(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(wasmshop_bin());
    cmd.arg("up")
        .arg("--from")
        .arg(workspace_root().join("spin.toml"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--log-format")
        .arg("text")
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WASMSHOP_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

/// Runs `cmd` to its end, or kills it after `limit`; its output either way.
fn run_for(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child: Child = cmd
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("starting wasmshop");
    let end = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(&err).unwrap_or_default();
    (code, text)
}

#[test]
fn every_bad_flag_or_environment_value_is_one_line_and_exit_2() {
    let data = tempfile::tempdir().unwrap();
    let flags: &[(&str, &str)] = &[
        ("--request-timeout-secs", "1e20"),
        ("--request-timeout-secs", "NaN"),
        ("--request-timeout-secs", "0"),
        ("--request-timeout-secs", "-1"),
        ("--max-instances", "2000000000"),
        ("--max-instances", "0"),
        ("--max-instances", "-5"),
        ("--max-memory-mb", "99999999999999"),
        ("--max-memory-mb", "0"),
        ("--shutdown-grace-secs", "-1"),
        ("--shutdown-grace-secs", "inf"),
        ("--header-read-timeout-secs", "0"),
        ("--idle-timeout-secs", "1e9"),
        ("--body-read-timeout-secs", "NaN"),
        ("--max-connections", "0"),
        ("--max-request-body-bytes", "0"),
        ("--body-buffer-mb", "0"),
        ("--dapr-startup-timeout-secs", "1e30"),
        ("--dapr-startup-timeout-secs", "-1"),
        ("--max-connections", "-5"),
        ("--request-timeout-secs", "0.0000001"),
        ("--idle-timeout-secs", "1e-300"),
        ("--send-timeout-secs", "0"),
        ("--response-buffer-mb", "-1"),
        ("--metrics-listen", "bad"),
        ("--metrics-listen", "127.0.0.1:99999"),
        ("--metrics-listen", "localhost"),
        ("--component-id", "nope"),
        ("--component-id", " "),
    ];
    let mut cases: Vec<(String, Command)> = flags
        .iter()
        .map(|(flag, value)| {
            (
                format!("{flag} {value}"),
                up(data.path(), &[flag, value], &[]),
            )
        })
        .collect();
    for (var, value) in [
        ("WASMSHOP_MAX_INSTANCES", "2000000000"),
        ("WASMSHOP_REQUEST_TIMEOUT_SECS", "1e20"),
        ("WASMSHOP_MAX_MEMORY_MB", "99999999999999"),
        ("WASMSHOP_DEAD_LETTER_MAX_COUNT", "0"),
        ("WASMSHOP_DEAD_LETTER_MAX_AGE_SECS", "two weeks"),
        ("WASMSHOP_METRICS_LISTEN", ":3000"),
    ] {
        cases.push((
            format!("{var}={value}"),
            up(data.path(), &[], &[(var, value)]),
        ));
    }
    for (case, cmd) in cases {
        let (code, text) = run_for(cmd, Duration::from_secs(30));
        assert_eq!(code, Some(2), "{case}: exit code; output:\n{text}");
        assert!(
            !text.contains("panicked") && !text.contains("backtrace"),
            "{case}: no panic\n{text}"
        );
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{case}: one error line\n{text}");
        assert!(
            text.lines().filter(|l| !l.trim().is_empty()).count() <= 2,
            "{case}: the error and at most clap's pointer to --help\n{text}"
        );
        let flag = case.split([' ', '=']).next().unwrap();
        let named = flag
            .trim_start_matches("WASMSHOP_")
            .to_ascii_lowercase()
            .replace('_', "-");
        assert!(
            errors[0].to_ascii_lowercase().contains(&named) || errors[0].contains(flag),
            "{case}: the line names the flag\n{text}"
        );
        if case.contains('-') && case.split(' ').nth(1).is_some_and(|v| v.starts_with('-')) {
            assert!(
                errors[0].contains("out of range"),
                "{case}: a negative value is out of range, like the others\n{text}"
            );
        }
    }
}

#[test]
fn no_password_in_a_backend_url_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "Sup3rS3cretPassw0rd";
    for url in [
        // Nothing listens there: the host cannot reach it.
        format!("redis://:{secret}@127.0.0.1:1"),
        format!("redis://user:{secret}@127.0.0.1:notaport"),
    ] {
        let rc = dir.path().join("rc.toml");
        std::fs::write(
            &rc,
            format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n"),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let rc_arg = rc.display().to_string();
        let (_, text) = run_for(
            up(
                data.path(),
                &["--runtime-config-file", &rc_arg],
                &[("APP_API_TOKEN", secret), ("DAPR_API_TOKEN", secret)],
            ),
            Duration::from_secs(20),
        );
        assert!(
            !text.contains(secret),
            "{url}: the password was printed:\n{text}"
        );
    }
}

#[test]
fn a_second_host_on_the_same_data_directory_stops_at_once_naming_the_first() {
    let host = Host::start_app();
    let (code, text) = run_for(up(host.data_dir(), &[], &[]), Duration::from_secs(60));
    assert!(
        code.is_some_and(|c| c != 0),
        "the second host exits with an error ({code:?}):\n{text}"
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains(&host.pid().to_string()),
        "the error names the process holding the directory: {}",
        errors[0]
    );
    // The first host carries on.
    assert_eq!(host.get("/healthz").status(), 200);
}

#[test]
fn read_only_commands_work_while_the_host_runs() {
    let host = Host::start_app();
    let r = host
        .client()
        .post(host.url("/api/products"))
        .header("x-tenant-id", "ro")
        .json(
            &json!({"id": "anvil", "name": "Anvil", "price": 10, "stock": 5, "category": "tools"}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let out: Output = Command::new(wasmshop_bin())
        .args(["messages", "--topic", "products.deadletter", "--data-dir"])
        .arg(host.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`wasmshop messages` while the host runs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.get("/healthz").status(), 200);

    // A directory without a database: one line saying so, no panic, and
    // nothing created there.
    let empty = tempfile::tempdir().unwrap();
    let out: Output = Command::new(wasmshop_bin())
        .args(["messages", "--topic", "products.deadletter", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--data-dir") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "`wasmshop messages` created files in {}",
        empty.path().display()
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0_with_its_data_kept() {
    let mut host = Host::start_app();
    let body =
        json!({"id": "late", "name": "Late anvil", "price": 10, "stock": 5, "category": "tools"})
            .to_string();
    let (first, rest) = body.as_bytes().split_at(10);
    let mut s = TcpStream::connect(host.base().trim_start_matches("http://")).unwrap();
    write!(
        s,
        "POST /api/products HTTP/1.1\r\nhost: x\r\nx-tenant-id: term\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Command::new("kill")
        .arg("-TERM")
        .arg(host.pid().to_string())
        .status()
        .unwrap();
    assert!(signalled.success());
    std::thread::sleep(Duration::from_millis(500));
    // The rest of the body after the signal: the request still completes.
    s.write_all(rest).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let response = String::from_utf8_lossy(&response).to_string();
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the request in flight completes: {response:?}\n{}",
        host.logs()
    );
    let status = host.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean stop exits 0\n{}",
        host.logs()
    );
    host.restart();
    let r = host
        .client()
        .get(host.url("/api/products/late"))
        .header("x-tenant-id", "term")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the product created during the stop is kept"
    );
}
