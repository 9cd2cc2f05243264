//! `wasi:keyvalue` (store, atomics, batch @0.2.0-draft2) on a pluggable
//! backend. The host enforces the component's `key_value_stores` list and
//! gives each component its own namespace; backends only store bytes.

mod host;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;

/// Why a backend call failed. The message tells the guest (and the log)
/// what went wrong and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now; retrying later may work.
    #[error("key-value backend unavailable: {0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// Why a compare-and-swap failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwapError {
    /// The value changed since it was read.
    #[error("the value changed since it was read; read it again and retry")]
    CasFailed,
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a compare-and-swap was based on: an opaque backend version, or
/// the fact that the key was absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasVersion {
    /// The key did not exist; the swap must create it.
    Absent,
    /// The backend's version token of the value that was read.
    Version(String),
}

/// One namespace of one backend: the keys of one store label of one component.
#[async_trait]
pub trait KeyValueStore: Send + Sync {
    /// The value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`.
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; absent keys are fine.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// One page of keys after `cursor`, and the cursor of the next page.
    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError>;
    /// Values of many keys, in the order asked.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Stores many values.
    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError>;
    /// Removes many keys.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Atomically adds `delta` to the integer stored (as decimal text) at
    /// `key`, starting from 0; returns the new value.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    /// Reads a value together with the version a later swap is checked against.
    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError>;
    /// Writes `value` only if the key is still at `version`.
    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError>;
}

/// A backend serving store labels (one instance per runtime-config entry).
#[async_trait]
pub trait KeyValueBackend: Send + Sync {
    /// The namespace of `label` for `component`.
    fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError>;
    /// Whether the backend is reachable (for `/readyz`).
    async fn ready(&self) -> Result<(), String>;
}

/// Which backend serves each store label.
#[derive(Clone)]
pub struct StoreRegistry {
    by_label: BTreeMap<String, Arc<dyn KeyValueBackend>>,
    fallback: Arc<dyn KeyValueBackend>,
}

impl StoreRegistry {
    /// Labels not listed in `by_label` use `fallback` (the embedded backend).
    pub fn new(
        by_label: BTreeMap<String, Arc<dyn KeyValueBackend>>,
        fallback: Arc<dyn KeyValueBackend>,
    ) -> Self {
        StoreRegistry { by_label, fallback }
    }

    fn backend(&self, label: &str) -> &Arc<dyn KeyValueBackend> {
        self.by_label.get(label).unwrap_or(&self.fallback)
    }

    /// Opens a label's namespace for a component.
    pub fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError> {
        self.backend(label).open(component, label)
    }

    /// Every distinct backend, for readiness checks.
    pub fn backends(&self) -> Vec<(String, Arc<dyn KeyValueBackend>)> {
        let mut v: Vec<_> = self
            .by_label
            .iter()
            .map(|(l, b)| (format!("key_value_store.{l}"), b.clone()))
            .collect();
        v.push(("key_value_store (embedded)".into(), self.fallback.clone()));
        v
    }
}

/// A `bucket` resource: an opened store.
pub struct Bucket {
    store: Arc<dyn KeyValueStore>,
}

/// A `cas` resource: a value read with its version.
pub struct Cas {
    store: Arc<dyn KeyValueStore>,
    key: String,
    current: Option<Vec<u8>>,
    version: CasVersion,
}

/// Per-instance state of the key-value capability.
pub struct KeyValueCtx {
    table: ResourceTable,
    component: Arc<str>,
    allowed: Arc<std::collections::BTreeSet<String>>,
    stores: Arc<StoreRegistry>,
}

impl KeyValueCtx {
    /// `allowed` is the component's `key_value_stores` list.
    pub fn new(
        component: Arc<str>,
        allowed: Arc<std::collections::BTreeSet<String>>,
        stores: Arc<StoreRegistry>,
    ) -> Self {
        KeyValueCtx {
            table: ResourceTable::new(),
            component,
            allowed,
            stores,
        }
    }
}

/// Adds the three key-value interfaces to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut KeyValueCtx,
) -> wasmtime::Result<()> {
    use crate::bindings::keyvalue::{atomics, batch, store};
    use wasmtime::component::HasSelf;
    store::add_to_linker::<T, HasSelf<KeyValueCtx>>(linker, get)?;
    atomics::add_to_linker::<T, HasSelf<KeyValueCtx>>(linker, get)?;
    batch::add_to_linker::<T, HasSelf<KeyValueCtx>>(linker, get)?;
    Ok(())
}
