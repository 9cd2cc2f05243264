//! A client span and the operation metrics around every key-value call:
//! [`traced`] wraps the store a backend opened, so each backend is
//! observed the same way without knowing about it.

use super::spans;
use crate::capabilities::keyvalue::{CasVersion, KeyValueStore, StoreError, SwapError};
use async_trait::async_trait;
use std::sync::Arc;
use tracing::Instrument as _;

/// `store`, with a span (`db.system`, `db.operation.name`, the store
/// label as `db.namespace`; never a key or a value) and
/// `wasmshop_kv_operations_total` / `wasmshop_kv_cas_conflicts_total`
/// around each call.
pub fn traced(
    store: Arc<dyn KeyValueStore>,
    component: &str,
    label: &str,
) -> Arc<dyn KeyValueStore> {
    Arc::new(Traced {
        inner: store,
        component: Arc::from(component),
        label: Arc::from(label),
    })
}

struct Traced {
    inner: Arc<dyn KeyValueStore>,
    component: Arc<str>,
    label: Arc<str>,
}

/// How an operation ended, for the metric's `outcome` label.
trait Outcome {
    fn outcome(&self) -> &'static str;
}

impl<T> Outcome for Result<T, StoreError> {
    fn outcome(&self) -> &'static str {
        if self.is_ok() { "ok" } else { "error" }
    }
}

impl Outcome for Result<(), SwapError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(()) => "ok",
            Err(SwapError::CasFailed) => "conflict",
            Err(SwapError::Store(_)) => "error",
        }
    }
}

impl Traced {
    async fn run<R: Outcome>(&self, operation: &'static str, call: impl Future<Output = R>) -> R {
        let backend = self.inner.backend_name();
        // Without trace export a key-value span would only be made and
        // dropped: the most frequent call skips it.
        if !super::traces_exported() {
            let result = call.await;
            crate::metrics::record_kv(backend, operation, result.outcome());
            return result;
        }
        let span = spans::kv(backend, operation, &self.label, &self.component);
        let result = call.instrument(span.clone()).await;
        let outcome = result.outcome();
        if outcome == "error" {
            spans::record_error(&span);
        }
        crate::metrics::record_kv(backend, operation, outcome);
        result
    }
}

#[async_trait]
impl KeyValueStore for Traced {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run("get", self.inner.get(key)).await
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.run("set", self.inner.set(key, value)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", self.inner.delete(key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.run("exists", self.inner.exists(key)).await
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.run("list_keys", self.inner.list_keys(cursor)).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.run("get_many", self.inner.get_many(keys)).await
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.run("set_many", self.inner.set_many(entries)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.run("delete_many", self.inner.delete_many(keys)).await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.run("increment", self.inner.increment(key, delta))
            .await
    }

    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError> {
        self.run("read_versioned", self.inner.read_versioned(key))
            .await
    }

    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError> {
        let result = self.run("swap", self.inner.swap(key, version, value)).await;
        if matches!(result, Err(SwapError::CasFailed)) {
            crate::metrics::record_cas_conflict(self.inner.backend_name());
        }
        result
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn carries_read_dependencies(&self) -> bool {
        self.inner.carries_read_dependencies()
    }
}
