//! Key-value on the embedded database: one row per key, namespaced by
//! component and store label, with a version column for compare-and-swap.

use super::{DbState, EmbeddedDb, NAME};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::{
    CasVersion, KeyValueBackend, KeyValueStore, StoreError, SwapError, add_to_stored,
};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::sync::Arc;

/// Keys returned per `list-keys` page.
const PAGE: usize = 1000;

/// The embedded key-value backend.
pub struct EmbeddedKeyValue {
    db: Arc<EmbeddedDb>,
}

impl EmbeddedKeyValue {
    /// A backend over an open database.
    pub fn new(db: Arc<EmbeddedDb>) -> Self {
        EmbeddedKeyValue { db }
    }
}

#[async_trait]
impl KeyValueBackend for EmbeddedKeyValue {
    fn open(&self, component: &str, label: &str) -> Result<Arc<dyn KeyValueStore>, StoreError> {
        Ok(Arc::new(EmbeddedStore {
            db: self.db.clone(),
            ns: Arc::from(format!("{component}/{label}")),
        }))
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}

/// The keys of one component's store label: rows of `kv` whose `ns` is
/// `<component>/<label>`.
pub struct EmbeddedStore {
    db: Arc<EmbeddedDb>,
    ns: Arc<str>,
}

/// Writes a value with a fresh version, on a connection or inside a transaction.
fn upsert(
    conn: &rusqlite::Connection,
    next_version: &mut i64,
    ns: &str,
    key: &str,
    value: &[u8],
) -> rusqlite::Result<()> {
    let version = *next_version;
    *next_version += 1;
    conn.execute(
        "INSERT INTO kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version",
        params![ns, key, value, version],
    )?;
    Ok(())
}

impl EmbeddedStore {
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbState, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let ns = self.ns.clone();
        self.db.call(move |s| f(s, &ns)).await.map_err(StoreError)
    }
}

#[async_trait]
impl KeyValueStore for EmbeddedStore {
    fn backend_name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.call(move |s, ns| {
            s.conn
                .query_row(
                    "SELECT value FROM kv WHERE ns = ?1 AND key = ?2",
                    params![ns, key],
                    |r| r.get(0),
                )
                .optional()
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.call(move |s, ns| upsert(&s.conn, &mut s.next_version, ns, &key, &value))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(move |s, ns| {
            s.conn
                .execute(
                    "DELETE FROM kv WHERE ns = ?1 AND key = ?2",
                    params![ns, key],
                )
                .map(|_| ())
        })
        .await
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let after = cursor.unwrap_or("").to_string();
        let keys: Vec<String> = self
            .call(move |s, ns| {
                let mut stmt = s.conn.prepare_cached(
                    "SELECT key FROM kv WHERE ns = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![ns, after, PAGE as i64], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        let next = (keys.len() == PAGE).then(|| keys[PAGE - 1].clone());
        Ok((keys, next))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = keys.to_vec();
        self.call(move |s, ns| {
            let mut stmt = s
                .conn
                .prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND key = ?2")?;
            keys.iter()
                .map(|k| stmt.query_row(params![ns, k], |r| r.get(0)).optional())
                .collect()
        })
        .await
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.call(move |s, ns| {
            let tx = s.conn.unchecked_transaction()?;
            for (k, v) in &entries {
                upsert(&tx, &mut s.next_version, ns, k, v)?;
            }
            tx.commit()
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.call(move |s, ns| {
            let tx = s.conn.unchecked_transaction()?;
            for k in &keys {
                tx.execute("DELETE FROM kv WHERE ns = ?1 AND key = ?2", params![ns, k])?;
            }
            tx.commit()
        })
        .await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let key = key.to_string();
        let result = self
            .call(move |s, ns| {
                let tx = s.conn.unchecked_transaction()?;
                let current: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT value FROM kv WHERE ns = ?1 AND key = ?2",
                        params![ns, key],
                        |r| r.get(0),
                    )
                    .optional()?;
                let next = match add_to_stored(NAME, &key, current.as_deref(), delta) {
                    Ok(n) => n,
                    Err(e) => return Ok(Err(e)),
                };
                upsert(
                    &tx,
                    &mut s.next_version,
                    ns,
                    &key,
                    next.to_string().as_bytes(),
                )?;
                tx.commit()?;
                Ok(Ok(next))
            })
            .await?;
        result.map_err(StoreError)
    }

    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError> {
        let key = key.to_string();
        let row: Option<(Vec<u8>, i64)> = self
            .call(move |s, ns| {
                s.conn
                    .query_row(
                        "SELECT value, version FROM kv WHERE ns = ?1 AND key = ?2",
                        params![ns, key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
            })
            .await?;
        Ok(match row {
            None => (None, CasVersion::Absent),
            Some((v, version)) => (Some(v), CasVersion::Version(version.to_string())),
        })
    }

    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError> {
        let (key, value, version) = (key.to_string(), value.to_vec(), version.clone());
        let swapped = self
            .call(move |s, ns| {
                let new_version = s.next_version;
                s.next_version += 1;
                let changed = match &version {
                    CasVersion::Absent => s.conn.execute(
                        "INSERT INTO kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (ns, key) DO NOTHING",
                        params![ns, key, value, new_version],
                    )?,
                    CasVersion::Version(v) => s.conn.execute(
                        "UPDATE kv SET value = ?3, version = ?4 WHERE ns = ?1 AND key = ?2 AND version = ?5",
                        params![ns, key, value, new_version, v.parse::<i64>().unwrap_or(-1)],
                    )?,
                };
                Ok(changed == 1)
            })
            .await?;
        if swapped {
            Ok(())
        } else {
            Err(SwapError::CasFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    //! What only this backend decides; the shared contract is checked in
    //! `tests/tests/keyvalue_contract.rs` against every backend.
    use super::*;

    fn backend() -> (tempfile::TempDir, EmbeddedKeyValue) {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        (dir, EmbeddedKeyValue::new(db))
    }

    #[tokio::test]
    async fn versions_survive_a_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let old = {
            let kv = EmbeddedKeyValue::new(EmbeddedDb::open(dir.path()).unwrap());
            let s = kv.open("c", "default").unwrap();
            s.set("k", b"1").await.unwrap();
            let (_, old) = s.read_versioned("k").await.unwrap();
            s.delete("k").await.unwrap();
            old
        };
        let kv = EmbeddedKeyValue::new(EmbeddedDb::open(dir.path()).unwrap());
        let s = kv.open("c", "default").unwrap();
        s.set("k", b"1").await.unwrap();
        assert!(matches!(
            s.swap("k", &old, b"2").await,
            Err(SwapError::CasFailed)
        ));
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[tokio::test]
    async fn a_page_holds_a_thousand_keys_in_order() {
        let (_dir, kv) = backend();
        let s = kv.open("c", "default").unwrap();
        let entries: Vec<(String, Vec<u8>)> = (0..PAGE + 5)
            .map(|i| (format!("k{i:05}"), b"v".to_vec()))
            .collect();
        s.set_many(&entries).await.unwrap();
        let (first, cursor) = s.list_keys(None).await.unwrap();
        assert_eq!(first.len(), PAGE);
        assert!(first.windows(2).all(|w| w[0] < w[1]), "sorted");
        let (rest, end) = s.list_keys(cursor.as_deref()).await.unwrap();
        assert_eq!(rest.len(), 5);
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_failed_increment_writes_nothing() {
        let (_dir, kv) = backend();
        let s = kv.open("c", "default").unwrap();
        s.set("text", b"abc").await.unwrap();
        let e = s.increment("text", 1).await.unwrap_err();
        assert!(matches!(e.0, BackendError::Rejected { .. }), "{e}");
        assert_eq!(s.get("text").await.unwrap().as_deref(), Some(&b"abc"[..]));
    }
}
