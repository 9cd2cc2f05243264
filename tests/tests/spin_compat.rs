//! `spin up` compatibility, pinned in CI without Spin installed.
//!
//! - every component, once composed with its `[component.X.dependencies]`
//!   the way Spin composes it (wac-graph, as in Spin's `crates/compose`),
//!   imports only interfaces Spin provides (`tests/data/spin-platform-imports.txt`);
//! - `spin.toml` uses only keys Spin's manifest schema accepts;
//! - the messaging adapter's routing variable agrees with the host's
//!   subscriptions;
//! - the Spin delivery path itself (adapter → chaining → private event
//!   route → the order's messaging handler) works, run on our host with the
//!   composed components and no native subscription.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use wac_graph::types::{Package, SubtypeChecker};
use wac_graph::{CompositionGraph, EncodeOptions};
use wasmshop_tests::{Host, Value, component_interfaces, json, wasm, workspace_root};

fn manifest() -> toml::Table {
    let path = workspace_root().join("spin.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/data/spin-platform-imports.txt`, without comments.
fn spin_platform() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(workspace_root().join("tests/data/spin-platform-imports.txt"))
            .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Whether Spin satisfies `import` (`ns:pkg/iface@version`): listed exactly,
/// or an earlier `0.2.x` patch of a listed `0.2.y` interface (wasmtime's
/// linker matches semver-compatible versions; drafts must match exactly).
fn provided_by_spin(platform: &BTreeSet<String>, import: &str) -> bool {
    if platform.contains(import) {
        return true;
    }
    let Some((name, version)) = import.split_once('@') else {
        return false;
    };
    let patch = |v: &str| {
        v.strip_prefix("0.2.")
            .filter(|p| !p.contains('-'))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let Some(wanted) = patch(version) else {
        return false;
    };
    platform.iter().any(|p| {
        p.split_once('@')
            .is_some_and(|(n, v)| n == name && patch(v).is_some_and(|have| have >= wanted))
    })
}

/// Whether a dependency key of `spin.toml` (`wasi:messaging@0.2.0-draft`,
/// `wasi:messaging`, or `ns:pkg/iface@v`) covers an import name, as Spin's
/// `crates/compose/src/lib.rs` `matches_import` decides.
fn dependency_matches(key: &str, import: &str) -> bool {
    let (key_name, key_version) = match key.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (key, None),
    };
    let (import_name, import_version) = match import.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (import, None),
    };
    let (import_pkg, _) = import_name.split_once('/').unwrap_or((import_name, ""));
    let name_ok = if key_name.contains('/') {
        key_name == import_name
    } else {
        key_name == import_pkg
    };
    name_ok && (key_version.is_none() || key_version == import_version)
}

/// Composes `component` with its dependencies (key → `.wasm` bytes) the way
/// `spin up` does: each matching import is fed from the dependency
/// instance's export of the same name (after a subtype check), and the
/// component's exports are re-exported. The result is validated on encode.
fn compose(component: &[u8], deps: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut graph = CompositionGraph::new();
    let main = Package::from_bytes(
        "root:component",
        None,
        component.to_vec(),
        graph.types_mut(),
    )
    .map_err(|e| format!("component: {e:#}"))?;
    let world = main.ty();
    let main = graph.register_package(main).map_err(|e| e.to_string())?;
    let main = graph.instantiate(main);
    let imports: Vec<String> = graph.types()[world].imports.keys().cloned().collect();
    for (i, (key, bytes)) in deps.iter().enumerate() {
        let dep = Package::from_bytes(&format!("dep:d{i}"), None, bytes.clone(), graph.types_mut())
            .map_err(|e| format!("dependency '{key}': {e:#}"))?;
        let dep_world = dep.ty();
        let dep = graph.register_package(dep).map_err(|e| e.to_string())?;
        let dep = graph.instantiate(dep);
        let matched: Vec<&String> = imports
            .iter()
            .filter(|i| dependency_matches(key, i))
            .collect();
        if matched.is_empty() {
            return Err(format!(
                "dependency '{key}' matches no import of the component"
            ));
        }
        for import in matched {
            let export_ty = *graph.types()[dep_world]
                .exports
                .get(import)
                .ok_or_else(|| {
                    format!("dependency '{key}' does not export '{import}' to satisfy the import")
                })?;
            let import_ty = *graph.types()[world].imports.get(import).unwrap();
            let mut cache = Default::default();
            SubtypeChecker::new(&mut cache)
                .is_subtype(export_ty, graph.types(), import_ty, graph.types())
                .map_err(|e| format!("'{import}' of '{key}' does not fit the import: {e:#}"))?;
            let export = graph
                .alias_instance_export(dep, import)
                .map_err(|e| e.to_string())?;
            graph
                .set_instantiation_argument(main, import, export)
                .map_err(|e| format!("plugging '{import}': {e}"))?;
        }
    }
    for name in graph.types()[world]
        .exports
        .keys()
        .cloned()
        .collect::<Vec<_>>()
    {
        let e = graph
            .alias_instance_export(main, &name)
            .map_err(|e| e.to_string())?;
        graph.export(e, &name).map_err(|e| e.to_string())?;
    }
    graph
        .encode(EncodeOptions::default())
        .map_err(|e| format!("encoding the composition: {e:#}"))
}

/// Each component of `spin.toml` composed with its dependencies, by id.
fn composed_components() -> BTreeMap<String, Vec<u8>> {
    let root = workspace_root();
    let mut out = BTreeMap::new();
    for (id, c) in manifest()["component"].as_table().unwrap() {
        let source = c["source"].as_str().expect("a local source path");
        let bytes = std::fs::read(root.join(source)).unwrap_or_else(|e| {
            panic!("{source}: {e}; build the components first (scripts/test.sh does)")
        });
        let mut deps = Vec::new();
        if let Some(d) = c.get("dependencies").and_then(|d| d.as_table()) {
            for (key, dep) in d {
                let path = dep["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("dependency '{key}' of '{id}' has no path"));
                let bytes = std::fs::read(root.join(path)).unwrap_or_else(|e| {
                    panic!("{path}: {e}; build it with cargo build --target wasm32-wasip2 --release -p messaging-adapter")
                });
                deps.push((key.clone(), bytes));
            }
        }
        let composed = compose(&bytes, &deps)
            .unwrap_or_else(|e| panic!("component '{id}' does not compose as under Spin: {e}"));
        out.insert(id.clone(), composed);
    }
    out
}

#[test]
fn every_component_composed_imports_only_what_spin_provides() {
    // Fresh builds, so the adapter on disk is the one the test checks.
    wasm("messaging-adapter");
    let platform = spin_platform();
    let composed = composed_components();
    assert!(composed.contains_key("product") && composed.contains_key("order"));
    for (id, bytes) in &composed {
        let (imports, exports) = component_interfaces(bytes, &format!("component {id} composed"));
        let missing: Vec<&String> = imports
            .iter()
            .filter(|i| !provided_by_spin(&platform, i))
            .collect();
        assert!(
            missing.is_empty(),
            "under spin up, component '{id}' would import what Spin does not provide: {missing:?}; \
             satisfy them with a [component.{id}.dependencies] entry or stop importing them"
        );
        assert!(
            !imports.iter().any(|i| i.starts_with("wasi:messaging/")),
            "'{id}' still imports wasi:messaging after composition: {imports:?}"
        );
        assert!(
            exports
                .iter()
                .any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")),
            "'{id}' lost its HTTP export in composition: {exports:?}"
        );
    }
}

#[test]
fn an_uncomposed_service_would_not_start_under_spin() {
    // The reason the adapter exists: Spin refuses a bare wasi:messaging import.
    let platform = spin_platform();
    let (imports, _) = component_interfaces(&std::fs::read(wasm("order")).unwrap(), "order.wasm");
    assert!(
        imports
            .iter()
            .any(|i| i == "wasi:messaging/types@0.2.0-draft" && !provided_by_spin(&platform, i))
    );
    assert!(provided_by_spin(&platform, "wasi:http/types@0.2.3"));
    assert!(!provided_by_spin(&platform, "wasi:http/types@0.3.0"));
    assert!(!provided_by_spin(
        &platform,
        "wasi:keyvalue/store@0.2.0-draft"
    ));
}

#[test]
fn a_dependency_that_does_not_fit_is_refused() {
    let product = std::fs::read(wasm("product")).unwrap();
    let adapter = std::fs::read(wasm("messaging-adapter")).unwrap();
    let err = compose(&product, &[("wasi:nothing@0.1.0".into(), adapter.clone())]).unwrap_err();
    assert!(err.contains("matches no import"), "{err}");
    // An interface-level key leaves `types` unplugged: Spin fails the same way.
    let only_producer = compose(
        &product,
        &[("wasi:messaging/producer@0.2.0-draft".into(), adapter)],
    );
    assert!(
        only_producer.is_err(),
        "plugging only the producer must fail"
    );
}

/// The keys Spin 4.1 accepts, from `crates/manifest/src/schema/v2.rs`
/// (`AppManifest`, `AppDetails`, `Component`, `ComponentDependency`),
/// `schema/common.rs` (`Variable`, `ComponentBuildConfig`),
/// `crates/http/src/config.rs` (`HttpTriggerConfig`, deny_unknown_fields)
/// and `crates/routes/src/lib.rs` (`HttpPrivateEndpoint`), commit 94a8fc8a.
mod spin_schema {
    pub const TOP: &[&str] = &[
        "spin_manifest_version",
        "application",
        "variables",
        "trigger",
        "component",
    ];
    pub const APPLICATION: &[&str] = &[
        "name",
        "version",
        "description",
        "authors",
        "targets",
        "trigger",
        "tool",
    ];
    pub const VARIABLE: &[&str] = &["description", "required", "default", "secret"];
    /// `Trigger` fields plus the flattened `HttpTriggerConfig`.
    pub const HTTP_TRIGGER: &[&str] = &[
        "id",
        "component",
        "components",
        "dependencies",
        "route",
        "static_response",
        "executor",
    ];
    pub const COMPONENT: &[&str] = &[
        "source",
        "description",
        "variables",
        "environment",
        "files",
        "exclude_files",
        "allowed_http_hosts",
        "allowed_outbound_hosts",
        "key_value_stores",
        "sqlite_databases",
        "ai_models",
        "targets",
        "build",
        "tool",
        "dependencies_inherit_configuration",
        "dependencies",
        "profile",
    ];
    pub const BUILD: &[&str] = &["command", "workdir", "watch"];
    /// `ComponentDependency::Local`.
    pub const LOCAL_DEPENDENCY: &[&str] = &["path", "export", "inherit_configuration"];
    /// `crates/capabilities/src/lib.rs` `CAPABILITY_SETS`; Spin silently
    /// ignores any other name, which would leave the dependency without it.
    pub const INHERITABLE: &[&str] = &[
        "ai_models",
        "allowed_outbound_hosts",
        "environment",
        "files",
        "key_value_stores",
        "sqlite_databases",
        "variables",
    ];
}

fn unknown_keys(table: &toml::Table, accepted: &[&str], at: &str, out: &mut Vec<String>) {
    for key in table.keys() {
        if !accepted.contains(&key.as_str()) {
            out.push(format!("{at}.{key}"));
        }
    }
}

/// Spin's `LowerSnakeId` (variable names).
fn is_lower_snake(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn spin_toml_has_no_key_spin_rejects() {
    use spin_schema::*;
    let m = manifest();
    let mut bad = Vec::new();
    unknown_keys(&m, TOP, "(top)", &mut bad);
    assert_eq!(m["spin_manifest_version"].as_integer(), Some(2));
    unknown_keys(
        m["application"].as_table().unwrap(),
        APPLICATION,
        "application",
        &mut bad,
    );
    for (name, v) in m
        .get("variables")
        .and_then(|v| v.as_table())
        .into_iter()
        .flatten()
    {
        assert!(
            is_lower_snake(name),
            "variable '{name}' is not a Spin variable name"
        );
        unknown_keys(
            v.as_table().unwrap(),
            VARIABLE,
            &format!("variables.{name}"),
            &mut bad,
        );
    }
    for (i, t) in m["trigger"]["http"].as_array().unwrap().iter().enumerate() {
        let t = t.as_table().unwrap();
        unknown_keys(t, HTTP_TRIGGER, &format!("trigger.http[{i}]"), &mut bad);
        match &t["route"] {
            toml::Value::String(_) => {}
            toml::Value::Table(r) => assert!(
                r.len() == 1 && r.get("private") == Some(&toml::Value::Boolean(true)),
                "trigger.http[{i}].route must be a path or {{ private = true }}: {r:?}"
            ),
            other => panic!("trigger.http[{i}].route is neither a path nor a table: {other}"),
        }
    }
    for (id, c) in m["component"].as_table().unwrap() {
        let c = c.as_table().unwrap();
        unknown_keys(c, COMPONENT, &format!("component.{id}"), &mut bad);
        if let Some(b) = c.get("build") {
            unknown_keys(
                b.as_table().unwrap(),
                BUILD,
                &format!("component.{id}.build"),
                &mut bad,
            );
        }
        for name in c
            .get("variables")
            .and_then(|v| v.as_table())
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            assert!(
                is_lower_snake(name),
                "component.{id}.variables.{name} is not a Spin variable name"
            );
        }
        let Some(deps) = c.get("dependencies").and_then(|d| d.as_table()) else {
            continue;
        };
        for (key, dep) in deps {
            let dep = dep.as_table().unwrap();
            let at = format!("component.{id}.dependencies.\"{key}\"");
            unknown_keys(dep, LOCAL_DEPENDENCY, &at, &mut bad);
            assert!(
                !(dep.contains_key("inherit_configuration")
                    && c.contains_key("dependencies_inherit_configuration")),
                "{at}: Spin refuses inherit_configuration together with dependencies_inherit_configuration"
            );
            assert!(
                !key.contains('/'),
                "{at}: use the package-level key so one adapter instance serves both types and producer"
            );
            let inherited: Vec<&str> = dep["inherit_configuration"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: list what the adapter inherits"))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            for name in &inherited {
                assert!(
                    INHERITABLE.contains(name),
                    "{at}: Spin does not know '{name}'"
                );
            }
            assert!(
                inherited.contains(&"allowed_outbound_hosts") && inherited.contains(&"variables"),
                "{at}: the messaging adapter needs allowed_outbound_hosts (to chain) and variables (its routing table)"
            );
        }
    }
    assert!(
        bad.is_empty(),
        "spin up would reject spin.toml: unknown keys {bad:?}"
    );
}

/// `messaging_subscribers` (`topic=a,b;...`) as topic → components.
fn adapter_routes(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    text.split(';')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (t, cs) = e.split_once('=').expect("topic=components");
            (
                t.trim().to_owned(),
                cs.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_adapter_routes_every_subscription_the_host_delivers() {
    let m = manifest();
    let default = m["variables"]["messaging_subscribers"]["default"]
        .as_str()
        .expect("[variables] messaging_subscribers has a default");
    let mut host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let components = m["component"].as_table().unwrap();
    for (id, c) in components {
        let subs = c
            .get("tool")
            .and_then(|t| t.get("wasmshop"))
            .and_then(|w| w.get("subscriptions"))
            .and_then(|s| s.as_array());
        for s in subs.into_iter().flatten() {
            host.entry(s["topic"].as_str().unwrap().to_owned())
                .or_default()
                .insert(id.clone());
        }
    }
    let spin = adapter_routes(default);
    assert_eq!(
        spin.iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(t, c)| (t.clone(), c.clone()))
            .collect::<BTreeMap<_, _>>(),
        host,
        "messaging_subscribers must list the same topic → subscriber pairs as the tool.wasmshop subscriptions"
    );
    let triggers = m["trigger"]["http"].as_array().unwrap();
    for (id, c) in components {
        if c.get("dependencies").is_none() {
            continue;
        }
        assert_eq!(
            c["variables"]["messaging_subscribers"].as_str(),
            Some("{{ messaging_subscribers }}"),
            "component '{id}' must pass messaging_subscribers to its adapter"
        );
    }
    for (publisher, topic) in PUBLISHES {
        let allowed: Vec<&str> = components[*publisher]
            .get("allowed_outbound_hosts")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for subscriber in spin.get(*topic).into_iter().flatten() {
            assert!(
                allowed.contains(&format!("http://{subscriber}.spin.internal").as_str()),
                "'{publisher}' publishes {topic} to '{subscriber}' but may not chain to it: {allowed:?}"
            );
            assert!(
                triggers
                    .iter()
                    .any(|t| t["component"].as_str() == Some(subscriber.as_str())
                        && t["route"].get("private").is_some()),
                "subscriber '{subscriber}' needs a [[trigger.http]] route = {{ private = true }}"
            );
        }
    }
}

/// Which component publishes which topic (openapi.yaml, `ProductEvent`
/// and `OrderEvent`).
const PUBLISHES: &[(&str, &str)] = &[("product", "products"), ("order", "orders")];

/// The app of `spin.toml` with every component composed as Spin composes
/// it, and without the host's own subscriptions: events can only travel the
/// Spin way (adapter → `http://order.spin.internal/_wasmshop/events`).
fn start_spin_style_app(dir: &Path) -> Host {
    let mut m = manifest();
    for (id, bytes) in composed_components() {
        let path = dir.join(format!("{id}.composed.wasm"));
        std::fs::write(&path, bytes).unwrap();
        let c = m
            .get_mut("component")
            .and_then(|c| c.get_mut(&id))
            .and_then(|c| c.as_table_mut())
            .unwrap();
        c.insert("source".into(), path.display().to_string().into());
        c.remove("dependencies");
        if let Some(w) = c.get_mut("tool").and_then(|t| t.get_mut("wasmshop")) {
            w.as_table_mut().unwrap().remove("subscriptions");
        }
    }
    Host::builder()
        .manifest(toml::to_string(&m).unwrap())
        .start()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn events_travel_the_spin_way_through_the_adapter_and_the_private_route() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_spin_style_app(dir.path());
    let c = host.client();
    let post = |path: &str, body: Value| c.post(host.url(path)).json(&body).send().unwrap();
    for id in ["keep", "gone"] {
        let r = post(
            "/api/products",
            json!({"id": id, "name": id, "price": 2.5, "stock": 10}),
        );
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    }
    let order = post(
        "/api/orders",
        json!({"customerId": "c1", "items": [{"productId": "keep", "quantity": 1}, {"productId": "gone", "quantity": 2}]}),
    );
    assert_eq!(order.status(), 201);
    let order: Value = order.json().unwrap();
    let order_url = format!("/api/orders/{}", order["id"].as_str().unwrap());

    // Rename: ProductUpdated reaches the order through the adapter.
    let r = c
        .put(host.url("/api/products/keep"))
        .json(&json!({"name": "Kept", "price": 2.5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let o: Value = host.get(&order_url).json().unwrap();
    assert_eq!(
        o["items"][0]["productName"],
        "Kept",
        "delivery is synchronous under the adapter: the rename is visible at once; host log:\n{}",
        host.logs()
    );

    // Delete: ProductDeleted cancels the order and releases the other stock.
    let r = c.delete(host.url("/api/products/gone")).send().unwrap();
    assert_eq!(r.status(), 204);
    let o: Value = host.get(&order_url).json().unwrap();
    assert_eq!(o["status"], "Cancelled", "{o}");
    assert!(o["cancellationReason"].as_str().unwrap().contains("gone"));
    wait_for("the reservation of 'keep' to be released", || {
        host.get("/api/products/keep").json::<Value>().unwrap()["stock"] == 10
    });

    // The event route is private: not reachable from outside.
    let r = c
        .post(host.url("/_wasmshop/events"))
        .header("x-wasmshop-topic", "products")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Spin names the header of a route parameter `SPIN_PATH_MATCH_<NAME>`
/// and sends it with `_` turned into `-`, lower-cased
/// (`crates/trigger-http/src/headers.rs`): `:path_segment` arrives as
/// `spin-path-match-path-segment`, never `spin-path-match-path_segment`.
#[test]
fn route_parameters_arrive_under_the_header_names_spin_sends() {
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "params"
[[trigger.http]]
route = "/p/:path_segment/:userId/..."
component = "echo"
[component.echo]
source = "{}"
"#,
        wasm("capabilities-fixture").display()
    );
    let host = Host::builder().manifest(manifest).start();
    let r = host.get("/p/first/42/echo");
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().unwrap();
    let headers = &echoed["headers"];
    assert_eq!(
        headers["spin-path-match-path-segment"], "first",
        "{headers}"
    );
    assert_eq!(headers["spin-path-match-userid"], "42", "{headers}");
    assert!(
        headers.get("spin-path-match-path_segment").is_none(),
        "Spin never sends the name with '_': {headers}"
    );
}
