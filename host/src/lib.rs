//! The WasmShop host: runs the WebAssembly components of a Spin manifest on
//! wasmtime and maps their WIT imports (`wasi:keyvalue`, `wasi:messaging`,
//! `wasi:http`, `wasi:config`) onto pluggable backends.
//!
//! Layout: [`manifest`] and [`runtime_config`] say what to run and on what;
//! [`engine`] compiles and limits; [`app`] wires components to
//! [`capabilities`] (one module per WIT interface, each with a backend
//! trait) implemented by [`backends`]; [`trigger`] runs components on HTTP
//! requests and message deliveries; [`cli`] is `wasmshop up`.

pub mod app;
pub mod backends;
pub mod bindings;
pub mod capabilities;
pub mod cli;
pub mod engine;
pub mod manifest;
pub mod metrics;
pub mod problem;
pub mod runtime_config;
pub mod state;
pub mod trigger;
