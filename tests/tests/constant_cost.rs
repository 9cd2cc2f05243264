//! The storage layout of docs/storage-layout.md end to end, on each
//! backend: lists spread over many index pages stay complete and exact
//! whichever way they are walked, no stored value grows past 64 KiB, stock
//! held by an order that died comes back by itself, and concurrent
//! creates of one id leave it in exactly one category.

mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::*;
use reqwest::Method;
use serde_json::{Value, json};
use wasmshop_tests::{Backend, Deployment, Host, HostBuilder, wait_for};

wasmshop_tests::app_tests!(
    a_tenant_spanning_many_index_pages,
    an_order_that_dies_mid_creation_gives_its_stock_back,
    concurrent_creates_of_one_id_land_in_one_category,
);

/// Largest value a service may store (docs/storage-layout.md).
const MAX_VALUE_BYTES: usize = 64 << 10;

fn start(backend: &Backend, base: HostBuilder) -> Deployment {
    Deployment::start_with(backend, None, &["product", "order"], base)
}

/// Runs `f(i)` for `i in 0..n` on `threads` threads; results in `i` order.
fn in_parallel<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            return mine;
                        }
                        mine.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

fn create_product(d: &Deployment, t: &str, body: Value) -> Resp {
    call(d, Method::POST, "/api/products")
        .tenant(t)
        .json(body)
        .send()
}

/// The `rel="next"` target of a `Link` header: a relative URL.
fn next_link(r: &Resp) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    let target = link.strip_prefix('<')?.split_once('>')?.0.to_string();
    assert!(target.starts_with('/'), "a relative URL: {link}");
    Some(target)
}

/// Walks a list from `first` by following `Link: rel="next"`; the items
/// of every page in order, and how many pages it took.
fn walk_by_cursor(d: &Deployment, t: &str, first: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut path = first.to_string();
    let mut pages = 0;
    loop {
        let r = call(d, Method::GET, &path).tenant(t).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        pages += 1;
        let page = r.json().as_array().unwrap().clone();
        let next = next_link(&r);
        assert!(
            !page.is_empty() || next.is_none(),
            "an empty page links on: {path}"
        );
        items.extend(page);
        match next {
            Some(n) => path = n,
            None => return (items, pages),
        }
        assert!(pages < 1000, "the walk does not end: {path}");
    }
}

/// Walks a list by `offset` pages of `limit` until an empty page.
fn walk_by_offset(d: &Deployment, t: &str, base: &str, limit: usize) -> Vec<Value> {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    loop {
        let path = format!("{base}{sep}limit={limit}&offset={}", items.len());
        let r = call(d, Method::GET, &path).tenant(t).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let page = r.json().as_array().unwrap().clone();
        if page.is_empty() {
            return items;
        }
        assert!(page.len() <= limit);
        items.extend(page);
        assert!(items.len() < 10_000, "the walk does not end: {path}");
    }
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts `items` hold each of `expected` exactly once. (Not their
/// order: items created concurrently may be listed a few milliseconds
/// out of `createdAt` order, as each index shard keeps append order.)
fn assert_exactly_once(what: &str, items: &[Value], expected: &BTreeSet<String>) {
    let ids = ids_of(items);
    let mut seen = BTreeMap::new();
    for id in &ids {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: listed more than once: {twice:?}");
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(&got, expected, "{what}: not every item, or others");
}

/// The largest value the deployment's store holds: its key and length.
fn largest_stored_value(d: &Deployment, backend: &Backend) -> (String, usize) {
    match backend {
        Backend::Embedded => {
            // One SQLite file per host (backends/embedded: table `kv`).
            let db = d.host_of("product").data_dir().join("wasmshop.db");
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()));
            conn.query_row(
                "SELECT ns || ' ' || key, length(value) FROM kv ORDER BY length(value) DESC LIMIT 1",
                [],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as usize)),
            )
            .expect("the store holds values")
        }
        Backend::Redis(redis) => {
            // Each key is a hash whose field `v` is the value (backends/redis).
            let script = "local best, len = '', 0 \
                for _, k in ipairs(redis.call('KEYS', 'wasmshop:kv:*')) do \
                  if redis.call('TYPE', k).ok == 'hash' then \
                    local n = redis.call('HSTRLEN', k, 'v') \
                    if n > len then best, len = k, n end \
                  end \
                end \
                return {best, len}";
            let out = redis.cli(&["EVAL", script, "0"]);
            let mut lines = out.lines();
            let key = lines.next().unwrap_or_default().to_string();
            let len = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("redis-cli answered {out:?}"));
            (key, len)
        }
        Backend::Dapr => d
            .dapr_cluster()
            .expect("a Dapr deployment")
            .largest_value()
            .expect("the state store holds values"),
    }
}

fn a_tenant_spanning_many_index_pages(backend: &Backend) {
    // Pages of 4 entries: 120 products fill 30+ pages of the `all` index
    // alone, spread over its shards.
    let d = start(
        backend,
        Host::builder().env("SPIN_VARIABLE_INDEX_PAGE_CAPACITY", "4"),
    );
    let t = "big";
    let categories = ["alpha", "beta", "gamma"];
    let statuses = in_parallel(120, 4, |i| {
        create_product(
            &d,
            t,
            json!({"id": format!("p{i:03}"), "name": format!("P{i}"), "price": 1,
                   "stock": 100, "category": categories[i % 3]}),
        )
        .status
    });
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let order_statuses = in_parallel(60, 4, |i| {
        let r = call(&d, Method::POST, "/api/orders")
            .tenant(t)
            .json(json!({"customerId": format!("c{}", i % 6),
                         "items": [{"productId": format!("p{:03}", (i * 2) % 120), "quantity": 1}]}))
            .send();
        (
            r.status,
            r.json()["id"].as_str().unwrap_or_default().to_string(),
        )
    });
    assert!(
        order_statuses.iter().all(|(s, _)| *s == 201),
        "{order_statuses:?}"
    );

    // Products: by cursor and by offset, every one exactly once.
    let all: BTreeSet<String> = (0..120).map(|i| format!("p{i:03}")).collect();
    let (by_cursor, pages) = walk_by_cursor(&d, t, "/api/products?limit=7");
    assert_exactly_once("products by cursor", &by_cursor, &all);
    assert_eq!(pages, 120usize.div_ceil(7), "full pages until the last");
    let by_offset = walk_by_offset(&d, t, "/api/products", 7);
    assert_exactly_once("products by offset", &by_offset, &all);
    assert_eq!(ids_of(&by_offset), ids_of(&by_cursor), "the same order");
    // A filter walks its own index.
    let beta: BTreeSet<String> = (0..120)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("p{i:03}"))
        .collect();
    let (items, _) = walk_by_cursor(&d, t, "/api/products?category=beta&limit=6");
    assert_exactly_once("beta by cursor", &items, &beta);
    assert!(items.iter().all(|p| p["category"] == "beta"));
    let items = walk_by_offset(&d, t, "/api/products?category=beta", 6);
    assert_exactly_once("beta by offset", &items, &beta);
    // The largest offset is an empty page, one past it a 400.
    let r = call(&d, Method::GET, "/api/products?offset=9223372036854775807")
        .tenant(t)
        .send();
    assert_eq!((r.status, r.json()), (200, json!([])));
    assert_eq!(next_link(&r), None);
    let r = call(&d, Method::GET, "/api/products?offset=9223372036854775808")
        .tenant(t)
        .send();
    assert!(!r.field_errors("offset").is_empty(), "{}", r.text);
    // A cursor belongs to its list: another filter or tenant is a 400.
    let r = call(&d, Method::GET, "/api/products?limit=7")
        .tenant(t)
        .send();
    let next = next_link(&r).expect("more than one page");
    let cursor = next
        .split("cursor=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    for (path, tenant) in [
        (format!("/api/products?category=beta&cursor={cursor}"), t),
        (format!("/api/products?cursor={cursor}"), "another"),
    ] {
        let r = call(&d, Method::GET, &path).tenant(tenant).send();
        assert!(!r.field_errors("cursor").is_empty(), "{path}: {}", r.text);
    }

    // Orders: every one exactly once, whole and filtered.
    let orders: BTreeSet<String> = order_statuses.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(orders.len(), 60);
    let (items, _) = walk_by_cursor(&d, t, "/api/orders?limit=9");
    assert_exactly_once("orders by cursor", &items, &orders);
    let items = walk_by_offset(&d, t, "/api/orders", 9);
    assert_exactly_once("orders by offset", &items, &orders);
    let of_c1: BTreeSet<String> = order_statuses
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 6 == 1)
        .map(|(_, (_, id))| id.clone())
        .collect();
    let (items, _) = walk_by_cursor(&d, t, "/api/orders?customerId=c1&limit=3");
    assert_exactly_once("orders of c1", &items, &of_c1);
    let (items, _) = walk_by_cursor(&d, t, "/api/orders?status=Pending&limit=8");
    assert_exactly_once("Pending orders", &items, &orders);
    let with_p002: BTreeSet<String> = order_statuses
        .iter()
        .enumerate()
        .filter(|(i, _)| (i * 2) % 120 == 2)
        .map(|(_, (_, id))| id.clone())
        .collect();
    let items = walk_by_offset(&d, t, "/api/orders?productId=p002", 2);
    assert_exactly_once("orders of p002", &items, &with_p002);

    // Stock went once per order.
    let r = call(&d, Method::GET, "/api/products/p002").tenant(t).send();
    assert_eq!(r.json()["stock"], 99);

    // No stored value grows with the tenant.
    let (key, len) = largest_stored_value(&d, backend);
    assert!(
        len <= MAX_VALUE_BYTES,
        "{key} holds {len} bytes, over {MAX_VALUE_BYTES}"
    );
}

/// Sum of the stock of `ids`, each read on its own (a read returns the
/// stock of expired holds).
fn total_stock(d: &Deployment, t: &str, ids: &[String]) -> i64 {
    ids.iter()
        .map(|id| {
            // The host under test stops instances after half a second; on
            // a loaded machine a read can hit that limit too, and is
            // simply read again.
            let mut attempts = 0;
            loop {
                let r = call(d, Method::GET, &format!("/api/products/{id}"))
                    .tenant(t)
                    .send();
                attempts += 1;
                if r.status == 503 && attempts < 20 {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                assert_eq!(r.status, 200, "{id}: {}", r.text);
                return r.json()["stock"].as_i64().unwrap();
            }
        })
        .sum()
}

fn an_order_that_dies_mid_creation_gives_its_stock_back(backend: &Backend) {
    // Every instance is stopped after 0.1 s: long enough for any single
    // product request, too short for an order of 100 items (100 reserves,
    // ~200 index appends, then 100 confirms, each waiting for a commit),
    // which therefore dies with some of its holds taken and none released.
    // Where it dies depends on the machine's speed: while taking holds or
    // appending its index entries (it leaves no order document), or while
    // confirming them (it leaves one in `confirming`, which the next list
    // finishes). Either way every unit must come back.
    let d = start(
        backend,
        Host::builder()
            .arg("--request-timeout-secs")
            .arg("0.1")
            .env("SPIN_VARIABLE_RESERVATION_HOLD_SECONDS", "2"),
    );
    let t = "crash";
    let ids: Vec<String> = (0..100).map(|i| format!("item{i:03}")).collect();
    let statuses = in_parallel(ids.len(), 4, |i| {
        // A create stopped by the time limit on a loaded machine is sent
        // again; if it had in fact landed, the repeat is a 409.
        let body = json!({"id": ids[i], "name": "x", "price": 1, "stock": 10});
        let mut status = create_product(&d, t, body.clone()).status;
        for _ in 0..20 {
            if status != 503 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            status = match create_product(&d, t, body.clone()).status {
                409 => 201,
                other => other,
            };
        }
        status
    });
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let items: Vec<Value> = ids
        .iter()
        .map(|id| json!({"productId": id, "quantity": 1}))
        .collect();
    let r = call(&d, Method::POST, "/api/orders")
        .tenant(t)
        .json(json!({"customerId": "c", "items": items}))
        .send();
    assert_eq!(
        r.status, 503,
        "the order should have been stopped mid-way (this machine placed 100 items within 0.1 s): {}",
        r.text
    );
    let held = 1000 - total_stock(&d, t, &ids);
    assert!(held > 0, "the order died before it held anything");

    // Past the hold time, the first list finishes a dead creation that got
    // as far as confirming: its holds expired, so it ends Cancelled and
    // returns what it had confirmed. One that died earlier left no order.
    // The list releases up to 100 holds, each a call to the product
    // service, which on a loaded machine may itself outlast the limit: a
    // 503 says to retry, as a client would.
    std::thread::sleep(Duration::from_millis(2_500));
    let r = wait_for(Duration::from_secs(10), || {
        let r = call(&d, Method::GET, "/api/orders").tenant(t).send();
        (r.status != 503).then_some(r)
    })
    .unwrap_or_else(|| panic!("the list answered 503 for 10 s: {}", d.logs()));
    assert_eq!(r.status, 200, "{}", r.text);
    for order in r.json().as_array().unwrap() {
        assert_eq!(
            (&order["status"], &order["cancellationReason"]),
            (&json!("Cancelled"), &json!("reservation expired")),
            "a dead creation is never listed as placed: {order}"
        );
    }

    // No request from the dead order is needed: reading the products
    // returns their stock.
    let whole = wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(500));
        (total_stock(&d, t, &ids) == 1000).then_some(())
    });
    assert!(
        whole.is_some(),
        "{held} units were held and not all came back: stock is {}",
        total_stock(&d, t, &ids)
    );
}

fn concurrent_creates_of_one_id_land_in_one_category(backend: &Backend) {
    let d = start(backend, Host::builder());
    let t = "race";
    // 20 ids, each created twice at once: once in alpha, once in beta.
    let results = in_parallel(40, 8, |i| {
        let (n, category) = (i / 2, ["alpha", "beta"][i % 2]);
        let r = create_product(
            &d,
            t,
            json!({"id": format!("dup{n:02}"), "name": "x", "price": 1, "category": category}),
        );
        (r.status, category)
    });
    let mut winner = BTreeMap::new();
    for (i, (status, category)) in results.iter().enumerate() {
        match status {
            201 => {
                assert!(
                    winner.insert(i / 2, *category).is_none(),
                    "dup{:02} created twice",
                    i / 2
                );
            }
            409 => {}
            other => panic!("dup{:02}: unexpected {other}", i / 2),
        }
    }
    assert_eq!(winner.len(), 20, "each id is created exactly once");

    let list = |query: &str| -> Vec<String> {
        let (items, _) = walk_by_cursor(&d, t, &format!("/api/products?{query}limit=50"));
        ids_of(&items)
    };
    let (alpha, beta, all) = (list("category=alpha&"), list("category=beta&"), list(""));
    for (n, category) in &winner {
        let id = format!("dup{n:02}");
        let r = call(&d, Method::GET, &format!("/api/products/{id}"))
            .tenant(t)
            .send();
        assert_eq!(r.json()["category"], *category, "{id}");
        let (mine, other) = if *category == "alpha" {
            (&alpha, &beta)
        } else {
            (&beta, &alpha)
        };
        assert_eq!(
            mine.iter().filter(|x| **x == id).count(),
            1,
            "{id} in {category}: {mine:?}"
        );
        assert!(!other.contains(&id), "{id} is also in the other category");
        assert_eq!(all.iter().filter(|x| **x == id).count(), 1, "{id} in all");
    }
    assert_eq!(all.len(), 20);
}
