//! The WasmShop host: runs the WebAssembly components of a Spin manifest on
//! wasmtime and maps their WIT imports (`wasi:keyvalue`, `wasi:messaging`,
//! `wasi:http`, `wasi:config`) onto pluggable backends.
//!
//! Layers, each importing only those below it (`docs/architecture.md`
//! draws the call paths through them):
//!
//! 1. [`cli`]: `wasmshop up` and its flags.
//! 2. [`trigger`]: runs components on HTTP requests, chained calls and
//!    message deliveries.
//! 3. [`app`]: the loaded components and backends, and making an
//!    instance's store.
//! 4. [`runtime_config`] (which backend serves what) and [`backends`]
//!    (one folder per backend, registered in one place).
//! 5. [`capabilities`]: one module per WIT interface with the backend
//!    traits it is written against; [`ingress`]: the backends' hooks on the
//!    HTTP listener.
//! 6. Helpers every layer may use: [`manifest`], [`engine`], [`trace`],
//!    [`problem`], [`metrics`], [`telemetry`], [`state`], [`bindings`],
//!    [`config_text`].

pub mod app;
pub mod backends;
pub mod bindings;
pub mod capabilities;
pub mod cli;
pub mod config_text;
pub mod engine;
pub mod ingress;
pub mod manifest;
pub mod metrics;
pub mod problem;
pub mod runtime_config;
pub mod state;
pub mod telemetry;
pub mod trace;
pub mod trigger;
