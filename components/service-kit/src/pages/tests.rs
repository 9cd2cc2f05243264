use std::time::Duration;

use super::*;
use crate::kv::{MemoryCas, MemoryStore, get_json};

fn fast(max_attempts: u32) -> Retry {
    Retry {
        max_attempts,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    }
}

/// A store whose CAS writes to some keys always lose, to steer appends.
struct Steered {
    inner: MemoryStore,
    blocked: fn(&str) -> bool,
}

impl KvStore for Steered {
    type Cas = (String, MemoryCas);
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.inner.delete(key)
    }
    fn cas_read(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let (cas, v) = self.inner.cas_read(key)?;
        Ok(((key.to_owned(), cas), v))
    }
    fn cas_write(&self, (key, cas): Self::Cas, value: &[u8]) -> Result<Swap, KvError> {
        if (self.blocked)(&key) {
            return Ok(Swap::Conflict);
        }
        self.inner.cas_write(cas, value)
    }
}

/// Every page write outside shard 0 loses: all appends land in shard 0.
fn only_shard_0() -> Steered {
    Steered {
        inner: MemoryStore::new(),
        blocked: |k| k.contains("/page/") && !k.contains("/page/0/"),
    }
}

fn ix<S: KvStore>(store: &S, capacity: usize) -> PagedIndex<'_, S> {
    PagedIndex::new(store, "t/x/all".into(), capacity, fast(40))
}

fn at(i: usize) -> String {
    format!("2025-01-01T00:00:{:02}.{:03}Z", i / 1000 % 60, i % 1000)
}

fn scan_all<S: KvStore>(index: &PagedIndex<'_, S>) -> Vec<(Entry, Slot)> {
    index
        .scan(&Position::start())
        .unwrap()
        .next_batch(usize::MAX)
        .unwrap()
}

fn ids(entries: &[(Entry, Slot)]) -> Vec<String> {
    entries.iter().map(|(e, _)| e.id.clone()).collect()
}

#[test]
fn key_hash_is_sha256_hex() {
    assert_eq!(
        key_hash(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(key_hash("tools").len(), 64);
}

#[test]
fn slot_text_form() {
    let s = Slot {
        shard: 3,
        page: 12,
        pos: 127,
    };
    assert_eq!(serde_json::to_string(&s).unwrap(), r#""3.12.127""#);
    assert_eq!(serde_json::from_str::<Slot>(r#""3.12.127""#).unwrap(), s);
    for bad in [r#""3.12""#, r#""a.b.c""#, r#""8.0.0""#, r#""1.2.3.4""#, "7"] {
        assert!(serde_json::from_str::<Slot>(bad).is_err(), "{bad}");
    }
}

#[test]
fn entry_is_stored_compactly() {
    let mut e = Entry {
        id: "p1".into(),
        created_at: "t".into(),
        removed: false,
    };
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"i":"p1","t":"t"}"#);
    e.removed = true;
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"i":"p1","t":"t","x":1}"#
    );
}

#[test]
fn pages_split_at_capacity() {
    let store = only_shard_0();
    let index = ix(&store, 4);
    let slots: Vec<Slot> = (0..10)
        .map(|i| index.append(&format!("p{i}"), &at(i)).unwrap())
        .collect();
    let expected: Vec<Slot> = (0..10u32)
        .map(|i| Slot {
            shard: 0,
            page: i / 4,
            pos: i % 4,
        })
        .collect();
    assert_eq!(slots, expected);
    let head: Head = get_json(&store, "t/x/all/head/0").unwrap().unwrap();
    assert_eq!(head, Head { first: 0, tail: 2 });
    for (p, n) in [(0, 4), (1, 4), (2, 2)] {
        let page: PageDoc = get_json(&store, &format!("t/x/all/page/0/{p}"))
            .unwrap()
            .unwrap();
        assert_eq!(page.e.len(), n, "page {p}");
    }
    assert_eq!(
        ids(&scan_all(&index)),
        (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn a_conflicting_shard_is_avoided() {
    let store = Steered {
        inner: MemoryStore::new(),
        blocked: |k| k.contains("/page/3/"),
    };
    let index = ix(&store, 4);
    for i in 0..60 {
        let slot = index.append(&format!("p{i}"), &at(i)).unwrap();
        assert_ne!(slot.shard, 3, "a lost race moves to another shard");
    }
    assert_eq!(scan_all(&index).len(), 60);
    // A single lost race costs nothing but a retry elsewhere.
    let plain = MemoryStore::new();
    plain.fail_next_swaps(1);
    let index = ix(&plain, 4);
    index.append("a", &at(0)).unwrap();
    assert_eq!(ids(&scan_all(&index)), ["a"]);
}

#[test]
fn every_shard_contended_is_reported() {
    let store = Steered {
        inner: MemoryStore::new(),
        blocked: |k| k.contains("/page/"),
    };
    let err = ix(&store, 4).append("a", &at(0)).unwrap_err();
    assert!(
        matches!(err, PagesError::Contended { attempts: 40, .. }),
        "{err:?}"
    );
    assert_eq!(Problem::from(err).status, 503);
}

#[test]
fn shards_merge_in_creation_then_id_order() {
    let store = MemoryStore::new();
    let index = ix(&store, 3);
    // Appended in creation order (as requests do), spread over random
    // shards; each shard alone holds only part of the sequence.
    let mut expected = Vec::new();
    for i in 0..40 {
        let id = format!("p{i:02}");
        index.append(&id, &at(i / 2)).unwrap();
        expected.push((at(i / 2), id));
    }
    expected.sort();
    let got: Vec<(String, String)> = scan_all(&index)
        .into_iter()
        .map(|(e, _)| (e.created_at, e.id))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn remove_marks_and_compacts_the_front_of_a_shard() {
    let store = only_shard_0();
    let index = ix(&store, 2);
    let slots: Vec<Slot> = (0..6)
        .map(|i| index.append(&format!("p{i}"), &at(i)).unwrap())
        .collect();
    assert!(
        !index.remove(slots[0], "other").unwrap(),
        "another id is left alone"
    );
    assert!(index.remove(slots[0], "p0").unwrap());
    assert!(!index.remove(slots[0], "p0").unwrap(), "idempotent");
    assert!(store.inner.get("t/x/all/page/0/0").unwrap().is_some());
    assert!(index.remove(slots[1], "p1").unwrap());
    assert!(
        store.inner.get("t/x/all/page/0/0").unwrap().is_none(),
        "a front page of removed entries is dropped"
    );
    let head: Head = get_json(&store, "t/x/all/head/0").unwrap().unwrap();
    assert_eq!(head, Head { first: 1, tail: 2 });
    // The tail page is never dropped, even when empty of live entries.
    index.remove(slots[4], "p4").unwrap();
    index.remove(slots[5], "p5").unwrap();
    assert!(store.inner.get("t/x/all/page/0/2").unwrap().is_some());
    assert_eq!(ids(&scan_all(&index)), ["p2", "p3"]);
    // Removing the middle page's entries lets compaction run to the tail.
    index.remove(slots[3], "p3").unwrap();
    index.remove(slots[2], "p2").unwrap();
    let head: Head = get_json(&store, "t/x/all/head/0").unwrap().unwrap();
    assert_eq!(head, Head { first: 2, tail: 2 });
    assert!(scan_all(&index).is_empty());
    // Appends still go on at the tail; the slot of a removed entry stays dead.
    let s = index.append("p6", &at(6)).unwrap();
    assert_eq!((s.page, s.pos), (3, 0));
    assert!(!index.remove(slots[0], "p0").unwrap());
    assert_eq!(ids(&scan_all(&index)), ["p6"]);
}

#[test]
fn a_position_from_before_compaction_still_works() {
    let store = only_shard_0();
    let index = ix(&store, 2);
    let slots: Vec<Slot> = (0..6)
        .map(|i| index.append(&format!("p{i}"), &at(i)).unwrap())
        .collect();
    let mut scan = index.scan(&Position::start()).unwrap();
    assert_eq!(ids(&scan.next_batch(1).unwrap()), ["p0"]);
    let pos = scan.position();
    for (i, s) in slots.iter().enumerate().take(4) {
        index.remove(*s, &format!("p{i}")).unwrap();
    }
    assert_eq!(
        ids(&index.scan(&pos).unwrap().next_batch(10).unwrap()),
        ["p4", "p5"]
    );
}

#[test]
fn scan_walks_many_pages_and_resumes_from_positions() {
    let store = MemoryStore::new();
    let index = ix(&store, 3);
    let all: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    for (i, id) in all.iter().enumerate() {
        index.append(id, &at(i)).unwrap();
    }
    // In one scan, in batches.
    let mut scan = index.scan(&Position::start()).unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = scan.next_batch(7).unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(ids(&batch));
    }
    assert!(scan.is_exhausted().unwrap());
    assert_eq!(seen, all);
    // Across requests: a fresh scan per page, from the last position.
    let mut pos = Position::start();
    let mut seen = Vec::new();
    loop {
        let mut scan = index.scan(&pos).unwrap();
        let batch = scan.next_batch(13).unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(ids(&batch));
        pos = scan.position();
    }
    assert_eq!(seen, all);
}

fn all_valid(batch: &[(Entry, Slot)]) -> Result<Vec<Verdict<String>>, KvError> {
    Ok(batch
        .iter()
        .map(|(e, _)| Verdict::Valid(e.id.clone()))
        .collect())
}

#[test]
fn collect_page_pages_with_next_only_when_more_exist() {
    let store = MemoryStore::new();
    let index = ix(&store, 4);
    for i in 0..10 {
        index.append(&format!("p{i}"), &at(i)).unwrap();
    }
    let page = |pos: &Position, limit, offset| {
        let mut scan = index.scan(pos).unwrap();
        collect_page(&index, &mut scan, limit, offset, all_valid).unwrap()
    };
    let first = page(&Position::start(), 4, 0);
    assert_eq!(first.items, ["p0", "p1", "p2", "p3"]);
    let second = page(&first.next.unwrap(), 4, 0);
    assert_eq!(second.items, ["p4", "p5", "p6", "p7"]);
    let last = page(&second.next.unwrap(), 4, 0);
    assert_eq!(last.items, ["p8", "p9"]);
    assert_eq!(last.next, None);
    let exact = page(&second.next.unwrap(), 2, 0);
    assert_eq!(
        (exact.items.len(), exact.next),
        (2, None),
        "a full last page has no next"
    );
    let skipped = page(&Position::start(), 3, 8);
    assert_eq!(
        (skipped.items, skipped.next),
        (vec!["p8".into(), "p9".into()], None)
    );
    let beyond = page(&Position::start(), 3, MAX_OFFSET_FOR_TEST);
    assert!(beyond.items.is_empty() && beyond.next.is_none());
    let beyond = page(&Position::start(), 3, 10);
    assert!(beyond.items.is_empty() && beyond.next.is_none());
}

const MAX_OFFSET_FOR_TEST: u64 = i64::MAX as u64;

#[test]
fn collect_page_skips_invalid_and_removes_stale_entries() {
    let store = MemoryStore::new();
    let index = ix(&store, 4);
    for i in 0..12 {
        index.append(&format!("p{i}"), &at(i)).unwrap();
    }
    // Odd ids are stale, multiples of 4 are being written (skip).
    let verdicts = |batch: &[(Entry, Slot)]| -> Result<Vec<Verdict<String>>, KvError> {
        Ok(batch
            .iter()
            .map(|(e, _)| {
                let n: usize = e.id[1..].parse().unwrap();
                if n % 2 == 1 {
                    Verdict::Stale
                } else if n.is_multiple_of(4) {
                    Verdict::Skip
                } else {
                    Verdict::Valid(e.id.clone())
                }
            })
            .collect())
    };
    let mut scan = index.scan(&Position::start()).unwrap();
    let page = collect_page(&index, &mut scan, 2, 0, verdicts).unwrap();
    assert_eq!(page.items, ["p2", "p6"]);
    let mut scan = index.scan(&page.next.unwrap()).unwrap();
    let rest = collect_page(&index, &mut scan, 2, 0, verdicts).unwrap();
    assert_eq!((rest.items, rest.next), (vec!["p10".to_owned()], None));
    assert_eq!(
        ids(&scan_all(&index)),
        ["p0", "p2", "p4", "p6", "p8", "p10"],
        "stale entries were removed"
    );
}

/// The JSON size of a full page of `capacity` entries with 64-character
/// ids, each marked removed (the largest form of an entry).
fn full_page_bytes(capacity: usize) -> usize {
    let page = PageDoc {
        e: (0..capacity)
            .map(|i| Entry {
                id: format!("{i:0>64}"),
                created_at: "2025-01-01T00:00:00.000Z".into(),
                removed: true,
            })
            .collect(),
    };
    serde_json::to_vec(&page).unwrap().len()
}

#[test]
fn a_page_at_production_capacity_stays_small() {
    let bytes = full_page_bytes(DEFAULT_PAGE_CAPACITY);
    assert!(bytes < 4 * 1024, "{bytes} bytes, well under 64 KiB");
}

#[test]
fn a_page_at_the_largest_accepted_capacity_stays_under_64_kib() {
    let bytes = full_page_bytes(MAX_PAGE_CAPACITY);
    assert!(bytes < 64 * 1024, "{bytes} bytes");
}

#[test]
fn an_entry_without_its_record_is_left_alone_while_young_and_stale_after() {
    let created = "2026-01-01T00:00:00.000Z";
    let at = crate::clock::parse_rfc3339(created)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let entry = Entry {
        id: "p1".into(),
        created_at: created.into(),
        removed: false,
    };
    assert_eq!(absent_record_verdict::<()>(&entry, at), Verdict::Skip);
    assert_eq!(
        absent_record_verdict::<()>(&entry, at + ABSENT_RECORD_GRACE_MS - 1),
        Verdict::Skip
    );
    assert_eq!(
        absent_record_verdict::<()>(&entry, at + ABSENT_RECORD_GRACE_MS),
        Verdict::Stale
    );
    let garbled = Entry {
        created_at: "yesterday".into(),
        ..entry
    };
    assert_eq!(absent_record_verdict::<()>(&garbled, at), Verdict::Stale);
    // The writer's deadline ends well before any list removes the entry.
    assert!(within_record_deadline(
        created,
        at + RECORD_WRITE_DEADLINE_MS - 1
    ));
    assert!(!within_record_deadline(
        created,
        at + RECORD_WRITE_DEADLINE_MS
    ));
    assert!(!within_record_deadline("yesterday", at));
    const { assert!(RECORD_WRITE_DEADLINE_MS * 2 < ABSENT_RECORD_GRACE_MS) };
}
