//! `wasi:config/store`: a component reads its own variables from the
//! manifest (resolved once at start-up, see `manifest::Variables`).

use crate::bindings::config::store::{Error, Host};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The variables one instance may read.
#[derive(Clone, Default)]
pub struct ConfigCtx {
    values: Arc<BTreeMap<String, String>>,
}

impl ConfigCtx {
    /// Creates the context from a component's resolved variables.
    pub fn new(values: Arc<BTreeMap<String, String>>) -> Self {
        ConfigCtx { values }
    }
}

impl Host for ConfigCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(Ok(self.values.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(Ok(self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}
