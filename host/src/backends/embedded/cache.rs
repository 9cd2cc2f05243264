//! An exact write-through cache of hot key-value entries, in front of the
//! embedded database's readers (docs/embedded-store.md, "Read cache").
//!
//! Why: every commit makes each SQLite reader connection drop its page
//! cache and unmap its memory map before its next read, so under a steady
//! stream of writes every read starts cold and refaults its pages, at a
//! cost that grows with the database (measured in issue 12's profile).
//! The host is the only writer of its data directory, so it can keep
//! recent values itself and know exactly when one changes.
//!
//! How it stays exact. The writer thread tells the cache about every
//! committed change, in two steps around each commit:
//!
//! 1. [`ReadCache::begin_commit`], before `COMMIT`: every key the batch
//!    wrote is removed, remembered as in flight, and the epoch becomes
//!    odd. While the commit is in flight those keys are read from SQLite,
//!    which decides whether the reader sees the old or the new value; no
//!    reader can see an old value from the cache after another saw the new
//!    one from SQLite. A batch that wrote no key (message-queue work only)
//!    changes nothing here.
//! 2. [`PendingCommit::committed`], after `COMMIT` succeeded: the batch's
//!    final values (or "absent" for a delete) are inserted and the epoch
//!    becomes even again. A failed commit only makes the epoch even.
//!
//! A reader that missed fills the cache with what it read from SQLite only
//! if the epoch is unchanged since it looked: then no commit started or
//! ended in between, so its SQLite snapshot was the latest committed state
//! and cannot overwrite a newer value, except for the keys of the commit
//! in flight when it looked (epoch odd), which SQLite may give either way:
//! those are not filled.

use hashlink::LruCache;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the cache knows of one key: its value and CAS version, or that
/// it is absent.
pub(super) type Known = Option<(Arc<[u8]>, i64)>;

/// Bytes an entry costs beyond its key and value (map node, `Arc` header,
/// version, LRU links); an estimate that keeps the budget honest for
/// small values.
const ENTRY_OVERHEAD: usize = 96;

/// The largest share of the budget one value may take: a few big values
/// must not push every hot small one out.
const MAX_ENTRY_SHARE: usize = 16;

/// The cache of one database: (namespace, key) → [`Known`], least
/// recently used first out, bounded in bytes.
pub(super) struct ReadCache {
    inner: Mutex<Inner>,
    /// Whether a commit in flight offers its values
    /// ([`Self::lookup_uncommitted`]): lets a read skip the lock when none
    /// does.
    offering: AtomicBool,
    budget: usize,
}

struct Inner {
    entries: LruCache<String, Known>,
    bytes: usize,
    /// Odd while a commit is in flight; see the module comment.
    epoch: u64,
    /// The keys of the commit in flight (empty when the epoch is even).
    in_flight: HashSet<String>,
    /// The value each in-flight key will have if its commit succeeds, and
    /// that commit's batch number: what a fenced compare-and-swap read
    /// may see ([`ReadCache::lookup_uncommitted`]).
    uncommitted: HashMap<String, (Known, u64)>,
}

/// The epoch a reader saw when it missed; it may fill the cache with what
/// it then read only if nothing committed meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket(u64);

/// The cache key of `key` in namespace `ns` (`<component>/<label>`, which
/// holds no NUL).
pub(super) fn cache_key(ns: &str, key: &str) -> String {
    let mut k = String::with_capacity(ns.len() + 1 + key.len());
    k.push_str(ns);
    k.push('\0');
    k.push_str(key);
    k
}

fn cost(key: &str, known: &Known) -> usize {
    key.len() + known.as_ref().map_or(0, |(v, _)| v.len()) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache holding at most `budget` bytes of keys, values and
    /// bookkeeping; 0 turns it off (every lookup misses, nothing is kept).
    pub(super) fn new(budget: usize) -> Self {
        ReadCache {
            inner: Mutex::new(Inner {
                entries: LruCache::new_unbounded(),
                bytes: 0,
                epoch: 0,
                in_flight: HashSet::new(),
                uncommitted: HashMap::new(),
            }),
            budget,
            offering: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held but an allocation failure;
        // the map is still consistent then.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache keeps anything (its budget is not 0).
    pub(super) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// What the cache knows of each key (`None`: a miss), and the ticket
    /// to fill the misses with ([`Self::fill`] also tells whether the hits
    /// and a later read of the misses are of one moment).
    pub(super) fn lookup(&self, keys: &[String]) -> (Vec<Option<Known>>, Ticket) {
        if !self.enabled() {
            return (vec![None; keys.len()], Ticket(1));
        }
        let mut inner = self.lock();
        let found = keys.iter().map(|k| inner.entries.get(k).cloned()).collect();
        (found, Ticket(inner.epoch))
    }

    /// The value `key` will have once the commit in flight succeeds, with
    /// that commit's batch number; `None` when the key is not being
    /// committed. Only for a reader that holds a read fence
    /// (`capabilities/keyvalue/read_fence.rs`), which makes everything it
    /// derives from the value wait for, or fail with, that commit.
    pub(super) fn lookup_uncommitted(&self, key: &str) -> Option<(Known, u64)> {
        if !self.offers_uncommitted() {
            return None;
        }
        self.lock().uncommitted.get(key).cloned()
    }

    /// Whether any of `keys` is being committed right now (offered as an
    /// uncommitted value).
    pub(super) fn any_uncommitted<'k>(&self, mut keys: impl Iterator<Item = &'k str>) -> bool {
        if !self.offers_uncommitted() {
            return false;
        }
        let inner = self.lock();
        keys.any(|k| inner.uncommitted.contains_key(k))
    }

    /// Whether a commit in flight offers its values right now (a hint: a
    /// reader that sees `false` just reads committed values).
    pub(super) fn offers_uncommitted(&self) -> bool {
        self.offering.load(Ordering::Acquire)
    }

    /// Keeps what a reader read from SQLite after its [`Self::lookup`]
    /// missed, if that read is still the latest committed state (see the
    /// module comment); returns whether nothing committed since `ticket`
    /// (the caller's read and its hits are then of one moment).
    pub(super) fn fill(&self, ticket: Ticket, read: Vec<(String, Known)>) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut inner = self.lock();
        if inner.epoch != ticket.0 {
            return false;
        }
        for (key, known) in read {
            if !inner.in_flight.contains(&key) {
                self.insert(&mut inner, key, known);
            }
        }
        true
    }

    /// Step 1 of a commit (before `COMMIT`): forgets every key in
    /// `touched` (the batch's writes) and marks them in flight until the
    /// returned [`PendingCommit`] is ended (or dropped, as for a failed
    /// commit). With no key, nothing is marked.
    pub(super) fn begin_commit<'k>(
        &self,
        touched: impl IntoIterator<Item = &'k str>,
    ) -> PendingCommit<'_> {
        let mut active = false;
        if self.enabled() {
            let mut touched = touched.into_iter().peekable();
            if touched.peek().is_some() {
                let mut inner = self.lock();
                for key in touched {
                    if let Some(old) = inner.entries.remove(key) {
                        inner.bytes -= cost(key, &old);
                    }
                    inner.in_flight.insert(key.to_string());
                }
                inner.epoch += 1;
                active = true;
            }
        }
        PendingCommit {
            cache: self,
            active,
        }
    }

    fn insert(&self, inner: &mut Inner, key: String, known: Known) {
        let size = cost(&key, &known);
        if size > self.budget / MAX_ENTRY_SHARE {
            if let Some(old) = inner.entries.remove(&key) {
                inner.bytes -= cost(&key, &old);
            }
            return;
        }
        if let Some(old) = inner.entries.insert(key.clone(), known) {
            inner.bytes -= cost(&key, &old);
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            match inner.entries.remove_lru() {
                Some((k, old)) => inner.bytes -= cost(&k, &old),
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// A commit in flight (step 1 done); dropping it without
/// [`Self::committed`] ends it as failed (the written keys stay out of the
/// cache).
pub(super) struct PendingCommit<'a> {
    cache: &'a ReadCache,
    /// Whether step 1 marked keys in flight (the batch wrote some).
    active: bool,
}

impl PendingCommit<'_> {
    /// Lets fenced compare-and-swap reads see `written`, the final state of
    /// each key of batch `batch`, until the commit ends
    /// ([`ReadCache::lookup_uncommitted`]). Call right before `COMMIT`,
    /// when the batch can no longer change.
    pub(super) fn offer_uncommitted(&self, written: &[(String, Known)], batch: u64) {
        if self.active {
            let mut inner = self.cache.lock();
            for (key, known) in written {
                inner
                    .uncommitted
                    .insert(key.clone(), (known.clone(), batch));
            }
            self.cache
                .offering
                .store(!inner.uncommitted.is_empty(), Ordering::Release);
        }
    }

    /// Step 2 after a successful `COMMIT`: keeps the batch's final state of
    /// each key it wrote (later entries of the same key win).
    pub(super) fn committed(self, written: Vec<(String, Known)>) {
        let cache = self.cache;
        if self.active {
            let mut inner = cache.lock();
            for (key, known) in written {
                cache.insert(&mut inner, key, known);
            }
        }
        // Drop ends the commit (the epoch becomes even).
    }
}

impl Drop for PendingCommit<'_> {
    fn drop(&mut self) {
        if self.active {
            let mut inner = self.cache.lock();
            inner.in_flight.clear();
            inner.uncommitted.clear();
            self.cache.offering.store(false, Ordering::Release);
            inner.epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(v: &str, version: i64) -> Known {
        Some((Arc::from(v.as_bytes()), version))
    }

    fn one(cache: &ReadCache, key: &str) -> (Option<Known>, Ticket) {
        let (mut found, ticket) = cache.lookup(&[key.to_string()]);
        (found.pop().unwrap(), ticket)
    }

    #[test]
    fn a_read_that_raced_a_commit_is_not_kept() {
        let cache = ReadCache::new(1 << 20);
        // A reader misses, then a commit of the same key starts before it
        // fills: what it read may be the old value.
        let (hit, ticket) = one(&cache, "k");
        assert_eq!(hit, None);
        let pending = cache.begin_commit(["k"]);
        assert!(!cache.fill(ticket, vec![("k".into(), known("old", 1))]));
        pending.committed(vec![("k".into(), known("new", 2))]);
        assert_eq!(one(&cache, "k").0, Some(known("new", 2)));

        // A reader that missed while a commit was in flight keeps what it
        // read of other keys (the commit cannot change them), never of the
        // commit's own keys (SQLite may have given either value).
        let pending = cache.begin_commit(["other"]);
        let (_, ticket) = one(&cache, "absent");
        assert!(cache.fill(
            ticket,
            vec![("absent".into(), None), ("other".into(), known("old", 3))]
        ));
        assert_eq!(one(&cache, "absent").0, Some(None), "absence kept");
        assert_eq!(one(&cache, "other").0, None, "in-flight key not kept");
        drop(pending);
        assert_eq!(one(&cache, "other").0, None, "failed commit: still out");

        // A batch that wrote no key changes nothing: fills still count.
        let (_, ticket) = one(&cache, "other");
        drop(cache.begin_commit(std::iter::empty()));
        assert!(cache.fill(ticket, vec![("other".into(), known("old", 3))]));
        assert_eq!(one(&cache, "other").0, Some(known("old", 3)));
    }

    #[test]
    fn an_uncommitted_value_is_offered_only_while_its_commit_is_in_flight() {
        let cache = ReadCache::new(1 << 20);
        let pending = cache.begin_commit(["k"]);
        assert_eq!(cache.lookup_uncommitted("k"), None, "not offered yet");
        pending.offer_uncommitted(&[("k".into(), known("v1", 7))], 3);
        assert_eq!(cache.lookup_uncommitted("k"), Some((known("v1", 7), 3)));
        assert_eq!(one(&cache, "k").0, None, "plain reads: committed only");
        pending.committed(vec![("k".into(), known("v1", 7))]);
        assert_eq!(cache.lookup_uncommitted("k"), None);
        assert_eq!(one(&cache, "k").0, Some(known("v1", 7)));

        let pending = cache.begin_commit(["k"]);
        pending.offer_uncommitted(&[("k".into(), known("v2", 8))], 4);
        drop(pending); // the commit failed
        assert_eq!(cache.lookup_uncommitted("k"), None);
        assert_eq!(one(&cache, "k").0, None);
    }

    #[test]
    fn a_key_being_committed_is_not_served_until_the_commit_ends() {
        let cache = ReadCache::new(1 << 20);
        let pending = cache.begin_commit(["seed"]);
        pending.committed(vec![("k".into(), known("v1", 1))]);
        let pending = cache.begin_commit(["k"]);
        assert_eq!(one(&cache, "k").0, None, "old value not served in flight");
        // The commit failed: the key stays out, later reads fill it.
        drop(pending);
        assert_eq!(one(&cache, "k").0, None);
    }

    #[test]
    fn the_budget_holds_and_the_least_recently_used_go_first() {
        let value = "x".repeat(100);
        let budget = 32 * (3 + 100 + ENTRY_OVERHEAD);
        let cache = ReadCache::new(budget);
        let pending = cache.begin_commit(["seed"]);
        pending.committed(
            (0..32)
                .map(|i| (format!("k{i:02}"), known(&value, i)))
                .collect(),
        );
        assert_eq!(cache.bytes(), budget);
        assert!(one(&cache, "k00").0.is_some()); // k00 is now the most recent
        let pending = cache.begin_commit(["seed"]);
        pending.committed(vec![("kxx".into(), known(&value, 40))]);
        assert!(cache.bytes() <= budget);
        assert!(one(&cache, "k00").0.is_some());
        assert!(
            one(&cache, "k01").0.is_none(),
            "the least recently used left"
        );
        assert!(one(&cache, "k02").0.is_some());
        // A value bigger than its share of the budget is never kept.
        let big = "y".repeat(budget / MAX_ENTRY_SHARE);
        let pending = cache.begin_commit(["seed"]);
        pending.committed(vec![("k00".into(), known(&big, 41))]);
        assert!(one(&cache, "k00").0.is_none(), "and its old value is gone");
        assert!(cache.bytes() <= budget - (3 + 100 + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = ReadCache::new(0);
        let pending = cache.begin_commit(["seed"]);
        pending.committed(vec![("k".into(), known("v", 1))]);
        let (hit, ticket) = one(&cache, "k");
        assert_eq!(hit, None);
        assert!(cache.fill(ticket, vec![("k".into(), known("v", 1))]));
        assert_eq!(one(&cache, "k").0, None);
    }
}
