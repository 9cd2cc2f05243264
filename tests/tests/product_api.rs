//! End-to-end tests of the product catalog (issue 3) against the real
//! `wasmshop` host, on each backend (embedded, Redis, and Dapr with the
//! product service behind its own sidecar double). Every response any test
//! receives is also checked against `openapi.yaml` (status documented for
//! the operation, media type, required headers, body schema).

mod contract;

use std::collections::BTreeMap;
use std::time::Duration;

use contract::*;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use wasmshop_tests::{Backend, Deployment, app_manifest_with_recorder, client, wait_for};

fn create(host: &Deployment, tenant: &str, body: Value) -> Value {
    let r = call(host, Method::POST, "/api/products")
        .tenant(tenant)
        .json(body)
        .send();
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()
}

fn get(host: &Deployment, tenant: &str, id: &str) -> Resp {
    call(host, Method::GET, &format!("/api/products/{id}"))
        .tenant(tenant)
        .send()
}

fn stock(host: &Deployment, tenant: &str, id: &str) -> i64 {
    let r = get(host, tenant, id);
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["stock"].as_i64().unwrap()
}

/// Holds `quantity` of product `id` for reservation `rid`, through the
/// internal endpoint (docs/internal-endpoints.md), as the order service
/// does: from inside the app, via the recorder. Status and body.
fn reserve(host: &Deployment, tenant: &str, id: &str, rid: &str, quantity: i64) -> (u16, Value) {
    host.internal_call(
        Method::POST,
        tenant,
        &format!("/api/products/{id}/reservations"),
        Some(&json!({"orderId": rid, "quantity": quantity})),
    )
}

/// Confirms reservation `rid` of product `id` (internal endpoint).
fn confirm(host: &Deployment, tenant: &str, id: &str, rid: &str) -> (u16, Value) {
    host.internal_call(
        Method::POST,
        tenant,
        &format!("/api/products/{id}/reservations/{rid}/confirm"),
        None,
    )
}

/// Releases reservation `rid` of product `id` (internal endpoint).
fn release(host: &Deployment, tenant: &str, id: &str, rid: &str) -> (u16, Value) {
    host.internal_call(
        Method::DELETE,
        tenant,
        &format!("/api/products/{id}/reservations/{rid}"),
        None,
    )
}

/// The app's product component alone (`--component-id product`), so these
/// tests do not depend on the order service.
fn start_product(backend: &Backend) -> Deployment {
    Deployment::start(backend, None, &["product"])
}

/// The product component plus the recorder fixture subscribed to `products`.
fn start_product_with_recorder(backend: &Backend) -> Deployment {
    Deployment::start(
        backend,
        Some(app_manifest_with_recorder()),
        &["product", "recorder"],
    )
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

// Every test that runs a host runs on each backend.
wasmshop_tests::app_tests!(
    every_endpoint_and_status_code,
    every_field_rule,
    list_order_filter_and_paging,
    tenants_are_isolated,
    etag_and_if_match,
    money_is_exact,
    reservations_hold_confirm_release_and_survive_restart,
    concurrent_reservations_never_oversell,
    events_carry_type_tenant_trace_and_snapshot,
    oversized_body_is_a_problem_not_a_crash,
);

#[test]
fn contract_checker_rejects_responses_that_break_openapi() {
    let ok_headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    };
    let product = json!({"id": "p1", "name": "n", "description": "", "category": "", "price": 1.5,
        "currency": "USD", "stock": 1, "version": 1,
        "createdAt": "2025-01-01T00:00:00.000Z", "updatedAt": "2025-01-01T00:00:00.000Z"});
    let good = Resp {
        status: 200,
        headers: ok_headers(&[("content-type", "application/json"), ("etag", "\"1\"")]),
        text: product.to_string(),
    };
    check_contract(&Method::GET, "/api/products/p1", &good).unwrap();
    let mut extra = product.clone();
    extra["priceMinor"] = json!(150);
    let cases = [
        Resp {
            text: extra.to_string(),
            ..good.clone()
        },
        Resp {
            headers: ok_headers(&[("content-type", "application/json")]),
            ..good.clone()
        },
        Resp {
            headers: ok_headers(&[("content-type", "application/json"), ("etag", "W/\"1\"")]),
            ..good.clone()
        },
        Resp {
            status: 418,
            ..good.clone()
        },
        Resp {
            text: json!({"title": "x"}).to_string(),
            status: 404,
            headers: ok_headers(&[("content-type", "application/problem+json")]),
        },
        Resp {
            status: 204,
            text: "x".into(),
            headers: HeaderMap::new(),
        },
    ];
    for bad in cases {
        assert!(
            check_contract(&Method::GET, "/api/products/p1", &bad).is_err()
                || check_contract(&Method::DELETE, "/api/products/p1", &bad).is_err(),
            "accepted {bad:?}"
        );
    }
    assert!(check_contract(&Method::GET, "/api/nowhere", &good).is_err());
}

fn every_endpoint_and_status_code(backend: &Backend) {
    let host = start_product(backend);
    let t = "crud";
    // POST 201 with Location and ETag; defaults filled in.
    let r = call(&host, Method::POST, "/api/products")
        .tenant(t)
        .json(json!({"id": "pen", "name": "Pen", "price": 1.5, "stock": 4}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/products/pen"));
    assert_eq!(r.header("etag"), Some("\"1\""));
    let created = r.json();
    assert_eq!(
        (
            &created["currency"],
            &created["stock"],
            &created["description"],
            &created["category"]
        ),
        (&json!("USD"), &json!(4), &json!(""), &json!(""))
    );
    assert_eq!(created["createdAt"], created["updatedAt"]);

    // A server-made id.
    let made = create(&host, t, json!({"name": "Ink", "price": 2}));
    let made_id = made["id"].as_str().unwrap();
    assert_eq!(get(&host, t, made_id).status, 200);

    // POST 409 on an existing id; 400 on a bad body.
    let r = call(&host, Method::POST, "/api/products")
        .tenant(t)
        .json(json!({"id": "pen", "name": "Other", "price": 1}))
        .send();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["type"], "urn:wasmshop:problem:product-exists");
    let r = call(&host, Method::POST, "/api/products")
        .tenant(t)
        .raw("{not json")
        .send();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    // GET 200 + ETag, 404.
    let r = get(&host, t, "pen");
    assert_eq!((r.status, r.header("etag")), (200, Some("\"1\"")));
    assert_eq!(r.json(), created);
    assert_eq!(get(&host, t, "nope").status, 404);

    // GET list 200.
    let r = call(&host, Method::GET, "/api/products").tenant(t).send();
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()).len(), 2);

    // PUT 200, 400, 404, 412.
    let r = call(&host, Method::PUT, "/api/products/pen")
        .tenant(t)
        .json(json!({"name": "Fountain pen", "price": 12.5}))
        .send();
    assert_eq!(
        (r.status, r.header("etag")),
        (200, Some("\"2\"")),
        "{}",
        r.text
    );
    let updated = r.json();
    assert_eq!(
        (&updated["name"], &updated["price"], &updated["stock"]),
        (&json!("Fountain pen"), &json!(12.5), &json!(4))
    );
    assert_eq!(updated["createdAt"], created["createdAt"]);
    assert_eq!(
        call(&host, Method::PUT, "/api/products/pen")
            .tenant(t)
            .json(json!({"stock": -1}))
            .send()
            .status,
        400
    );
    assert_eq!(
        call(&host, Method::PUT, "/api/products/nope")
            .tenant(t)
            .json(json!({"stock": 1}))
            .send()
            .status,
        404
    );
    assert_eq!(
        call(&host, Method::PUT, "/api/products/pen")
            .tenant(t)
            .header("If-Match", "\"1\"")
            .json(json!({"stock": 1}))
            .send()
            .status,
        412
    );

    // Reservations are internal (docs/internal-endpoints.md): from
    // outside every method is 404 and changes nothing.
    let before = get(&host, t, "pen").json();
    for (method, path, body) in [
        (
            Method::POST,
            "/api/products/pen/reservations",
            Some(json!({"orderId": "o1", "quantity": 1})),
        ),
        (
            Method::POST,
            "/api/products/pen/reservations/o1/confirm",
            None,
        ),
        (Method::DELETE, "/api/products/pen/reservations/o1", None),
        (Method::GET, "/api/products/pen/reservations", None),
    ] {
        let mut c = call(&host, method.clone(), path).tenant(t);
        if let Some(b) = body {
            c = c.json(b);
        }
        let r = c.send();
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
    }
    assert_eq!(get(&host, t, "pen").json(), before);

    // DELETE 412, 204, then 404 everywhere.
    assert_eq!(
        call(&host, Method::DELETE, "/api/products/pen")
            .tenant(t)
            .header("If-Match", "\"1\"")
            .send()
            .status,
        412
    );
    assert_eq!(
        call(&host, Method::DELETE, "/api/products/pen")
            .tenant(t)
            .send()
            .status,
        204
    );
    assert_eq!(
        call(&host, Method::DELETE, "/api/products/pen")
            .tenant(t)
            .send()
            .status,
        404
    );
    assert_eq!(get(&host, t, "pen").status, 404);
    let r = call(&host, Method::GET, "/api/products").tenant(t).send();
    assert_eq!(ids(&r.json()), vec![made_id.to_owned()]);

    // Unsupported methods: 405 problem with Allow.
    let r = call(&host, Method::PATCH, "/api/products/pen")
        .tenant(t)
        .json(json!({}))
        .send();
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, PUT, DELETE"))
    );
}

fn every_field_rule(backend: &Backend) {
    let host = start_product(backend);
    let t = "fields";
    let post = |body: Value| {
        call(&host, Method::POST, "/api/products")
            .tenant(t)
            .json(body)
            .send()
    };

    // Boundaries that are allowed.
    let r = post(json!({
        "id": "a".repeat(64), "name": "é".repeat(200), "description": "d".repeat(2000),
        "category": "c".repeat(100), "price": 999999999.99, "currency": "EUR", "stock": 2147483647_i64
    }));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["price"], json!(999999999.99));
    let r = post(json!({"name": "Free", "price": 0, "stock": 0, "currency": "JPY", "id": "A-z_0"}));
    assert_eq!(r.status, 201, "{}", r.text);

    // Each rule broken alone is a 400 naming exactly that field.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"price": 1}), "name"),
        (json!({"name": null, "price": 1}), "name"),
        (json!({"name": "", "price": 1}), "name"),
        (json!({"name": "   ", "price": 1}), "name"),
        (json!({"name": "n".repeat(201), "price": 1}), "name"),
        (json!({"name": 5, "price": 1}), "name"),
        (
            json!({"name": "x", "price": 1, "description": "d".repeat(2001)}),
            "description",
        ),
        (
            json!({"name": "x", "price": 1, "description": []}),
            "description",
        ),
        (
            json!({"name": "x", "price": 1, "category": "c".repeat(101)}),
            "category",
        ),
        (json!({"name": "x"}), "price"),
        (json!({"name": "x", "price": -0.01}), "price"),
        (json!({"name": "x", "price": 1000000000}), "price"),
        (json!({"name": "x", "price": "1.00"}), "price"),
        (json!({"name": "x", "price": true}), "price"),
        (
            json!({"name": "x", "price": 1, "currency": "usd"}),
            "currency",
        ),
        (
            json!({"name": "x", "price": 1, "currency": "XYZ"}),
            "currency",
        ),
        (
            json!({"name": "x", "price": 1, "currency": 840}),
            "currency",
        ),
        (json!({"name": "x", "price": 1, "stock": -1}), "stock"),
        (
            json!({"name": "x", "price": 1, "stock": 2147483648_i64}),
            "stock",
        ),
        (json!({"name": "x", "price": 1, "stock": 1.5}), "stock"),
        (json!({"name": "x", "price": 1, "stock": "3"}), "stock"),
        (json!({"name": "x", "price": 1, "stock": false}), "stock"),
        (json!({"name": "x", "price": 1, "id": "has space"}), "id"),
        (json!({"name": "x", "price": 1, "id": "a".repeat(65)}), "id"),
        (json!({"name": "x", "price": 1, "id": ""}), "id"),
        (json!({"name": "x", "price": 1, "prise": 2}), "prise"),
    ];
    for (body, field) in cases {
        let r = post(body.clone());
        let messages = r.field_errors(field);
        assert!(
            !messages.is_empty(),
            "{body} should name '{field}': {}",
            r.text
        );
        assert_eq!(
            r.json()["errors"].as_object().unwrap().len(),
            1,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.json()["type"], "urn:wasmshop:problem:validation");
    }
    // Raw JSON texts serde_json::json! cannot express.
    for (raw, field) in [
        (r#"{"name":"x","price":1.005}"#, "price"),
        // Integral numbers such as 2.0 are whole numbers (JSON Schema's
        // integer); fractions are not.
        (r#"{"name":"x","price":1,"stock":2.5}"#, "stock"),
        (r#"{"name":"x","price":1,"stock":1e-1}"#, "stock"),
    ] {
        let r = call(&host, Method::POST, "/api/products")
            .tenant(t)
            .raw(raw)
            .send();
        assert!(!r.field_errors(field).is_empty(), "{raw}: {}", r.text);
    }
    // Several broken fields are all reported at once.
    let r = post(json!({"name": "", "price": -1, "stock": -1, "currency": "x"}));
    let errors = r.json()["errors"].clone();
    for f in ["name", "price", "stock", "currency"] {
        assert!(errors.get(f).is_some(), "{f} missing in {errors}");
    }
    // Bodies that are not objects.
    for raw in ["", "[]", "42", "\"x\"", "null"] {
        let r = call(&host, Method::POST, "/api/products")
            .tenant(t)
            .raw(raw)
            .send();
        assert_eq!(r.status, 400, "{raw:?}: {}", r.text);
    }

    // PUT applies the same rules, and an id that differs from the URL.
    create(&host, t, json!({"id": "p", "name": "x", "price": 1}));
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"price": 0.001}), "price"),
        (json!({"stock": 1.5}), "stock"),
        (json!({"currency": "eur"}), "currency"),
        (json!({"category": "c".repeat(101)}), "category"),
        (json!({"id": "other"}), "id"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let r = call(&host, Method::PUT, "/api/products/p")
            .tenant(t)
            .json(body.clone())
            .send();
        assert!(!r.field_errors(field).is_empty(), "{body}: {}", r.text);
    }
    assert_eq!(
        get(&host, t, "p").json()["version"],
        1,
        "rejected PUTs change nothing"
    );
}

fn list_order_filter_and_paging(backend: &Backend) {
    let host = start_product(backend);
    let t = "lists";
    let mut made = Vec::new();
    for i in 0..105 {
        let category = ["red", "green", "blue"][i % 3];
        let p = create(
            &host,
            t,
            json!({"id": format!("p{i:03}"), "name": "x", "price": 1, "category": category}),
        );
        made.push((
            p["createdAt"].as_str().unwrap().to_owned(),
            p["id"].as_str().unwrap().to_owned(),
        ));
    }
    made.sort();
    let expected: Vec<String> = made.iter().map(|(_, id)| id.clone()).collect();
    let list = |q: &str| {
        let r = call(&host, Method::GET, &format!("/api/products{q}"))
            .tenant(t)
            .send();
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        ids(&r.json())
    };
    // Default limit 100; creation time then id.
    assert_eq!(list(""), expected[..100]);
    assert_eq!(list("?limit=1000"), expected);
    assert_eq!(list("?limit=5&offset=100"), expected[100..]);
    assert_eq!(list("?limit=2&offset=3"), expected[3..5]);
    assert!(list("?offset=105").is_empty());
    // The same order on every read.
    assert_eq!(list("?limit=1000"), list("?limit=1000"));
    // Category filter, with paging applied after filtering.
    let blue: Vec<String> = (0..105)
        .filter(|i| i % 3 == 2)
        .map(|i| format!("p{i:03}"))
        .collect();
    let mut got = list("?category=blue&limit=1000");
    got.sort();
    assert_eq!(got, blue);
    assert_eq!(list("?category=blue&limit=3&offset=1").len(), 3);
    assert!(list("?category=purple").is_empty());
    assert!(
        list("?category=Blue").is_empty(),
        "categories match exactly"
    );
    // A category change moves the product between filters.
    call(&host, Method::PUT, "/api/products/p000")
        .tenant(t)
        .json(json!({"category": "blue"}))
        .send();
    assert!(list("?category=blue&limit=1000").contains(&"p000".to_owned()));
    assert!(!list("?category=red&limit=1000").contains(&"p000".to_owned()));
    // Bad paging parameters are 400s naming the parameter.
    for (q, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=-5", "limit"),
        ("?offset=-1", "offset"),
        ("?offset=1.5", "offset"),
        ("?limit=1&limit=2", "limit"),
    ] {
        let r = call(&host, Method::GET, &format!("/api/products{q}"))
            .tenant(t)
            .send();
        assert!(!r.field_errors(field).is_empty(), "{q}: {}", r.text);
    }
}

fn tenants_are_isolated(backend: &Backend) {
    let host = start_product_with_recorder(backend);
    create(
        &host,
        "acme",
        json!({"id": "shared", "name": "Acme anvil", "price": 10, "stock": 5, "category": "tools"}),
    );
    // Read, list.
    assert_eq!(get(&host, "globex", "shared").status, 404);
    let r = call(&host, Method::GET, "/api/products")
        .tenant("globex")
        .send();
    assert_eq!(r.json(), json!([]));
    let r = call(&host, Method::GET, "/api/products?category=tools")
        .tenant("globex")
        .send();
    assert_eq!(r.json(), json!([]));
    // No header is the `default` tenant, which is not acme either.
    let r = call(&host, Method::GET, "/api/products/shared").send();
    assert_eq!(r.status, 404);
    // Update, delete, reserve, release across tenants touch nothing.
    assert_eq!(
        call(&host, Method::PUT, "/api/products/shared")
            .tenant("globex")
            .json(json!({"stock": 0}))
            .send()
            .status,
        404
    );
    assert_eq!(
        call(&host, Method::DELETE, "/api/products/shared")
            .tenant("globex")
            .send()
            .status,
        404
    );
    assert_eq!(reserve(&host, "globex", "shared", "o1", 1).0, 404);
    assert_eq!(reserve(&host, "acme", "shared", "o1", 2).0, 201);
    assert_eq!(release(&host, "globex", "shared", "o1").0, 204);
    assert_eq!(
        stock(&host, "acme", "shared"),
        3,
        "another tenant's release returned nothing"
    );
    // The same id in another tenant is a different product.
    create(
        &host,
        "globex",
        json!({"id": "shared", "name": "Globex gadget", "price": 1}),
    );
    create(
        &host,
        "default",
        json!({"id": "shared", "name": "Default thing", "price": 1}),
    );
    assert_eq!(get(&host, "acme", "shared").json()["name"], "Acme anvil");
    assert_eq!(
        get(&host, "globex", "shared").json()["name"],
        "Globex gadget"
    );
    assert_eq!(
        call(&host, Method::GET, "/api/products/shared")
            .send()
            .json()["name"],
        "Default thing"
    );
    call(&host, Method::DELETE, "/api/products/shared")
        .tenant("globex")
        .send();
    assert_eq!(get(&host, "acme", "shared").status, 200);
    let r = call(&host, Method::GET, "/api/products")
        .tenant("acme")
        .send();
    assert_eq!(ids(&r.json()), vec!["shared"]);
    // Invalid tenant ids are 400s naming the header.
    for bad in ["has space", "a/b", "ünïcode", &"x".repeat(65)] {
        let r = client()
            .get(host.url("/api/products"))
            .header("X-Tenant-Id", bad.as_bytes())
            .send()
            .unwrap();
        let r = Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().unwrap(),
        };
        check_contract(&Method::GET, "/api/products", &r).unwrap();
        assert!(
            !r.field_errors("X-Tenant-Id").is_empty(),
            "{bad}: {}",
            r.text
        );
    }
    let r = call(&host, Method::GET, "/api/products")
        .tenant(&"x".repeat(64))
        .send();
    assert_eq!(r.status, 200, "64 characters are allowed");
}

fn etag_and_if_match(backend: &Backend) {
    let host = start_product_with_recorder(backend);
    let t = "etags";
    create(
        &host,
        t,
        json!({"id": "p", "name": "x", "price": 1, "stock": 1}),
    );
    let put = |if_match: Option<&str>, body: Value| {
        let mut c = call(&host, Method::PUT, "/api/products/p")
            .tenant(t)
            .json(body);
        if let Some(m) = if_match {
            c = c.header("If-Match", m);
        }
        c.send()
    };
    let r = put(Some("\"1\""), json!({"name": "y"}));
    assert_eq!((r.status, r.header("etag")), (200, Some("\"2\"")));
    assert_eq!(r.json()["version"], 2);
    // Stale, weak, malformed, and unquoted tags fail; the product is unchanged.
    for stale in ["\"1\"", "W/\"2\"", "2", "\"02\"", "\"3\""] {
        let r = put(Some(stale), json!({"name": "z"}));
        assert_eq!(r.status, 412, "If-Match {stale}: {}", r.text);
        assert_eq!(r.json()["type"], "urn:wasmshop:problem:precondition-failed");
    }
    assert_eq!(get(&host, t, "p").json()["name"], "y");
    // A list containing the current tag, and `*`, match.
    assert_eq!(
        put(Some("\"9\", \"2\""), json!({"name": "z"})).header("etag"),
        Some("\"3\"")
    );
    assert_eq!(
        put(Some("*"), json!({"name": "w"})).header("etag"),
        Some("\"4\"")
    );
    // No If-Match is unconditional.
    assert_eq!(
        put(None, json!({"name": "v"})).header("etag"),
        Some("\"5\"")
    );
    // A PUT that changes nothing keeps the version.
    assert_eq!(
        put(None, json!({"name": "v"})).header("etag"),
        Some("\"5\"")
    );
    // Reservations change the product, so they move the ETag too.
    assert_eq!(reserve(&host, t, "p", "o1", 1).0, 201);
    assert_eq!(get(&host, t, "p").header("etag"), Some("\"6\""));
    assert_eq!(put(Some("\"5\""), json!({"name": "u"})).status, 412);
    // Check order: 404 before 412, 412 before 400.
    let r = call(&host, Method::PUT, "/api/products/missing")
        .tenant(t)
        .header("If-Match", "\"1\"")
        .json(json!({"price": "bad"}))
        .send();
    assert_eq!(r.status, 404);
    assert_eq!(put(Some("\"1\""), json!({"price": "bad"})).status, 412);
    assert_eq!(put(Some("\"6\""), json!({"price": "bad"})).status, 400);
    // DELETE honours If-Match the same way.
    let del = |m: &str| {
        call(&host, Method::DELETE, "/api/products/p")
            .tenant(t)
            .header("If-Match", m)
            .send()
    };
    assert_eq!(del("\"5\"").status, 412);
    assert_eq!(del("W/\"6\"").status, 412);
    assert_eq!(del("\"6\"").status, 204);
    assert_eq!(del("*").status, 404, "`*` does not match a missing product");
}

fn money_is_exact(backend: &Backend) {
    let host = start_product_with_recorder(backend);
    let t = "money";
    // 0.1 three times: each price comes back exactly, and three reserved
    // units of 0.1 are priced exactly 0.1 each.
    for (i, price) in ["0.1", "0.1", "0.1"].iter().enumerate() {
        let raw = format!(r#"{{"id":"dime{i}","name":"Dime","price":{price},"stock":3}}"#);
        let r = call(&host, Method::POST, "/api/products")
            .tenant(t)
            .raw(&raw)
            .send();
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(r.text.contains(r#""price":0.1,"#), "{}", r.text);
    }
    let list = call(&host, Method::GET, "/api/products").tenant(t).send();
    assert_eq!(
        list.text.matches(r#""price":0.1,"#).count(),
        3,
        "{}",
        list.text
    );
    let (status, held) = reserve(&host, t, "dime0", "o1", 3);
    assert_eq!(status, 201, "{held}");
    assert_eq!(held["unitPrice"].to_string(), "0.1", "{held}");
    // Trailing zeros and exponents normalise; the shortest exact text comes back.
    for (sent, back) in [
        ("12.50", "12.5"),
        ("60.27", "60.27"),
        ("0.3", "0.3"),
        ("1.25e1", "12.5"),
        ("100", "100"),
        ("0.07", "0.07"),
    ] {
        let r = call(&host, Method::PUT, "/api/products/dime1")
            .tenant(t)
            .raw(&format!(r#"{{"price":{sent}}}"#))
            .send();
        assert_eq!(r.status, 200, "{sent}: {}", r.text);
        assert!(
            r.text.contains(&format!(r#""price":{back},"#)),
            "{sent} → {}",
            r.text
        );
        let g = get(&host, t, "dime1");
        assert!(
            g.text.contains(&format!(r#""price":{back},"#)),
            "{sent} → {}",
            g.text
        );
    }
    // More than two decimal places is a 400, never rounded.
    for raw in ["0.001", "19.999", "1e-3"] {
        let r = call(&host, Method::PUT, "/api/products/dime2")
            .tenant(t)
            .raw(&format!(r#"{{"price":{raw}}}"#))
            .send();
        assert!(!r.field_errors("price").is_empty(), "{raw}");
    }
    assert!(get(&host, t, "dime2").text.contains(r#""price":0.1,"#));
}

fn reservations_hold_confirm_release_and_survive_restart(backend: &Backend) {
    // The try/confirm/cancel contract of docs/storage-layout.md, through
    // the internal endpoints as the order service calls them.
    let mut host = start_product_with_recorder(backend);
    let t = "stock";
    create(
        &host,
        t,
        json!({"id": "p", "name": "x", "price": 2.5, "stock": 5}),
    );
    // A new hold: 201, stock taken.
    let (status, held) = reserve(&host, t, "p", "order-1", 2);
    assert_eq!(status, 201, "{held}");
    assert_eq!(
        (
            &held["productId"],
            &held["orderId"],
            &held["quantity"],
            &held["unitPrice"],
            &held["currency"],
            &held["status"]
        ),
        (
            &json!("p"),
            &json!("order-1"),
            &json!(2),
            &json!(2.5),
            &json!("USD"),
            &json!("held")
        ),
        "{held}"
    );
    assert!(held["expiresAt"].is_string(), "{held}");
    assert_eq!(stock(&host, t, "p"), 3);
    // An identical repeat: 200, the same hold, nothing taken.
    let (status, again) = reserve(&host, t, "p", "order-1", 2);
    assert_eq!((status, &again["status"]), (200, &json!("held")), "{again}");
    assert_eq!(stock(&host, t, "p"), 3);
    // Same id, other quantity: 409, nothing taken.
    let (status, r) = reserve(&host, t, "p", "order-1", 1);
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:reservation-conflict")),
        "{r}"
    );
    // Not enough stock: 409 naming what is left, stock unchanged.
    let (status, r) = reserve(&host, t, "p", "order-2", 4);
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:insufficient-stock")),
        "{r}"
    );
    assert!(
        r["detail"].as_str().unwrap_or_default().contains('3'),
        "{r}"
    );
    assert_eq!(stock(&host, t, "p"), 3);
    // Exactly the remaining stock is fine.
    assert_eq!(reserve(&host, t, "p", "order-2", 3).0, 201);
    assert_eq!(stock(&host, t, "p"), 0);
    assert_eq!(reserve(&host, t, "p", "order-3", 1).0, 409);
    // Confirming is idempotent, and a repeated reserve then shows it.
    let (status, c) = confirm(&host, t, "p", "order-1");
    assert_eq!((status, &c["status"]), (200, &json!("confirmed")), "{c}");
    assert_eq!(confirm(&host, t, "p", "order-1").0, 200);
    let (status, r) = reserve(&host, t, "p", "order-1", 2);
    assert_eq!((status, &r["status"]), (200, &json!("confirmed")), "{r}");
    // Unknown products and reservations.
    assert_eq!(reserve(&host, t, "nope", "order-1", 1).0, 404);
    let (status, r) = confirm(&host, t, "p", "never-held");
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:reservation-unknown")),
        "{r}"
    );

    // Holds and sales are stored: after a hard restart the release works.
    host.restart();
    assert_eq!(release(&host, t, "p", "order-2").0, 204);
    assert_eq!(stock(&host, t, "p"), 3, "a released hold returns its stock");
    assert_eq!(release(&host, t, "p", "order-2").0, 204, "idempotent");
    assert_eq!(stock(&host, t, "p"), 3);
    let (status, r) = confirm(&host, t, "p", "order-2");
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:reservation-released")),
        "{r}"
    );
    // Releasing a confirmed sale returns its units.
    assert_eq!(release(&host, t, "p", "order-1").0, 204);
    assert_eq!(stock(&host, t, "p"), 5);
    assert_eq!(release(&host, t, "missing-product", "order-1").0, 204);
    // A released id cannot take stock again, also when the release came
    // first (an order that gave up before its reserve arrived).
    let (status, r) = reserve(&host, t, "p", "order-2", 1);
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:reservation-released")),
        "{r}"
    );
    assert_eq!(release(&host, t, "p", "late").0, 204);
    let (status, r) = reserve(&host, t, "p", "late", 1);
    assert_eq!(
        (status, &r["type"]),
        (409, &json!("urn:wasmshop:problem:reservation-released")),
        "{r}"
    );
    assert_eq!(stock(&host, t, "p"), 5);

    // Reservation bodies: each broken rule is a 400 naming the field.
    for (body, field) in [
        (json!({"quantity": 1}), "orderId"),
        (json!({"orderId": "o/1", "quantity": 1}), "orderId"),
        (json!({"orderId": 7, "quantity": 1}), "orderId"),
        (json!({"orderId": "o"}), "quantity"),
        (json!({"orderId": "o", "quantity": 0}), "quantity"),
        (json!({"orderId": "o", "quantity": -2}), "quantity"),
        (json!({"orderId": "o", "quantity": true}), "quantity"),
        (
            json!({"orderId": "o", "quantity": 2147483648_i64}),
            "quantity",
        ),
    ] {
        let (status, r) =
            host.internal_call(Method::POST, t, "/api/products/p/reservations", Some(&body));
        assert_eq!(status, 400, "{body}: {r}");
        assert!(
            r["errors"].get(field).is_some(),
            "{body} should name {field}: {r}"
        );
    }
    assert_eq!(stock(&host, t, "p"), 5);
}

fn concurrent_reservations_never_oversell(backend: &Backend) {
    let host = start_product_with_recorder(backend);
    let t = "rush";
    create(
        &host,
        t,
        json!({"id": "hot", "name": "Hot item", "price": 9.99, "stock": 20}),
    );
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..60)
            .map(|i| {
                let host = &host;
                s.spawn(move || reserve(host, t, "hot", &format!("order-{i}"), 1).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in &statuses {
        *counts.entry(*s).or_default() += 1;
    }
    assert_eq!(counts.get(&201), Some(&20), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&40), "{counts:?}");
    assert_eq!(stock(&host, t, "hot"), 0);
    assert_eq!(
        get(&host, t, "hot").json()["version"],
        21,
        "one version per hold"
    );
}

fn events_carry_type_tenant_trace_and_snapshot(backend: &Backend) {
    let host = start_product_with_recorder(backend);
    let t = "events";
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = call(&host, Method::POST, "/api/products")
        .tenant(t)
        .header("traceparent", trace)
        .raw(r#"{"id":"ev","name":"Lamp","price":19.99,"stock":4,"category":"home"}"#)
        .send();
    assert_eq!(r.status, 201);
    call(&host, Method::PUT, "/api/products/ev")
        .tenant(t)
        .json(json!({"name": "Desk lamp"}))
        .send();
    call(&host, Method::PUT, "/api/products/ev")
        .tenant(t)
        .json(json!({"stock": 6}))
        .send();
    assert_eq!(reserve(&host, t, "ev", "o1", 2).0, 201);
    assert_eq!(reserve(&host, t, "ev", "o1", 2).0, 200);
    assert_eq!(reserve(&host, t, "ev", "o2", 100).0, 409);
    assert_eq!(release(&host, t, "ev", "o1").0, 204);
    assert_eq!(release(&host, t, "ev", "o1").0, 204);
    call(&host, Method::DELETE, "/api/products/ev")
        .tenant(t)
        .send();
    // Another tenant's change is published with its own tenant id.
    create(
        &host,
        "other",
        json!({"id": "ev", "name": "Other", "price": 1}),
    );

    let expected = [
        "ProductCreated",
        "ProductUpdated",
        "ProductUpdated",
        "StockChanged",
        "StockChanged",
        "StockChanged",
        "ProductDeleted",
    ];
    let mine = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["tenantid"] == t)
            .cloned()
            .collect()
    };
    let events = wait_for(Duration::from_secs(20), || {
        let all = host.recorded_events("products");
        (mine(&all).len() >= expected.len() && all.iter().any(|e| e["tenantid"] == "other"))
            .then_some(all)
    })
    .unwrap_or_else(|| {
        panic!(
            "events not delivered; got {:?}",
            host.recorded_events("products")
        )
    });
    let ours = mine(&events);
    // Delivery may reorder; compare as multisets, then check each event.
    let mut types: Vec<&str> = ours.iter().map(|e| e["type"].as_str().unwrap()).collect();
    types.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(types, want, "{ours:#?}");
    let event_schema = &openapi()["components"]["schemas"]["ProductEvent"];
    let mut ids = std::collections::BTreeSet::new();
    for e in &ours {
        let errors = schema_errors(event_schema, e);
        assert!(errors.is_empty(), "{e}: {errors:?}");
        assert!(
            ids.insert(e["id"].as_str().unwrap().to_owned()),
            "event ids are unique"
        );
        assert_eq!(e["subject"], "ev");
        assert_eq!(e["data"]["id"], "ev");
    }
    let find = |kind: &str, version: i64| {
        ours.iter()
            .find(|e| e["type"] == kind && e["data"]["version"] == version)
            .unwrap_or_else(|| panic!("no {kind} event for version {version}: {ours:#?}"))
    };
    let created = find("ProductCreated", 1);
    // Same trace id; the parent is the host's server span for the request.
    let trace_id = |tp: &str| tp.split('-').nth(1).map(str::to_owned);
    assert_eq!(
        trace_id(created["traceparent"].as_str().unwrap()),
        trace_id(trace),
        "the request's trace travels on the event"
    );
    assert_eq!(
        (&created["data"]["price"], &created["data"]["stock"]),
        (&json!(19.99), &json!(4))
    );
    assert_eq!(find("ProductUpdated", 2)["data"]["name"], "Desk lamp");
    assert_eq!(find("ProductUpdated", 3)["data"]["stock"], 6);
    assert_eq!(
        find("StockChanged", 3)["data"]["stock"],
        6,
        "a PUT of stock is also a StockChanged"
    );
    assert_eq!(
        find("StockChanged", 4)["data"]["stock"],
        4,
        "reservation took 2 of 6"
    );
    assert_eq!(
        find("StockChanged", 5)["data"]["stock"],
        6,
        "release returned them"
    );
    let deleted = ours.iter().find(|e| e["type"] == "ProductDeleted").unwrap();
    assert_eq!(deleted["data"]["name"], "Desk lamp", "the last state");
    let other = events.iter().find(|e| e["tenantid"] == "other").unwrap();
    assert_eq!(
        (&other["type"], &other["data"]["name"]),
        (&json!("ProductCreated"), &json!("Other"))
    );
}

fn oversized_body_is_a_problem_not_a_crash(backend: &Backend) {
    let host = start_product(backend);
    let big = format!(
        r#"{{"name":"x","price":1,"description":"{}"}}"#,
        "d".repeat(1_100_000)
    );
    let r = call(&host, Method::POST, "/api/products")
        .tenant("big")
        .raw(&big)
        .send();
    assert_eq!(r.status, 413, "{}", r.text);
    let r = call(&host, Method::GET, "/api/products")
        .tenant("big")
        .send();
    assert_eq!((r.status, r.json()), (200, json!([])));
}
