//! The HTTP front door under slow and numerous clients (issue 14, item 1;
//! the limits are in `docs/operations.md`): a slow client costs the host a
//! socket, never an instance; an exhausted instance pool is a 503 with
//! `Retry-After`, never a 500; the probes answer throughout.
//!
//! Assertions are on statuses and on requests completing before a
//! generous client timeout, never on how fast they were.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use wasmshop_tests::{Host, Value, json, recorder_manifest};

/// A client timeout generous enough for a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// Raises this test process's own open-files limit, so it can hold its
/// side of the sockets (the host raises its own the same way).
fn raise_own_open_files_limit(needed: u64) {
    let limit = wasmshop::trigger::http::front_door::raise_open_files_limit().unwrap();
    assert!(
        limit >= needed,
        "this test needs {needed} open files; the hard limit allows {limit} (raise `ulimit -Hn`)"
    );
}

fn addr(host: &Host) -> String {
    host.base().trim_start_matches("http://").to_string()
}

/// A client that sends the head of a `POST /api/products` announcing a
/// 100000-byte body, one byte of it, and then nothing.
fn slow_body(host: &Host) -> TcpStream {
    let mut s = TcpStream::connect(addr(host)).unwrap();
    write!(
        s,
        "POST /api/products HTTP/1.1\r\nhost: x\r\nx-tenant-id: slow\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
    )
    .unwrap();
    s
}

/// Reads one response head from `s`: its status and headers (lower-case
/// names), or `None` when the host closed the connection without one.
fn read_head(s: &mut TcpStream) -> Option<(u16, String)> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Whether the host closed `s` (EOF or reset) before `PATIENCE` passed,
/// after discarding whatever response it sent.
fn closed_by_host(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// Ordinary requests still succeed and the probes answer.
fn assert_still_serving(host: &Host) {
    let c = client();
    for i in 0..10 {
        let r = c
            .get(host.url("/api/products"))
            .header("x-tenant-id", "reader")
            .send()
            .unwrap_or_else(|e| panic!("GET /api/products #{i} did not complete: {e}"));
        assert!(
            r.status().is_success(),
            "GET /api/products #{i}: {}; host log:\n{}",
            r.status(),
            host.logs()
        );
    }
    let r = c
        .post(host.url("/api/products"))
        .header("x-tenant-id", "reader")
        .json(
            &json!({"id": "anvil", "name": "Anvil", "price": 10, "stock": 5, "category": "tools"}),
        )
        .send()
        .expect("a POST with its whole body completes");
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    for probe in ["/healthz", "/readyz"] {
        let r = c.get(host.url(probe)).send().expect("the probe answers");
        assert_eq!(r.status(), 200, "{probe}");
    }
}

#[test]
fn a_thousand_slow_bodies_with_default_settings_leave_the_service_answering() {
    raise_own_open_files_limit(1200);
    let host = Host::start_app();
    let sockets: Vec<TcpStream> = (0..1000).map(|_| slow_body(&host)).collect();
    assert_still_serving(&host);
    drop(sockets);
}

#[test]
fn fifty_slow_bodies_do_not_take_the_fifty_instances() {
    let host = Host::builder().arg("--max-instances").arg("50").start();
    let sockets: Vec<TcpStream> = (0..50).map(|_| slow_body(&host)).collect();
    assert_still_serving(&host);
    drop(sockets);
}

/// A manifest whose `recorder` may chain to itself, for the pool tests.
fn self_chaining_recorder() -> String {
    recorder_manifest(&[]).replace(
        "allowed_outbound_hosts = [\"http://product.spin.internal\"]",
        "allowed_outbound_hosts = [\"http://recorder.spin.internal\"]",
    )
}

#[test]
fn an_exhausted_instance_pool_answers_503_with_retry_after() {
    let host = Host::builder()
        .manifest(self_chaining_recorder())
        .arg("--max-instances")
        .arg("1")
        .arg("--request-timeout-secs")
        .arg("6")
        .start();
    // Holds the only instance until its time limit stops it.
    let busy = {
        let url = host.url("/recorder/loop");
        std::thread::spawn(move || client().get(url).send().map(|r| r.status().as_u16()))
    };
    let c = client();
    let refused = wasmshop_tests::wait_for(Duration::from_secs(5), || {
        let r = c.get(host.url("/recorder/echo")).send().unwrap();
        (r.status() == 503).then_some(r)
    })
    .expect("a request finding every instance busy is refused");
    assert!(
        refused.headers().get("retry-after").is_some(),
        "a capacity 503 says when to retry"
    );
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().unwrap();
    assert_eq!(
        problem["type"], "urn:wasmshop:problem:capacity",
        "{problem}"
    );
    assert_eq!(c.get(host.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(
        busy.join().unwrap().unwrap(),
        503,
        "the loop hit its time limit"
    );
}

#[test]
fn a_chained_call_finding_no_free_instance_fails_at_once() {
    let host = Host::builder()
        .manifest(self_chaining_recorder())
        .arg("--max-instances")
        .arg("1")
        .start();
    // The caller holds the only instance; its call to itself cannot get
    // one and must not wait for the caller to give it back.
    let r = client()
        .get(host.url("/recorder/outbound?url=http://recorder.spin.internal/echo"))
        .send()
        .expect("the chained call completes instead of waiting");
    assert_eq!(r.status(), 200);
    let outer: Value = r.json().unwrap();
    assert_eq!(outer["status"], 503, "{outer}");
}

#[test]
fn at_the_connection_cap_the_oldest_slow_connection_is_shed() {
    let host = Host::builder().arg("--max-connections").arg("20").start();
    let mut oldest = slow_body(&host);
    // Only a connection slow for longer than a second may be shed.
    std::thread::sleep(Duration::from_millis(1500));
    let rest: Vec<TcpStream> = (0..30).map(|_| slow_body(&host)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert_still_serving(&host);
    assert!(
        closed_by_host(&mut oldest),
        "the oldest slow connection was shed to make room"
    );
    drop(rest);
}

#[test]
fn a_slow_head_is_cut_off_but_an_idle_keep_alive_connection_is_kept() {
    let host = Host::builder()
        .arg("--header-read-timeout-secs")
        .arg("1")
        .start();
    let mut slow = TcpStream::connect(addr(&host)).unwrap();
    write!(slow, "GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
    assert!(
        closed_by_host(&mut slow),
        "a head not finished within the header-read timeout is cut off"
    );

    let mut idle = TcpStream::connect(addr(&host)).unwrap();
    let request = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    idle.write_all(request.as_bytes()).unwrap();
    let (status, head) = read_head(&mut idle).expect("a response");
    assert_eq!(status, 200);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let mut body = vec![0; length];
    idle.read_exact(&mut body).unwrap();
    // Idle for longer than the header-read timeout: still open.
    std::thread::sleep(Duration::from_millis(2500));
    idle.write_all(request.as_bytes()).unwrap();
    assert_eq!(
        read_head(&mut idle).map(|(s, _)| s),
        Some(200),
        "an idle keep-alive connection outlives the header-read timeout"
    );
}

#[test]
fn a_body_slower_than_its_deadline_gets_408() {
    let host = Host::builder()
        .arg("--body-read-timeout-secs")
        .arg("1")
        .start();
    let mut s = slow_body(&host);
    let (status, _) = read_head(&mut s).expect("a response before the client gives up");
    assert_eq!(status, 408);
    assert_still_serving(&host);
}

#[test]
fn bodies_past_the_size_limit_or_the_memory_budget_are_refused_before_any_component_runs() {
    let host = Host::builder()
        .arg("--max-request-body-bytes")
        .arg("700000")
        .arg("--body-buffer-mb")
        .arg("1")
        .start();
    let start = |declared: usize, sent: usize| {
        let mut s = TcpStream::connect(addr(&host)).unwrap();
        write!(
            s,
            "POST /api/products HTTP/1.1\r\nhost: x\r\nx-tenant-id: big\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
        )
        .unwrap();
        s.write_all(&vec![b' '; sent]).unwrap();
        s
    };
    let mut too_large = start(800_000, 0);
    assert_eq!(read_head(&mut too_large).map(|(s, _)| s), Some(413));

    // 600 KB held by one unfinished body leave no room for another 600 KB
    // in a budget of 1 MiB.
    let _first = start(650_000, 600_000);
    std::thread::sleep(Duration::from_millis(500));
    let mut second = start(650_000, 600_000);
    let (status, head) = read_head(&mut second).expect("a response");
    assert_eq!(status, 503);
    assert!(head.contains("retry-after:"), "{head}");
    assert_eq!(
        client().get(host.url("/healthz")).send().unwrap().status(),
        200
    );
}

#[test]
fn a_body_finding_the_memory_budget_spent_sheds_a_stalled_trickling_body() {
    // A client that sends most of a large body and then a byte now and
    // then would otherwise hold the budget until its body deadline (30 s
    // by default), and every request with a body would get 503 meanwhile.
    let host = Host::builder()
        .arg("--max-request-body-bytes")
        .arg("1100000")
        .arg("--body-buffer-mb")
        .arg("1")
        .start();
    let mut trickler = TcpStream::connect(addr(&host)).unwrap();
    write!(
        trickler,
        "POST /api/products HTTP/1.1\r\nhost: x\r\nx-tenant-id: big\r\ncontent-type: application/json\r\ncontent-length: 1040000\r\n\r\n"
    )
    .unwrap();
    // 1,000,000 bytes: 48 KB of the 1 MiB budget left.
    trickler.write_all(&vec![b' '; 1_000_000]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let mut s = trickler.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A byte every 200 ms: arriving, but far below 64 KiB/s.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && s.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // A complete 100 KB product (JSON padded with spaces) needs room.
    let product = json!({"name": "Padded", "price": 1.0, "stock": 1, "category": "tools"});
    let body = format!("{product}{}", " ".repeat(100_000));
    let r = client()
        .post(host.url("/api/products"))
        .header("x-tenant-id", "big")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    // The trickling body was shed to make that room.
    let (status, head) = read_head(&mut trickler).expect("the shed body gets an answer");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = trickle.join();
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after:"), "{head}");
}

#[test]
fn slow_heads_on_the_metrics_port_do_not_stop_a_scrape() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let host = Host::builder()
        .arg("--metrics-listen")
        .arg(&metrics)
        .arg("--header-read-timeout-secs")
        .arg("2")
        .start();
    assert_eq!(host.get("/healthz").status(), 200);
    // More sockets than the metrics listener's connection cap, each
    // stuck in the middle of its request head.
    let cap = wasmshop::trigger::http::METRICS_MAX_CONNECTIONS;
    let mut slow: Vec<TcpStream> = (0..cap + 36)
        .map(|_| {
            let mut s = TcpStream::connect(&metrics).unwrap();
            write!(s, "GET /metrics HTTP/1.1\r\nhost: x\r\n").unwrap();
            s
        })
        .collect();
    // Heads slow for over a second may be shed for a scrape.
    std::thread::sleep(Duration::from_millis(1200));
    let c = client();
    for i in 0..5 {
        let r = c
            .get(format!("http://{metrics}/metrics"))
            .send()
            .unwrap_or_else(|e| panic!("scrape #{i} did not complete: {e}"));
        assert_eq!(r.status(), 200, "scrape #{i}");
    }
    // The slow heads are cut off (header-read timeout, or shed at the cap)
    // rather than held for ever.
    assert!(
        closed_by_host(&mut slow[0]),
        "the oldest slow head is closed"
    );
    assert!(
        closed_by_host(slow.last_mut().unwrap()),
        "the newest slow head is closed once its header-read time is up"
    );
    assert_eq!(host.get("/healthz").status(), 200);
}

/// Seeds `count` products in tenant `big`, each with a 2000-emoji
/// description (8 KB of UTF-8), so one page of them is a large response.
fn seed_big_products(host: &Host, count: usize) {
    let description: String = std::iter::repeat_n('😀', 2000).collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let description = &description;
            scope.spawn(move || {
                let c = client();
                for i in (t..count).step_by(4) {
                    // The pool may be smaller than the seeding threads.
                    let r = wasmshop_tests::wait_for(PATIENCE, || {
                        let r = c
                        .post(host.url("/api/products"))
                        .header("x-tenant-id", "big")
                        .json(&json!({"id": format!("big-{i}"), "name": "Big", "description": description, "price": 1, "stock": 1}))
                        .send()
                        .unwrap();
                        (r.status() != 503).then_some(r)
                    })
                    .expect("the pool frees an instance");
                    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
                }
            });
        }
    });
}

/// Products in the big page: 700 of 8 KB make a 5.7 MB response, more
/// than the kernel's socket buffers absorb for a client that reads
/// nothing, so the host really waits on that client.
const BIG_PAGE: usize = 700;

/// A socket with a 4 KiB receive buffer that asks for the big page and
/// then reads nothing.
fn stalled_reader(host: &Host) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(addr(host).parse().unwrap()).await.unwrap()
    });
    let mut s = stream.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    write!(
        s,
        "GET /api/products?limit=1000 HTTP/1.1\r\nhost: x\r\nx-tenant-id: big\r\n\r\n"
    )
    .unwrap();
    s
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn clients_that_never_read_a_big_response_do_not_hold_instances() {
    let host = Host::builder()
        .arg("--max-instances")
        .arg("2")
        .arg("--response-buffer-mb")
        .arg("32")
        .arg("--send-timeout-secs")
        .arg("120")
        .start();
    seed_big_products(&host, BIG_PAGE);
    let big = client()
        .get(host.url("/api/products?limit=1000"))
        .header("x-tenant-id", "big")
        .send()
        .unwrap();
    assert_eq!(big.status(), 200);
    let size = big.bytes().unwrap().len();
    assert!(size > 5_000_000, "the page is large: {size} bytes");
    let before = rss_kib(host.pid());
    // Twice as many stalled readers as instances.
    let stalled: Vec<TcpStream> = (0..4).map(|_| stalled_reader(&host)).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_still_serving(&host);
    // Their responses sit in the host's response buffer (32 MiB at most),
    // not in instances: memory grows by about that, not without bound.
    let grown_mib = rss_kib(host.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32 + 100,
        "the host grew by {grown_mib} MiB for 4 stalled readers"
    );
    drop(stalled);
}

#[test]
fn a_stalled_reader_is_cut_off_after_the_send_timeout() {
    let host = Host::builder().arg("--send-timeout-secs").arg("1").start();
    seed_big_products(&host, BIG_PAGE);
    let mut stalled = stalled_reader(&host);
    std::thread::sleep(Duration::from_secs(3));
    // Reading now finds the response broken off, not the whole page.
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(
        got.len() < 5_000_000,
        "the host closed the connection of a client that accepted nothing for longer than --send-timeout-secs ({} bytes sent)",
        got.len()
    );
}

#[test]
fn at_the_connection_cap_complete_requests_get_a_response() {
    let host = Host::builder().arg("--max-connections").arg("5").start();
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let addr = addr(&host);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /api/products HTTP/1.1\r\nhost: x\r\nx-tenant-id: cap\r\nconnection: close\r\n\r\n")
                    .unwrap();
                read_head(&mut s)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (status, head) = t
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("client #{i} with a complete request got no response"));
        assert!(
            status == 200 || (status == 503 && head.contains("retry-after:")),
            "client #{i}: {status} {head}"
        );
    }
}

#[test]
fn a_refusal_by_the_front_door_is_logged_with_its_trace_id() {
    let host = Host::builder()
        .arg("--max-request-body-bytes")
        .arg("10")
        .start();
    let r = client()
        .post(host.url("/api/products"))
        .header("x-tenant-id", "t")
        .header("content-type", "application/json")
        .body(vec![b' '; 100])
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let problem: Value = r.json().unwrap();
    let trace_id = problem["traceId"].as_str().expect("a traceId").to_string();
    let logged =
        wasmshop_tests::wait_for(PATIENCE, || host.logs().contains(&trace_id).then_some(()));
    assert!(
        logged.is_some(),
        "the refusal's traceId {trace_id} is in the host log:\n{}",
        host.logs()
    );
}
