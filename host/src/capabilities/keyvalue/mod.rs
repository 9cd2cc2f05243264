//! `wasi:keyvalue` (store, atomics, batch @0.2.0-draft2) on a pluggable
//! backend. The host enforces the component's `key_value_stores` list and
//! gives each component its own namespace; backends only store bytes.

mod host;
pub mod read_fence;

use super::error::BackendError;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;

/// Why a key-value call failed: a backend's error, seen by the key-value
/// capability (the guest gets a fixed text for its kind as
/// `error::other`; the full error goes to the host log).
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(#[from] pub BackendError);

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

impl From<BackendError> for SwapError {
    fn from(e: BackendError) -> Self {
        SwapError::Store(StoreError(e))
    }
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

/// CAS rounds of the generic [`KeyValueStore::increment`] before it gives
/// up on a key that keeps changing.
pub const INCREMENT_ATTEMPTS: u32 = 100;

/// One namespace of one backend: the keys of one store label of one
/// component. Every backend implements this contract, and
/// `tests/tests/keyvalue_contract.rs` checks it against each of them.
///
/// - Namespaces MUST be separate: no key of one (component, label) is
///   visible in another, whatever characters the names contain.
/// - Values are bytes and MUST come back byte for byte. A backend that
///   stores JSON (Dapr) wraps every other value, and MAY give back a value
///   that is JSON reformatted by its store (same JSON value).
/// - `delete` of an absent key MUST succeed.
/// - `swap` MUST be atomic with respect to every write of the same key:
///   it writes only if the key is still at the version `read_versioned`
///   returned, else fails with [`SwapError::CasFailed`] and writes
///   nothing. A version MUST NOT be reused after a delete and re-create,
///   so a stale handle never succeeds, unless the store behind the backend
///   reuses its own versions: Dapr's ETags are the state store's, and
///   state.redis counts a re-created key from 1 again
///   (`docs/dapr-reference.md`). [`CasVersion::Absent`] swaps only create.
/// - `increment` MUST be atomic (no lost updates under concurrency); the
///   default is a CAS loop over `read_versioned` and `swap`. It treats an
///   absent key as 0, and answers [`BackendError::Rejected`] for a value
///   that is not decimal integer text or when the sum overflows `i64`.
/// - `list_keys` returns one page and the cursor of the next (`None` on
///   the last page); cursors are opaque and valid only for the store that
///   made them. A cursor the store did not make MUST NOT restart the
///   listing: it is rejected (Redis), or resumes after it (embedded, whose
///   cursor is the last key returned). Keys MAY come back more than once
///   across pages, never missed, and none of another namespace. A backend
///   with no key listing MUST answer [`BackendError::Unsupported`];
///   that is the only operation allowed to be unsupported.
/// - Batch operations need not be atomic (`wasi:keyvalue/batch` does not
///   promise it); `get_many` MUST answer in the order asked.
/// - Any call MAY fail with [`BackendError::Unavailable`] when the
///   backend cannot be reached; the host retries nothing itself.
#[async_trait]
pub trait KeyValueStore: Send + Sync {
    /// The value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key` (last write wins).
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; absent keys are fine.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.get(key).await?.is_some())
    }
    /// One page of keys after `cursor`, and the cursor of the next page.
    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError>;
    /// Values of many keys, in the order asked.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }
    /// Stores many values.
    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        for (key, value) in entries {
            self.set(key, value).await?;
        }
        Ok(())
    }
    /// Removes many keys.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }
    /// Atomically adds `delta` to the integer stored (as decimal text) at
    /// `key`, starting from 0; returns the new value.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        for _ in 0..INCREMENT_ATTEMPTS {
            let (current, version) = self.read_versioned(key).await?;
            let next = add_to_stored(self.backend_name(), key, current.as_deref(), delta)?;
            match self.swap(key, &version, next.to_string().as_bytes()).await {
                Ok(()) => return Ok(next),
                Err(SwapError::CasFailed) => continue,
                Err(SwapError::Store(e)) => return Err(e),
            }
        }
        Err(BackendError::unavailable(
            self.backend_name(),
            format!(
                "key '{key}' kept changing during increment ({INCREMENT_ATTEMPTS} attempts); retry"
            ),
        )
        .into())
    }
    /// Reads a value together with the version a later swap is checked against.
    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError>;
    /// Writes `value` only if the key is still at `version`.
    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError>;

    /// Whether this store's writes carry the running request's read-fence
    /// dependency, so that the store itself refuses a write based on a
    /// batch that failed (the embedded store). A write to any other store
    /// waits until the request's uncommitted reads are durable
    /// (`read_fence.rs`). No default: a wrapper that forgot to pass it on
    /// would make every write wait for the commits read, silently.
    fn carries_read_dependencies(&self) -> bool;
    /// The backend's name, for error messages of the default methods.
    fn backend_name(&self) -> &'static str;
}

/// `stored` (decimal text, absent = 0) plus `delta`, with the errors the
/// contract of [`KeyValueStore::increment`] names.
pub fn add_to_stored(
    backend: &'static str,
    key: &str,
    stored: Option<&[u8]>,
    delta: i64,
) -> Result<i64, BackendError> {
    let base = match stored {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                BackendError::rejected(
                    backend,
                    format!("the value at '{key}' is not an integer; increment only works on keys it created or that hold decimal text"),
                )
            })?,
    };
    base.checked_add(delta).ok_or_else(|| {
        BackendError::rejected(
            backend,
            format!("incrementing '{key}' by {delta} overflows a 64-bit integer"),
        )
    })
}

/// A backend serving store labels (one instance per runtime-config entry).
#[async_trait]
pub trait KeyValueBackend: Send + Sync {
    /// The namespace of `label` for `component`.
    fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError>;
    /// Whether the backend is reachable (for `/readyz`).
    async fn ready(&self) -> Result<(), BackendError>;
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
        self.backend(label)
            .open(component, label)
            .map(|store| crate::telemetry::kv::traced(store, component, label))
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
    allowed_stores: Arc<std::collections::BTreeSet<String>>,
    stores: Arc<StoreRegistry>,
    /// The trace context of the request or delivery the instance serves,
    /// logged with every backend error.
    traceparent: Option<String>,
    /// Most bytes one `get-many` hands this instance (see
    /// [`KeyValueCtx::with_memory_limit`]).
    get_many_limit: usize,
}

impl KeyValueCtx {
    /// `allowed_stores` is the component's `key_value_stores` list.
    pub fn new(
        component: Arc<str>,
        allowed_stores: Arc<std::collections::BTreeSet<String>>,
        stores: Arc<StoreRegistry>,
    ) -> Self {
        KeyValueCtx {
            table: ResourceTable::new(),
            component,
            allowed_stores,
            stores,
            traceparent: None,
            get_many_limit: host::MAX_GET_MANY_BYTES,
        }
    }

    /// Caps a `get-many` result at a quarter of the instance's memory
    /// limit (`max_memory` bytes) when that is below Spin's 128 MiB: the
    /// canonical ABI copies the whole result into the guest's memory at
    /// once, so a result near the limit would trap the guest instead of
    /// being an error it can handle. The rest is left for what the guest
    /// makes of the result (its own list of entries) and its other data;
    /// a bound, not a promise, since the guest's own use is unknown.
    pub fn with_memory_limit(mut self, max_memory: usize) -> Self {
        self.get_many_limit = host::MAX_GET_MANY_BYTES.min(max_memory / 4);
        self
    }

    /// The trace context backend errors are logged with (the request's or
    /// delivery's `traceparent`), so the `traceId` a client quotes finds them.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
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
