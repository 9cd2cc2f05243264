//! End-to-end tests of the order service (issue 4) against the real
//! `wasmshop` host with the real product service behind
//! `http://product.spin.internal`, on each backend: embedded and Redis (one
//! host), and Dapr (orderservice and productservice in two hosts, each
//! next to its own sidecar double, reaching each other by invocation). Every response is checked
//! against `openapi.yaml`, and published events against its `OrderEvent`.

mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::{Resp, call, openapi, schema_errors};
use reqwest::Method;
use serde_json::{Value, json};
use wasmshop_tests::{Backend, Deployment, Host, wait_for};

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn product(host: &Deployment, tenant: &str, id: &str, price: f64, stock: i64) {
    let r = call(host, Method::POST, "/api/products")
        .tenant(tenant)
        .json(json!({"id": id, "name": format!("{id} v1"), "price": price, "stock": stock}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text);
}

fn stock(host: &Deployment, tenant: &str, id: &str) -> i64 {
    let r = call(host, Method::GET, &format!("/api/products/{id}"))
        .tenant(tenant)
        .send();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["stock"].as_i64().unwrap()
}

fn body(items: &[(&str, i64)]) -> Value {
    json!({
        "customerId": "alice",
        "items": items.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>(),
    })
}

fn post(host: &Deployment, tenant: &str, body: Value) -> Resp {
    call(host, Method::POST, "/api/orders")
        .tenant(tenant)
        .json(body)
        .send()
}

/// Places an order that must succeed; returns its id.
fn place(host: &Deployment, tenant: &str, items: &[(&str, i64)]) -> String {
    let r = post(host, tenant, body(items));
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["id"].as_str().unwrap().to_owned()
}

fn get(host: &Deployment, tenant: &str, id: &str) -> Resp {
    call(host, Method::GET, &format!("/api/orders/{id}"))
        .tenant(tenant)
        .send()
}

fn set_status(host: &Deployment, tenant: &str, id: &str, status: &str) -> Resp {
    call(host, Method::PUT, &format!("/api/orders/{id}"))
        .tenant(tenant)
        .json(json!({"status": status}))
        .send()
}

fn delete(host: &Deployment, tenant: &str, id: &str) -> Resp {
    call(host, Method::DELETE, &format!("/api/orders/{id}"))
        .tenant(tenant)
        .send()
}

fn list(host: &Deployment, tenant: &str, query: &str) -> Vec<String> {
    let r = call(host, Method::GET, &format!("/api/orders{query}"))
        .tenant(tenant)
        .send();
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

fn counts(statuses: &[u16]) -> BTreeMap<u16, usize> {
    let mut c = BTreeMap::new();
    for s in statuses {
        *c.entry(*s).or_default() += 1;
    }
    c
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

// Every test that runs a host runs on each backend.
wasmshop_tests::app_tests!(
    every_endpoint_and_status_code,
    status_machine,
    failed_item_is_compensated_and_nothing_is_saved,
    idempotency_key,
    cancel_and_delete_release_stock,
    lists_filter_page_and_isolate_tenants,
    product_events_cancel_and_rename_open_orders,
    sixty_concurrent_orders_for_twenty_units,
    events_are_cloudevents_with_tenant_trace_and_snapshot,
);

fn every_endpoint_and_status_code(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "crud";
    product(&host, t, "pen", 1.5, 10);
    product(&host, t, "ink", 0.1, 1);

    // POST 201 with Location, ETag, snapshots and exact totals.
    let r = post(&host, t, body(&[("pen", 3), ("ink", 1)]));
    assert_eq!(r.status, 201, "{}", r.text);
    let order = r.json();
    let id = order["id"].as_str().unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/orders/{id}").as_str())
    );
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(order["status"], "Pending");
    assert_eq!(order["cancellationReason"], Value::Null);
    assert!(r.text.contains(r#""total":4.6"#), "{}", r.text);
    assert_eq!(order["items"][0]["productName"], "pen v1");
    assert_eq!(order["items"][0]["lineTotal"], json!(4.5));
    assert_eq!((stock(&host, t, "pen"), stock(&host, t, "ink")), (7, 0));

    // POST 400, 409 (stock; taken id), 422 (unknown product).
    let r = call(&host, Method::POST, "/api/orders")
        .tenant(t)
        .raw("{oops")
        .send();
    assert_eq!(r.status, 400);
    let r = post(&host, t, json!({"customerId": "", "items": []}));
    assert!(!r.field_errors("customerId").is_empty() && !r.field_errors("items").is_empty());
    let r = post(&host, t, body(&[("ink", 1)]));
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["type"], "urn:wasmshop:problem:insufficient-stock");
    let r = post(&host, t, body(&[("nothing-here", 1)]));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["type"], "urn:wasmshop:problem:unknown-product");
    assert!(r.json()["errors"]["items[0].productId"].is_array());
    let mut mine = body(&[("pen", 1)]);
    mine["id"] = json!("order-7");
    assert_eq!(post(&host, t, mine.clone()).status, 201);
    let r = post(&host, t, mine);
    assert_eq!(
        (r.status, r.json()["type"].clone()),
        (409, json!("urn:wasmshop:problem:order-exists"))
    );

    // GET 200 + ETag, 404; list 200, 400.
    let r = get(&host, t, id);
    assert_eq!((r.status, r.header("etag")), (200, Some("\"1\"")));
    assert_eq!(r.json(), order);
    assert_eq!(get(&host, t, "nope").status, 404);
    assert_eq!(
        list(&host, t, ""),
        vec![id.to_owned(), "order-7".to_owned()]
    );
    let r = call(&host, Method::GET, "/api/orders?limit=0&status=Lost")
        .tenant(t)
        .send();
    assert!(!r.field_errors("limit").is_empty() && !r.field_errors("status").is_empty());

    // PUT 200, 400, 404, 409, 412.
    let r = set_status(&host, t, id, "Confirmed");
    assert_eq!(
        (r.status, r.header("etag")),
        (200, Some("\"2\"")),
        "{}",
        r.text
    );
    assert!(
        !set_status(&host, t, id, "confirmed")
            .field_errors("status")
            .is_empty()
    );
    assert_eq!(set_status(&host, t, "nope", "Confirmed").status, 404);
    let r = set_status(&host, t, id, "Delivered");
    assert_eq!(r.status, 409);
    let r = call(&host, Method::PUT, &format!("/api/orders/{id}"))
        .tenant(t)
        .header("If-Match", "\"1\"")
        .json(json!({"status": "Shipped"}))
        .send();
    assert_eq!(r.status, 412);

    // DELETE 412, 204, 404.
    let r = call(&host, Method::DELETE, &format!("/api/orders/{id}"))
        .tenant(t)
        .header("If-Match", "\"1\"")
        .send();
    assert_eq!(r.status, 412);
    assert_eq!(delete(&host, t, id).status, 204);
    assert_eq!(delete(&host, t, id).status, 404);
    assert_eq!(get(&host, t, id).status, 404);
    assert_eq!(list(&host, t, ""), vec!["order-7".to_owned()]);

    // 405 with Allow.
    let r = call(&host, Method::PATCH, "/api/orders/order-7")
        .tenant(t)
        .json(json!({}))
        .send();
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, PUT, DELETE"))
    );
}

#[test]
fn product_service_unreachable_is_503_and_saves_nothing() {
    // Only the order component runs here: product.spin.internal is then
    // another app reached through a Dapr sidecar, and there is none.
    let host: Deployment = Host::builder()
        .component_ids(&["order"])
        .env("DAPR_HTTP_PORT", "9")
        .start()
        .into();
    let r = post(&host, "t", body(&[("pen", 1)]));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(list(&host, "t", "").is_empty());
}

fn status_machine(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "machine";
    product(&host, t, "p", 1.0, 100);
    // Every allowed transition.
    let id = place(&host, t, &[("p", 1)]);
    for (s, version) in [("Confirmed", 2), ("Shipped", 3), ("Delivered", 4)] {
        let r = set_status(&host, t, &id, s);
        assert_eq!(
            (
                r.status,
                r.json()["status"].clone(),
                r.json()["version"].clone()
            ),
            (200, json!(s), json!(version))
        );
    }
    let pending = place(&host, t, &[("p", 1)]);
    assert_eq!(set_status(&host, t, &pending, "Cancelled").status, 200);
    let confirmed = place(&host, t, &[("p", 1)]);
    assert_eq!(set_status(&host, t, &confirmed, "Confirmed").status, 200);
    let r = set_status(&host, t, &confirmed, "Cancelled");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cancellationReason"], "Cancelled by request");

    // A sample of forbidden ones: 409 naming both states, nothing changes.
    let open = place(&host, t, &[("p", 1)]);
    let shipped = place(&host, t, &[("p", 1)]);
    set_status(&host, t, &shipped, "Confirmed");
    set_status(&host, t, &shipped, "Shipped");
    for (order, from, to) in [
        (&open, "Pending", "Shipped"),
        (&open, "Pending", "Delivered"),
        (&shipped, "Shipped", "Cancelled"),
        (&shipped, "Shipped", "Pending"),
        (&id, "Delivered", "Cancelled"),
        (&id, "Delivered", "Shipped"),
        (&pending, "Cancelled", "Confirmed"),
        (&pending, "Cancelled", "Pending"),
    ] {
        let before = get(&host, t, order).json();
        let r = set_status(&host, t, order, to);
        assert_eq!(r.status, 409, "{from} -> {to}: {}", r.text);
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(&format!("from {from} to {to}")), "{detail}");
        assert_eq!(get(&host, t, order).json(), before);
    }
    // A malformed status is 400 even on a delivered order.
    assert_eq!(set_status(&host, t, &id, "Lost").status, 400);
}

fn failed_item_is_compensated_and_nothing_is_saved(backend: &Backend) {
    let host = Deployment::app_with_recorder(backend);
    let t = "comp";
    product(&host, t, "first", 2.0, 10);
    product(&host, t, "second", 3.0, 1);
    let r = post(&host, t, body(&[("first", 4), ("second", 2)]));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.json()["errors"]["items[1].productId"].is_array());
    assert_eq!(stock(&host, t, "first"), 10, "first item's stock restored");
    assert_eq!(stock(&host, t, "second"), 1);
    let r = post(&host, t, body(&[("first", 4), ("ghost", 1)]));
    assert_eq!(r.status, 422);
    assert_eq!(stock(&host, t, "first"), 10);
    assert!(list(&host, t, "").is_empty(), "no order saved");
    assert!(list(&host, t, "?productId=first").is_empty());
    // No OrderCreated either: the next, successful order is the only one.
    let ok = place(&host, t, &[("first", 1)]);
    let events = wait_for(Duration::from_secs(20), || {
        let e: Vec<Value> = host
            .recorded_events("orders")
            .into_iter()
            .filter(|e| e["tenantid"] == t)
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .expect("OrderCreated delivered");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["data"]["id"], ok.as_str());
}

fn idempotency_key(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "idem";
    product(&host, t, "p", 5.0, 50);
    let keyed = |key: &str, b: Value| {
        call(&host, Method::POST, "/api/orders")
            .tenant(t)
            .header("Idempotency-Key", key)
            .json(b)
            .send()
    };
    let first = keyed("k-1", body(&[("p", 2)]));
    assert_eq!(first.status, 201, "{}", first.text);
    let again = keyed("k-1", body(&[("p", 2)]));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(stock(&host, t, "p"), 48, "reserved once");
    let other = keyed("k-1", body(&[("p", 3)]));
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(
        other.json()["type"],
        "urn:wasmshop:problem:idempotency-key-reused"
    );
    assert_eq!(stock(&host, t, "p"), 48);
    // Another tenant's key space is its own.
    product(&host, "idem2", "p", 5.0, 5);
    let r = call(&host, Method::POST, "/api/orders")
        .tenant("idem2")
        .header("Idempotency-Key", "k-1")
        .json(body(&[("p", 3)]))
        .send();
    assert_eq!(r.status, 201);

    // Two concurrent requests with one key: one order, stock taken once.
    let results: Vec<Resp> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| keyed("race", body(&[("p", 4)]))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 201], "{results:#?}");
    assert_eq!(results[0].json()["id"], results[1].json()["id"]);
    assert_eq!(stock(&host, t, "p"), 44, "reserved once");
    assert_eq!(list(&host, t, "").len(), 2);
}

fn cancel_and_delete_release_stock(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "release";
    product(&host, t, "a", 1.0, 10);
    product(&host, t, "b", 1.0, 10);
    // Cancelling (PUT) returns every item's stock before answering.
    let id = place(&host, t, &[("a", 3), ("b", 2)]);
    assert_eq!((stock(&host, t, "a"), stock(&host, t, "b")), (7, 8));
    let r = call(&host, Method::PUT, &format!("/api/orders/{id}"))
        .tenant(t)
        .json(json!({"status": "Cancelled", "cancellationReason": "Found it cheaper"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["cancellationReason"], "Found it cheaper");
    assert_eq!((stock(&host, t, "a"), stock(&host, t, "b")), (10, 10));
    // Cancelling again releases nothing more.
    assert_eq!(set_status(&host, t, &id, "Cancelled").status, 200);
    assert_eq!(stock(&host, t, "a"), 10);
    // Deleting an open (Confirmed) order releases its stock.
    let id = place(&host, t, &[("a", 4)]);
    set_status(&host, t, &id, "Confirmed");
    assert_eq!(stock(&host, t, "a"), 6);
    assert_eq!(delete(&host, t, &id).status, 204);
    assert_eq!(stock(&host, t, "a"), 10);
    // Deleting a shipped order releases nothing (the goods left).
    let id = place(&host, t, &[("a", 5)]);
    set_status(&host, t, &id, "Confirmed");
    set_status(&host, t, &id, "Shipped");
    assert_eq!(delete(&host, t, &id).status, 204);
    assert_eq!(stock(&host, t, "a"), 5);
}

fn lists_filter_page_and_isolate_tenants(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "lists";
    product(&host, t, "a", 1.0, 100);
    product(&host, t, "b", 1.0, 100);
    let mut ids = Vec::new();
    for (customer, items) in [
        ("ann", vec![("a", 1)]),
        ("bob", vec![("b", 1)]),
        ("ann", vec![("a", 1), ("b", 2)]),
        ("bob", vec![("a", 3)]),
        ("ann", vec![("b", 1)]),
    ] {
        let mut b = body(&items);
        b["customerId"] = json!(customer);
        let r = post(&host, t, b);
        assert_eq!(r.status, 201);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    set_status(&host, t, &ids[1], "Confirmed");
    set_status(&host, t, &ids[3], "Cancelled");
    let all = list(&host, t, "");
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>(),
        ids.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(list(&host, t, ""), all, "stable order");
    assert_eq!(list(&host, t, "?limit=2&offset=1"), all[1..3].to_vec());
    assert!(list(&host, t, "?offset=5").is_empty());
    let sub = |want: &[usize]| -> Vec<String> {
        all.iter()
            .filter(|id| want.iter().any(|i| &ids[*i] == *id))
            .cloned()
            .collect()
    };
    assert_eq!(list(&host, t, "?customerId=ann"), sub(&[0, 2, 4]));
    assert_eq!(list(&host, t, "?productId=a"), sub(&[0, 2, 3]));
    assert_eq!(list(&host, t, "?status=Pending"), sub(&[0, 2, 4]));
    assert_eq!(list(&host, t, "?status=Confirmed"), sub(&[1]));
    assert_eq!(
        list(&host, t, "?status=Pending&productId=b&customerId=ann"),
        sub(&[2, 4])
    );
    assert_eq!(
        list(
            &host,
            t,
            "?status=Pending&productId=b&customerId=ann&limit=1&offset=1"
        ),
        sub(&[4])
    );
    // Another tenant sees none of it.
    assert!(list(&host, "someone-else", "").is_empty());
    assert_eq!(get(&host, "someone-else", &ids[0]).status, 404);
    assert_eq!(
        set_status(&host, "someone-else", &ids[0], "Confirmed").status,
        404
    );
    assert_eq!(delete(&host, "someone-else", &ids[0]).status, 404);
}

fn product_events_cancel_and_rename_open_orders(backend: &Backend) {
    let host = Deployment::app(backend);
    let t = "reactions";
    product(&host, t, "doomed", 4.25, 10);
    product(&host, t, "stays", 2.0, 10);
    let open = place(&host, t, &[("doomed", 1), ("stays", 3)]);
    let confirmed = place(&host, t, &[("doomed", 2)]);
    set_status(&host, t, &confirmed, "Confirmed");
    let shipped = place(&host, t, &[("doomed", 1), ("stays", 1)]);
    set_status(&host, t, &shipped, "Confirmed");
    set_status(&host, t, &shipped, "Shipped");
    let unrelated = place(&host, t, &[("stays", 1)]);
    // The same product id in another tenant is another product.
    product(&host, "elsewhere", "doomed", 1.0, 5);
    let foreign = place(&host, "elsewhere", &[("doomed", 1)]);
    assert_eq!(stock(&host, t, "stays"), 5);

    // Rename: open orders follow, prices stay; closed orders stay as they are.
    let r = call(&host, Method::PUT, "/api/products/doomed")
        .tenant(t)
        .json(json!({"name": "Renamed", "price": 99}))
        .send();
    assert_eq!(r.status, 200);
    let renamed = wait_for(Duration::from_secs(15), || {
        let o = get(&host, t, &open).json();
        (o["items"][0]["productName"] == "Renamed").then_some(o)
    })
    .expect("the open order shows the new name within a few seconds");
    assert_eq!(renamed["items"][0]["unitPrice"], json!(4.25));
    assert!(renamed["version"].as_i64().unwrap() >= 2);
    wait_for(Duration::from_secs(15), || {
        (get(&host, t, &confirmed).json()["items"][0]["productName"] == "Renamed").then_some(())
    })
    .expect("confirmed orders are open too");
    assert_eq!(
        get(&host, t, &shipped).json()["items"][0]["productName"],
        "doomed v1"
    );

    // Delete: open orders with the product are cancelled with a reason,
    // and their other items' stock comes back.
    let r = call(&host, Method::DELETE, "/api/products/doomed")
        .tenant(t)
        .send();
    assert_eq!(r.status, 204);
    for id in [&open, &confirmed] {
        let o = wait_for(Duration::from_secs(15), || {
            let o = get(&host, t, id).json();
            (o["status"] == "Cancelled").then_some(o)
        })
        .unwrap_or_else(|| panic!("order {id} not cancelled: {}", get(&host, t, id).text));
        assert!(
            o["cancellationReason"].as_str().unwrap().contains("doomed"),
            "{o}"
        );
    }
    wait_for(Duration::from_secs(15), || {
        (stock(&host, t, "stays") == 8).then_some(())
    })
    .unwrap_or_else(|| panic!("stock of 'stays' is {}", stock(&host, t, "stays")));
    assert_eq!(get(&host, t, &shipped).json()["status"], "Shipped");
    assert_eq!(get(&host, t, &unrelated).json()["status"], "Pending");
    assert_eq!(
        get(&host, "elsewhere", &foreign).json()["status"],
        "Pending"
    );
}

fn sixty_concurrent_orders_for_twenty_units(backend: &Backend) {
    let host = Deployment::app_with_recorder(backend);
    let t = "rush";
    product(&host, t, "hot", 9.99, 20);
    let results: Vec<Resp> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..60)
            .map(|_| {
                let host = &host;
                s.spawn(move || post(host, t, body(&[("hot", 1)])))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    let c = counts(&statuses);
    assert_eq!(c.get(&201), Some(&20), "{c:?}");
    assert_eq!(c.get(&409), Some(&40), "{c:?}");
    assert_eq!(stock(&host, t, "hot"), 0);
    assert_eq!(list(&host, t, "?productId=hot").len(), 20);
    let placed: BTreeSet<String> = results
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    // One OrderCreated per placed order and none for a refused one. Delivery
    // is at least once, so the recorder may see an event twice; it is the
    // set of orders that must match.
    let announced = wait_for(Duration::from_secs(90), || {
        let ids: BTreeSet<String> = host
            .recorded_events("orders")
            .into_iter()
            .filter(|e| e["tenantid"] == t && e["type"] == "OrderCreated")
            .map(|e| e["data"]["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (ids.len() >= placed.len()).then_some(ids)
    })
    .expect("20 OrderCreated events");
    assert_eq!(announced, placed);
}

fn events_are_cloudevents_with_tenant_trace_and_snapshot(backend: &Backend) {
    let host = Deployment::app_with_recorder(backend);
    let t = "events";
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    product(&host, t, "p", 12.5, 5);
    let r = call(&host, Method::POST, "/api/orders")
        .tenant(t)
        .header("traceparent", trace)
        .json(body(&[("p", 2)]))
        .send();
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    set_status(&host, t, &id, "Confirmed");
    set_status(&host, t, &id, "Cancelled");
    // Delivery is at least once: the recorder may see one event twice
    // (same CloudEvent id), which a subscriber is expected to drop.
    let events = wait_for(Duration::from_secs(20), || {
        let mut seen = BTreeSet::new();
        let e: Vec<Value> = host
            .recorded_events("orders")
            .into_iter()
            .filter(|e| e["tenantid"] == t)
            .filter(|e| seen.insert(e["id"].to_string()))
            .collect();
        (e.len() >= 4).then_some(e)
    })
    .expect("order events delivered");
    let mut kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "OrderCancelled",
            "OrderCreated",
            "OrderStatusChanged",
            "OrderStatusChanged"
        ]
    );
    let schema = &openapi()["components"]["schemas"]["OrderEvent"];
    for e in &events {
        let errors = schema_errors(schema, e);
        assert!(errors.is_empty(), "{e}: {errors:?}");
        assert_eq!(e["subject"], id.as_str());
    }
    let created = events.iter().find(|e| e["type"] == "OrderCreated").unwrap();
    // Same trace as the request; the parent is the host's server span for
    // it (W3C: each hop that makes a span puts its own id there).
    let trace_id = |tp: &str| tp.split('-').nth(1).map(str::to_owned);
    assert_eq!(
        trace_id(created["traceparent"].as_str().unwrap()),
        trace_id(trace)
    );
    assert_eq!(created["data"]["total"], json!(25));
    let cancelled = events
        .iter()
        .find(|e| e["type"] == "OrderCancelled")
        .unwrap();
    assert_eq!(cancelled["data"]["status"], "Cancelled");
}
