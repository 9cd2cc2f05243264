//! The built service components import only the WIT contract of
//! `wit/world.wit` (world `capabilities`, plus the basic WASI CLI
//! interfaces `std` pulls in), so they run on our host and under Spin alike.

use wasmshop_tests::{component_interfaces, wasm};

/// Interfaces a service component may import, as `package/interface` with
/// the versions `wit/deps/` vendors (the ones Spin accepts).
fn allowed(name: &str) -> bool {
    let (pkg_iface, version) = name.split_once('@').unwrap_or((name, ""));
    let exact = |v: &str| version == v;
    let wasi_0_2 = version.starts_with("0.2.") && !version.contains('-');
    match pkg_iface {
        "wasi:keyvalue/store" | "wasi:keyvalue/atomics" | "wasi:keyvalue/batch" => {
            exact("0.2.0-draft2")
        }
        "wasi:messaging/producer" | "wasi:messaging/types" => exact("0.2.0-draft"),
        "wasi:config/store" => exact("0.2.0-draft-2024-09-27"),
        "wasi:http/outgoing-handler" | "wasi:http/types" => wasi_0_2,
        // The basic WASI CLI interfaces: clocks, random, io, stdio, environment.
        "wasi:clocks/wall-clock" | "wasi:clocks/monotonic-clock" => wasi_0_2,
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => wasi_0_2,
        "wasi:io/error" | "wasi:io/poll" | "wasi:io/streams" => wasi_0_2,
        "wasi:cli/environment"
        | "wasi:cli/exit"
        | "wasi:cli/stdin"
        | "wasi:cli/stdout"
        | "wasi:cli/stderr"
        | "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => wasi_0_2,
        _ => false,
    }
}

/// Imports and exports of a built component.
fn world_of(path: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap();
    component_interfaces(&bytes, &path.display().to_string())
}

fn check_service(name: &str) {
    let (imports, exports) = world_of(&wasm(name));
    let unexpected: Vec<&String> = imports.iter().filter(|i| !allowed(i)).collect();
    assert!(
        unexpected.is_empty(),
        "{name}.wasm imports interfaces outside wit/world.wit: {unexpected:?}\nall imports: {imports:#?}"
    );
    assert!(
        exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")),
        "{name}.wasm must export wasi:http/incoming-handler: {exports:?}"
    );
    assert!(
        exports.contains(&"wasi:messaging/incoming-handler@0.2.0-draft".to_string()),
        "{name}.wasm must export wasi:messaging/incoming-handler@0.2.0-draft: {exports:?}"
    );
}

#[test]
fn product_imports_only_the_contract() {
    check_service("product");
}

#[test]
fn order_imports_only_the_contract() {
    check_service("order");
}

#[test]
fn the_check_refuses_what_design_forbids() {
    assert!(!allowed("wasi:filesystem/types@0.2.6"));
    assert!(!allowed("wasi:sockets/tcp@0.2.6"));
    assert!(!allowed("wasi:keyvalue/store@0.2.0-draft"));
    assert!(allowed("wasi:keyvalue/store@0.2.0-draft2"));
    assert!(allowed("wasi:http/types@0.2.6"));
}
