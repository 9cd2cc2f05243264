//! The generated `wasi:keyvalue` host traits, implemented over
//! [`KeyValueStore`]. Thin on purpose: access control and error mapping
//! only; storage semantics belong to the backends.

use super::{Bucket, Cas, KeyValueCtx, StoreError, SwapError};
use crate::bindings::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};
use wasmtime::component::Resource;

fn to_wit(e: StoreError) -> Error {
    Error::Other(e.to_string())
}

impl KeyValueCtx {
    fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(b)?)
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
            Err(e) => return Ok(Err(to_wit(e))),
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
        Ok(self.bucket(&b)?.store.get(&key).await.map_err(to_wit))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .set(&key, &value)
            .await
            .map_err(to_wit))
    }

    async fn delete(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.bucket(&b)?.store.delete(&key).await.map_err(to_wit))
    }

    async fn exists(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self.bucket(&b)?.store.exists(&key).await.map_err(to_wit))
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
            .map_err(to_wit))
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
        Ok(self
            .bucket(&b)?
            .store
            .increment(&key, delta)
            .await
            .map_err(to_wit))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
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
                Err(atomics::CasError::StoreError(to_wit(e)))
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
            Err(e) => return Ok(Err(to_wit(e))),
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
        let values = self.bucket(&b)?.store.get_many(&keys).await;
        Ok(values
            .map(|values| keys.into_iter().zip(values).collect())
            .map_err(to_wit))
    }

    async fn set_many(
        &mut self,
        b: Resource<Bucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .set_many(&entries)
            .await
            .map_err(to_wit))
    }

    async fn delete_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .bucket(&b)?
            .store
            .delete_many(&keys)
            .await
            .map_err(to_wit))
    }
}
