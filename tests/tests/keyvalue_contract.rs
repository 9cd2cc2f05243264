//! The `KeyValueStore` contract (written in
//! `host/src/capabilities/keyvalue/mod.rs`) checked against every
//! key-value backend, in process: the embedded database in a temporary
//! directory, a real `redis-server` on a free port, and the Dapr sidecar
//! double (`tests/src/daprd.rs`). Each check runs once per backend
//! (`mod embedded`, `mod redis`, `mod dapr`).

use std::sync::Arc;
use wasmshop::backends::dapr::client::DaprClient;
use wasmshop::backends::dapr::keyvalue::DaprKeyValue;
use wasmshop::backends::embedded::{EmbeddedDb, EmbeddedKeyValue};
use wasmshop::backends::redis::{RedisConn, RedisKeyValue};
use wasmshop::capabilities::BackendError;
use wasmshop::capabilities::keyvalue::{
    CasVersion, KeyValueBackend, KeyValueStore, StoreError, SwapError,
};
use wasmshop_tests::RedisServer;
use wasmshop_tests::daprd::{DaprCluster, STATE_STORE, Sidecar, SidecarOptions};

/// What keeps a backend's server (or directory) alive during a check.
#[allow(dead_code)] // held for its Drop
enum Server {
    Embedded(tempfile::TempDir),
    Redis(RedisServer),
    Dapr(DaprCluster, Sidecar),
}

/// Which backend a check runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Embedded,
    Redis,
    Dapr,
}

/// Runs `check` against a fresh backend of `kind`. Servers are started
/// and stopped outside the test's runtime (the Dapr double owns one).
fn run<F, Fut>(kind: Kind, check: F)
where
    F: FnOnce(Kind, Arc<dyn KeyValueBackend>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = match kind {
        Kind::Embedded => Server::Embedded(tempfile::tempdir().expect("temp dir")),
        Kind::Redis => Server::Redis(RedisServer::start()),
        Kind::Dapr => {
            let cluster = DaprCluster::new();
            let sidecar = cluster.sidecar("contract", SidecarOptions::default());
            Server::Dapr(cluster, sidecar)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let backend: Arc<dyn KeyValueBackend> = match &server {
            Server::Embedded(dir) => Arc::new(EmbeddedKeyValue::new(
                EmbeddedDb::open(dir.path()).expect("embedded database"),
            )),
            Server::Redis(r) => Arc::new(RedisKeyValue::new(
                RedisConn::open(&r.url(), "test").expect("redis url"),
            )),
            Server::Dapr(_, sidecar) => Arc::new(DaprKeyValue::new(
                DaprClient::new(sidecar.port(), None).expect("dapr client"),
                STATE_STORE,
            )),
        };
        backend.ready().await.expect("the backend is ready");
        check(kind, backend).await;
    });
    drop(rt);
    drop(server);
}

/// One `#[test]` per check and backend.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $check() { super::run(super::Kind::Embedded, super::$check); } )*
        }
        mod redis {
            $( #[test] fn $check() { super::run(super::Kind::Redis, super::$check); } )*
        }
        mod dapr {
            $( #[test] fn $check() { super::run(super::Kind::Dapr, super::$check); } )*
        }
    };
}

contract!(
    values_round_trip,
    namespaces_are_separate,
    swap_writes_only_at_the_version_read,
    versions_are_never_reused,
    concurrent_swaps_lose_no_update,
    increment_is_atomic_and_checked,
    batches_answer_in_order,
    list_keys_pages_or_is_unsupported,
);

fn open(b: &Arc<dyn KeyValueBackend>, component: &str, label: &str) -> Arc<dyn KeyValueStore> {
    b.open(component, label).expect("open a namespace")
}

/// Keys as the services write them (with `/`) and plain ones.
const KEYS: [&str; 3] = ["plain", "tenant/a/product/1", "with space & symbols?"];

async fn values_round_trip(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let s = open(&b, "c", "default");
    let values: [&[u8]; 4] = [b"{\"a\":1}", b"not json", &[0, 159, 146, 150, 255], b""];
    for key in KEYS {
        assert_eq!(s.get(key).await.unwrap(), None, "{key} starts absent");
        assert!(!s.exists(key).await.unwrap());
        for value in values {
            s.set(key, value).await.unwrap();
            assert_eq!(s.get(key).await.unwrap().as_deref(), Some(value), "{key}");
            assert!(s.exists(key).await.unwrap());
        }
        s.delete(key).await.unwrap();
        assert_eq!(s.get(key).await.unwrap(), None);
        s.delete(key)
            .await
            .expect("deleting an absent key succeeds");
    }
}

async fn namespaces_are_separate(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let spaces = [
        open(&b, "a", "default"),
        open(&b, "a", "other"),
        open(&b, "b", "default"),
        open(&b, "a*", "default"),
    ];
    for (i, s) in spaces.iter().enumerate() {
        s.set("k", i.to_string().as_bytes()).await.unwrap();
    }
    for (i, s) in spaces.iter().enumerate() {
        assert_eq!(
            s.get("k").await.unwrap().as_deref(),
            Some(i.to_string().as_bytes())
        );
    }
    spaces[0].delete("k").await.unwrap();
    assert!(spaces[1].exists("k").await.unwrap());
}

async fn swap_writes_only_at_the_version_read(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let s = open(&b, "c", "default");
    let (current, version) = s.read_versioned("k").await.unwrap();
    assert_eq!((current, &version), (None, &CasVersion::Absent));
    s.swap("k", &version, b"1").await.expect("absent: create");
    assert!(
        matches!(
            s.swap("k", &CasVersion::Absent, b"2").await,
            Err(SwapError::CasFailed)
        ),
        "an absent-version swap only creates"
    );
    let (current, v1) = s.read_versioned("k").await.unwrap();
    assert_eq!(current.as_deref(), Some(&b"1"[..]));
    s.set("k", b"other writer").await.unwrap();
    assert!(matches!(
        s.swap("k", &v1, b"stale").await,
        Err(SwapError::CasFailed)
    ));
    assert_eq!(
        s.get("k").await.unwrap().as_deref(),
        Some(&b"other writer"[..]),
        "a failed swap writes nothing"
    );
    let (_, v2) = s.read_versioned("k").await.unwrap();
    s.swap("k", &v2, b"3").await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"3"[..]));
}

async fn versions_are_never_reused(kind: Kind, b: Arc<dyn KeyValueBackend>) {
    if kind == Kind::Dapr {
        // The contract's one exception: ETags are the state store's, and
        // state.redis (which the double follows) restarts them at 1 for a
        // re-created key (docs/dapr-reference.md).
        return;
    }
    let s = open(&b, "c", "default");
    s.set("k", b"1").await.unwrap();
    let (_, old) = s.read_versioned("k").await.unwrap();
    s.delete("k").await.unwrap();
    s.set("k", b"1").await.unwrap();
    assert!(
        matches!(s.swap("k", &old, b"2").await, Err(SwapError::CasFailed)),
        "a handle from before the delete must not succeed"
    );
}

/// Read-modify-write through `read_versioned`/`swap` from many tasks at
/// once, as the services' `update_json` does: every update lands.
async fn concurrent_swaps_lose_no_update(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let (tasks, each) = (4, 10);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let s = open(&b, "c", "default");
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                loop {
                    let (current, version) = s.read_versioned("counter").await.unwrap();
                    let n: u32 = current
                        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                        .unwrap_or(0);
                    match s
                        .swap("counter", &version, (n + 1).to_string().as_bytes())
                        .await
                    {
                        Ok(()) => break,
                        Err(SwapError::CasFailed) => continue,
                        Err(e) => panic!("swap failed: {e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let s = open(&b, "c", "default");
    assert_eq!(
        s.get("counter").await.unwrap(),
        Some((tasks * each).to_string().into_bytes())
    );
}

async fn increment_is_atomic_and_checked(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let s = open(&b, "c", "default");
    assert_eq!(s.increment("n", 5).await.unwrap(), 5, "absent counts as 0");
    assert_eq!(s.increment("n", -7).await.unwrap(), -2);
    let mut handles = Vec::new();
    for _ in 0..4 {
        let s = open(&b, "c", "default");
        handles.push(tokio::spawn(async move {
            for _ in 0..10 {
                s.increment("n", 1).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(s.get("n").await.unwrap(), Some(b"38".to_vec()));

    s.set("text", b"abc").await.unwrap();
    let e = s.increment("text", 1).await.unwrap_err();
    assert!(matches!(e.0, BackendError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("not an integer"), "{e}");
    assert_eq!(s.get("text").await.unwrap().as_deref(), Some(&b"abc"[..]));

    s.set("big", i64::MAX.to_string().as_bytes()).await.unwrap();
    let e = s.increment("big", 1).await.unwrap_err();
    assert!(matches!(e.0, BackendError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("overflows"), "{e}");
}

async fn batches_answer_in_order(_: Kind, b: Arc<dyn KeyValueBackend>) {
    let s = open(&b, "c", "default");
    let entries: Vec<(String, Vec<u8>)> = KEYS
        .iter()
        .map(|k| (k.to_string(), format!("v:{k}").into_bytes()))
        .collect();
    s.set_many(&entries).await.unwrap();
    let asked = vec![
        KEYS[2].to_string(),
        "missing".to_string(),
        KEYS[0].to_string(),
    ];
    assert_eq!(
        s.get_many(&asked).await.unwrap(),
        vec![
            Some(format!("v:{}", KEYS[2]).into_bytes()),
            None,
            Some(format!("v:{}", KEYS[0]).into_bytes()),
        ]
    );
    s.delete_many(&[KEYS[0].to_string(), "missing".to_string()])
        .await
        .unwrap();
    assert_eq!(s.get(KEYS[0]).await.unwrap(), None);
    assert!(s.exists(KEYS[1]).await.unwrap());
    assert_eq!(
        s.get_many(&[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
}

async fn list_keys_pages_or_is_unsupported(kind: Kind, b: Arc<dyn KeyValueBackend>) {
    let s = open(&b, "c", "default");
    let neighbour = open(&b, "c", "other");
    neighbour.set("not-mine", b"v").await.unwrap();
    if kind == Kind::Dapr {
        let e: StoreError = s.list_keys(None).await.unwrap_err();
        assert!(matches!(e.0, BackendError::Unsupported { .. }), "{e}");
        return;
    }
    let wanted: Vec<String> = (0..2100).map(|i| format!("k{i:04}")).collect();
    let entries: Vec<(String, Vec<u8>)> =
        wanted.iter().map(|k| (k.clone(), b"v".to_vec())).collect();
    s.set_many(&entries).await.unwrap();
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let (keys, next) = s.list_keys(cursor.as_deref()).await.unwrap();
        seen.extend(keys);
        pages += 1;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, wanted, "every key, none of another namespace");
    assert!(pages >= 2, "2100 keys take more than one page");
    let e = s.list_keys(Some("not-a-cursor-of-this-store")).await;
    // The embedded store's cursor is the last key: any text is a valid
    // place to resume from. Redis' is a SCAN cursor and must be refused.
    if kind == Kind::Redis {
        let e = e.unwrap_err();
        assert!(matches!(e.0, BackendError::Rejected { .. }), "{e}");
    }
}
