//! Paged indexes: how the services list items without listing keys and
//! without a value that grows with the tenant (docs/storage-layout.md,
//! "Paged indexes").
//!
//! An index is [`SHARDS`] independent shards, each a chain of pages of at
//! most `capacity` entries:
//!
//! ```text
//! <prefix>/head/<s>       {"first": f, "tail": t}
//! <prefix>/page/<s>/<p>   {"e": [{"i": id, "t": createdAt, "x": 1?}, ...]}
//! ```
//!
//! * [`PagedIndex::append`] adds an entry to the tail page of a random
//!   shard with compare-and-swap; on a conflict it tries another shard, so
//!   concurrent writers of one tenant spread over [`SHARDS`] keys. The
//!   returned [`Slot`] never changes.
//! * [`PagedIndex::remove`] marks the entry at a slot removed; whole pages
//!   of removed entries at the front of a shard are dropped.
//! * [`PagedIndex::scan`] merges the shards by `(created_at, id)` from a
//!   [`Position`] (the start, or one decoded from a cursor, see
//!   [`crate::cursor`]). Each shard is in append order, so the merge is in
//!   creation order as long as items are appended in the order they were
//!   created; concurrent requests may land a little out of order, but a scan continued from a position never
//!   yields an entry twice nor skips one, because a position is exact per
//!   shard.
//! * [`collect_page`] turns a scan into one page of validated items: an
//!   entry counts only when the caller's record check says so (validity by
//!   slot), and entries known to be stale are removed.
//!
//! Costs: an append is 2-3 reads and 1 write; a scan start reads every
//! head in one `get_many` and every shard's first page in another.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::kv::{KvError, KvStore, Retry, Swap};
use crate::problem::Problem;

/// Number of shards of every paged index. Fixed in code because stored
/// slots and positions depend on it: never change it for existing data.
pub const SHARDS: u32 = 8;

/// Default entries per page (the `index_page_capacity` default): a page of
/// 32 entries with 64-character ids is about 3.4 KB of JSON. A list's first
/// page reads one page per shard, so this is what a list costs once a
/// tenant's pages are full: 32 rather than 128 took the growth of a
/// filtered first page from 1,000 to 100,000 products from x2.28 to x1.11
/// (docs/storage-layout.md, "Capacity").
pub const DEFAULT_PAGE_CAPACITY: usize = 32;

/// The largest `index_page_capacity` a component accepts: a page of 512
/// entries with 64-character ids is about 52 KB of JSON, under the
/// 64 KiB every stored value keeps to.
pub const MAX_PAGE_CAPACITY: usize = 512;

/// A key segment naming an index by free text (a category, a customer):
/// the lowercase hex SHA-256 of `text`, so any text makes a safe, fixed
/// length (64 characters) key segment.
pub fn key_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where one entry lives: shard, page and position in the page. Stable
/// forever, so records store it to prove which entry is theirs. Serialises
/// as the short string `"s.p.i"`, e.g. `"3.0.17"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// Shard, `0..SHARDS`.
    pub shard: u32,
    /// Page number within the shard, from 0.
    pub page: u32,
    /// Position within the page, from 0.
    pub pos: u32,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.page, self.pos)
    }
}

impl FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Slot, String> {
        let bad = || format!("'{s}' is not an index slot; expected 'shard.page.pos'");
        let mut parts = s.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let (Some(shard), Some(page), Some(pos), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let slot = Slot {
            shard: shard?,
            page: page?,
            pos: pos?,
        };
        if slot.shard >= SHARDS {
            return Err(format!(
                "'{s}' names shard {}, but there are {SHARDS}",
                slot.shard
            ));
        }
        Ok(slot)
    }
}

impl Serialize for Slot {
    fn serialize<Se: Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of a page, stored compactly as `{"i": id, "t": createdAt}`
/// plus `"x": 1` once removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The item's id.
    #[serde(rename = "i")]
    pub id: String,
    /// The item's creation time (RFC 3339 text, which sorts in time
    /// order); with `id`, the merge order of a scan.
    #[serde(rename = "t")]
    pub created_at: String,
    /// Marked removed; scans skip it. Kept so positions stay stable.
    #[serde(rename = "x", default, skip_serializing_if = "is_false", with = "flag")]
    pub removed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A bool stored as `1` (only `true` is ever written).
mod flag {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(u8::deserialize(d)? != 0)
    }
}

/// A shard's head: the first page still stored and the page appends go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    first: u32,
    tail: u32,
}

/// A stored page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PageDoc {
    e: Vec<Entry>,
}

/// Why a paged-index write did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagesError {
    /// The store failed.
    Store(KvError),
    /// Every attempt lost a race on every shard.
    Contended {
        /// The index's key prefix.
        prefix: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl From<KvError> for PagesError {
    fn from(e: KvError) -> Self {
        PagesError::Store(e)
    }
}

impl fmt::Display for PagesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagesError::Store(e) => e.fmt(f),
            PagesError::Contended { prefix, attempts } => write!(
                f,
                "the index '{prefix}' is being changed by many requests at once ({attempts} attempts lost the race); retry shortly"
            ),
        }
    }
}

impl std::error::Error for PagesError {}

impl From<PagesError> for Problem {
    fn from(e: PagesError) -> Problem {
        match e {
            PagesError::Store(e) => e.into(),
            contended => Problem::unavailable(contended.to_string()),
        }
    }
}

/// A paged index under one key prefix, e.g. `tenant/acme/products/all`.
pub struct PagedIndex<'a, S: KvStore> {
    store: &'a S,
    prefix: String,
    capacity: usize,
    retry: Retry,
}

impl<'a, S: KvStore> PagedIndex<'a, S> {
    /// The index stored under `prefix` (no trailing slash), with pages of
    /// `capacity` entries (at least 1; a page written under a larger
    /// capacity is simply full) and `retry` bounding each write's attempts.
    pub fn new(store: &'a S, prefix: String, capacity: usize, retry: Retry) -> Self {
        PagedIndex {
            store,
            prefix,
            capacity: capacity.max(1),
            retry,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn head_key(&self, shard: u32) -> String {
        format!("{}/head/{shard}", self.prefix)
    }

    fn page_key(&self, shard: u32, page: u32) -> String {
        format!("{}/page/{shard}/{page}", self.prefix)
    }

    fn read_head(&self, shard: u32) -> Result<Head, KvError> {
        Ok(crate::kv::get_json(self.store, &self.head_key(shard))?.unwrap_or_default())
    }

    /// Appends an entry for `id` created at `created_at` and returns its
    /// slot. Starts on a random shard and moves to another one after each
    /// lost race; pauses (per `retry`) after every round of all shards.
    /// An entry already there for the same id is not looked for: callers
    /// decide validity by the slot their record stores.
    pub fn append(&self, id: &str, created_at: &str) -> Result<Slot, PagesError> {
        let entry = Entry {
            id: id.to_owned(),
            created_at: created_at.to_owned(),
            removed: false,
        };
        let mut r = [0u8; 1];
        crate::ids::random_bytes(&mut r);
        let start = u32::from(r[0]) % SHARDS;
        for attempt in 0..self.retry.max_attempts {
            if attempt > 0 && attempt % SHARDS == 0 {
                self.retry.pause(attempt / SHARDS - 1);
            }
            let shard = (start + attempt) % SHARDS;
            if let Some(slot) = self.try_append(shard, &entry)? {
                return Ok(slot);
            }
        }
        Err(PagesError::Contended {
            prefix: self.prefix.clone(),
            attempts: self.retry.max_attempts,
        })
    }

    /// One attempt on one shard: `None` when a concurrent writer won.
    fn try_append(&self, shard: u32, entry: &Entry) -> Result<Option<Slot>, KvError> {
        // A full tail page moves the head on, then the append goes to the
        // new tail; two rounds are enough unless writers race, which the
        // caller handles by trying another shard.
        for _ in 0..2 {
            let head = self.read_head(shard)?;
            let key = self.page_key(shard, head.tail);
            let (cas, current) = self.store.cas_read(&key)?;
            let existed = current.is_some();
            let mut page: PageDoc = decode_opt(&key, current)?.unwrap_or_default();
            if page.e.len() >= self.capacity {
                if !self.advance_tail(shard, head.tail)? {
                    return Ok(None);
                }
                continue;
            }
            let pos = page.e.len() as u32;
            page.e.push(entry.clone());
            if self.store.cas_write(cas, &encode(&key, &page)?)? == Swap::Conflict {
                return Ok(None);
            }
            if !existed && self.read_head(shard)?.first > head.tail {
                // We recreated a page compaction had just dropped (our
                // head was stale): nobody reads it, so undo and retry.
                self.store.delete(&key)?;
                return Ok(None);
            }
            return Ok(Some(Slot {
                shard,
                page: head.tail,
                pos,
            }));
        }
        Ok(None)
    }

    /// Moves the head's tail from `tail` to `tail + 1` (the head moves
    /// before the page is written, so readers never miss a page). `false`
    /// when a concurrent writer changed the head first.
    fn advance_tail(&self, shard: u32, tail: u32) -> Result<bool, KvError> {
        let key = self.head_key(shard);
        let (cas, current) = self.store.cas_read(&key)?;
        let mut head: Head = decode_opt(&key, current)?.unwrap_or_default();
        if head.tail != tail {
            return Ok(true);
        }
        head.tail = tail + 1;
        Ok(self.store.cas_write(cas, &encode(&key, &head)?)? == Swap::Done)
    }

    /// Marks the entry at `slot` removed if it still names `id`; `true`
    /// when this call removed it, `false` when it was already removed, is
    /// gone, or names another id (idempotent). Then drops whole pages of
    /// removed entries from the front of the shard.
    pub fn remove(&self, slot: Slot, id: &str) -> Result<bool, PagesError> {
        if slot.shard >= SHARDS {
            return Ok(false);
        }
        let key = self.page_key(slot.shard, slot.page);
        let mut removed = false;
        let mut done = false;
        for attempt in 0..self.retry.max_attempts {
            let (cas, current) = self.store.cas_read(&key)?;
            let Some(mut page) = decode_opt::<PageDoc>(&key, current)? else {
                done = true;
                break;
            };
            match page.e.get_mut(slot.pos as usize) {
                Some(e) if e.id == id && !e.removed => e.removed = true,
                _ => {
                    done = true;
                    break;
                }
            }
            if self.store.cas_write(cas, &encode(&key, &page)?)? == Swap::Done {
                removed = true;
                done = true;
                break;
            }
            self.retry.pause(attempt);
        }
        if !done {
            return Err(PagesError::Contended {
                prefix: self.prefix.clone(),
                attempts: self.retry.max_attempts,
            });
        }
        self.compact(slot.shard)?;
        Ok(removed)
    }

    /// Drops pages made only of removed entries from the front of a shard
    /// (never its tail), at most a few per call so a request stays bounded.
    fn compact(&self, shard: u32) -> Result<(), KvError> {
        const MAX_PAGES_PER_CALL: usize = 4;
        for _ in 0..MAX_PAGES_PER_CALL {
            let key = self.head_key(shard);
            let (cas, current) = self.store.cas_read(&key)?;
            let mut head: Head = decode_opt(&key, current)?.unwrap_or_default();
            if head.first >= head.tail {
                return Ok(());
            }
            let page_key = self.page_key(shard, head.first);
            let page: Option<PageDoc> = crate::kv::get_json(self.store, &page_key)?;
            if page.is_some_and(|p| p.e.iter().any(|e| !e.removed)) {
                return Ok(());
            }
            head.first += 1;
            if self.store.cas_write(cas, &encode(&key, &head)?)? == Swap::Conflict {
                return Ok(());
            }
            self.store.delete(&page_key)?;
        }
        Ok(())
    }

    /// A scan from `from` ([`Position::start`] or a decoded cursor): reads
    /// every shard's head, then every shard's current page, in two
    /// `get_many` round trips.
    pub fn scan(&self, from: &Position) -> Result<Scan<'a, S>, KvError> {
        let head_keys: Vec<String> = (0..SHARDS).map(|s| self.head_key(s)).collect();
        let heads: Vec<Option<Head>> = crate::kv::get_many_json(self.store, &head_keys)?;
        let mut shards: Vec<ShardCursor> = heads
            .into_iter()
            .enumerate()
            .map(|(s, head)| {
                let head = head.unwrap_or_default();
                let (page, pos) = from.next[s];
                let (page, pos) = if page < head.first {
                    (head.first, 0)
                } else {
                    (page, pos)
                };
                ShardCursor {
                    page,
                    pos,
                    tail: head.tail,
                    entries: None,
                }
            })
            .collect();
        let wanted: Vec<usize> = (0..shards.len())
            .filter(|&s| shards[s].page <= shards[s].tail)
            .collect();
        let keys: Vec<String> = wanted
            .iter()
            .map(|&s| self.page_key(s as u32, shards[s].page))
            .collect();
        let pages: Vec<Option<PageDoc>> = crate::kv::get_many_json(self.store, &keys)?;
        for (s, page) in wanted.into_iter().zip(pages) {
            shards[s].entries = Some(page.unwrap_or_default().e);
        }
        for c in shards.iter_mut() {
            if c.entries.is_none() {
                c.entries = Some(Vec::new());
            }
        }
        Ok(Scan {
            store: self.store,
            prefix: self.prefix.clone(),
            shards,
        })
    }
}

/// Where a scan continues: the next `(page, pos)` to look at in each
/// shard. Small and `Copy`; [`crate::cursor`] turns it into opaque text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    next: [(u32, u32); SHARDS as usize],
}

impl Position {
    /// The start of the index.
    pub fn start() -> Position {
        Position {
            next: [(0, 0); SHARDS as usize],
        }
    }

    /// The `(page, pos)` per shard, in shard order (for encoding).
    pub fn shards(&self) -> &[(u32, u32); SHARDS as usize] {
        &self.next
    }

    /// A position from its per-shard `(page, pos)` (for decoding).
    pub fn from_shards(next: [(u32, u32); SHARDS as usize]) -> Position {
        Position { next }
    }
}

impl Default for Position {
    fn default() -> Self {
        Position::start()
    }
}

struct ShardCursor {
    page: u32,
    pos: u32,
    tail: u32,
    /// The entries of `page` (empty when the page is absent).
    entries: Option<Vec<Entry>>,
}

/// A scan in progress: yields live entries in `(created_at, id)` order
/// across shards, and tells where it stands so a later request continues.
pub struct Scan<'a, S: KvStore> {
    store: &'a S,
    prefix: String,
    shards: Vec<ShardCursor>,
}

impl<S: KvStore> Scan<'_, S> {
    /// Moves shard `s` onto its next entry that is not removed, loading
    /// further pages as needed; `false` when the shard has no more.
    fn settle(&mut self, s: usize) -> Result<bool, KvError> {
        loop {
            let c = &mut self.shards[s];
            let entries = c.entries.get_or_insert_with(Vec::new);
            while (c.pos as usize) < entries.len() && entries[c.pos as usize].removed {
                c.pos += 1;
            }
            if (c.pos as usize) < entries.len() {
                return Ok(true);
            }
            if c.page >= c.tail {
                return Ok(false);
            }
            c.page += 1;
            c.pos = 0;
            let key = format!("{}/page/{s}/{}", self.prefix, c.page);
            let page: Option<PageDoc> = crate::kv::get_json(self.store, &key)?;
            self.shards[s].entries = Some(page.unwrap_or_default().e);
        }
    }

    /// The next live entry and its slot, or `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<(Entry, Slot)>, KvError> {
        let mut best: Option<usize> = None;
        for s in 0..self.shards.len() {
            if !self.settle(s)? {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let e = self.current(s);
                    let o = self.current(b);
                    (&e.created_at, &e.id) < (&o.created_at, &o.id)
                }
            };
            if better {
                best = Some(s);
            }
        }
        let Some(s) = best else {
            return Ok(None);
        };
        let entry = self.current(s).clone();
        let c = &mut self.shards[s];
        let slot = Slot {
            shard: s as u32,
            page: c.page,
            pos: c.pos,
        };
        c.pos += 1;
        Ok(Some((entry, slot)))
    }

    fn current(&self, s: usize) -> &Entry {
        let c = &self.shards[s];
        &c.entries.as_ref().expect("settled shard has its page")[c.pos as usize]
    }

    /// Up to `n` next live entries with their slots (fewer at the end).
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<(Entry, Slot)>, KvError> {
        let mut out = Vec::with_capacity(n.min(256));
        while out.len() < n {
            match self.next_entry()? {
                Some(x) => out.push(x),
                None => break,
            }
        }
        Ok(out)
    }

    /// Where the scan stands: just after the last entry yielded.
    pub fn position(&self) -> Position {
        let mut next = [(0, 0); SHARDS as usize];
        for (n, c) in next.iter_mut().zip(&self.shards) {
            *n = (c.page, c.pos);
        }
        Position { next }
    }

    /// Whether no live entry is left (may read further pages).
    pub fn is_exhausted(&mut self) -> Result<bool, KvError> {
        for s in 0..self.shards.len() {
            if self.settle(s)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What a caller's record check says about one index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// The entry's record exists, is live, matches and stores this slot:
    /// list `T`.
    Valid(T),
    /// Not listed now, but may become valid (e.g. its record is being
    /// written): leave the entry alone.
    Skip,
    /// Can never become valid (record gone, deleted, or another
    /// incarnation): list nothing and remove the entry.
    Stale,
}

/// How long an entry whose record is absent counts as "being written"
/// ([`Verdict::Skip`]) rather than stale, in milliseconds after the
/// entry's `createdAt`.
///
/// Why: a create whose id nobody else can name (a fresh random one)
/// appends its entries *before* it writes its record, so the record and
/// its slots are one write instead of two (docs/storage-layout.md,
/// "Entries before the record"). Meanwhile a list finds the entry with no
/// record, and must not remove it. Such a writer gives up (removes its
/// entries, writes nothing) once [`RECORD_WRITE_DEADLINE_MS`] has passed,
/// well inside this grace, so a list removes only entries of creates that
/// died. The margin covers clock skew between replicas (Redis, Dapr).
pub const ABSENT_RECORD_GRACE_MS: u64 = 60_000;

/// How long after its entries' `createdAt` a create that appended them
/// before its record may still write that record, in milliseconds; after
/// it the create removes its entries and fails, since a list may remove
/// them from [`ABSENT_RECORD_GRACE_MS`] on.
pub const RECORD_WRITE_DEADLINE_MS: u64 = 20_000;

/// The verdict on an entry whose record is absent, at `now_ms`
/// (milliseconds since the Unix epoch): [`Verdict::Skip`] while the entry
/// is younger than [`ABSENT_RECORD_GRACE_MS`] (its create may still write
/// the record), [`Verdict::Stale`] after, or when its `createdAt` is not
/// RFC 3339 text.
pub fn absent_record_verdict<T>(entry: &Entry, now_ms: u64) -> Verdict<T> {
    match millis_since_epoch(&entry.created_at) {
        Some(created) if now_ms.saturating_sub(created) < ABSENT_RECORD_GRACE_MS => Verdict::Skip,
        _ => Verdict::Stale,
    }
}

/// Whether a create that took its `createdAt` of `created_at` may still
/// write the record its entries name at `now_ms` (see
/// [`RECORD_WRITE_DEADLINE_MS`]).
pub fn within_record_deadline(created_at: &str, now_ms: u64) -> bool {
    millis_since_epoch(created_at)
        .is_some_and(|created| now_ms.saturating_sub(created) < RECORD_WRITE_DEADLINE_MS)
}

/// RFC 3339 text as milliseconds since the Unix epoch.
fn millis_since_epoch(rfc3339: &str) -> Option<u64> {
    crate::clock::parse_rfc3339(rfc3339)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// One page of a list, as [`collect_page`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected<T> {
    /// At most `limit` items, in scan order.
    pub items: Vec<T>,
    /// Where the next page starts; `Some` only when at least one more
    /// valid item exists, so the last page has no "next" link.
    pub next: Option<Position>,
}

/// Most stale entries one list request removes (each is a write).
const MAX_REMOVALS_PER_PAGE: usize = 32;

/// Turns a scan into one page: skips `offset` valid items, collects up to
/// `limit`, and looks one valid item further to know whether a next page
/// exists. Candidates go to `validate` in batches (so it can read their
/// records with one `get_many`); it must return one [`Verdict`] per
/// candidate, in order (missing verdicts count as [`Verdict::Skip`]).
/// Stale entries are removed from `index` afterwards, best effort: a
/// failure is logged, as the page itself is already right.
///
/// Costs O((offset + limit) / batch) round trips, batches being 16-256
/// candidates.
pub fn collect_page<S, T, E>(
    index: &PagedIndex<'_, S>,
    scan: &mut Scan<'_, S>,
    limit: usize,
    offset: u64,
    mut validate: impl FnMut(&[(Entry, Slot)]) -> Result<Vec<Verdict<T>>, E>,
) -> Result<Collected<T>, E>
where
    S: KvStore,
    E: From<KvError>,
{
    let mut to_skip = offset;
    let mut items = Vec::new();
    let mut last_taken = None;
    let mut next = None;
    let mut stale: Vec<(Slot, String)> = Vec::new();
    'scan: loop {
        let want = to_skip
            .saturating_add((limit - items.len()) as u64)
            .saturating_add(1)
            .clamp(16, 256) as usize;
        let mut batch = Vec::with_capacity(want);
        let mut positions = Vec::with_capacity(want);
        while batch.len() < want {
            match scan.next_entry()? {
                Some(x) => {
                    batch.push(x);
                    positions.push(scan.position());
                }
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let verdicts = validate(&batch)?;
        let mut verdicts = verdicts.into_iter();
        for (i, (entry, slot)) in batch.iter().enumerate() {
            match verdicts.next().unwrap_or(Verdict::Skip) {
                Verdict::Valid(item) => {
                    if items.len() == limit {
                        next = last_taken;
                        break 'scan;
                    }
                    if to_skip > 0 {
                        to_skip -= 1;
                    } else {
                        items.push(item);
                    }
                    last_taken = Some(positions[i]);
                }
                Verdict::Stale => stale.push((*slot, entry.id.clone())),
                Verdict::Skip => {}
            }
        }
    }
    for (slot, id) in stale.into_iter().take(MAX_REMOVALS_PER_PAGE) {
        if let Err(e) = index.remove(slot, &id) {
            eprintln!(
                "stale entry '{id}' at {slot} of index '{}' not removed (lists skip it anyway): {e}",
                index.prefix()
            );
        }
    }
    Ok(Collected { items, next })
}

fn decode_opt<T: DeserializeOwned>(
    key: &str,
    bytes: Option<Vec<u8>>,
) -> Result<Option<T>, KvError> {
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| KvError::Corrupt {
                key: key.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Corrupt {
        key: key.to_owned(),
        message: format!("cannot encode: {e}"),
    })
}

#[cfg(test)]
mod tests;
