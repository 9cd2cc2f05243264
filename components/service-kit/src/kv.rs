//! Key-value state over `wasi:keyvalue`, with typed JSON helpers and an
//! optimistic read-modify-write loop.
//!
//! Services talk to the [`KvStore`] trait: [`WasiStore`] is the real
//! `wasi:keyvalue` bucket, [`MemoryStore`] an in-memory double with the same
//! CAS semantics so business logic runs in native unit tests. Every
//! read-modify-write goes through [`update_json`], which reads with `cas`,
//! writes with `swap` and retries on `cas-failed` (the rule of
//! `docs/storage-layout.md`: optimistic concurrency only).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// The key-value store label both services use.
pub const DEFAULT_STORE: &str = "default";

/// A failed key-value operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The store could not perform the operation (unreachable, denied, …).
    Store {
        /// What was attempted, e.g. `get 't/acme/product/1'`.
        op: String,
        /// The store's own message.
        message: String,
    },
    /// A stored value is not the JSON this service expects.
    Corrupt {
        /// The key holding the bad value.
        key: String,
        /// The decoding error.
        message: String,
    },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Store { op, message } => write!(
                f,
                "the key-value store failed to {op}: {message}; retry later, and check the store backend if it persists"
            ),
            KvError::Corrupt { key, message } => write!(
                f,
                "the stored value at '{key}' is not valid ({message}); repair or delete that key"
            ),
        }
    }
}

impl std::error::Error for KvError {}

impl From<KvError> for Problem {
    fn from(e: KvError) -> Problem {
        match e {
            KvError::Store { .. } => Problem::unavailable(e.to_string()),
            KvError::Corrupt { .. } => Problem::internal(e.to_string()),
        }
    }
}

/// Result of a compare-and-swap write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The value was written.
    Done,
    /// The value changed since it was read; read again and retry.
    Conflict,
}

/// The key-value operations services use. Mirrors `wasi:keyvalue`
/// `store`/`atomics`/`batch`; deliberately without `list-keys`, which the
/// Dapr state API lacks (keep index documents instead).
pub trait KvStore {
    /// A CAS handle: remembers what a [`KvStore::cas_read`] saw.
    type Cas;
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Whether `key` holds a value, without transferring it (the default
    /// reads it; [`WasiStore`] asks the store).
    fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.get(key)?.is_some())
    }
    /// The values at `keys`, in the same order.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError>;
    /// Unconditionally writes `value` at `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes `key` (no error when absent).
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Reads `key` for a later [`KvStore::cas_write`].
    fn cas_read(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError>;
    /// Writes `value` only if `key` is unchanged since `cas` was read.
    fn cas_write(&self, cas: Self::Cas, value: &[u8]) -> Result<Swap, KvError>;
}

/// Reads and decodes a JSON value.
pub fn get_json<T: DeserializeOwned>(
    store: &impl KvStore,
    key: &str,
) -> Result<Option<T>, KvError> {
    store.get(key)?.map(|bytes| decode(key, &bytes)).transpose()
}

/// Reads and decodes several JSON values in one round trip, in key order.
pub fn get_many_json<T: DeserializeOwned>(
    store: &impl KvStore,
    keys: &[String],
) -> Result<Vec<Option<T>>, KvError> {
    store
        .get_many(keys)?
        .into_iter()
        .zip(keys)
        .map(|(value, key)| value.map(|b| decode(key, &b)).transpose())
        .collect()
}

/// Encodes and writes a JSON value unconditionally (only for values no one
/// else updates concurrently; otherwise use [`update_json`]).
pub fn put_json<T: Serialize>(store: &impl KvStore, key: &str, value: &T) -> Result<(), KvError> {
    store.set(key, &encode(key, value)?)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(|e| KvError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Corrupt {
        key: key.to_owned(),
        message: format!("cannot encode: {e}"),
    })
}

/// What an [`update_json`] step decided.
#[derive(Debug)]
pub enum Change<T, R> {
    /// Write this new value, then return `R`.
    Write(T, R),
    /// Write nothing and return `R` (e.g. an idempotent repeat).
    Keep(R),
}

/// Why an [`update_json`] did not complete.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// The step function refused the change (a business rule).
    Rejected(E),
    /// The store failed.
    Store(KvError),
    /// Every attempt lost a race against concurrent writers.
    Contended {
        /// The contended key.
        key: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

impl<E: Into<Problem>> From<UpdateError<E>> for Problem {
    fn from(e: UpdateError<E>) -> Problem {
        match e {
            UpdateError::Rejected(e) => e.into(),
            UpdateError::Store(e) => e.into(),
            UpdateError::Contended { key, attempts } => Problem::unavailable(format!(
                "'{key}' is being changed by many requests at once ({attempts} attempts lost the race); retry shortly"
            )),
        }
    }
}

/// How hard [`update_json`] tries before giving up with
/// [`UpdateError::Contended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in total (first try included).
    pub max_attempts: u32,
    /// Upper bound of the random pause after the first conflict; doubles
    /// after each further conflict.
    pub base_delay: Duration,
    /// Cap of the random pause.
    pub max_delay: Duration,
}

impl Default for Retry {
    /// Enough for a hundred requests racing on one key: each round lets at
    /// least one through, and jittered pauses spread the rest.
    fn default() -> Self {
        Retry {
            max_attempts: 100,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
        }
    }
}

impl Retry {
    /// A random pause before attempt `attempt + 1` (full jitter): at most
    /// `base_delay * 2^attempt`, capped at `max_delay`.
    pub fn pause(&self, attempt: u32) {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let cap_us = cap.as_micros() as u64;
        if cap_us == 0 {
            return;
        }
        let mut b = [0u8; 8];
        crate::ids::random_bytes(&mut b);
        std::thread::sleep(Duration::from_micros(u64::from_le_bytes(b) % cap_us));
    }
}

/// Optimistic read-modify-write of the JSON value at `key`.
///
/// Calls `step` with the current value (`None` when absent); when it
/// returns [`Change::Write`], swaps the new value in only if nobody changed
/// the key meanwhile, else reads again and calls `step` again — so `step`
/// must be free of side effects. Gives up after `retry.max_attempts`.
pub fn update_json<S, T, R, E>(
    store: &S,
    key: &str,
    retry: &Retry,
    mut step: impl FnMut(Option<T>) -> Result<Change<T, R>, E>,
) -> Result<R, UpdateError<E>>
where
    S: KvStore,
    T: Serialize + DeserializeOwned,
{
    for attempt in 0..retry.max_attempts {
        let (cas, current) = store.cas_read(key).map_err(UpdateError::Store)?;
        let current = current
            .map(|b| decode(key, &b))
            .transpose()
            .map_err(UpdateError::Store)?;
        match step(current).map_err(UpdateError::Rejected)? {
            Change::Keep(result) => return Ok(result),
            Change::Write(value, result) => {
                let bytes = encode(key, &value).map_err(UpdateError::Store)?;
                match store.cas_write(cas, &bytes).map_err(UpdateError::Store)? {
                    Swap::Done => return Ok(result),
                    Swap::Conflict => retry.pause(attempt),
                }
            }
        }
    }
    Err(UpdateError::Contended {
        key: key.to_owned(),
        attempts: retry.max_attempts,
    })
}

/// `keys` without repeats, first occurrence first: a batch read asks the
/// store for each key once.
fn unique_keys(keys: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    keys.iter()
        .filter(|k| seen.insert(k.as_str()))
        .cloned()
        .collect()
}

/// Lines up a batch answer (`(key, value)` pairs in any order, absent keys
/// possibly left out) with the keys asked for: one answer per requested
/// position, so a key asked for twice (two index entries naming one item)
/// gets its value twice rather than once and then `None`.
fn in_request_order(
    keys: &[String],
    found: Vec<(String, Option<Vec<u8>>)>,
) -> Vec<Option<Vec<u8>>> {
    let by_key: BTreeMap<String, Option<Vec<u8>>> = found.into_iter().collect();
    keys.iter()
        .map(|k| by_key.get(k).cloned().flatten())
        .collect()
}

/// The real store: a `wasi:keyvalue` bucket.
pub struct WasiStore {
    bucket: crate::bindings::wasi::keyvalue::store::Bucket,
}

impl WasiStore {
    /// Opens the store with this label (e.g. [`DEFAULT_STORE`]); the
    /// component must list it in `key_value_stores` in `spin.toml`.
    pub fn open(label: &str) -> Result<WasiStore, KvError> {
        crate::bindings::wasi::keyvalue::store::open(label)
            .map(|bucket| WasiStore { bucket })
            .map_err(|e| store_error(format!("open store '{label}'"), e))
    }
}

fn store_error(op: String, e: crate::bindings::wasi::keyvalue::store::Error) -> KvError {
    use crate::bindings::wasi::keyvalue::store::Error;
    let message = match e {
        Error::NoSuchStore => "no such store; declare it in key_value_stores".to_owned(),
        Error::AccessDenied => "access denied; declare it in key_value_stores".to_owned(),
        Error::Other(m) => m,
    };
    KvError::Store { op, message }
}

impl KvStore for WasiStore {
    type Cas = crate::bindings::wasi::keyvalue::atomics::Cas;

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket
            .get(key)
            .map_err(|e| store_error(format!("get '{key}'"), e))
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.bucket
            .exists(key)
            .map_err(|e| store_error(format!("check '{key}' exists"), e))
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let unique = unique_keys(keys);
        let found = crate::bindings::wasi::keyvalue::batch::get_many(&self.bucket, &unique)
            .map_err(|e| store_error(format!("get {} keys", unique.len()), e))?;
        Ok(in_request_order(keys, found))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket
            .set(key, value)
            .map_err(|e| store_error(format!("set '{key}'"), e))
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.bucket
            .delete(key)
            .map_err(|e| store_error(format!("delete '{key}'"), e))
    }

    fn cas_read(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        use crate::bindings::wasi::keyvalue::atomics::Cas;
        let cas = Cas::new(&self.bucket, key)
            .map_err(|e| store_error(format!("start a CAS on '{key}'"), e))?;
        let current = cas
            .current()
            .map_err(|e| store_error(format!("read '{key}' for CAS"), e))?;
        Ok((cas, current))
    }

    fn cas_write(&self, cas: Self::Cas, value: &[u8]) -> Result<Swap, KvError> {
        use crate::bindings::wasi::keyvalue::atomics::{CasError, swap};
        match swap(cas, value) {
            Ok(()) => Ok(Swap::Done),
            Err(CasError::CasFailed(_)) => Ok(Swap::Conflict),
            Err(CasError::StoreError(e)) => Err(store_error("swap a CAS value".to_owned(), e)),
        }
    }
}

/// An in-memory [`KvStore`] with real CAS semantics, for native tests of
/// logic that would otherwise need a host. Not for production use.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<BTreeMap<String, (u64, Vec<u8>)>>,
    next_version: Cell<u64>,
    fail_next_swaps: Cell<u32>,
    writes: Cell<u64>,
}

/// What a [`MemoryStore`] CAS read saw: the key and its version, if any.
#[derive(Debug)]
pub struct MemoryCas {
    key: String,
    version: Option<u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Makes the next `n` CAS writes report a conflict, to test retries.
    pub fn fail_next_swaps(&self, n: u32) {
        self.fail_next_swaps.set(n);
    }

    /// How many writes (set, delete, successful swap) happened.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// All keys currently stored (test inspection only; services must not
    /// list keys).
    pub fn keys(&self) -> Vec<String> {
        self.entries.borrow().keys().cloned().collect()
    }

    fn bump(&self) -> u64 {
        self.writes.set(self.writes.get() + 1);
        self.next_version.set(self.next_version.get() + 1);
        self.next_version.get()
    }
}

impl KvStore for MemoryStore {
    type Cas = MemoryCas;

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.entries.borrow().get(key).map(|(_, v)| v.clone()))
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let version = self.bump();
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), (version, value.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.bump();
        self.entries.borrow_mut().remove(key);
        Ok(())
    }

    fn cas_read(&self, key: &str) -> Result<(MemoryCas, Option<Vec<u8>>), KvError> {
        let entries = self.entries.borrow();
        let entry = entries.get(key);
        Ok((
            MemoryCas {
                key: key.to_owned(),
                version: entry.map(|(v, _)| *v),
            },
            entry.map(|(_, value)| value.clone()),
        ))
    }

    fn cas_write(&self, cas: MemoryCas, value: &[u8]) -> Result<Swap, KvError> {
        if self.fail_next_swaps.get() > 0 {
            self.fail_next_swaps.set(self.fail_next_swaps.get() - 1);
            return Ok(Swap::Conflict);
        }
        let current = self.entries.borrow().get(&cas.key).map(|(v, _)| *v);
        if current != cas.version {
            return Ok(Swap::Conflict);
        }
        self.set(&cas.key, value)?;
        Ok(Swap::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Retry {
        Retry {
            max_attempts: 5,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    fn increment(store: &MemoryStore) -> Result<i64, UpdateError<String>> {
        update_json(store, "n", &fast(), |n: Option<i64>| {
            let next = n.unwrap_or(0) + 1;
            Ok::<_, String>(Change::Write(next, next))
        })
    }

    #[test]
    fn batch_answers_every_requested_position_even_repeated_keys() {
        let keys: Vec<String> = ["a", "b", "a", "c"].map(String::from).into();
        assert_eq!(unique_keys(&keys), ["a", "b", "c"].map(String::from));
        let found = vec![
            ("b".to_owned(), None),
            ("a".to_owned(), Some(b"1".to_vec())),
        ];
        assert_eq!(
            in_request_order(&keys, found),
            vec![Some(b"1".to_vec()), None, Some(b"1".to_vec()), None]
        );
    }

    #[test]
    fn typed_get_and_put() {
        let s = MemoryStore::new();
        assert_eq!(get_json::<i64>(&s, "a").unwrap(), None);
        put_json(&s, "a", &41).unwrap();
        assert_eq!(get_json::<i64>(&s, "a").unwrap(), Some(41));
        let many: Vec<Option<i64>> = get_many_json(&s, &["x".into(), "a".into()]).unwrap();
        assert_eq!(many, vec![None, Some(41)]);
    }

    #[test]
    fn corrupt_value_is_reported_with_key() {
        let s = MemoryStore::new();
        s.set("bad", b"not json").unwrap();
        let err = get_json::<i64>(&s, "bad").unwrap_err();
        assert!(matches!(&err, KvError::Corrupt { key, .. } if key == "bad"));
        assert_eq!(Problem::from(err).status, 500);
    }

    #[test]
    fn update_retries_after_conflicts() {
        let s = MemoryStore::new();
        assert_eq!(increment(&s).unwrap(), 1);
        s.fail_next_swaps(3);
        assert_eq!(increment(&s).unwrap(), 2);
        assert_eq!(get_json::<i64>(&s, "n").unwrap(), Some(2));
    }

    #[test]
    fn update_rereads_a_value_changed_by_a_racing_writer() {
        let s = MemoryStore::new();
        put_json(&s, "n", &10).unwrap();
        let mut raced = false;
        let result = update_json(&s, "n", &fast(), |n: Option<i64>| {
            if !raced {
                // Another writer sneaks in between our read and our swap.
                raced = true;
                put_json(&s, "n", &100).unwrap();
            }
            Ok::<_, String>(Change::Write(n.unwrap() + 1, ()))
        });
        result.unwrap();
        assert_eq!(get_json::<i64>(&s, "n").unwrap(), Some(101));
    }

    #[test]
    fn update_gives_up_when_always_contended() {
        let s = MemoryStore::new();
        s.fail_next_swaps(100);
        match increment(&s) {
            Err(UpdateError::Contended { key, attempts }) => {
                assert_eq!((key.as_str(), attempts), ("n", 5));
            }
            other => panic!("expected contention, got {other:?}"),
        }
        assert_eq!(get_json::<i64>(&s, "n").unwrap(), None);
        let p: Problem = UpdateError::<Problem>::Contended {
            key: "n".into(),
            attempts: 5,
        }
        .into();
        assert_eq!(p.status, 503);
    }

    #[test]
    fn keep_and_reject_write_nothing() {
        let s = MemoryStore::new();
        let kept = update_json(&s, "k", &fast(), |_: Option<i64>| {
            Ok::<_, String>(Change::Keep(7))
        });
        assert_eq!(kept.unwrap(), 7);
        let rejected = update_json(&s, "k", &fast(), |_: Option<i64>| {
            Err::<Change<i64, ()>, _>("no".to_owned())
        });
        assert!(matches!(rejected, Err(UpdateError::Rejected(m)) if m == "no"));
        assert_eq!(s.writes(), 0);
    }

    #[test]
    fn swap_on_absent_key_fails_if_created_meanwhile() {
        let s = MemoryStore::new();
        let (cas, current) = s.cas_read("new").unwrap();
        assert!(current.is_none());
        s.set("new", b"1").unwrap();
        assert_eq!(s.cas_write(cas, b"2").unwrap(), Swap::Conflict);
    }
}
