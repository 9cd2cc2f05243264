//! The outbox kept in a record: events whose publish failed after their
//! change was saved, stored in the record's own document so they are
//! never lost, and published by the next request that touches the record
//! (docs/messaging.md, "Events of a saved change").
//!
//! A record keeps a small list of [`StoredEvent`]s (`pendingEvents`).
//! Each keeps its CloudEvent's id, time, type and traceparent, so a
//! re-publish is the same event (subscribers deduplicate by id). To keep
//! every document under 64 KiB, `data` is not stored in full: the
//! services' event data is the record's own public view, so a stored event
//! keeps only the top-level members of its `data` that differ from the
//! view of the record it is stored in (usually none, or the stock and
//! version when a reservation moved the stock since). Whoever writes a
//! record whose view changed while events are pending calls [`rebase`];
//! [`unpack`] rebuilds each event exactly (same members, same order when
//! the view has the same member order, money untouched: members are kept
//! as raw JSON text).
//!
//! Binding-free: the services pass their [`EventSink`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::events::{CloudEvent, EventSink, PublishError};
use crate::problem::Problem;
use crate::web::Response;

/// Problem slug of a change saved whose event is still pending.
pub const EVENT_PENDING: &str = "event-pending";
/// `Retry-After` (seconds) sent with an [`EVENT_PENDING`] problem.
pub const RETRY_AFTER_SECS: u32 = 5;
/// Most events a record keeps pending. A write refuses to go ahead while
/// its record's events cannot be published, but writers that loaded the
/// record before another's events were kept each add their own; the
/// services' `supersedes` rules then keep one event per type (four at
/// most). This is the safety net if that is ever wrong (the oldest beyond
/// it are dropped, with an error line).
pub const MAX_PENDING: usize = 4;

/// An event to publish on a topic.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The topic, e.g. `products`.
    pub topic: String,
    /// The event, with its original id, time and traceparent.
    pub event: CloudEvent,
}

impl Pending {
    /// `event` on `topic`.
    pub fn new(topic: &str, event: CloudEvent) -> Pending {
        Pending {
            topic: topic.to_owned(),
            event,
        }
    }
}

fn json_media_type() -> String {
    crate::web::JSON.to_owned()
}

fn is_json_media_type(s: &String) -> bool {
    s == crate::web::JSON
}

/// A pending event as stored in a record (`specversion` is always 1.0).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The topic to publish on.
    pub topic: String,
    /// The CloudEvent id (unchanged on re-publish).
    pub id: String,
    /// CloudEvent `source`.
    pub source: String,
    /// CloudEvent `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// CloudEvent `time` (when the change happened).
    pub time: String,
    /// CloudEvent `datacontenttype`, omitted when `application/json`.
    #[serde(
        default = "json_media_type",
        skip_serializing_if = "is_json_media_type"
    )]
    pub datacontenttype: String,
    /// CloudEvent `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CloudEvent `tenantid`.
    pub tenantid: String,
    /// CloudEvent `traceparent` (of the request that made the change).
    pub traceparent: String,
    /// `data` in full, when it or the record's view is not a JSON object.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "via_value::option"
    )]
    pub data: Option<Box<RawValue>>,
    /// Members of `data` whose value differs from (or is missing in) the
    /// record's view, as raw JSON.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "via_value::map"
    )]
    pub changed: BTreeMap<String, Box<RawValue>>,
    /// Members of the record's view that `data` does not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// Reads the raw JSON members of a [`StoredEvent`] through
/// `serde_json::Value`. A record stored as an internally tagged enum (the
/// order document, `#[serde(tag = "state")]`) is buffered by serde before
/// it is decoded, and a `RawValue` cannot be read from that buffer: read
/// directly, such a document would fail to load as soon as one of its
/// pending events carried a changed member. Through `Value`, the members
/// come back as the same JSON values (objects nested in them with their
/// members in sorted order, which JSON does not distinguish).
mod via_value {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;
    use serde_json::value::{RawValue, to_raw_value};

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
        Option::<Value>::deserialize(d)?
            .map(|v| to_raw_value(&v).map_err(D::Error::custom))
            .transpose()
    }

    pub fn map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Box<RawValue>>, D::Error> {
        BTreeMap::<String, Value>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((k, to_raw_value(&v).map_err(D::Error::custom)?)))
            .collect()
    }
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_string(self).ok() == serde_json::to_string(other).ok()
    }
}

impl Eq for StoredEvent {}

/// The members of a JSON object in document order, values as raw JSON.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn members(raw: &RawValue) -> Option<Vec<(String, &RawValue)>> {
    serde_json::from_str::<Members>(raw.get()).ok().map(|m| m.0)
}

fn raw_of(value: &impl Serialize) -> Box<RawValue> {
    // Record views are plain data types: serialising them cannot fail.
    serde_json::value::to_raw_value(value).expect("a record view serialises to JSON")
}

fn owned(raw: &RawValue) -> Box<RawValue> {
    raw.to_owned()
}

/// `data` stored against `base`: (full data, changed, removed).
type Diff = (
    Option<Box<RawValue>>,
    BTreeMap<String, Box<RawValue>>,
    Vec<String>,
);

fn diff(data: &RawValue, base: &RawValue) -> Diff {
    let (Some(d), Some(b)) = (members(data), members(base)) else {
        return (Some(owned(data)), BTreeMap::new(), Vec::new());
    };
    let base: BTreeMap<&str, &RawValue> = b.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mine: BTreeMap<&str, &RawValue> = d.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let changed = d
        .iter()
        .filter(|(k, v)| base.get(k.as_str()).is_none_or(|bv| bv.get() != v.get()))
        .map(|(k, v)| (k.clone(), owned(v)))
        .collect();
    let removed = b
        .iter()
        .filter(|(k, _)| !mine.contains_key(k.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    (None, changed, removed)
}

fn patch(stored: &StoredEvent, base: &RawValue) -> Box<RawValue> {
    if let Some(full) = &stored.data {
        return full.clone();
    }
    let mut out = String::from("{");
    let mut first = true;
    let mut push = |k: &str, v: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        // A string always serialises.
        out.push_str(&serde_json::to_string(k).expect("a key serialises"));
        out.push(':');
        out.push_str(v);
    };
    let base_members = members(base).unwrap_or_default();
    for (k, v) in &base_members {
        if stored.removed.iter().any(|r| r == k) {
            continue;
        }
        match stored.changed.get(k) {
            Some(c) => push(k, c.get()),
            None => push(k, v.get()),
        }
    }
    for (k, v) in &stored.changed {
        if !base_members.iter().any(|(b, _)| b == k) {
            push(k, v.get());
        }
    }
    out.push('}');
    // Built from valid JSON members: always valid JSON.
    RawValue::from_string(out).expect("rebuilt event data is JSON")
}

fn store_one(p: &Pending, base: &RawValue) -> StoredEvent {
    let e = &p.event;
    let (data, changed, removed) = diff(&e.data, base);
    StoredEvent {
        topic: p.topic.clone(),
        id: e.id.clone(),
        source: e.source.clone(),
        kind: e.kind.clone(),
        time: e.time.clone(),
        datacontenttype: e.datacontenttype.clone(),
        subject: e.subject.clone(),
        tenantid: e.tenantid.clone(),
        traceparent: e.traceparent.clone(),
        data,
        changed,
        removed,
    }
}

fn load_one(s: &StoredEvent, base: &RawValue) -> Pending {
    Pending {
        topic: s.topic.clone(),
        event: CloudEvent {
            specversion: "1.0".to_owned(),
            id: s.id.clone(),
            source: s.source.clone(),
            kind: s.kind.clone(),
            time: s.time.clone(),
            datacontenttype: s.datacontenttype.clone(),
            subject: s.subject.clone(),
            tenantid: s.tenantid.clone(),
            traceparent: s.traceparent.clone(),
            data: patch(s, base),
        },
    }
}

/// `events` as stored in a record whose public view is `view`.
pub fn pack(events: &[Pending], view: &impl Serialize) -> Vec<StoredEvent> {
    let base = raw_of(view);
    events.iter().map(|p| store_one(p, &base)).collect()
}

/// The events stored in a record whose public view is `view`, exactly as
/// they were first built.
pub fn unpack(stored: &[StoredEvent], view: &impl Serialize) -> Vec<Pending> {
    let base = raw_of(view);
    stored.iter().map(|s| load_one(s, &base)).collect()
}

/// Re-stores `stored`, packed against the view `from`, against the view
/// `to`: call it when writing a record whose view changed while it holds
/// pending events. Nothing to do when `stored` is empty.
pub fn rebase(stored: &mut Vec<StoredEvent>, from: &impl Serialize, to: &impl Serialize) {
    if stored.is_empty() {
        return;
    }
    let events = unpack(stored, from);
    *stored = pack(&events, to);
}

/// The pending list after adding `new` to `existing`: an event whose id is
/// already pending is not added twice, an existing event that
/// `supersedes(old, new)` says the new one replaces is dropped (e.g. an
/// older `StockChanged`: the newer carries the current stock), and beyond
/// [`MAX_PENDING`] the oldest go (logged).
pub fn merge(
    existing: Vec<Pending>,
    new: Vec<Pending>,
    supersedes: impl Fn(&CloudEvent, &CloudEvent) -> bool,
) -> Vec<Pending> {
    let mut out = existing;
    for n in new {
        if out.iter().any(|p| p.event.id == n.event.id) {
            continue;
        }
        out.retain(|p| !supersedes(&p.event, &n.event));
        out.push(n);
    }
    while out.len() > MAX_PENDING {
        let dropped = out.remove(0);
        eprintln!(
            "outbox: more than {MAX_PENDING} events pending for {} '{}' of tenant '{}'; the oldest, {} {}, is dropped",
            dropped.topic,
            dropped.event.subject.as_deref().unwrap_or(""),
            dropped.event.tenantid,
            dropped.event.kind,
            dropped.event.id
        );
    }
    out
}

/// Why [`publish_in_order`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// How many of the events were published before the failure.
    pub published: usize,
    /// The type of the event that failed.
    pub kind: String,
    /// The broker's refusal.
    pub error: PublishError,
}

/// Publishes `events` in order, stopping at the first failure (a later
/// event must not overtake an earlier one of the same record).
pub fn publish_in_order(sink: &impl EventSink, events: &[Pending]) -> Result<(), Stalled> {
    for (i, p) in events.iter().enumerate() {
        if let Err(error) = sink.publish(&p.topic, &p.event) {
            return Err(Stalled {
                published: i,
                kind: p.event.kind.clone(),
                error,
            });
        }
    }
    Ok(())
}

/// What [`emit`] did.
pub struct Emitted<P> {
    /// `Ok` when every event went out; else which one the broker refused
    /// (those after it were not tried, and are kept too).
    pub outcome: Result<(), Stalled>,
    /// The earlier pending events that were published, in order.
    pub published_earlier: Vec<Pending>,
    /// The error of `save`, when the record could not be updated: the
    /// caller logs it naming the record (a refused event may then be
    /// lost, a published one published again).
    pub save_failed: Option<P>,
}

/// Publishes, in order, `earlier` (the events pending in a record) and
/// then `new` (those of the change just saved in it); then, only when
/// something changed, calls `save(sent, kept)` to record the outcome in
/// the record with one compare-and-swap: the ids of the published
/// earlier events to remove, and the refused new ones to add
/// (docs/messaging.md, "Events of a saved change").
pub fn emit<P>(
    sink: &impl EventSink,
    earlier: Vec<Pending>,
    new: Vec<Pending>,
    save: impl FnOnce(&[String], Vec<Pending>) -> Result<(), P>,
) -> Emitted<P> {
    let mut all = earlier.clone();
    all.extend(new);
    let outcome = publish_in_order(sink, &all);
    let published = match &outcome {
        Ok(()) => all.len(),
        Err(s) => s.published,
    };
    let sent: Vec<String> = all[..published]
        .iter()
        .map(|p| p.event.id.clone())
        .collect();
    let kept: Vec<Pending> = all[published.max(earlier.len())..].to_vec();
    let save_failed = if published.min(earlier.len()) > 0 || !kept.is_empty() {
        save(&sent, kept).err()
    } else {
        None
    };
    let published_earlier = earlier.into_iter().take(published).collect();
    Emitted {
        outcome,
        published_earlier,
        save_failed,
    }
}

/// Removes the events with these ids (published) from a stored list.
/// Returns whether anything was removed.
pub fn remove_published(stored: &mut Vec<StoredEvent>, ids: &[String]) -> bool {
    let before = stored.len();
    stored.retain(|s| !ids.contains(&s.id));
    stored.len() != before
}

/// The 503 `event-pending` problem; `detail` says what was saved, which
/// event could not be published and what to do.
pub fn event_pending(detail: impl Into<String>) -> Problem {
    Problem::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        EVENT_PENDING,
        "Event pending",
        detail,
    )
}

/// The response to a failed request: the problem, with `Retry-After:`
/// [`RETRY_AFTER_SECS`] when it is [`EVENT_PENDING`].
pub fn problem_response(problem: &Problem) -> Response {
    let r = problem.to_response();
    if problem.kind.ends_with(&format!(":{EVENT_PENDING}")) {
        r.with_header("retry-after", &RETRY_AFTER_SECS.to_string())
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RecordingSink;
    use crate::tenant::TenantId;
    use serde_json::{Value, json};

    #[test]
    fn pending_events_read_back_inside_an_internally_tagged_document() {
        // The order document is `#[serde(tag = "state")]`: serde buffers it
        // before decoding, which a plain RawValue field cannot be read from.
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "state")]
        enum Doc {
            Live { pending: Vec<StoredEvent> },
        }
        let view = json!({"id": "o1", "status": "Cancelled", "version": 3});
        let older = json!({"id": "o1", "status": "Confirmed", "version": 2, "extra": {"b": 1, "a": [1.5, "x"]}});
        let stored = pack(&[event("OrderStatusChanged", &older)], &view);
        assert!(
            !stored[0].changed.is_empty(),
            "the event differs from the view"
        );
        let text = serde_json::to_string(&Doc::Live { pending: stored }).unwrap();
        let Doc::Live { pending } = serde_json::from_str(&text).unwrap();
        let back = unpack(&pending, &view);
        let data: Value = serde_json::to_value(&back[0].event).unwrap()["data"].clone();
        assert_eq!(data, older);
    }

    fn event(kind: &str, data: &Value) -> Pending {
        Pending::new(
            "products",
            CloudEvent::new("s", kind, &TenantId::default(), "tp", data).with_subject("p1"),
        )
    }

    #[test]
    fn an_event_whose_data_is_the_view_is_stored_without_data() {
        let view = json!({"id": "p1", "price": 0.3, "stock": 5, "version": 2});
        let e = event("ProductUpdated", &view);
        let stored = pack(std::slice::from_ref(&e), &view);
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("price"), "{text}");
        let back = unpack(&stored, &view);
        assert_eq!(back[0].event.to_json(), e.event.to_json());
        assert_eq!(back[0].topic, "products");
    }

    #[test]
    fn a_rebased_event_comes_back_byte_for_byte() {
        let v2 = json!({"id": "p1", "name": "a", "price": 0.3, "stock": 5, "version": 2});
        let v3 = json!({"id": "p1", "name": "a", "price": 0.3, "stock": 4, "version": 3});
        let v4 =
            json!({"id": "p1", "name": "a", "price": 0.3, "stock": 3, "extra": true, "version": 4});
        let e = event("ProductUpdated", &v2);
        let mut stored = pack(std::slice::from_ref(&e), &v2);
        rebase(&mut stored, &v2, &v3);
        let text = serde_json::to_string(&stored).unwrap();
        assert!(
            text.contains("\"stock\":5") && !text.contains("name"),
            "{text}"
        );
        rebase(&mut stored, &v3, &v4);
        assert_eq!(stored[0].removed, vec!["extra".to_owned()]);
        assert_eq!(unpack(&stored, &v4)[0].event.to_json(), e.event.to_json());
        // Not an object: kept whole.
        let odd = event("T", &json!([1, 2]));
        let stored = pack(std::slice::from_ref(&odd), &v2);
        assert_eq!(unpack(&stored, &v3)[0].event.to_json(), odd.event.to_json());
    }

    #[test]
    fn merge_keeps_one_of_each_id_and_lets_a_newer_one_supersede() {
        let a = event("ProductUpdated", &json!({}));
        let s1 = event("StockChanged", &json!({}));
        let s2 = event("StockChanged", &json!({}));
        let by_kind = |o: &CloudEvent, n: &CloudEvent| o.kind == "StockChanged" && o.kind == n.kind;
        let m = merge(vec![a.clone(), s1], vec![a.clone(), s2.clone()], by_kind);
        let ids: Vec<_> = m.iter().map(|p| p.event.id.clone()).collect();
        assert_eq!(ids, vec![a.event.id.clone(), s2.event.id.clone()]);
        let many = (0..9).map(|_| event("X", &json!({}))).collect();
        assert_eq!(merge(Vec::new(), many, |_, _| false).len(), MAX_PENDING);
    }

    #[test]
    fn publishing_stops_at_the_first_refusal() {
        let sink = RecordingSink::new();
        let events = vec![event("A", &json!({})), event("B", &json!({}))];
        publish_in_order(&sink, &events).unwrap();
        assert_eq!(sink.events().len(), 2);
        sink.fail_with("stream full");
        let stalled = publish_in_order(&sink, &events).unwrap_err();
        assert_eq!((stalled.published, stalled.kind.as_str()), (0, "A"));
        let mut stored = pack(&events, &json!({}));
        assert!(remove_published(&mut stored, &[events[0].event.id.clone()]));
        assert_eq!(stored.len(), 1);
    }

    #[test]
    fn the_event_pending_answer_says_when_to_retry() {
        let r = problem_response(&event_pending("saved; event kept"));
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(String::from_utf8_lossy(&r.body).contains("urn:wasmshop:problem:event-pending"));
        let other = problem_response(&Problem::unavailable("x"));
        assert_eq!(other.header("retry-after"), None);
    }
}
