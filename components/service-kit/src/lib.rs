//! Guest-side library shared by the WasmShop service components.
//!
//! It owns the `wit-bindgen` bindings for the `wasmshop:platform/service`
//! world, so the product and order components share one copy, and it keeps
//! everything that is not business logic out of them: the HTTP model and
//! its `wasi:http` glue, outbound calls, problem details, tenancy, exact
//! money, JSON field validation, ETags, key-value helpers, paged indexes
//! and their cursors, list paging, request plumbing ([`rest`]),
//! CloudEvents, clock and ids.
//!
//! A component exports itself with
//!
//! ```ignore
//! #[cfg(target_arch = "wasm32")]
//! service_kit::export!(MyComponent with_types_in service_kit::bindings);
//! ```
//!
//! The `cfg` matters for native unit tests of a `cdylib` crate: the export
//! symbols are named after WIT interfaces (`wasi:http/...`), which a native
//! linker rejects.
//!
//! Binding-free modules ([`web`], [`problem`], [`tenant`], [`money`],
//! [`etag`], [`ids`], [`index`], [`pages`], [`cursor`], [`paging`], [`rest`],
//! [`clock`], [`trace`], [`outbox`], most of [`kv`] and [`events`])
//! run in native unit tests; [`wasi_http`], [`client`], [`kv::WasiStore`]
//! and [`events::MessagingSink`] are the thin glue over the bindings.

#![warn(missing_docs)]

extern crate self as service_kit;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Re-exported so components use the same `http` types as this crate.
pub use http;

/// WIT bindings for `wasmshop:platform/service`, generated once here so every
/// service shares one copy of the types.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasmshop:platform/service",
        pub_export_macro: true,
        default_bindings_module: "service_kit::bindings",
        runtime_path: "service_kit::__wit_bindgen::rt",
        generate_all,
    });
}

pub use bindings::export;

pub mod client;
pub mod clock;
pub mod cursor;
pub mod etag;
pub mod events;
pub mod ids;
pub mod index;
pub mod json;
pub mod kv;
pub mod money;
pub mod outbox;
pub mod pages;
pub mod paging;
pub mod problem;
pub mod rest;
pub mod tenant;
pub mod trace;
pub mod wasi_http;
pub mod web;
