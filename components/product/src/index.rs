//! Where products live in the key-value store and which index entries
//! count (docs/storage-layout.md, "Products" and "Migration").
//!
//! Lists are served from two paged indexes per tenant
//! ([`service_kit::pages`]): every product, and one per category. An entry
//! counts only when the product record it names is live, of the same
//! incarnation, and stores that very slot ([`verdict`]). The legacy
//! per-tenant document ([`LegacyIndex`]) is only read while a tenant is
//! being migrated.

use serde::{Deserialize, Serialize};
use service_kit::index::{CreationIndex, Indexed};
use service_kit::pages::{Entry, Slot, Verdict, absent_record_verdict, key_hash};
use service_kit::tenant::TenantId;

use crate::domain::product::Product;

/// Key of a product record.
pub fn product_key(tenant: &TenantId, id: &str) -> String {
    format!("tenant/{tenant}/product/{id}")
}

/// Key prefix of the paged index of every product of a tenant.
pub fn all_prefix(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/products/all")
}

/// Key prefix of the paged index of one category (its SHA-256, so any
/// category text makes a safe key).
pub fn category_prefix(tenant: &TenantId, category: &str) -> String {
    format!("tenant/{tenant}/products/category/{}", key_hash(category))
}

/// Key of a tenant's legacy index document (read only while migrating).
pub fn legacy_index_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/product-index")
}

/// Key of a tenant's migration progress marker ([`MigrationMarker`]).
pub fn migration_key(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/product-index-migration")
}

/// How far the migration of a tenant's legacy index has come: entries
/// before `next` have been moved to the paged indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationMarker {
    /// Position in the legacy document's entries of the next one to move.
    pub next: usize,
}

/// Whether an index entry at `slot` counts for `record` (the product it
/// names, `None` when absent). `category` is the category of a category
/// index, `None` for the index of every product.
///
/// * absent: [`Verdict::Skip`] while the entry is younger than
///   [`service_kit::pages::ABSENT_RECORD_GRACE_MS`] at `now_ms` (a create
///   appends its entries before it writes the record), stale after;
/// * a tombstone of another incarnation: as absent (a re-create of the
///   id appends its entries before it replaces the tombstone);
/// * its own incarnation's tombstone, or a live record of another
///   incarnation: [`Verdict::Stale`] (can never count again);
/// * live and storing this slot: [`Verdict::Valid`];
/// * live and storing another slot of this very index: stale (a lost
///   race's or a crashed writer's entry: slots are only ever set
///   together with a fresh append and a compare-and-swap that checks the
///   slot it replaces);
/// * live with no slot yet, or in another category: [`Verdict::Skip`]
///   (a create or a category move may still be on its way).
pub fn verdict(
    entry: &Entry,
    slot: Slot,
    record: Option<&Product>,
    category: Option<&str>,
    now_ms: u64,
) -> Verdict<()> {
    let Some(p) = record else {
        return absent_record_verdict(entry, now_ms);
    };
    let incarnation = if p.incarnation.is_empty() {
        &p.created_at
    } else {
        &p.incarnation
    };
    if *incarnation != entry.created_at {
        // A re-create over a tombstone appends its entries (of its new
        // incarnation) before it replaces the tombstone.
        return if p.deleted {
            absent_record_verdict(entry, now_ms)
        } else {
            Verdict::Stale
        };
    }
    if p.deleted {
        return Verdict::Stale;
    }
    let stored = match category {
        None => p.slots.all,
        Some(c) if p.category == c => p.slots.category,
        Some(_) => return Verdict::Skip,
    };
    match stored {
        Some(s) if s == slot => Verdict::Valid(()),
        Some(_) => Verdict::Stale,
        None => Verdict::Skip,
    }
}

/// One product in the legacy per-tenant index document.
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

/// A tenant's legacy index entries (`{"entries": [...]}`).
pub type LegacyIndex = CreationIndex<IndexEntry>;

/// A tenant's legacy index document as stored: the entries, and the
/// `migrated` flag the migration sets (with compare-and-swap, so no entry
/// added meanwhile is lost) just before deleting the document. Kept only
/// to serve lists and feed the migration until it is converted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyDoc {
    /// The entries, in creation order (products created during the
    /// migration are appended at the end).
    #[serde(flatten)]
    pub index: LegacyIndex,
    /// Every entry has moved to the paged indexes; the document is about
    /// to be deleted and must not be added to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrated: bool,
}

impl LegacyDoc {
    /// Records a product created or re-categorised during the migration:
    /// an existing entry is updated in place, a new one appended at the
    /// end (never inserted before entries the migration has passed).
    /// Returns whether anything changed.
    pub fn record(&mut self, entry: IndexEntry) -> bool {
        match self.index.entries.iter_mut().find(|e| e.id == entry.id) {
            Some(e) if *e == entry => false,
            Some(e) => {
                *e = entry;
                true
            }
            None => {
                self.index.entries.push(entry);
                true
            }
        }
    }
}

/// The ids of one page of a legacy index, in order, optionally only one
/// category.
pub fn legacy_page(
    index: &LegacyIndex,
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
    use crate::domain::product::{NewProduct, Slots};
    use service_kit::money::Money;
    use service_kit::pages::ABSENT_RECORD_GRACE_MS;

    fn entry(id: &str, at: &str, category: &str) -> IndexEntry {
        IndexEntry {
            id: id.into(),
            created_at: at.into(),
            category: category.into(),
        }
    }

    #[test]
    fn legacy_pages_filter_and_skip() {
        let mut ix = LegacyIndex::default();
        for (i, c) in ["x", "y", "x", "x", "y"].iter().enumerate() {
            ix.upsert(entry(&format!("p{i}"), &format!("t{i}"), c));
        }
        assert_eq!(legacy_page(&ix, Some("x"), 1, 1), vec!["p2"]);
        assert_eq!(legacy_page(&ix, None, 3, 10), vec!["p3", "p4"]);
        assert!(legacy_page(&ix, None, 9, 10).is_empty());
    }

    fn slot(pos: u32) -> Slot {
        Slot {
            shard: 1,
            page: 0,
            pos,
        }
    }

    /// Any time: the entries below are not RFC 3339 text, so age plays no part.
    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn validity_by_slot() {
        let mut p = NewProduct {
            id: None,
            name: "W".into(),
            description: String::new(),
            category: "tools".into(),
            price: Money::from_minor(1),
            currency: "USD".into(),
            stock: 0,
        }
        .into_product("p1".into(), "t1");
        let e = Entry {
            id: "p1".into(),
            created_at: "t1".into(),
            removed: false,
        };
        // "t1" is no time: an absent record's entry of unknown age is stale.
        assert_eq!(verdict(&e, slot(0), None, None, NOW), Verdict::Stale);
        let young = Entry {
            created_at: "2026-01-01T00:00:00.000Z".into(),
            ..e.clone()
        };
        let at = 1_767_225_600_000; // young's createdAt, in ms
        assert_eq!(
            verdict(&young, slot(0), None, None, at + 1_000),
            Verdict::Skip
        );
        assert_eq!(
            verdict(&young, slot(0), None, None, at + ABSENT_RECORD_GRACE_MS),
            Verdict::Stale
        );
        assert_eq!(
            verdict(&e, slot(0), Some(&p), None, NOW),
            Verdict::Skip,
            "no slot yet"
        );
        p.slots = Slots {
            all: Some(slot(0)),
            category: Some(slot(5)),
        };
        assert_eq!(
            verdict(&e, slot(0), Some(&p), None, NOW),
            Verdict::Valid(())
        );
        assert_eq!(verdict(&e, slot(1), Some(&p), None, NOW), Verdict::Stale);
        assert_eq!(
            verdict(&e, slot(5), Some(&p), Some("tools"), NOW),
            Verdict::Valid(())
        );
        assert_eq!(
            verdict(&e, slot(4), Some(&p), Some("tools"), NOW),
            Verdict::Stale
        );
        assert_eq!(
            verdict(&e, slot(5), Some(&p), Some("toys"), NOW),
            Verdict::Skip
        );
        let other_life = Entry {
            created_at: "t0".into(),
            ..e.clone()
        };
        assert_eq!(
            verdict(&other_life, slot(0), Some(&p), None, NOW),
            Verdict::Stale
        );
        let t = p.tombstone("t2");
        assert_eq!(verdict(&e, slot(0), Some(&t), None, NOW), Verdict::Stale);
        // A re-create's young entry, appended before it replaces the
        // tombstone, is left alone until the grace ends.
        assert_eq!(
            verdict(&young, slot(3), Some(&t), None, at + 1_000),
            Verdict::Skip
        );
        assert_eq!(
            verdict(&young, slot(3), Some(&t), None, at + ABSENT_RECORD_GRACE_MS),
            Verdict::Stale
        );
        // ... but a live record of another incarnation makes it stale.
        assert_eq!(
            verdict(&young, slot(3), Some(&p), None, at + 1_000),
            Verdict::Stale
        );
    }
}
