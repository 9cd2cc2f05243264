//! Internal endpoints (docs/internal-endpoints.md): the product's
//! reservations are unreachable from outside on every backend, reachable
//! by service chaining, and through Dapr only by authenticated invocations
//! from callers the manifest allows.

mod contract;

use contract::*;
use reqwest::Method;
use serde_json::{Value, json};
use wasmshop_tests::daprd::{DaprCluster, Sidecar, SidecarOptions};
use wasmshop_tests::{
    APP_API_TOKEN, Backend, Deployment, Host, HostBuilder, client, start_next_to,
};

wasmshop_tests::app_tests!(reservation_paths_are_not_public_and_change_nothing);

fn product_state(d: &Deployment, t: &str, id: &str) -> Value {
    let r = call(d, Method::GET, &format!("/api/products/{id}"))
        .tenant(t)
        .send();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn reservation_paths_are_not_public_and_change_nothing(backend: &Backend) {
    let d = Deployment::app(backend);
    let t = "outside";
    let r = call(&d, Method::POST, "/api/products")
        .tenant(t)
        .json(json!({"id": "p", "name": "P", "price": 3, "stock": 5}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text);
    // An order holds 2 through the internal endpoints (chaining, or
    // invocation between the two Dapr apps).
    let r = call(&d, Method::POST, "/api/orders")
        .tenant(t)
        .json(json!({"customerId": "c", "items": [{"productId": "p", "quantity": 2}]}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text);
    let order = r.json()["id"].as_str().unwrap().to_string();
    let before = product_state(&d, t, "p");
    assert_eq!(before["stock"], 3);

    // From outside, releasing the order's stock or taking more is 404.
    for (method, path, body) in [
        (
            Method::DELETE,
            format!("/api/products/p/reservations/{order}"),
            None,
        ),
        (
            Method::DELETE,
            "/api/products/p/reservations/x".into(),
            None,
        ),
        (
            Method::POST,
            "/api/products/p/reservations".into(),
            Some(json!({"orderId": "x", "quantity": 3})),
        ),
        (
            Method::POST,
            format!("/api/products/p/reservations/{order}/confirm"),
            None,
        ),
    ] {
        let mut c = call(&d, method.clone(), &path).tenant(t);
        if let Some(b) = body {
            c = c.json(b);
        }
        let r = c.send();
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
        assert_eq!(r.json()["type"], "urn:wasmshop:problem:no-route");
    }
    assert_eq!(product_state(&d, t, "p"), before, "nothing changed");
}

/// A request straight to the product host's port, as public ingress (or
/// anyone) could send it, with these headers.
fn direct(host: &Host, method: Method, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().request(method, host.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if path.ends_with("/reservations") {
        req = req
            .header("content-type", "application/json")
            .body(json!({"orderId": "direct", "quantity": 1}).to_string());
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    if status >= 400 {
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    (status, r.json().unwrap_or(Value::Null))
}

/// A service invocation through `sidecar`, as its app would send it.
fn invoke(sidecar: &Sidecar, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(
        method,
        sidecar.url(&format!("/v1.0/invoke/productservice/method{path}")),
    );
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn through_dapr_only_authenticated_allowed_callers_reach_internal_paths() {
    // The two-process deployment: every sidecar and host share APP_API_TOKEN.
    let d = Deployment::app(&Backend::Dapr);
    let product = d.host_of("product");
    let order_sidecar = d.sidecar_of("order").unwrap();
    let cluster = d.dapr_cluster().unwrap();
    let r = client()
        .post(product.url("/api/products"))
        .json(&json!({"id": "p", "name": "P", "price": 3, "stock": 5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let stock = || product_state(&d, "default", "p")["stock"].clone();
    let path = "/api/products/p/reservations";

    // Claiming to be the order service's sidecar proves nothing: without
    // the token, or with a wrong one, it is 401.
    let (status, body) = direct(
        product,
        Method::POST,
        path,
        &[("dapr-caller-app-id", "orderservice")],
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:invalid-app-api-token");
    let (status, _) = direct(
        product,
        Method::POST,
        path,
        &[
            ("dapr-caller-app-id", "orderservice"),
            ("dapr-api-token", "guess"),
        ],
    );
    assert_eq!(status, 401);
    // Without any Dapr header it is public traffic: 404.
    assert_eq!(direct(product, Method::POST, path, &[]).0, 404);
    assert_eq!(stock(), 5);

    // An app the manifest does not allow to chain to the product is 403,
    // through its own sidecar, as is the product calling itself.
    let intruder = cluster.sidecar("intruder", SidecarOptions::default());
    let (status, body) = invoke(
        &intruder,
        Method::POST,
        path,
        Some(json!({"orderId": "i", "quantity": 1})),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:caller-not-allowed");
    assert!(
        body["detail"].as_str().unwrap().contains("intruder"),
        "{body}"
    );
    let (status, _) = invoke(
        d.sidecar_of("product").unwrap(),
        Method::DELETE,
        "/api/products/p/reservations/x",
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(stock(), 5);

    // The order service's invocations are served: a release that comes
    // before its reserve wins, and the late reserve is 409.
    let (status, body) = invoke(
        order_sidecar,
        Method::DELETE,
        "/api/products/p/reservations/early",
        None,
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = invoke(
        order_sidecar,
        Method::POST,
        path,
        Some(json!({"orderId": "early", "quantity": 1})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "urn:wasmshop:problem:reservation-released");
    assert_eq!(stock(), 5);
    // The same call straight to the port with the right token is served too.
    let (status, body) = direct(
        product,
        Method::POST,
        path,
        &[
            ("dapr-caller-app-id", "orderservice"),
            ("dapr-api-token", APP_API_TOKEN),
        ],
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(stock(), 4);

    // And the normal order flow works end to end.
    let r = client()
        .post(d.url("/api/orders"))
        .json(&json!({"customerId": "c", "items": [{"productId": "p", "quantity": 2}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    assert_eq!(stock(), 2);
}

/// The product service alone on Dapr, without APP_API_TOKEN, next to a
/// sidecar with the same app id; `builder` adds flags.
fn product_without_token(cluster: &DaprCluster, builder: HostBuilder) -> (Sidecar, Host) {
    let sidecar = cluster.sidecar("productservice", SidecarOptions::default());
    let host = start_next_to(&sidecar, builder.component_ids(&["product"]));
    (sidecar, host)
}

#[test]
fn without_app_api_token_internal_paths_need_the_explicit_opt_in() {
    let cluster = DaprCluster::new();
    let order_sidecar = cluster.sidecar("orderservice", SidecarOptions::default());
    let path = "/api/products/p/reservations";
    let reserve = |rid: &str| {
        invoke(
            &order_sidecar,
            Method::POST,
            path,
            Some(json!({"orderId": rid, "quantity": 1})),
        )
    };

    // Nothing proves where an invocation comes from: treated as public, 404.
    let (_sidecar, host) = product_without_token(&cluster, Host::builder());
    let r = client()
        .post(host.url("/api/products"))
        .json(&json!({"id": "p", "name": "P", "price": 3, "stock": 5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, body) = reserve("a");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("APP_API_TOKEN"),
        "says what to configure: {body}"
    );
    drop(host);

    // With --dapr-allow-unauthenticated (here from its environment
    // variable) the allowed caller is served; others still are not.
    let (_sidecar, host) = product_without_token(
        &cluster,
        Host::builder().env("WASMSHOP_DAPR_ALLOW_UNAUTHENTICATED", "true"),
    );
    let (status, body) = reserve("b");
    assert_eq!(status, 201, "{body}");
    let stranger = cluster.sidecar("stranger", SidecarOptions::default());
    assert_eq!(
        invoke(
            &stranger,
            Method::POST,
            path,
            Some(json!({"orderId": "c", "quantity": 1}))
        )
        .0,
        403
    );
    assert_eq!(
        direct(&host, Method::POST, path, &[]).0,
        404,
        "public stays 404"
    );
}
