//! Lazy migration of a tenant's legacy order documents to paged indexes
//! (`docs/storage-layout.md`, "Migration"), in pieces that fit one
//! request:
//!
//! - phase `index`: each list request re-indexes the orders of the next
//!   [`Settings::migration_chunk`](crate::service::Settings) entries of
//!   the legacy tenant index `tenant/<t>/order-index`; meanwhile lists are
//!   served from that legacy index, product events walk the legacy
//!   `tenant/<t>/product-orders/<pid>` documents, and new orders are added
//!   to both, so nothing is missed;
//! - phase `cleanup`: the next chunks delete the `product-orders`
//!   documents the legacy entries name, then the legacy index itself;
//! - `done`: only paged indexes are read.
//!
//! Progress lives in `tenant/<t>/orders/migration`; a tenant without
//! legacy data is marked done on its first request.

use serde::{Deserialize, Serialize};
use service_kit::events::EventSink;
use service_kit::kv::{Change, KvStore, get_json, get_many_json, put_json, update_json};
use service_kit::problem::Problem;

use crate::api::MAX_FINISHED_PER_LIST;
use crate::create::Drive;
use crate::domain::Order;
use crate::products::Transport;
use crate::service::{Ctx, OrderService};
use crate::store::{
    LegacyEntry, LegacyIndex, LegacyProductOrders, OrderDoc, legacy_index_key,
    legacy_product_orders_key, migration_key, order_key,
};
use crate::validation::ListQuery;

/// Where a tenant's migration stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Re-indexing legacy orders; legacy documents are still read.
    #[default]
    Index,
    /// Deleting legacy documents; paged indexes are read.
    Cleanup,
    /// Nothing legacy is left.
    Done,
}

/// The progress marker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// Current phase.
    pub phase: Phase,
    /// Legacy index entries already handled in this phase.
    pub next: usize,
}

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// The tenant's migration marker; a tenant without a legacy index is
    /// marked done now.
    pub(crate) fn migration(&self, ctx: &Ctx) -> Result<Marker, Problem> {
        let key = migration_key(&ctx.tenant);
        if let Some(m) = get_json::<Marker>(self.store, &key)? {
            return Ok(m);
        }
        if self.store.get(&legacy_index_key(&ctx.tenant))?.is_some() {
            return Ok(Marker::default());
        }
        let done = Marker {
            phase: Phase::Done,
            next: 0,
        };
        put_json(self.store, &key, &done)?;
        Ok(done)
    }

    /// While the tenant is in phase `index`, adds a new order to the
    /// legacy documents too, so legacy lists and reactions see it.
    pub(crate) fn legacy_add(&self, ctx: &Ctx, order: &Order) -> Result<(), Problem> {
        if self.migration(ctx)?.phase != Phase::Index {
            return Ok(());
        }
        let entry = LegacyEntry::of(order);
        update_json(
            self.store,
            &legacy_index_key(&ctx.tenant),
            &self.settings.retry,
            |ix: Option<LegacyIndex>| {
                let mut ix = ix.unwrap_or_default();
                Ok::<_, Problem>(if ix.upsert(entry.clone()) {
                    Change::Write(ix, ())
                } else {
                    Change::Keep(())
                })
            },
        )?;
        for item in &order.items {
            update_json(
                self.store,
                &legacy_product_orders_key(&ctx.tenant, &item.product_id),
                &self.settings.retry,
                |doc: Option<LegacyProductOrders>| {
                    let mut doc = doc.unwrap_or_default();
                    Ok::<_, Problem>(if doc.add(&order.id) {
                        Change::Write(doc, ())
                    } else {
                        Change::Keep(())
                    })
                },
            )?;
        }
        Ok(())
    }

    /// Does one chunk of the tenant's migration, if any is left, and
    /// returns the marker after it.
    pub(crate) fn migrate_step(&self, ctx: &Ctx) -> Result<Marker, Problem> {
        let marker = self.migration(ctx)?;
        if marker.phase == Phase::Done {
            return Ok(marker);
        }
        let t = &ctx.tenant;
        let legacy: LegacyIndex = get_json(self.store, &legacy_index_key(t))?.unwrap_or_default();
        let chunk: Vec<&LegacyEntry> = legacy
            .entries
            .iter()
            .skip(marker.next)
            .take(self.settings.migration_chunk.max(1))
            .collect();
        match marker.phase {
            Phase::Index => {
                let keys: Vec<String> = chunk.iter().map(|e| order_key(t, &e.id)).collect();
                let docs: Vec<Option<OrderDoc>> = get_many_json(self.store, &keys)?;
                for doc in docs.into_iter().flatten() {
                    if let OrderDoc::Live(order) = doc {
                        self.ensure_indexed(ctx, order)?;
                    }
                }
            }
            Phase::Cleanup => {
                let mut pids: Vec<&str> = chunk
                    .iter()
                    .flat_map(|e| e.product_ids.iter().map(String::as_str))
                    .collect();
                pids.sort_unstable();
                pids.dedup();
                for pid in pids {
                    self.store.delete(&legacy_product_orders_key(t, pid))?;
                }
            }
            Phase::Done => {}
        }
        let next = marker.next + chunk.len();
        let after = if next < legacy.entries.len() {
            Marker {
                phase: marker.phase,
                next,
            }
        } else if marker.phase == Phase::Index {
            Marker {
                phase: Phase::Cleanup,
                next: 0,
            }
        } else {
            self.store.delete(&legacy_index_key(t))?;
            Marker {
                phase: Phase::Done,
                next: 0,
            }
        };
        // Concurrent steps redo the same chunk harmlessly; the marker only
        // moves forward.
        Ok(update_json(
            self.store,
            &migration_key(t),
            &self.settings.retry,
            |m: Option<Marker>| {
                let m = m.unwrap_or_default();
                Ok::<_, Problem>(if (m.phase, m.next) < (after.phase, after.next) {
                    Change::Write(after, after)
                } else {
                    Change::Keep(m)
                })
            },
        )?)
    }

    /// A list page served from the legacy tenant index (phase `index`):
    /// candidates in creation order, each order read so status and
    /// deletion are current (an overdue unfinished creation is finished
    /// on the way, at most [`MAX_FINISHED_PER_LIST`]). Costs grow with the legacy index, which is
    /// why it is migrated away.
    pub(crate) fn list_legacy(
        &self,
        ctx: &Ctx,
        q: &ListQuery,
        offset: u64,
    ) -> Result<Vec<Order>, Problem> {
        const BATCH: usize = 100;
        let legacy: LegacyIndex =
            get_json(self.store, &legacy_index_key(&ctx.tenant))?.unwrap_or_default();
        let ids: Vec<String> = legacy
            .ids_where(|e| {
                q.customer_id.as_deref().is_none_or(|c| e.customer_id == c)
                    && q.product_id
                        .as_deref()
                        .is_none_or(|p| e.product_ids.iter().any(|x| x == p))
            })
            .collect();
        let mut skipped = 0;
        let mut page = Vec::new();
        let mut budget = MAX_FINISHED_PER_LIST;
        for chunk in ids.chunks(BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| order_key(&ctx.tenant, id)).collect();
            let docs: Vec<Option<OrderDoc>> = get_many_json(self.store, &keys)?;
            for (id, doc) in chunk.iter().zip(docs) {
                let order = match doc {
                    Some(OrderDoc::Live(order)) => order,
                    // An unfinished creation, finished once overdue as
                    // the paged lists do.
                    Some(doc @ (OrderDoc::Creating(_) | OrderDoc::Confirming(_))) => {
                        match self.finish_overdue(ctx, id, doc, &mut budget) {
                            Some(Drive::Placed(order)) => order,
                            _ => continue,
                        }
                    }
                    _ => continue,
                };
                if !q.passes(&order) {
                    continue;
                }
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                page.push(order);
                if page.len() == q.limit {
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// The ids a legacy productId → orders document lists (phase `index`).
    pub(crate) fn legacy_product_orders(
        &self,
        ctx: &Ctx,
        pid: &str,
    ) -> Result<Vec<String>, Problem> {
        let doc: Option<LegacyProductOrders> =
            get_json(self.store, &legacy_product_orders_key(&ctx.tenant, pid))?;
        Ok(doc.unwrap_or_default().order_ids)
    }
}
