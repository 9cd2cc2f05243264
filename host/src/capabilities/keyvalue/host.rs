//! The generated `wasi:keyvalue` host traits, implemented over
//! [`KeyValueStore`]. Thin on purpose: access control and error mapping
//! only; storage semantics belong to the backends.

use super::read_fence::ReadFence;
use super::{Bucket, Cas, KeyValueCtx, KeyValueStore, StoreError, SwapError};
use crate::bindings::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};
use wasmtime::component::Resource;

/// Most bytes a `get-many` hands a guest (keys, values and per-entry
/// overhead, counted as the host reckons the guest's cost, see
/// [`GET_MANY_ENTRY_OVERHEAD`]): Spin's `MAX_HOST_BUFFERED_BYTES`,
/// 128 MiB (`docs/spin-parity.md`), lowered per instance to a quarter of
/// its memory limit ([`super::KeyValueCtx::with_memory_limit`]). A larger
/// result is a key-value error the guest can handle, not a trap on its
/// memory limit.
pub const MAX_GET_MANY_BYTES: usize = 128 << 20;

/// Bytes one `get-many` entry costs the guest besides its key and value:
/// Spin counts a `(String, Option<Vec<u8>>)` (48), but the guest also gets
/// the lowered entry (a string and an optional list: 24), the list of
/// entries its bindings build from it, and an allocation header for the
/// key and for the value; 128 covers them (review: 72,000 one-byte values
/// counted as 4 MB trapped an 8 MiB instance).
const GET_MANY_ENTRY_OVERHEAD: usize = 128;

/// Keys fetched per backend call while a `get-many` is assembled, so the
/// host stops reading soon after the cap is passed.
const GET_MANY_CHUNK: usize = 64;

/// The text of a `get-many` over `limit` bytes (Spin's wording).
fn too_large(limit: usize) -> Error {
    Error::Other(format!(
        "query result exceeds limit of {limit} bytes; ask for fewer keys at a time"
    ))
}

/// Before a write to `store`: a store that does not itself check the
/// request's reads of commits in flight (Redis, Dapr) is written only once
/// they are durable (`read_fence.rs`).
async fn settled_for(store: &dyn KeyValueStore) -> Result<(), Error> {
    if store.carries_read_dependencies() {
        return Ok(());
    }
    ReadFence::settle_current()
        .await
        .map_err(|e| Error::Other(e.to_string()))
}

impl KeyValueCtx {
    fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(b)?)
    }

    /// The WIT error for a failed `operation`: the full error goes to the
    /// host log with the trace id, the guest gets a fixed text for its
    /// kind (`docs/spin-parity.md`, "Errors a component sees").
    fn to_wit(&self, operation: &'static str, e: StoreError) -> Error {
        let StoreError(e) = e;
        e.log_for_guest(&self.component, operation, self.traceparent.as_deref());
        Error::Other(guest_text(operation, &e))
    }
}

/// The fixed text a guest gets for a failed `operation`: no backend
/// address, no backend or sidecar response text.
fn guest_text(operation: &str, e: &super::BackendError) -> String {
    use super::BackendError::*;
    const LOGGED: &str = "the host log has the detail under this request's trace id";
    match e {
        Unavailable { .. } => format!(
            "the key-value store is unavailable ({operation} failed); retry later; {LOGGED}"
        ),
        Rejected { .. } if operation == "increment" => format!(
            "the key-value store refused the increment: the value is not an integer (decimal text), or the sum overflows a 64-bit integer; {LOGGED}"
        ),
        Rejected { .. } => {
            format!("the key-value store refused the {operation}; retrying will not help; {LOGGED}")
        }
        Unsupported { .. } => format!(
            "this store's backend does not support {operation}; keep an index document of the keys instead; {LOGGED}"
        ),
    }
}

impl store::Host for KeyValueCtx {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        if !self.allowed_stores.contains(&identifier) {
            tracing::warn!(
                component = %self.component,
                store = %identifier,
                "key-value store refused: add it to key_value_stores of [component.{}] in spin.toml",
                self.component
            );
            return Ok(Err(Error::AccessDenied));
        }
        let store = match self.stores.open(&self.component, &identifier) {
            Ok(s) => s,
            Err(e) => return Ok(Err(self.to_wit("open", e))),
        };
        Ok(Ok(self.table.push(Bucket { store })?))
    }
}

impl store::HostBucket for KeyValueCtx {
    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .get(&key)
            .await
            .map_err(|e| self.to_wit("get", e)))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.bucket(&b)?.store.clone();
        if let Err(e) = settled_for(&*store).await {
            return Ok(Err(e));
        }
        Ok(store
            .set(&key, &value)
            .await
            .map_err(|e| self.to_wit("set", e)))
    }

    async fn delete(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.bucket(&b)?.store.clone();
        if let Err(e) = settled_for(&*store).await {
            return Ok(Err(e));
        }
        Ok(store
            .delete(&key)
            .await
            .map_err(|e| self.to_wit("delete", e)))
    }

    async fn exists(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .exists(&key)
            .await
            .map_err(|e| self.to_wit("exists", e)))
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .list_keys(cursor.as_deref())
            .await
            .map(|(keys, cursor)| KeyResponse { keys, cursor })
            .map_err(|e| self.to_wit("list-keys", e)))
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueCtx {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let store = self.bucket(&b)?.store.clone();
        if let Err(e) = settled_for(&*store).await {
            return Ok(Err(e));
        }
        Ok(store
            .increment(&key, delta)
            .await
            .map_err(|e| self.to_wit("increment", e)))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let c = self.table.get(&cas)?;
        if let Err(e) = settled_for(&*c.store).await {
            self.table.delete(cas)?;
            return Ok(Err(atomics::CasError::StoreError(e)));
        }
        let c = self.table.get(&cas)?;
        let result = c.store.swap(&c.key, &c.version, &value).await;
        Ok(match result {
            Ok(()) => {
                self.table.delete(cas)?;
                Ok(())
            }
            Err(SwapError::CasFailed) => Err(atomics::CasError::CasFailed(cas)),
            Err(SwapError::Store(e)) => {
                self.table.delete(cas)?;
                Err(atomics::CasError::StoreError(self.to_wit("swap", e)))
            }
        })
    }
}

impl atomics::HostCas for KeyValueCtx {
    async fn new(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, Error>> {
        let store = self.bucket(&b)?.store.clone();
        let (current, version) = match store.read_versioned(&key).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(self.to_wit("read for a compare-and-swap", e))),
        };
        Ok(Ok(self.table.push(Cas {
            store,
            key,
            current,
            version,
        })?))
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueCtx {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, Error>> {
        let store = self.bucket(&b)?.store.clone();
        // The list, the keys the guest still holds in the list it sent
        // (each key is in its memory twice once the result is in), then
        // per entry its overhead, key and value; fetched in chunks so
        // reading stops soon after the cap.
        let mut total = std::mem::size_of::<Vec<String>>()
            + keys
                .iter()
                .map(|k| std::mem::size_of::<String>() + k.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GET_MANY_CHUNK) {
            let values = match store.get_many(chunk).await {
                Ok(v) => v,
                Err(e) => return Ok(Err(self.to_wit("get-many", e))),
            };
            for (key, value) in chunk.iter().zip(values) {
                total += GET_MANY_ENTRY_OVERHEAD + key.len() + value.as_ref().map_or(0, Vec::len);
                if total > self.get_many_limit {
                    tracing::warn!(
                        component = %self.component,
                        keys = keys.len(),
                        limit = self.get_many_limit,
                        "get-many refused: the values exceed the limit (a quarter of the instance's memory limit, at most 128 MiB); the component should ask for fewer keys at a time"
                    );
                    return Ok(Err(too_large(self.get_many_limit)));
                }
                out.push((key.clone(), value));
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        b: Resource<Bucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.bucket(&b)?.store.clone();
        if let Err(e) = settled_for(&*store).await {
            return Ok(Err(e));
        }
        Ok(store
            .set_many(&entries)
            .await
            .map_err(|e| self.to_wit("set-many", e)))
    }

    async fn delete_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.bucket(&b)?.store.clone();
        if let Err(e) = settled_for(&*store).await {
            return Ok(Err(e));
        }
        Ok(store
            .delete_many(&keys)
            .await
            .map_err(|e| self.to_wit("delete-many", e)))
    }
}
