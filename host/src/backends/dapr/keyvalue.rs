//! `wasi:keyvalue` on the Dapr state API (what it does and where each
//! rule comes from: `docs/dapr-reference.md`).
//!
//! Mapping: `get` = `GET /v1.0/state/{store}/{key}` (204 = absent); `set` =
//! save; `delete` = `DELETE`; `get-many` = `POST .../bulk` (the answer's
//! field is `data`); `set-many`/`delete-many` = `POST .../transaction`;
//! CAS = the read's `ETag`, then a save with that etag and `first-write`
//! concurrency, or `first-write` without an etag (create-only) when the key
//! was absent; `increment` = the contract's generic CAS loop. `list-keys`
//! has no Dapr equivalent: it is answered "unsupported".
//!
//! Keys containing anything but RFC 3986 unreserved characters (the
//! services use `tenant/<t>/product/<id>`) cannot travel in the URL path:
//! daprd 1.15 routes a `/` in the key as an unknown path (dapr/dapr#8746),
//! so such keys are read through `bulk` and deleted through `transaction`,
//! where the key is in the JSON body.
//!
//! Values: Dapr stores JSON. A value that is valid JSON is stored as that
//! JSON, so other Dapr apps can read it (the store may reformat it: key
//! order and number precision are the store's, e.g. state.redis keeps six
//! decimals). Any other value is stored in the envelope
//! `{"$wasmshop.bytes": "<standard base64>"}` and decoded on read.
//!
//! Keys: like every backend, each component and store label gets its own
//! namespace, so a key `k` of component `order` in label `default` is sent
//! as `order.default.k` (ids and labels never contain `.`); daprd then
//! prefixes it with the app id (`keyPrefix`, default `appid`), giving
//! `orderservice||order.default.k` in the store.

use super::NAME;
use super::client::{DaprClient, DaprResponse, encode_segment};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::{
    CasVersion, KeyValueBackend, KeyValueStore, StoreError, SwapError,
};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

/// The envelope key of a non-JSON value.
pub const BYTES_ENVELOPE: &str = "$wasmshop.bytes";
/// Attempts of a `set` on a key another writer keeps changing (state.redis
/// refuses an etag-less save of a key created with first-write).
const CAS_ATTEMPTS: u32 = 100;

/// A key-value backend on one Dapr state store component.
pub struct DaprKeyValue {
    client: DaprClient,
    store: Arc<str>,
}

impl DaprKeyValue {
    /// A backend on the state store component `store`.
    pub fn new(client: DaprClient, store: &str) -> Self {
        DaprKeyValue {
            client,
            store: Arc::from(store),
        }
    }
}

#[async_trait]
impl KeyValueBackend for DaprKeyValue {
    fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError> {
        Ok(Arc::new(DaprStore {
            client: self.client.clone(),
            store: self.store.clone(),
            prefix: format!("{component}.{label}."),
        }))
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.client.outbound_healthy().await
    }
}

/// The keys of one component's store label: `<component>.<label>.<key>`
/// in one Dapr state store.
pub struct DaprStore {
    client: DaprClient,
    store: Arc<str>,
    /// `<component>.<label>.`, prepended to every key.
    prefix: String,
}

/// Encodes a value as the JSON Dapr stores.
pub fn encode_value(value: &[u8]) -> Vec<u8> {
    let is_json = serde_json::from_slice::<Value>(value)
        .map(|v| !is_envelope(&v))
        .unwrap_or(false);
    if is_json {
        value.to_vec()
    } else {
        json!({ BYTES_ENVELOPE: base64::engine::general_purpose::STANDARD.encode(value) })
            .to_string()
            .into_bytes()
    }
}

fn is_envelope(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key(BYTES_ENVELOPE))
}

/// Decodes what [`encode_value`] stored.
pub fn decode_value(stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    if let Ok(v) = serde_json::from_slice::<Value>(stored)
        && is_envelope(&v)
    {
        let text = v[BYTES_ENVELOPE].as_str().unwrap_or_default();
        return base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| {
                StoreError(BackendError::rejected(
                    NAME,
                    format!(
                        "a stored value has a broken {BYTES_ENVELOPE} envelope ({e}); rewrite the key"
                    ),
                ))
            });
    }
    Ok(stored.to_vec())
}

fn path_safe(key: &str) -> bool {
    !key.is_empty() && encode_segment(key) == key
}

/// One item of a save request; `value` is already JSON text.
fn save_item(key: &str, value: &[u8], etag: Option<&str>, first_write: bool) -> String {
    let mut item = format!(
        "{{\"key\":{},\"value\":{}",
        Value::String(key.into()),
        String::from_utf8_lossy(value)
    );
    if let Some(etag) = etag {
        item.push_str(&format!(",\"etag\":{}", Value::String(etag.into())));
    }
    if first_write {
        item.push_str(",\"options\":{\"concurrency\":\"first-write\",\"consistency\":\"strong\"}");
    }
    item.push('}');
    item
}

/// Whether a failed save is an ETag conflict: 409 (dapr/dapr
/// pkg/api/http/http.go `etagError`), or the 500 of older sidecars and of
/// state.redis refusing a first-write key ("possible etag mismatch",
/// "failed to set key").
fn is_conflict(r: &DaprResponse) -> bool {
    if r.status == StatusCode::CONFLICT {
        return true;
    }
    let text = r.text().to_ascii_lowercase();
    r.status == StatusCode::INTERNAL_SERVER_ERROR
        && (text.contains("etag") || text.contains("failed to set key"))
}

impl DaprStore {
    /// The key as sent to Dapr: namespaced by component and label.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn unexpected(&self, what: &str, r: &DaprResponse) -> StoreError {
        let detail = format!(
            "Dapr state store '{}' refused {what}: {} {}; check the component and daprd's log",
            self.store,
            r.status,
            r.text()
        );
        StoreError(if r.status.is_server_error() {
            BackendError::unavailable(NAME, detail)
        } else {
            BackendError::rejected(NAME, detail)
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<DaprResponse, StoreError> {
        self.client
            .json(method, path, Bytes::from(body))
            .await
            .map_err(StoreError)
    }

    /// The stored value (raw JSON) and its ETag.
    async fn read(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        let full = self.full(key);
        if path_safe(&full) {
            let path = format!(
                "/v1.0/state/{}/{full}?consistency=strong",
                encode_segment(&self.store),
            );
            let r = self.send(Method::GET, &path, Vec::new()).await?;
            return match r.status {
                StatusCode::NO_CONTENT => Ok(None),
                StatusCode::OK => {
                    let etag = r
                        .headers
                        .get(http::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    Ok(Some((r.body.to_vec(), etag)))
                }
                _ => Err(self.unexpected(&format!("reading key '{key}'"), &r)),
            };
        }
        let mut items = self.bulk(&[key.to_string()]).await?;
        Ok(items.pop().flatten())
    }

    /// `POST /bulk`: values (raw JSON) and ETags, in the order asked.
    async fn bulk(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Vec<u8>, Option<String>)>>, StoreError> {
        let path = format!(
            "/v1.0/state/{}/bulk?consistency=strong",
            encode_segment(&self.store)
        );
        let full: Vec<String> = keys.iter().map(|k| self.full(k)).collect();
        let body = json!({ "keys": full, "parallelism": 10 })
            .to_string()
            .into_bytes();
        let r = self.send(Method::POST, &path, body).await?;
        if r.status != StatusCode::OK {
            return Err(self.unexpected("a bulk read", &r));
        }
        let items: Vec<Value> = serde_json::from_slice(&r.body).map_err(|e| {
            BackendError::rejected(
                NAME,
                format!(
                    "the Dapr bulk state answer is not a JSON array ({e}); check the daprd version"
                ),
            )
        })?;
        let mut found = std::collections::HashMap::new();
        for item in items {
            let Some(key) = item["key"].as_str() else {
                continue;
            };
            if let Some(err) = item["error"].as_str().filter(|e| !e.is_empty()) {
                return Err(BackendError::unavailable(
                    NAME,
                    format!(
                        "Dapr state store '{}' could not read key '{key}': {err}",
                        self.store
                    ),
                )
                .into());
            }
            // dapr/dapr pkg/api/http/responses.go BulkGetResponse: `data`.
            if let Some(data) = item.get("data").filter(|d| !d.is_null()) {
                let etag = item["etag"].as_str().map(str::to_string);
                found.insert(key.to_string(), (data.to_string().into_bytes(), etag));
            }
        }
        Ok(full.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn save(&self, items: Vec<String>) -> Result<DaprResponse, StoreError> {
        let path = format!("/v1.0/state/{}", encode_segment(&self.store));
        self.send(
            Method::POST,
            &path,
            format!("[{}]", items.join(",")).into_bytes(),
        )
        .await
    }

    /// `POST .../transaction`; `operations` are JSON texts (values stay
    /// byte for byte as encoded, not re-serialised).
    async fn transaction(&self, operations: Vec<String>) -> Result<DaprResponse, StoreError> {
        let path = format!("/v1.0/state/{}/transaction", encode_segment(&self.store));
        let body = format!("{{\"operations\":[{}]}}", operations.join(","));
        self.send(Method::POST, &path, body.into_bytes()).await
    }

    async fn transaction_ok(&self, operations: Vec<String>, what: &str) -> Result<(), StoreError> {
        let r = self.transaction(operations).await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(self.unexpected(what, &r))
        }
    }
}

#[async_trait]
impl KeyValueStore for DaprStore {
    /// The sidecar knows nothing of the embedded store's batches.
    fn carries_read_dependencies(&self) -> bool {
        false
    }

    fn backend_name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.read(key).await? {
            Some((raw, _)) => Ok(Some(decode_value(&raw)?)),
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let value = encode_value(value);
        let r = self
            .save(vec![save_item(&self.full(key), &value, None, false)])
            .await?;
        if r.status.is_success() {
            return Ok(());
        }
        if !is_conflict(&r) {
            return Err(self.unexpected(&format!("saving key '{key}'"), &r));
        }
        // state.redis refuses an etag-less save of a key created with
        // first-write; a plain set is last-write-wins, so carry the
        // current etag instead.
        for _ in 0..CAS_ATTEMPTS {
            let etag = self.read(key).await?.and_then(|(_, e)| e);
            let r = self
                .save(vec![save_item(
                    &self.full(key),
                    &value,
                    etag.as_deref(),
                    false,
                )])
                .await?;
            if r.status.is_success() {
                return Ok(());
            }
            if !is_conflict(&r) {
                return Err(self.unexpected(&format!("saving key '{key}'"), &r));
            }
        }
        Err(BackendError::unavailable(
            NAME,
            format!("key '{key}' kept changing while it was being set; retry"),
        )
        .into())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full(key);
        if !path_safe(&full) {
            return self
                .transaction_ok(
                    vec![json!({"operation": "delete", "request": {"key": full}}).to_string()],
                    &format!("deleting key '{key}'"),
                )
                .await;
        }
        let path = format!("/v1.0/state/{}/{full}", encode_segment(&self.store));
        let r = self.send(Method::DELETE, &path, Vec::new()).await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(self.unexpected(&format!("deleting key '{key}'"), &r))
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.read(key).await?.is_some())
    }

    async fn list_keys(
        &self,
        _cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        Err(BackendError::unsupported(
            NAME,
            "list-keys is not supported by the Dapr state API (it has no key listing); keep an index document of the keys you need",
        )
        .into())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.bulk(keys)
            .await?
            .into_iter()
            .map(|v| v.map(|(raw, _)| decode_value(&raw)).transpose())
            .collect()
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ops = entries
            .iter()
            .map(|(k, v)| {
                format!(
                    "{{\"operation\":\"upsert\",\"request\":{}}}",
                    save_item(&self.full(k), &encode_value(v), None, false)
                )
            })
            .collect();
        let r = self.transaction(ops).await?;
        if r.status.is_success() {
            return Ok(());
        }
        if !is_conflict(&r) {
            return Err(self.unexpected("a batch write", &r));
        }
        // state.redis refuses etag-less upserts of first-write keys, and
        // its transactions are not all-or-nothing anyway: set one by one.
        for (k, v) in entries {
            self.set(k, v).await?;
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ops = keys
            .iter()
            .map(|k| json!({"operation": "delete", "request": {"key": self.full(k)}}).to_string())
            .collect();
        self.transaction_ok(ops, "a batch delete").await
    }

    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError> {
        match self.read(key).await? {
            None => Ok((None, CasVersion::Absent)),
            Some((raw, etag)) => {
                let etag = etag.filter(|e| !e.is_empty()).ok_or_else(|| {
                    BackendError::rejected(NAME, format!(
                        "Dapr state store '{}' returned key '{key}' without an ETag; compare-and-swap needs a store with ETag support",
                        self.store
                    ))
                })?;
                Ok((Some(decode_value(&raw)?), CasVersion::Version(etag)))
            }
        }
    }

    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError> {
        let etag = match version {
            CasVersion::Absent => None,
            CasVersion::Version(e) => Some(e.as_str()),
        };
        let r = self
            .save(vec![save_item(
                &self.full(key),
                &encode_value(value),
                etag,
                true,
            )])
            .await?;
        if r.status.is_success() {
            Ok(())
        } else if is_conflict(&r) || (r.status == StatusCode::BAD_REQUEST && etag.is_some()) {
            // 400 is an invalid etag: the version read no longer applies.
            Err(SwapError::CasFailed)
        } else {
            Err(self.unexpected(&format!("swapping key '{key}'"), &r).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stays_json_and_bytes_are_enveloped() {
        assert_eq!(encode_value(b"{\"a\":1}"), b"{\"a\":1}");
        assert_eq!(encode_value(b"7"), b"7");
        let enveloped = encode_value(b"not json");
        assert!(String::from_utf8_lossy(&enveloped).contains(BYTES_ENVELOPE));
        assert_eq!(decode_value(&enveloped).unwrap(), b"not json");
        // A value that looks like the envelope is enveloped itself.
        let tricky = br#"{"$wasmshop.bytes":"AA=="}"#;
        assert_eq!(decode_value(&encode_value(tricky)).unwrap(), tricky);
    }

    #[test]
    fn only_unreserved_keys_go_in_the_path() {
        assert!(path_safe("counter-1"));
        assert!(!path_safe("tenant/a/product/1"));
    }
}
