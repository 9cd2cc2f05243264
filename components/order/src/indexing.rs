//! Keeping an order's paged-index entries in step with its record
//! (`docs/storage-layout.md`, "Paged indexes" and "Orders"):
//!
//! - an entry is appended *before* the record that stores its slot is
//!   written, and removed *after* the record stopped storing it, so a
//!   listed order is always findable and a stale entry is only skipped;
//! - a status change appends to the new status index first, then
//!   compare-and-swaps the order (new status and slot), then removes the
//!   old entry; closing an order also removes its `open-product` entries
//!   (a cancelled one once its stock is back).
//!
//! Removals are best effort: readers skip an entry whose order does not
//! store its slot, and remove it when they see it.

use service_kit::events::EventSink;
use service_kit::kv::{Change, KvStore, update_json};
use service_kit::pages::{PagedIndex, Slot};
use service_kit::problem::Problem;

use crate::domain::{Order, OrderSlots, Status};
use crate::products::Transport;
use crate::service::{Ctx, OrderService, check_write, not_found};
use crate::store::{
    OrderDoc, all_index, customer_index, open_product_index, order_key, product_index, status_index,
};
use service_kit::rest::Conditions;

/// One index entry of an order: the index's key prefix and its slot.
pub(crate) type Placement = (String, Slot);

impl<S: KvStore, E: EventSink, T: Transport> OrderService<'_, S, E, T> {
    /// The paged index under `prefix`.
    pub(crate) fn index(&self, prefix: String) -> PagedIndex<'_, S> {
        PagedIndex::new(
            self.store,
            prefix,
            self.settings.page_capacity,
            self.settings.retry,
        )
    }

    /// Appends one entry for `order`.
    fn append(&self, prefix: String, order: &Order) -> Result<Slot, Problem> {
        Ok(self.index(prefix).append(&order.id, &order.created_at)?)
    }

    /// Removes entries of order `id`, logging failures (readers skip and
    /// remove stale entries themselves).
    pub(crate) fn remove_placements(&self, ctx: &Ctx, id: &str, placements: Vec<Placement>) {
        for (prefix, slot) in placements {
            if let Err(e) = self.index(prefix.clone()).remove(slot, id) {
                eprintln!(
                    "order: entry {slot} of order '{id}' in '{prefix}' of tenant '{}' not removed (lists skip it): {e}",
                    ctx.tenant
                );
            }
        }
    }

    /// Appends every entry `order` needs (all, customer, status, per item
    /// product and, while open, open-product) and returns the order with
    /// their slots. On failure the entries already appended are removed.
    pub(crate) fn append_entries(&self, ctx: &Ctx, order: &Order) -> Result<Order, Problem> {
        let t = &ctx.tenant;
        let mut done: Vec<Placement> = Vec::new();
        let result = (|| {
            let mut next = order.clone();
            let mut add = |prefix: String| -> Result<Slot, Problem> {
                let slot = self.append(prefix.clone(), order)?;
                done.push((prefix, slot));
                Ok(slot)
            };
            let all = add(all_index(t))?;
            let customer = add(customer_index(t, &order.customer_id))?;
            let status = add(status_index(t, order.status))?;
            for item in next.items.iter_mut() {
                item.product_slot = Some(add(product_index(t, &item.product_id))?);
                item.open_slot = if order.status.is_open() {
                    Some(add(open_product_index(t, &item.product_id))?)
                } else {
                    None
                };
            }
            next.slots = Some(OrderSlots {
                all,
                customer,
                status,
            });
            Ok(next)
        })();
        if result.is_err() {
            self.remove_placements(ctx, &order.id, done);
        }
        result
    }

    /// Every entry an order stores.
    pub(crate) fn placements(ctx: &Ctx, order: &Order) -> Vec<Placement> {
        let t = &ctx.tenant;
        let mut out = Vec::new();
        if let Some(s) = order.slots {
            out.push((all_index(t), s.all));
            out.push((customer_index(t, &order.customer_id), s.customer));
            out.push((status_index(t, order.status), s.status));
        }
        for item in &order.items {
            if let Some(slot) = item.product_slot {
                out.push((product_index(t, &item.product_id), slot));
            }
            if let Some(slot) = item.open_slot {
                out.push((open_product_index(t, &item.product_id), slot));
            }
        }
        out
    }

    /// The order with index entries: a legacy order (no slots) gets them
    /// now, recorded with compare-and-swap; if a concurrent request did it
    /// first, or the order changed meanwhile, this call's entries are
    /// removed and the stored order returned.
    pub(crate) fn ensure_indexed(&self, ctx: &Ctx, order: Order) -> Result<Order, Problem> {
        if order.slots.is_some() {
            return Ok(order);
        }
        let indexed = self.append_entries(ctx, &order)?;
        let (stored, kept) = update_json(
            self.store,
            &order_key(&ctx.tenant, &order.id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                Ok::<_, Problem>(match doc {
                    Some(OrderDoc::Live(o)) if o == order => Change::Write(
                        OrderDoc::Live(indexed.clone()),
                        (Some(indexed.clone()), true),
                    ),
                    Some(OrderDoc::Live(o)) => Change::Keep((Some(o), false)),
                    _ => Change::Keep((None, false)),
                })
            },
        )?;
        if !kept {
            self.remove_placements(ctx, &order.id, Self::placements(ctx, &indexed));
        }
        stored.ok_or_else(|| not_found(ctx, &order.id))
    }

    /// Changes the status of the live order `current` as `decide` says
    /// (`Ok(None)`: nothing to change), keeping the status and
    /// open-product indexes in step. `decide` runs again on the stored
    /// order inside the compare-and-swap, so it must be free of side
    /// effects; the request's `conditions` are checked there too. Returns the order and
    /// whether this call changed it.
    pub(crate) fn change_status(
        &self,
        ctx: &Ctx,
        current: Order,
        conditions: &Conditions,
        decide: impl Fn(&Order) -> Result<Option<Order>, Problem>,
    ) -> Result<(Order, bool), Problem> {
        let current = self.ensure_indexed(ctx, current)?;
        check_write(conditions, &current)?;
        let Some(target) = decide(&current)? else {
            return Ok((current, false));
        };
        let id = current.id.clone();
        let new_prefix = status_index(&ctx.tenant, target.status);
        let slot = self.append(new_prefix.clone(), &current)?;
        let outcome = update_json(
            self.store,
            &order_key(&ctx.tenant, &id),
            &self.settings.retry,
            |doc: Option<OrderDoc>| {
                let stored = doc
                    .and_then(OrderDoc::live)
                    .ok_or_else(|| not_found(ctx, &id))?;
                check_write(conditions, &stored)?;
                let Some(next) = decide(&stored)? else {
                    return Ok(Change::Keep((stored, Vec::new(), false)));
                };
                let mut next = crate::service::carry_pending(&stored, next);
                if next.status != target.status || stored.slots.is_none() {
                    // Decided otherwise on the newer order, or it lost its
                    // entries meanwhile (never written back that way):
                    // leave it to a repeat.
                    return Ok(Change::Keep((stored, Vec::new(), false)));
                }
                let mut gone: Vec<Placement> = Vec::new();
                if let Some(s) = next.slots.as_mut() {
                    gone.push((status_index(&ctx.tenant, stored.status), s.status));
                    s.status = slot;
                }
                // A cancelled order keeps its open-product entries until its
                // stock is back ([`OrderService::release_stock`]), so a
                // product event redelivered after a failed release finds it.
                let keeps_open_entries =
                    next.status.is_open() || (next.status == Status::Cancelled && next.stock_held);
                if !keeps_open_entries {
                    for item in next.items.iter_mut() {
                        if let Some(open) = item.open_slot.take() {
                            gone.push((open_product_index(&ctx.tenant, &item.product_id), open));
                        }
                    }
                }
                Ok::<_, Problem>(Change::Write(
                    OrderDoc::Live(next.clone()),
                    (next, gone, true),
                ))
            },
        );
        match outcome {
            Ok((order, gone, true)) => {
                self.remove_placements(ctx, &id, gone);
                Ok((order, true))
            }
            Ok((order, _, false)) => {
                self.remove_placements(ctx, &id, vec![(new_prefix, slot)]);
                Ok((order, false))
            }
            Err(e) => {
                self.remove_placements(ctx, &id, vec![(new_prefix, slot)]);
                Err(e.into())
            }
        }
    }
}
