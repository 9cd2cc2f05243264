//! The per-tenant product index lists are served from (see
//! [`service_kit::index`]): one entry per product with its category, so a
//! filtered page needs no product reads.

use serde::{Deserialize, Serialize};
use service_kit::index::{CreationIndex, Indexed};

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

impl Indexed for IndexEntry {
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

/// A tenant's index document.
pub type ProductIndex = CreationIndex<IndexEntry>;

/// The ids of one page, in order, optionally only one category.
pub fn page(
    index: &ProductIndex,
    category: Option<&str>,
    offset: usize,
    limit: usize,
) -> Vec<String> {
    index
        .ids_where(|e| category.is_none_or(|c| e.category == c))
        .skip(offset)
        .take(limit)
        .collect()
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
        assert_eq!(page(&ix, None, 0, 10), vec!["z", "a", "b"]);
    }

    #[test]
    fn upsert_replaces_and_is_idempotent() {
        let mut ix = ProductIndex::default();
        ix.upsert(entry("a", "t1", "x"));
        assert!(!ix.upsert(entry("a", "t1", "x")));
        assert!(ix.upsert(entry("a", "t1", "y")));
        assert_eq!(ix.entries.len(), 1);
        assert_eq!(page(&ix, Some("y"), 0, 10), vec!["a"]);
    }

    #[test]
    fn remove_and_pages() {
        let mut ix = ProductIndex::default();
        for (i, c) in ["x", "y", "x", "x", "y"].iter().enumerate() {
            ix.upsert(entry(&format!("p{i}"), &format!("t{i}"), c));
        }
        assert_eq!(page(&ix, Some("x"), 1, 1), vec!["p2"]);
        assert_eq!(page(&ix, None, 3, 10), vec!["p3", "p4"]);
        assert!(page(&ix, None, 9, 10).is_empty());
        assert!(ix.remove("p2"));
        assert!(!ix.remove("p2"));
        assert_eq!(page(&ix, Some("x"), 0, 10), vec!["p0", "p3"]);
    }
}
