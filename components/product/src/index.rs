//! The per-tenant product index: the document lists are served from.
//!
//! The Dapr state API cannot list keys, so each tenant has one index
//! document with an entry per product (id, creation time, category), kept
//! sorted by creation time then id and updated with compare-and-swap. A
//! list reads the index, picks the page, then fetches those products in
//! one batch.

use serde::{Deserialize, Serialize};

/// One product in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// Product id.
    pub id: String,
    /// Creation time: the sort key.
    pub created_at: String,
    /// Category, for filtering without reading every product.
    pub category: String,
}

/// A tenant's index document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductIndex {
    /// Entries sorted by `(createdAt, id)`.
    pub entries: Vec<IndexEntry>,
}

impl ProductIndex {
    /// Adds or replaces the entry for `entry.id`; returns whether anything
    /// changed.
    pub fn upsert(&mut self, entry: IndexEntry) -> bool {
        if self.entries.contains(&entry) {
            return false;
        }
        self.entries.retain(|e| e.id != entry.id);
        let at = self
            .entries
            .partition_point(|e| (&e.created_at, &e.id) < (&entry.created_at, &entry.id));
        self.entries.insert(at, entry);
        true
    }

    /// Removes the entry for `id`; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        self.entries.len() != before
    }

    /// The ids of one page, in order, optionally only one category.
    pub fn page(&self, category: Option<&str>, offset: usize, limit: usize) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| category.is_none_or(|c| e.category == c))
            .skip(offset)
            .take(limit)
            .map(|e| e.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, at: &str, category: &str) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            created_at: at.into(),
            category: category.into(),
        }
    }

    #[test]
    fn keeps_creation_then_id_order() {
        let mut ix = ProductIndex::default();
        assert!(ix.upsert(entry("b", "t2", "x")));
        assert!(ix.upsert(entry("z", "t1", "y")));
        assert!(ix.upsert(entry("a", "t2", "x")));
        assert_eq!(ix.page(None, 0, 10), vec!["z", "a", "b"]);
    }

    #[test]
    fn upsert_replaces_and_is_idempotent() {
        let mut ix = ProductIndex::default();
        ix.upsert(entry("a", "t1", "x"));
        assert!(!ix.upsert(entry("a", "t1", "x")));
        assert!(ix.upsert(entry("a", "t1", "y")));
        assert_eq!(ix.entries.len(), 1);
        assert_eq!(ix.page(Some("y"), 0, 10), vec!["a"]);
    }

    #[test]
    fn remove_and_pages() {
        let mut ix = ProductIndex::default();
        for (i, c) in ["x", "y", "x", "x", "y"].iter().enumerate() {
            ix.upsert(entry(&format!("p{i}"), &format!("t{i}"), c));
        }
        assert_eq!(ix.page(Some("x"), 1, 1), vec!["p2"]);
        assert_eq!(ix.page(None, 3, 10), vec!["p3", "p4"]);
        assert!(ix.page(None, 9, 10).is_empty());
        assert!(ix.remove("p2"));
        assert!(!ix.remove("p2"));
        assert_eq!(ix.page(Some("x"), 0, 10), vec!["p0", "p3"]);
    }
}
