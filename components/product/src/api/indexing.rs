//! Index maintenance of the product API: appending a product's entries
//! and recording their slots, removing entries, repairing products that
//! lack slots, and migrating a tenant's legacy index document in chunks
//! (docs/storage-layout.md, "Products" and "Migration").

use service_kit::events::EventSink;
use service_kit::http::StatusCode;
use service_kit::kv::{Change, KvStore, Swap, UpdateError, get_json, get_many_json, update_json};
use service_kit::pages::{PagedIndex, Slot};
use service_kit::pages::{RECORD_WRITE_DEADLINE_MS, within_record_deadline};
use service_kit::problem::Problem;
use service_kit::rest::Ctx;
use service_kit::web::Response;

use super::{Api, Product};
use crate::domain::reservation::millis_of;
use crate::index::{
    IndexEntry, LegacyDoc, LegacyIndex, MigrationMarker, all_prefix, category_prefix,
    legacy_index_key, legacy_page, migration_key, product_key,
};
use crate::validation::ListQuery;

/// How long a product may lack its slots before a read re-indexes it: a
/// create in progress writes them within this time, so only products left
/// behind by a crash (or legacy ones) are repaired.
const REPAIR_GRACE_MS: u64 = 10_000;

impl<'a, S: KvStore, E: EventSink> Api<'a, S, E> {
    /// The paged index of every product (`None`) or of one category.
    pub(super) fn index_of(&self, ctx: &Ctx, category: Option<&str>) -> PagedIndex<'a, S> {
        let prefix = match category {
            None => all_prefix(&ctx.tenant),
            Some(c) => category_prefix(&ctx.tenant, c),
        };
        PagedIndex::new(
            self.store,
            prefix,
            self.settings.page_capacity,
            self.settings.retry,
        )
    }

    /// Whether a product without slots is old enough to be repaired.
    pub(super) fn past_grace(&self, product: &Product, now_ms: u64) -> bool {
        now_ms.saturating_sub(millis_of(&product.updated_at)) >= REPAIR_GRACE_MS
    }

    /// Appends the entries `product` lacks and records their slots with
    /// compare-and-swap, only if the record is still this incarnation,
    /// in this category, and still lacks exactly those slots; otherwise
    /// the new entries are removed again. `Ok(None)` when the record
    /// changed meanwhile (someone else indexed, moved or deleted it).
    pub(super) fn index_product(
        &self,
        ctx: &Ctx,
        product: Product,
    ) -> Result<Option<Product>, Problem> {
        let id = product.id.clone();
        let incarnation = if product.incarnation.is_empty() {
            product.created_at.clone()
        } else {
            product.incarnation.clone()
        };
        let wanted = product.slots;
        let all = match wanted.all {
            Some(_) => None,
            None => Some(self.index_of(ctx, None).append(&id, &incarnation)?),
        };
        let category = match wanted.category {
            Some(_) => None,
            None => match self
                .index_of(ctx, Some(&product.category))
                .append(&id, &incarnation)
            {
                Ok(slot) => Some(slot),
                Err(e) => {
                    self.unindex(ctx, None, all, &id);
                    return Err(e.into());
                }
            },
        };
        let now = self.now_ms();
        let mut stock_changed = false;
        let written = update_json(
            self.store,
            &product_key(&ctx.tenant, &id),
            &self.settings.retry,
            |current: Option<Product>| {
                let Some(mut p) = current else {
                    return Ok::<_, Problem>(Change::Keep(None));
                };
                let same_life = !p.deleted
                    && (p.incarnation == incarnation
                        || (p.incarnation.is_empty() && p.created_at == incarnation));
                if !same_life || p.category != product.category || p.slots != wanted {
                    return Ok(Change::Keep(None));
                }
                // Settled so a legacy ledger is converted, not dropped
                // (it is never written back as it was).
                stock_changed = p.settle(now).stock_changed;
                if all.is_some() {
                    p.slots.all = all;
                }
                if category.is_some() {
                    p.slots.category = category;
                }
                Ok(Change::Write(p.clone(), Some(p)))
            },
        );
        match written {
            Ok(Some(p)) => {
                if stock_changed {
                    self.publish(ctx, super::STOCK_CHANGED, &p);
                }
                Ok(Some(p))
            }
            other => {
                self.unindex(ctx, None, all, &id);
                self.unindex(ctx, Some(&product.category), category, &id);
                Ok(other?)
            }
        }
    }

    /// Writes the new `product` entries first: appends it to the index of
    /// every product and to its category's, then writes the record with
    /// both slots by compare-and-swap on the absent key (or a tombstone
    /// without pending events). The record is written once, not twice as
    /// when it is written before its entries; a list leaves the entries of
    /// an absent record alone while they are young
    /// ([`service_kit::pages::ABSENT_RECORD_GRACE_MS`];
    /// docs/storage-layout.md, "Entries before the record").
    ///
    /// Errors: the index's error when an append fails; 409 when a live
    /// product took the id meanwhile (a same-id race lost); 503 when a
    /// tombstone there still has events to publish, or the appends took
    /// past [`RECORD_WRITE_DEADLINE_MS`] (a list may soon remove them);
    /// the store's error when the record's write failed. Entries are
    /// removed again except after a store error, when the record may have
    /// been written: then they are either its own or, once old, removed by
    /// a list.
    pub(super) fn create_entries_first(
        &self,
        ctx: &Ctx,
        mut product: Product,
    ) -> Result<Product, Problem> {
        let id = product.id.clone();
        let all = self.index_of(ctx, None).append(&id, &product.incarnation)?;
        let category = match self
            .index_of(ctx, Some(&product.category))
            .append(&id, &product.incarnation)
        {
            Ok(slot) => slot,
            Err(e) => {
                self.unindex(ctx, None, Some(all), &id);
                return Err(e.into());
            }
        };
        let undo = |problem: Problem| {
            self.unindex(ctx, None, Some(all), &id);
            self.unindex(ctx, Some(&product.category), Some(category), &id);
            problem
        };
        if !within_record_deadline(&product.incarnation, self.now_ms()) {
            return Err(undo(Problem::unavailable(format!(
                "product '{id}' was not created: adding it to the product lists took longer than {} s, so the store is overloaded; nothing was created, retry later",
                RECORD_WRITE_DEADLINE_MS / 1000
            ))));
        }
        product.slots.all = Some(all);
        product.slots.category = Some(category);
        let written = update_json(
            self.store,
            &product_key(&ctx.tenant, &id),
            &self.settings.retry,
            |current: Option<Product>| match current {
                Some(p) if !p.deleted => Err(super::exists(ctx, &id)),
                Some(p) if !p.pending_events.is_empty() => Err(super::earlier_pending(ctx, &id)),
                _ => Ok(Change::Write(product.clone(), ())),
            },
        );
        match written {
            Ok(()) => Ok(product),
            Err(UpdateError::Store(e)) => Err(e.into()),
            Err(other) => Err(undo(other.into())),
        }
    }

    /// [`Api::index_product`] for a repair: failures are logged and the
    /// product returned as it was (it is repaired on a later read).
    pub(super) fn repair_logged(&self, ctx: &Ctx, product: Product) -> Product {
        match self.index_product(ctx, product.clone()) {
            Ok(Some(p)) => p,
            Ok(None) => product,
            Err(p) => {
                eprintln!(
                    "product: '{}' of tenant '{}' lacks index slots and could not be re-indexed now (retried on its next read): {}",
                    product.id, ctx.tenant, p.detail
                );
                product
            }
        }
    }

    /// Removes the entry at `slot` of the index of every product
    /// (`category` `None`) or of a category, best effort: lists skip a
    /// stale entry anyway, so a failure is logged.
    pub(super) fn unindex(&self, ctx: &Ctx, category: Option<&str>, slot: Option<Slot>, id: &str) {
        let Some(slot) = slot else { return };
        let index = self.index_of(ctx, category);
        if let Err(e) = index.remove(slot, id) {
            eprintln!(
                "product: stale entry of '{id}' at {slot} in '{}' not removed (lists skip it): {e}",
                index.prefix()
            );
        }
    }

    /// While a tenant is being migrated, records a created or
    /// re-categorised product in its legacy document (so lists served
    /// from it stay right, and the migration indexes it in creation
    /// order). `true` when recorded; `false` when the tenant has no legacy
    /// document (or it is migrated), and the caller indexes the product.
    pub(super) fn legacy_record(&self, ctx: &Ctx, product: &Product) -> Result<bool, Problem> {
        let entry = IndexEntry {
            id: product.id.clone(),
            created_at: product.created_at.clone(),
            category: product.category.clone(),
        };
        Ok(update_json(
            self.store,
            &legacy_index_key(&ctx.tenant),
            &self.settings.retry,
            |doc: Option<LegacyDoc>| {
                let Some(mut doc) = doc.filter(|d| !d.migrated) else {
                    return Ok::<_, Problem>(Change::Keep(false));
                };
                Ok(if doc.record(entry.clone()) {
                    Change::Write(doc, true)
                } else {
                    Change::Keep(true)
                })
            },
        )?)
    }

    /// Whether the tenant still has a legacy index document: products
    /// lacking slots are then left to the migration, which indexes them in
    /// creation order.
    pub(super) fn migrating(&self, ctx: &Ctx) -> Result<bool, Problem> {
        Ok(self.store.exists(&legacy_index_key(&ctx.tenant))?)
    }

    /// Moves up to `migration_chunk` entries of the tenant's legacy index
    /// to the paged indexes (re-indexing products that lack slots) and
    /// records the progress in the marker. Once every entry has moved, the
    /// document is marked migrated with compare-and-swap against the read
    /// that started this step (a product recorded meanwhile makes it fail,
    /// and the next step moves that product), then the document and the
    /// marker are deleted. `true` while the legacy document remains (lists
    /// are then served from it).
    pub(super) fn migrate_some(&self, ctx: &Ctx) -> Result<bool, Problem> {
        let legacy_key = legacy_index_key(&ctx.tenant);
        let marker_key = migration_key(&ctx.tenant);
        let (cas, bytes) = self.store.cas_read(&legacy_key)?;
        let Some(bytes) = bytes else {
            return Ok(false);
        };
        let doc: LegacyDoc = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::internal(format!(
                "the legacy product index at '{legacy_key}' is not valid ({e}); repair or delete that key"
            ))
        })?;
        drop(bytes);
        if doc.migrated {
            self.store.delete(&legacy_key)?;
            self.store.delete(&marker_key)?;
            return Ok(false);
        }
        let entries = &doc.index.entries;
        let start = get_json::<MigrationMarker>(self.store, &marker_key)?
            .unwrap_or_default()
            .next;
        let end = entries
            .len()
            .min(start.saturating_add(self.settings.migration_chunk.max(1)));
        if start < end {
            let keys: Vec<String> = entries[start..end]
                .iter()
                .map(|e| product_key(&ctx.tenant, &e.id))
                .collect();
            let records: Vec<Option<Product>> = get_many_json(self.store, &keys)?;
            for mut p in records.into_iter().flatten() {
                if p.deleted || p.slots.complete() {
                    continue;
                }
                p.settle(self.now_ms());
                self.index_product(ctx, p)?;
            }
            update_json(
                self.store,
                &marker_key,
                &self.settings.retry,
                |m: Option<MigrationMarker>| {
                    Ok::<_, Problem>(if m.unwrap_or_default().next >= end {
                        Change::Keep(())
                    } else {
                        Change::Write(MigrationMarker { next: end }, ())
                    })
                },
            )?;
        }
        if end < entries.len() {
            return Ok(true);
        }
        let done = LegacyDoc {
            index: LegacyIndex::default(),
            migrated: true,
        };
        let done = serde_json::to_vec(&done).map_err(|e| Problem::internal(e.to_string()))?;
        if self.store.cas_write(cas, &done)? == Swap::Conflict {
            return Ok(true);
        }
        self.store.delete(&legacy_key)?;
        self.store.delete(&marker_key)?;
        Ok(false)
    }

    /// A list page served from the legacy document while the tenant is
    /// being migrated: offset paging only, no `Link`.
    pub(super) fn legacy_list(
        &self,
        ctx: &Ctx,
        query: &ListQuery,
        offset: u64,
    ) -> Result<Response, Problem> {
        let legacy: LegacyDoc =
            get_json(self.store, &legacy_index_key(&ctx.tenant))?.unwrap_or_default();
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let keys: Vec<String> = legacy_page(
            &legacy.index,
            query.category.as_deref(),
            offset,
            query.limit,
        )
        .iter()
        .map(|id| product_key(&ctx.tenant, id))
        .collect();
        let records: Vec<Option<Product>> = get_many_json(self.store, &keys)?;
        let live: Vec<Product> = records
            .into_iter()
            .flatten()
            .filter(|p| !p.deleted)
            .filter(|p| query.category.as_ref().is_none_or(|c| &p.category == c))
            .collect();
        let products = self.settle_listed(ctx, live, self.now_ms())?;
        let views: Vec<_> = products.iter().map(Product::view).collect();
        Ok(Response::json(StatusCode::OK, &views))
    }
}
