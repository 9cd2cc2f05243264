//! Durability of the embedded store under group commit
//! (docs/embedded-store.md): many concurrent writes share one commit and
//! one fsync, and none is answered before that fsync, so a host killed
//! with SIGKILL in the middle of a burst has kept every write it answered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmshop_tests::{Host, client, json, wait_for};

/// Concurrent writers, as in the throughput benchmark's write rows.
const CLIENTS: usize = 64;
/// Acknowledged creates to wait for before the kill, so the burst is
/// well under way (and group commits are batching) when the host dies.
const ACKED_BEFORE_KILL: usize = 256;
const TENANT: &str = "durable";

#[test]
fn every_acknowledged_create_survives_a_kill_9_in_the_middle_of_64_concurrent_writers() {
    let mut host = Host::start_app();
    let base = host.base().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let other_statuses: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (base, stop, acked_count, acked, other_statuses) = (
                base.clone(),
                stop.clone(),
                acked_count.clone(),
                acked.clone(),
                other_statuses.clone(),
            );
            std::thread::spawn(move || {
                let http = client();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = format!("c{c}-{n}");
                    let sent = http
                        .post(format!("{base}/api/products"))
                        .header("X-Tenant-Id", TENANT)
                        .json(&json!({
                            "id": id, "name": format!("product {id}"),
                            "price": 1.5, "stock": 10, "category": format!("cat{}", c % 4),
                        }))
                        .send();
                    match sent {
                        Ok(r) if r.status().as_u16() == 201 => {
                            acked.lock().unwrap().push(id);
                            acked_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let text = r.text().unwrap_or_default();
                            other_statuses.lock().unwrap().push((status, text));
                        }
                        // The host is gone (killed): this writer is done.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let reached = wait_for(Duration::from_secs(300), || {
        (acked_count.load(Ordering::SeqCst) >= ACKED_BEFORE_KILL).then_some(())
    });
    // Killed while the writers are still sending (none has been stopped).
    host.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("a writer thread panicked");
    }
    assert!(
        reached.is_some(),
        "only {} creates were acknowledged before the time limit; the host log:\n{}",
        acked_count.load(Ordering::SeqCst),
        host.logs()
    );
    // Shedding load (429, 503) is allowed and simply not acknowledged;
    // anything else means a create failed for another reason.
    let others = other_statuses.lock().unwrap();
    let failed: Vec<_> = others
        .iter()
        .filter(|(status, _)| ![429, 503].contains(status))
        .collect();
    assert!(
        failed.is_empty(),
        "before the kill every create should be a 201 (or 429/503 when overloaded); got {:?}",
        &failed[..failed.len().min(5)]
    );

    host.restart();
    let acked = acked.lock().unwrap();
    eprintln!(
        "{} creates acknowledged before the kill; checking each after the restart",
        acked.len()
    );
    let http = client();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| {
            let r = http
                .get(host.url(&format!("/api/products/{id}")))
                .header("X-Tenant-Id", TENANT)
                .send()
                .expect("GET after the restart");
            r.status().as_u16() != 200
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged products are gone after kill -9 and restart, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}
