//! Key-value on the embedded database: one row per key, namespaced by
//! component and store label, with a version column for compare-and-swap.
//! Point reads and `get_many` are served from the read cache when it
//! knows the key (`cache.rs`), else from SQLite (filling the cache); writes
//! go to the writer thread's next group commit (`db.rs`); an answered
//! write is on disk.

use super::cache::{Known, cache_key};
use super::db::{Applied, WriteOp};
use super::{EmbeddedDb, NAME};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::read_fence::ReadFence;
use crate::capabilities::keyvalue::{
    CasVersion, KeyValueBackend, KeyValueStore, StoreError, SwapError,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;

/// Keys returned per `list-keys` page.
const PAGE: usize = 1000;

/// The most keys a `get_many` reads on the calling thread
/// ([`EmbeddedDb::read_here`]); larger batches go to the reader threads,
/// so one request never holds a runtime thread for long. A list page
/// reads 8 index pages, then its candidates in batches of 16.
const SHORT_GET_MANY: usize = 32;

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

impl EmbeddedStore {
    /// Runs a read on the reader pool with this store's namespace.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let ns = self.ns.clone();
        self.db.read(move |c| f(c, &ns)).await.map_err(StoreError)
    }

    /// Runs a short read on this thread's own connection with this
    /// store's namespace ([`EmbeddedDb::read_here`]).
    fn read_here<R>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        self.db.read_here(|c| f(c, &self.ns)).map_err(StoreError)
    }

    /// The value and version of each key, of one moment: from the read
    /// cache where it knows the key, the rest read from SQLite in one read
    /// transaction (on this thread for up to [`SHORT_GET_MANY`] keys) and
    /// kept in the cache when no commit raced the read (`cache.rs`).
    async fn read_known(&self, keys: &[String]) -> Result<Vec<Known>, StoreError> {
        let cache = self.db.cache();
        let cache_keys: Vec<String> = keys.iter().map(|k| cache_key(&self.ns, k)).collect();
        let (found, ticket) = cache.lookup(&cache_keys);
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let wanted: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
        let read = self.read_rows(wanted).await?;
        let fills: Vec<(String, Known)> = missing
            .iter()
            .zip(&read)
            .map(|(&i, known)| (cache_keys[i].clone(), known.clone()))
            .collect();
        if cache.fill(ticket, fills) || missing.len() == keys.len() {
            let mut read = read.into_iter();
            return Ok(found
                .into_iter()
                .map(|hit| hit.unwrap_or_else(|| read.next().flatten()))
                .collect());
        }
        // A commit started or ended between the cache's answer and the
        // read: the hits may be older than the read. Read them all again,
        // in one transaction. (With no hits, the read is already of one
        // moment: taken above.)
        self.read_rows(keys.to_vec()).await
    }

    /// The value `key` gets from the commit in flight, if it is being
    /// committed and the running request holds an open read fence, which
    /// then depends on that commit.
    fn read_uncommitted(&self, key: &str) -> Option<Known> {
        let fence = ReadFence::current()?;
        let cache = self.db.cache();
        if !cache.offers_uncommitted() {
            return None;
        }
        let (known, batch) = cache.lookup_uncommitted(&cache_key(&self.ns, key))?;
        fence.record(self.db.log(), batch).then_some(known)
    }

    /// Before a read of committed values of `keys` (`None`: a listing,
    /// any key): if the running request already read a value of a commit
    /// in flight and one of `keys` is being committed, waits until that
    /// commit is durable, so that no read of the request shows an older
    /// state than one it saw before (a `get` after a compare-and-swap read
    /// of the same key, or of another key of the same batch). A key not
    /// being committed reads the same either way. Immediate otherwise, and
    /// nearly always in practice: a request whose swap was acknowledged
    /// already waited longer than that.
    async fn catch_up<K: AsRef<str>>(&self, keys: Option<&[K]>) -> Result<(), StoreError> {
        let Some(fence) = ReadFence::current() else {
            return Ok(());
        };
        if fence.dependency(self.db.log()).is_none() {
            return Ok(());
        }
        if let Some(keys) = keys {
            let names: Vec<String> = keys
                .iter()
                .map(|k| cache_key(&self.ns, k.as_ref()))
                .collect();
            if !self
                .db
                .cache()
                .any_uncommitted(names.iter().map(String::as_str))
            {
                return Ok(());
            }
        }
        fence
            .settle()
            .await
            .map_err(|e| StoreError(BackendError::unavailable(NAME, e.to_string())))
    }

    /// The value and version of each key, read from SQLite in one read
    /// transaction.
    async fn read_rows(&self, keys: Vec<String>) -> Result<Vec<Known>, StoreError> {
        fn read_all(c: &Connection, ns: &str, keys: &[String]) -> rusqlite::Result<Vec<Known>> {
            let select = |c: &Connection| -> rusqlite::Result<Vec<Known>> {
                let mut stmt =
                    c.prepare_cached("SELECT value, version FROM kv WHERE ns = ?1 AND key = ?2")?;
                keys.iter()
                    .map(|k| {
                        stmt.query_row(params![ns, k], |r| {
                            Ok((Arc::from(r.get_ref(0)?.as_blob()?), r.get(1)?))
                        })
                        .optional()
                    })
                    .collect()
            };
            // One SELECT is already a read transaction of its own; the
            // explicit one (BEGIN and COMMIT parsed anew each time) is only
            // for reading several keys from one snapshot.
            if keys.len() == 1 {
                return select(c);
            }
            let tx = c.unchecked_transaction()?;
            let rows = select(&tx);
            tx.finish()?;
            rows
        }
        if keys.len() <= SHORT_GET_MANY {
            return self.read_here(|c, ns| read_all(c, ns, &keys));
        }
        self.read(move |c, ns| read_all(c, ns, &keys)).await
    }

    /// Queues a write for the next group commit; answers after its commit.
    async fn write(&self, op: WriteOp) -> Result<Applied, StoreError> {
        self.db.write(self.ns.clone(), op).await.map_err(StoreError)
    }
}

/// The result of a write that can only end in `Done`.
fn done(applied: Applied) -> Result<(), StoreError> {
    match applied {
        Applied::Done | Applied::Incremented(_) => Ok(()),
        Applied::Refused(e) => Err(StoreError(e)),
        Applied::CasFailed => Err(StoreError(BackendError::rejected(
            NAME,
            "internal error: a plain write was answered as a failed compare-and-swap; retry it",
        ))),
    }
}

#[async_trait]
impl KeyValueStore for EmbeddedStore {
    fn backend_name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.catch_up(Some(&[key])).await?;
        let known = self.read_known(&[key.to_string()]).await?;
        Ok(known.into_iter().next().flatten().map(|(v, _)| v.to_vec()))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        done(
            self.write(WriteOp::Set(vec![(key.to_string(), value.to_vec())]))
                .await?,
        )
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        done(self.write(WriteOp::Delete(vec![key.to_string()])).await?)
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.catch_up::<&str>(None).await?;
        let after = cursor.unwrap_or("").to_string();
        let keys: Vec<String> = self
            .read(move |c, ns| {
                let mut stmt = c.prepare_cached(
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
        self.catch_up(Some(keys)).await?;
        let known = self.read_known(keys).await?;
        Ok(known
            .into_iter()
            .map(|k| k.map(|(v, _)| v.to_vec()))
            .collect())
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        done(self.write(WriteOp::Set(entries.to_vec())).await?)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        done(self.write(WriteOp::Delete(keys.to_vec())).await?)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let op = WriteOp::Increment {
            key: key.to_string(),
            delta,
        };
        match self.write(op).await? {
            Applied::Incremented(n) => Ok(n),
            other => done(other).map(|()| 0),
        }
    }

    /// A request holding a read fence may get the value a commit in flight
    /// is writing (docs/embedded-store.md, "What readers see meanwhile"):
    /// its swap then joins the next batch instead of failing against the
    /// value from before.
    async fn read_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, CasVersion), StoreError> {
        let known = match self.read_uncommitted(key) {
            Some(known) => known,
            None => self
                .read_known(&[key.to_string()])
                .await?
                .into_iter()
                .next()
                .flatten(),
        };
        Ok(match known {
            None => (None, CasVersion::Absent),
            Some((v, version)) => (Some(v.to_vec()), CasVersion::Version(version.to_string())),
        })
    }

    fn carries_read_dependencies(&self) -> bool {
        true
    }

    async fn swap(&self, key: &str, version: &CasVersion, value: &[u8]) -> Result<(), SwapError> {
        let op = WriteOp::Swap {
            key: key.to_string(),
            expected: version.clone(),
            value: value.to_vec(),
        };
        match self.write(op).await? {
            Applied::CasFailed => Err(SwapError::CasFailed),
            other => Ok(done(other)?),
        }
    }
}

#[cfg(test)]
mod tests {
    //! What only this backend decides; the shared contract is checked in
    //! `tests/tests/keyvalue_contract.rs` against every backend.
    use super::*;
    use crate::capabilities::keyvalue::read_fence::Reads;

    fn backend() -> (tempfile::TempDir, EmbeddedKeyValue) {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        (dir, EmbeddedKeyValue::new(db))
    }

    /// docs/embedded-store.md, "What readers see meanwhile": only a fenced
    /// request's compare-and-swap read sees a commit in flight, and then
    /// depends on it; a write of a request that read a failed batch is
    /// refused.
    #[tokio::test]
    async fn only_a_fenced_swap_read_sees_a_commit_in_flight_and_its_writes_depend_on_it() {
        let (_dir, kv) = backend();
        let s = kv.open("c", "default").unwrap();
        s.set("k", b"old").await.unwrap();
        let log = kv.db.log().clone();
        // Batch 1,000,000 is committing "new" to k (its fsync running).
        let in_flight = 1_000_000;
        let pending = kv.db.cache().begin_commit(["c/default\0k"]);
        pending.offer_uncommitted(
            &[(
                cache_key("c/default", "k"),
                Some((Arc::from(&b"new"[..]), 4242)),
            )],
            in_flight,
        );
        let read = |s: Arc<dyn KeyValueStore>| async move {
            let (value, version) = s.read_versioned("k").await.unwrap();
            (value.unwrap(), version)
        };
        assert_eq!(read(s.clone()).await.0, b"old", "no fence: committed only");
        assert_eq!(s.get("k").await.unwrap().unwrap(), b"old");
        let fence = ReadFence::new();
        let (value, version) = fence.clone().scope(read(s.clone())).await;
        assert_eq!(value, b"new");
        assert_eq!(version, CasVersion::Version("4242".into()));
        assert_eq!(fence.dependency(&log), Some(Reads::one(in_flight)));
        // A plain get reads committed values only, and, once the request
        // has seen the batch in flight, only after that batch is durable:
        // its reads never go back.
        let get = tokio::spawn(fence.clone().scope({
            let s = s.clone();
            async move { s.get("k").await }
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!get.is_finished(), "a get went back before the commit");
        // A key the batch does not write reads the same either way.
        let other = fence.clone().scope(s.get("not-in-the-batch"));
        let other = tokio::time::timeout(std::time::Duration::from_secs(5), other).await;
        assert_eq!(other.expect("no wait").unwrap(), None);
        let closed = ReadFence::new();
        closed.close();
        assert_eq!(closed.clone().scope(read(s.clone())).await.0, b"old");
        assert_eq!(closed.dependency(&log), None);
        drop(pending);

        // The commit failed: the waiting get fails, and so do the fenced
        // request's writes.
        log.settle(in_flight, false);
        assert!(get.await.unwrap().is_err());
        let refused = fence.clone().scope(s.set("other", b"x")).await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(s.get("other").await.unwrap(), None);
        assert!(fence.settle().await.is_err());
        s.set("other", b"y").await.unwrap();
    }

    /// Through the registry (which wraps every store for tracing) the
    /// embedded store still checks its writes' dependencies itself, so a
    /// fenced write is queued at once instead of waiting for the commit.
    #[test]
    fn the_registry_s_store_still_checks_its_own_read_dependencies() {
        use crate::capabilities::keyvalue::StoreRegistry;
        let (_dir, kv) = backend();
        let registry = StoreRegistry::new(Default::default(), Arc::new(kv));
        let store = registry.open("c", "default").unwrap();
        assert!(store.carries_read_dependencies());
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

    /// Readers racing a writer through the read cache: a read never
    /// returns a value older than the last write acknowledged before it
    /// began, and the two keys of one `set_many` are always read equal,
    /// whether the reader holds a read fence (as a request does, whose
    /// compare-and-swap reads may see the batch in flight) or not (as a
    /// delivery).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cached_reads_never_go_back_and_a_batch_is_seen_whole() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let (_dir, kv) = backend();
        let s = kv.open("c", "default").unwrap();
        let pair = |n: i64| {
            vec![
                ("a".to_string(), n.to_string().into_bytes()),
                ("b".to_string(), n.to_string().into_bytes()),
            ]
        };
        s.set_many(&pair(0)).await.unwrap();
        let acked = Arc::new(AtomicI64::new(0));
        let number = |v: &[u8]| std::str::from_utf8(v).unwrap().parse::<i64>().unwrap();
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (s, acked) = (s.clone(), acked.clone());
                let reads = async move {
                    let keys = ["a".to_string(), "b".to_string()];
                    let mut reads = 0;
                    while acked.load(Ordering::SeqCst) < 300 {
                        let floor = acked.load(Ordering::SeqCst);
                        let a = number(&s.get("a").await.unwrap().unwrap());
                        assert!(a >= floor, "read {a} after {floor} was acknowledged");
                        let (v, _) = s.read_versioned("b").await.unwrap();
                        assert!(number(&v.unwrap()) >= floor);
                        let both = s.get_many(&keys).await.unwrap();
                        let (a, b) = (
                            number(both[0].as_ref().unwrap()),
                            number(both[1].as_ref().unwrap()),
                        );
                        assert_eq!(a, b, "one set_many seen half");
                        assert!(a >= floor);
                        reads += 1;
                    }
                    reads
                };
                if reader % 2 == 0 {
                    tokio::spawn(ReadFence::new().scope(reads))
                } else {
                    tokio::spawn(reads)
                }
            })
            .collect();
        for n in 1..=300 {
            s.set_many(&pair(n)).await.unwrap();
            acked.store(n, Ordering::SeqCst);
        }
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        // The cache answers the latest value, and a delete is seen.
        assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"300"[..]));
        s.delete("a").await.unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
        assert_eq!(
            s.read_versioned("a").await.unwrap(),
            (None, CasVersion::Absent)
        );
    }

    /// `--embedded-cache-mb 0`: every read goes to SQLite and the writer
    /// collects nothing for a cache; what a caller sees is the same.
    #[tokio::test]
    async fn with_the_cache_off_reads_see_every_kind_of_write() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKeyValue::new(EmbeddedDb::open_with_cache(dir.path(), 0).unwrap());
        let s = kv.open("c", "default").unwrap();
        s.set_many(&[("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())])
            .await
            .unwrap();
        assert_eq!(s.increment("a", 41).await.unwrap(), 42);
        let (_, version) = s.read_versioned("b").await.unwrap();
        s.swap("b", &version, b"3").await.unwrap();
        s.delete("a").await.unwrap();
        let keys = ["a".to_string(), "b".to_string()];
        assert_eq!(
            s.get_many(&keys).await.unwrap(),
            vec![None, Some(b"3".to_vec())]
        );
        assert!(matches!(
            s.swap("b", &version, b"4").await,
            Err(SwapError::CasFailed)
        ));
        assert_eq!(s.get("b").await.unwrap().as_deref(), Some(&b"3"[..]));
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
