//! LEGACY per-tenant index documents: one document per tenant with an
//! entry per item, sorted by creation time then id. It grows with the
//! tenant (over 1 MB for a large one) and every write rewrites it, so new
//! data goes to paged indexes ([`crate::pages`]). This stays only so the
//! services can READ a legacy document while migrating it to paged
//! indexes (docs/storage-layout.md, "Migration"); remove it once no
//! deployment holds legacy data.

use serde::{Deserialize, Serialize};

/// What an index entry must tell: the item's id and creation time (the
/// sort key); the rest of the entry is the service's filter fields.
pub trait Indexed: PartialEq {
    /// The item's id, unique in the index.
    fn id(&self) -> &str;
    /// Creation time (RFC 3339, so string order is time order).
    fn created_at(&self) -> &str;
}

/// A tenant's index document, stored as `{"entries": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationIndex<E> {
    /// Entries sorted by `(created_at, id)`.
    pub entries: Vec<E>,
}

impl<E> Default for CreationIndex<E> {
    fn default() -> Self {
        CreationIndex {
            entries: Vec::new(),
        }
    }
}

impl<E: Indexed> CreationIndex<E> {
    /// Adds or replaces the entry for `entry.id()`; returns whether
    /// anything changed, so an unchanged index is not written again.
    pub fn upsert(&mut self, entry: E) -> bool {
        if self.entries.contains(&entry) {
            return false;
        }
        self.entries.retain(|e| e.id() != entry.id());
        let key = (entry.created_at(), entry.id());
        let at = self
            .entries
            .partition_point(|e| (e.created_at(), e.id()) < key);
        self.entries.insert(at, entry);
        true
    }

    /// Removes the entry for `id`; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.id() != id);
        self.entries.len() != before
    }

    /// The ids of the entries `keep` accepts, oldest first.
    pub fn ids_where(&self, keep: impl Fn(&E) -> bool) -> impl Iterator<Item = String> {
        self.entries
            .iter()
            .filter(move |e| keep(e))
            .map(|e| e.id().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Entry {
        id: String,
        at: String,
        tag: u8,
    }

    impl Indexed for Entry {
        fn id(&self) -> &str {
            &self.id
        }
        fn created_at(&self) -> &str {
            &self.at
        }
    }

    fn entry(id: &str, at: &str, tag: u8) -> Entry {
        Entry {
            id: id.into(),
            at: at.into(),
            tag,
        }
    }

    fn all(ix: &CreationIndex<Entry>) -> Vec<String> {
        ix.ids_where(|_| true).collect()
    }

    #[test]
    fn keeps_creation_then_id_order() {
        let mut ix = CreationIndex::default();
        assert!(ix.upsert(entry("b", "t2", 0)));
        assert!(ix.upsert(entry("z", "t1", 0)));
        assert!(ix.upsert(entry("a", "t2", 0)));
        assert_eq!(all(&ix), vec!["z", "a", "b"]);
    }

    #[test]
    fn upsert_replaces_and_is_idempotent() {
        let mut ix = CreationIndex::default();
        ix.upsert(entry("a", "t1", 0));
        assert!(!ix.upsert(entry("a", "t1", 0)), "unchanged");
        assert!(ix.upsert(entry("a", "t1", 1)));
        assert_eq!(ix.entries, vec![entry("a", "t1", 1)]);
        assert_eq!(ix.ids_where(|e| e.tag == 1).collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn removes_once() {
        let mut ix = CreationIndex::default();
        ix.upsert(entry("a", "t1", 0));
        ix.upsert(entry("b", "t2", 0));
        assert!(ix.remove("a"));
        assert!(!ix.remove("a"));
        assert_eq!(all(&ix), vec!["b"]);
    }

    #[test]
    fn stored_shape_is_an_entries_array() {
        let mut ix = CreationIndex::default();
        ix.upsert(entry("a", "t1", 3));
        assert_eq!(
            serde_json::to_string(&ix).unwrap(),
            r#"{"entries":[{"id":"a","at":"t1","tag":3}]}"#
        );
    }
}
