//! Messaging on Redis Streams. A topic of a messaging client is the stream
//! `wasmshop:topic:<client>:<topic>`. Each subscribing component of the
//! manifest is a consumer group, each host process a consumer in it, so
//! across replicas every message is handled by one of them. An entry is
//! acknowledged after the handler succeeded; one left pending by a dead
//! process is taken over (`XAUTOCLAIM`) after the visibility timeout.
//! Failed attempts follow the shared [`delivery`] rules (exponential
//! backoff, then `<topic>.deadletter` with the `deadletter-*` metadata);
//! Redis' delivery counter bounds them across processes.
//!
//! No entry a manifest subscription's group has not acknowledged is ever
//! trimmed (docs/messaging.md, "Redis"): `send` ([`SEND`], one Lua script)
//! creates the groups of the topic's subscriptions if missing (from `0`),
//! trims only entries every one of them has acknowledged (`XTRIM MINID`
//! up to the oldest unacknowledged entry), and refuses the message
//! (unavailable: `error::connection` for the guest) while `max_len`
//! unacknowledged entries are stored. A topic no subscription names is not
//! stored. Dead-letter streams are trimmed to the dead-letter retention.
//! [`RedisBroker`] is the send side, [`RedisReceiver`] starts one
//! [`RedisConsumer`] per subscription and keeps the groups and gauges.

use super::{MessagingSettings, RedisConn};
use crate::capabilities::BackendError;
use crate::capabilities::messaging::delivery::{
    self, AfterFailure, DeadLetterRetention, DeliveryPolicy,
};
use crate::capabilities::messaging::metrics::messaging as metrics;
use crate::capabilities::messaging::{
    BrokerError, BrokerMessage, ComponentSubscription, Deliverer, Message, MessageBroker,
    MessageReceiver, ReceiveOptions,
};
use async_trait::async_trait;
use redis::Value;
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamPendingCountReply, StreamPendingId,
    StreamReadReply,
};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Unacknowledged entries a topic's stream may hold when the runtime
/// config sets no `max_len`; beyond, `send` is refused.
pub const DEFAULT_MAX_LEN: u64 = 100_000;
/// How often the groups are checked and the gauges refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Visibility timeout when the runtime config sets none: above the default
/// request timeout (30 s), so a slow handler is not taken over while it runs.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `XREADGROUP` waits server-side for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read or reclaimed per call.
const BATCH: usize = 16;

/// The stream of a topic.
fn stream_key(client: &str, topic: &str) -> String {
    format!("wasmshop:topic:{client}:{topic}")
}

/// The consumer groups (subscribing components) of each topic of one
/// messaging client, from the whole manifest.
pub type TopicGroups = BTreeMap<String, Vec<String>>;

/// The groups of `client`'s topics among `subscriptions`.
pub fn topic_groups(subscriptions: &[ComponentSubscription], client: &str) -> TopicGroups {
    let mut groups = TopicGroups::new();
    for s in subscriptions.iter().filter(|s| s.client == client) {
        let g = groups.entry(s.topic.clone()).or_default();
        if !g.contains(&s.component) {
            g.push(s.component.clone());
        }
    }
    groups
}

/// `send` of a topic with subscribers, atomically. KEYS[1]: the stream;
/// ARGV[1]: max_len; ARGV[2]: n; ARGV[3..2+n]: the subscription groups;
/// the rest: the entry's field/value pairs. Creates missing groups from
/// `0` (so nothing sent before a subscriber's first read is missed),
/// trims the entries every group has acknowledged (below the oldest entry
/// pending in a group, or not yet delivered to it), then adds the entry —
/// or, when `max_len` unacknowledged entries are stored, refuses it.
/// Answers `{1, id}` or `{0, stored, slowest group}`.
const SEND: &str = r#"
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local wanted = {}
for i = 1, n do
  wanted[ARGV[2 + i]] = true
  redis.pcall('XGROUP', 'CREATE', key, ARGV[2 + i], '0', 'MKSTREAM')
end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local oldest, slowest = nil, ''
for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local f = {}
  for j = 1, #info, 2 do f[info[j]] = info[j + 1] end
  if wanted[f['name']] then
    local first
    if tonumber(f['pending']) > 0 then
      first = redis.call('XPENDING', key, f['name'])[2]
    else
      local ms, seq = string.match(f['last-delivered-id'], '^(%d+)-(%d+)$')
      first = ms .. '-' .. tostring(tonumber(seq) + 1)
    end
    if oldest == nil or before(first, oldest) then
      oldest, slowest = first, f['name']
    end
  end
end
if oldest then
  redis.call('XTRIM', key, 'MINID', oldest)
end
local stored = redis.call('XLEN', key)
if stored >= cap then
  return {0, stored, slowest}
end
local fields = {}
for i = 3 + n, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return {1, redis.call('XADD', key, '*', unpack(fields))}
"#;

/// The producer side of one messaging client.
pub struct RedisBroker {
    conn: RedisConn,
    max_len: u64,
    groups: Arc<TopicGroups>,
    send: Arc<redis::Script>,
}

impl RedisBroker {
    /// `max_len` bounds the unacknowledged entries of each stream (`None`:
    /// [`DEFAULT_MAX_LEN`]); `groups` are the subscriptions of the
    /// client's topics in the manifest (a topic without any is not stored).
    pub fn new(conn: RedisConn, max_len: Option<u64>, groups: TopicGroups) -> Self {
        RedisBroker {
            conn,
            max_len: max_len.unwrap_or(DEFAULT_MAX_LEN),
            groups: Arc::new(groups),
            send: Arc::new(redis::Script::new(SEND)),
        }
    }
}

/// The field/value pairs of a message's stream entry.
fn entry_fields(message: &BrokerMessage) -> Vec<(&'static str, Vec<u8>)> {
    let metadata = serde_json::to_string(&message.metadata).unwrap_or_else(|_| "[]".into());
    let mut fields = vec![
        ("data", message.data.clone()),
        ("metadata", metadata.into_bytes()),
    ];
    if let Some(ct) = &message.content_type {
        fields.push(("content-type", ct.clone().into_bytes()));
    }
    fields
}

/// Adds a dead letter to `key` and trims the stream to the dead-letter
/// retention (count, then age: stream ids are milliseconds since the epoch).
fn add_dead_letter(pipe: &mut redis::Pipeline, key: &str, message: &BrokerMessage) {
    let retention = DeadLetterRetention::current();
    let cmd = pipe
        .cmd("XADD")
        .arg(key)
        .arg("MAXLEN")
        .arg(retention.max_count)
        .arg("*");
    for (field, value) in entry_fields(message) {
        cmd.arg(field).arg(value);
    }
    cmd.ignore();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let oldest_kept = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
    pipe.cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(format!("{oldest_kept}-0"))
        .ignore();
}

#[async_trait]
impl MessageBroker for RedisBroker {
    async fn send(
        &self,
        client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError> {
        let key = stream_key(client, topic);
        if topic.ends_with(delivery::DEAD_LETTER_SUFFIX) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            add_dead_letter(&mut pipe, &key, &message);
            return self
                .conn
                .call(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
                .map_err(BrokerError);
        }
        let Some(groups) = self.groups.get(topic).filter(|g| !g.is_empty()) else {
            tracing::debug!(%client, %topic, "no subscription in the manifest names the topic; not stored");
            return Ok(());
        };
        let mut invocation = self.send.key(&key);
        invocation.arg(self.max_len).arg(groups.len());
        for g in groups {
            invocation.arg(g);
        }
        for (field, value) in entry_fields(&message) {
            invocation.arg(field).arg(value);
        }
        let reply: Vec<Value> = self
            .conn
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
            .map_err(BrokerError)?;
        match reply.as_slice() {
            [Value::Int(1), ..] => Ok(()),
            other => {
                let stored = match other.get(1) {
                    Some(Value::Int(n)) => *n as u64,
                    _ => self.max_len,
                };
                let slowest = match other.get(2) {
                    Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                };
                Err(BrokerError(BackendError::unavailable(
                    super::NAME,
                    format!(
                        "topic '{topic}' holds {stored} messages not yet acknowledged by subscriber '{}' (max_len = {}); this message was not accepted: retry in a few seconds, once the subscriber catches up, or raise max_len in [messaging.{client}]",
                        slowest.unwrap_or_default(),
                        self.max_len
                    ),
                )))
            }
        }
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.conn.ping().await
    }
}

/// The receive side: one consumer per subscription whose client is
/// served by Redis, sharing one bound of deliveries in flight.
pub struct RedisReceiver {
    clients: BTreeMap<String, (RedisConn, MessagingSettings)>,
    manifest: Vec<ComponentSubscription>,
}

impl RedisReceiver {
    /// A receiver for `clients` (name → connection and settings);
    /// `manifest` is every subscription of the manifest, whose groups it
    /// creates at start and measures, whether or not this process runs
    /// the subscriber.
    pub fn new(
        clients: BTreeMap<String, (RedisConn, MessagingSettings)>,
        manifest: Vec<ComponentSubscription>,
    ) -> Self {
        RedisReceiver { clients, manifest }
    }
}

/// Until shutdown: creates the group of every manifest subscription of
/// `client` (retrying while Redis is unreachable), then every
/// [`SAMPLE_EVERY`] sets `messaging_queue_depth` (pending + lag),
/// `messaging_consumer_lag` (entries not yet delivered to the group) and
/// `messaging_dead_letters` (length of each dead-letter stream).
async fn keep_groups(
    conn: RedisConn,
    client: String,
    groups: TopicGroups,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut created = false;
    while !*shutdown.borrow() {
        let step = async {
            for (topic, names) in &groups {
                let key = stream_key(&client, topic);
                if !created {
                    for g in names {
                        create_group(&conn, &key, g).await?;
                    }
                }
                let infos: Vec<BTreeMap<String, Value>> = conn
                    .query(redis::cmd("XINFO").arg("GROUPS").arg(&key).clone())
                    .await
                    .unwrap_or_default();
                for g in names {
                    let Some(info) = infos.iter().find(|i| {
                        matches!(i.get("name"), Some(Value::BulkString(n)) if n == g.as_bytes())
                    }) else {
                        continue;
                    };
                    let int = |k: &str| match info.get(k) {
                        Some(Value::Int(n)) => Some(*n as u64),
                        _ => None,
                    };
                    let pending = int("pending").unwrap_or(0);
                    let lag = match int("lag") {
                        Some(lag) => lag,
                        // Redis cannot tell (entries deleted mid-stream): count them.
                        None => unread(&conn, &key, info).await.unwrap_or(0),
                    };
                    metrics().set_backlog(topic, g, pending + lag, lag);
                }
                if let Some(dead) = delivery::dead_letter_topic(topic) {
                    let n: u64 = conn
                        .query(redis::cmd("XLEN").arg(stream_key(&client, &dead)).clone())
                        .await
                        .unwrap_or(0);
                    metrics().set_dead_letters(&dead, n);
                }
            }
            Ok::<(), BackendError>(())
        };
        match step.await {
            Ok(()) => created = true,
            Err(e) => {
                tracing::debug!(%client, error = %e, "cannot create or measure the consumer groups yet; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Entries of `key` after the group's last-delivered id (when Redis gives
/// no `lag`).
async fn unread(
    conn: &RedisConn,
    key: &str,
    info: &BTreeMap<String, Value>,
) -> Result<u64, BackendError> {
    let last = match info.get("last-delivered-id") {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => "0-0".into(),
    };
    let ids: Vec<Value> = conn
        .query(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({last}"))
                .arg("+")
                .clone(),
        )
        .await?;
    Ok(ids.len() as u64)
}

/// Creates consumer group `group` on `key` (and the stream), from the
/// stream's start (`0`): nothing sent before the subscriber's first read
/// is missed. An existing group is left as it is.
async fn create_group(conn: &RedisConn, key: &str, group: &str) -> Result<(), BackendError> {
    let created = conn
        .query::<()>(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .clone(),
        )
        .await;
    match created {
        Err(BackendError::Rejected { message, .. }) if message.contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

impl MessageReceiver for RedisReceiver {
    fn start(
        &self,
        subscriptions: &[ComponentSubscription],
        deliverer: Arc<dyn Deliverer>,
        options: ReceiveOptions,
    ) -> Result<Vec<JoinHandle<()>>, BackendError> {
        let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        let mut tasks = Vec::new();
        for (client, (conn, _)) in &self.clients {
            tasks.push(tokio::spawn(keep_groups(
                conn.clone(),
                client.clone(),
                topic_groups(&self.manifest, client),
                options.shutdown.clone(),
            )));
        }
        for sub in subscriptions {
            let Some((conn, settings)) = self.clients.get(&sub.client) else {
                continue;
            };
            let consumer = RedisConsumer::new(
                conn.clone(),
                sub,
                settings,
                deliverer.clone(),
                permits.clone(),
            )?;
            tasks.push(tokio::spawn(
                consumer.run(options.shutdown.clone(), options.drain),
            ));
        }
        Ok(tasks)
    }
}

/// Reads a stream entry back into a message.
fn parse_entry(entry: &StreamId) -> BrokerMessage {
    let bytes = |field: &str| match entry.map.get(field) {
        Some(Value::BulkString(b)) => Some(b.clone()),
        Some(Value::SimpleString(s)) => Some(s.clone().into_bytes()),
        _ => None,
    };
    BrokerMessage {
        data: bytes("data").unwrap_or_default(),
        content_type: bytes("content-type").map(|b| String::from_utf8_lossy(&b).into_owned()),
        metadata: bytes("metadata")
            .and_then(|m| serde_json::from_slice(&m).ok())
            .unwrap_or_default(),
    }
}

/// Delivers one (client, topic) to one subscribing component: a consumer
/// of the component's group, named uniquely for this process.
#[derive(Clone)]
struct RedisConsumer {
    conn: RedisConn,
    reader: RedisConn,
    client: String,
    topic: String,
    component: String,
    consumer: String,
    policy: DeliveryPolicy,
    visibility: Duration,
    deliverer: Arc<dyn Deliverer>,
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl RedisConsumer {
    /// A consumer for one subscription; `permits` bounds concurrent
    /// deliveries across all consumers.
    fn new(
        conn: RedisConn,
        subscription: &ComponentSubscription,
        settings: &MessagingSettings,
        deliverer: Arc<dyn Deliverer>,
        permits: Arc<Semaphore>,
    ) -> Result<Self, BackendError> {
        let mut id = [0u8; 6];
        let _ = getrandom::fill(&mut id);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        Ok(RedisConsumer {
            reader: conn.dedicated(BLOCK)?,
            conn,
            client: subscription.client.clone(),
            topic: subscription.topic.clone(),
            component: subscription.component.clone(),
            consumer: format!("{host}-{}-{}", std::process::id(), hex::encode(id)),
            visibility: settings
                .visibility_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT),
            policy: settings.policy(),
            deliverer,
            permits,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    fn key(&self) -> String {
        stream_key(&self.client, &self.topic)
    }

    /// Runs until `shutdown` turns true, then waits (at most `drain`) for
    /// deliveries in progress; what is left stays pending for another process.
    /// Survives Redis outages: it logs, backs off and tries again.
    async fn run(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let mut failures = 0u32;
        let mut group_ready = false;
        let mut autoclaim_from = "0-0".to_string();
        tracing::info!(component = %self.component, topic = %self.topic, consumer = %self.consumer, "consuming a Redis stream");
        while !*shutdown.borrow() {
            let step = async {
                if !group_ready {
                    self.ensure_group().await?;
                    group_ready = true;
                }
                autoclaim_from = self.reclaim(&autoclaim_from).await?;
                self.read_new().await
            };
            match step.await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(component = %self.component, topic = %self.topic, "Redis reachable again; consuming");
                    }
                    failures = 0;
                }
                Err(e) => {
                    if e.to_string().contains("NOGROUP") {
                        // Redis lost the group (restarted without persistence): recreate it.
                        group_ready = false;
                    }
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(component = %self.component, topic = %self.topic, error = %e, "cannot consume the Redis stream; retrying");
                    }
                    let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        let _ = tokio::time::timeout(drain, async {
            while !self.in_flight.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.leave_group().await;
    }

    /// Removes this process's consumer from the group when it holds nothing
    /// pending, so restarts do not pile up dead consumer names. One with
    /// pending entries stays: removing it would drop them from the group.
    async fn leave_group(&self) {
        let (key, group, me) = (self.key(), self.component.clone(), self.consumer.clone());
        let held: Result<StreamPendingCountReply, _> = self
            .conn
            .query(
                redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&group)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .arg(&me)
                    .clone(),
            )
            .await;
        if matches!(&held, Ok(p) if p.ids.is_empty()) {
            let _ = self
                .conn
                .query::<()>(
                    redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(key)
                        .arg(group)
                        .arg(me)
                        .clone(),
                )
                .await;
        }
    }

    /// Creates the component's group if missing (see [`create_group`]).
    async fn ensure_group(&self) -> Result<(), BackendError> {
        create_group(&self.conn, &self.key(), &self.component).await
    }

    /// Takes over entries another consumer left unacknowledged past the
    /// visibility timeout; returns where the next scan starts.
    async fn reclaim(&self, from: &str) -> Result<String, BackendError> {
        let (key, group, me, idle, from) = (
            self.key(),
            self.component.clone(),
            self.consumer.clone(),
            self.visibility.as_millis() as u64,
            from.to_string(),
        );
        let reply: StreamAutoClaimReply = self
            .conn
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(group)
                    .arg(me)
                    .arg(idle)
                    .arg(from)
                    .arg("COUNT")
                    .arg(BATCH)
                    .clone(),
            )
            .await?;
        for id in &reply.deleted_ids {
            self.dead_letter_deleted(id).await;
        }
        for entry in reply.claimed {
            if self.in_flight.lock().unwrap().contains(&entry.id) {
                continue; // ours, in a retry backoff
            }
            let attempts = self
                .pending_entry(&entry.id)
                .await?
                .map_or(1, |p| p.times_delivered as u32);
            tracing::info!(component = %self.component, topic = %self.topic, id = %entry.id, attempts, "took over a delivery left unacknowledged");
            self.spawn(entry, attempts).await;
        }
        Ok(reply.next_stream_id)
    }

    /// An entry the group still had pending was deleted from the stream
    /// (`XAUTOCLAIM` reports it, and drops it from the group): its content
    /// is gone, so this logs it and dead-letters a record naming its id and
    /// topic, to be looked into.
    async fn dead_letter_deleted(&self, id: &str) {
        tracing::error!(subscriber = %self.component, topic = %self.topic, %id,
            "an entry was deleted from the stream before this subscriber acknowledged it; recording it on the dead-letter topic");
        let Some(dead_topic) = delivery::dead_letter_topic(&self.topic) else {
            return;
        };
        let mut record = delivery::dead_letter(
            &BrokerMessage::default(),
            &self.topic,
            &self.component,
            0,
            "the entry was deleted from the Redis stream before it was acknowledged; its content is lost",
        );
        record
            .metadata
            .push(("deadletter-original-id".into(), id.to_string()));
        let mut pipe = redis::pipe();
        pipe.atomic();
        add_dead_letter(&mut pipe, &stream_key(&self.client, &dead_topic), &record);
        match self
            .conn
            .call(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
        {
            Ok(()) => metrics().dead_lettered(&self.topic),
            Err(e) => {
                tracing::error!(subscriber = %self.component, topic = %self.topic, %id, error = %e,
                "could not record the deleted entry on the dead-letter topic")
            }
        }
    }

    /// The group's pending-entry record of `id` (owner, delivery count),
    /// if it is still pending.
    async fn pending_entry(&self, id: &str) -> Result<Option<StreamPendingId>, BackendError> {
        let (key, group, id) = (self.key(), self.component.clone(), id.to_string());
        let reply: StreamPendingCountReply = self
            .conn
            .query(
                redis::cmd("XPENDING")
                    .arg(key)
                    .arg(group)
                    .arg(&id)
                    .arg(&id)
                    .arg(1)
                    .clone(),
            )
            .await?;
        Ok(reply.ids.into_iter().next())
    }

    /// Reads entries never delivered to the group, waiting up to [`BLOCK`].
    async fn read_new(&self) -> Result<(), BackendError> {
        let count = self.permits.available_permits().clamp(1, BATCH);
        let (key, group, me) = (self.key(), self.component.clone(), self.consumer.clone());
        let reply: Option<StreamReadReply> = self
            .reader
            .call_within(BLOCK + Duration::from_secs(3), |mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg(me)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.spawn(entry, 1).await;
        }
        Ok(())
    }

    /// Hands an entry to a task once a delivery permit is free.
    async fn spawn(&self, entry: StreamId, attempts: u32) {
        if !self.in_flight.lock().unwrap().insert(entry.id.clone()) {
            return;
        }
        let permit = self.permits.clone().acquire_owned().await.ok();
        let this = self.clone();
        tokio::spawn(async move {
            let id = entry.id.clone();
            this.handle(entry, attempts).await;
            this.in_flight.lock().unwrap().remove(&id);
            drop(permit);
        });
    }

    /// Delivers until success, the last attempt, or losing the entry to
    /// another consumer.
    async fn handle(&self, entry: StreamId, mut attempts: u32) {
        let message = parse_entry(&entry);
        let max = self.policy.max_attempts.max(1);
        loop {
            if attempts > max {
                // Reclaimed after a crash with its attempts used up.
                let reason =
                    "the consumer holding the message stopped before acknowledging it".to_string();
                self.finish(&entry.id, Some((&message, attempts - 1, reason)))
                    .await;
                return;
            }
            let delivery = Message {
                topic: Some(self.topic.clone()),
                inner: message.clone(),
            };
            let error = match self.deliverer.deliver(&self.component, delivery).await {
                Ok(()) => {
                    self.finish(&entry.id, None).await;
                    return;
                }
                Err(error) if error.is_capacity() => {
                    // The handler never ran: wait for an instance without
                    // counting an attempt (here or in Redis).
                    tokio::time::sleep(delivery::CAPACITY_RETRY).await;
                    match self.renew(&entry.id).await {
                        Ok(true) => continue,
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(subscriber = %self.component, topic = %self.topic, error = %e,
                                "cannot renew a delivery that waits for an instance; it will be taken over after the visibility timeout");
                            return;
                        }
                    }
                }
                Err(error) => error.to_string(),
            };
            match self
                .policy
                .after_failure(&self.component, &self.topic, attempts, &error)
            {
                AfterFailure::RetryIn(wait) => {
                    metrics().retried(&self.topic, &self.component);
                    tokio::time::sleep(wait).await;
                    match self.claim_again(&entry.id).await {
                        Ok(true) => attempts += 1,
                        Ok(false) => return, // acknowledged or taken over meanwhile
                        Err(e) => {
                            tracing::warn!(subscriber = %self.component, topic = %self.topic, error = %e,
                                "cannot renew a delivery for its retry; it will be taken over after the visibility timeout");
                            return;
                        }
                    }
                }
                AfterFailure::DeadLetter => {
                    metrics().dead_lettered(&self.topic);
                    self.finish(&entry.id, Some((&message, attempts, error)))
                        .await;
                    return;
                }
            }
        }
    }

    /// Resets the idle time of an entry this consumer still owns without
    /// counting a delivery (`XCLAIM ... JUSTID` leaves the counter as is),
    /// so it is not taken over while it waits for an instance.
    async fn renew(&self, id: &str) -> Result<bool, BackendError> {
        let owner = self.pending_entry(id).await?;
        if owner.is_none_or(|p| p.consumer != self.consumer) {
            return Ok(false);
        }
        let ids: Vec<String> = self
            .conn
            .query(
                redis::cmd("XCLAIM")
                    .arg(self.key())
                    .arg(&self.component)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(id)
                    .arg("JUSTID")
                    .clone(),
            )
            .await?;
        Ok(!ids.is_empty())
    }

    /// Re-claims an entry this consumer still owns, counting one more
    /// delivery in Redis (so the bound holds if this process dies) and
    /// resetting its idle time.
    async fn claim_again(&self, id: &str) -> Result<bool, BackendError> {
        let (key, group, me, id) = (
            self.key(),
            self.component.clone(),
            self.consumer.clone(),
            id.to_string(),
        );
        let owner = self.pending_entry(&id).await?;
        if owner.is_none_or(|p| p.consumer != me) {
            return Ok(false);
        }
        let claimed: StreamClaimReply = self
            .conn
            .query(
                redis::cmd("XCLAIM")
                    .arg(key)
                    .arg(group)
                    .arg(me)
                    .arg(0)
                    .arg(id)
                    .clone(),
            )
            .await?;
        Ok(!claimed.ids.is_empty())
    }

    /// Acknowledges an entry, after publishing it to the dead-letter stream
    /// when `dead` is set (atomically: both or neither). Retries while Redis
    /// is briefly unreachable; if it stays so, the entry remains pending and
    /// is delivered again later (at least once).
    async fn finish(&self, id: &str, dead: Option<(&BrokerMessage, u32, String)>) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some((message, attempts, reason)) = dead
            && let Some(dead_topic) = delivery::dead_letter_topic(&self.topic)
        {
            let message =
                delivery::dead_letter(message, &self.topic, &self.component, attempts, &reason);
            add_dead_letter(&mut pipe, &stream_key(&self.client, &dead_topic), &message);
        }
        pipe.cmd("XACK")
            .arg(self.key())
            .arg(&self.component)
            .arg(id)
            .ignore();
        for attempt in 0..5u64 {
            let p = pipe.clone();
            match self
                .conn
                .call(|mut c| async move { p.query_async::<()>(&mut c).await })
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(subscriber = %self.component, topic = %self.topic, %id, error = %e, "cannot acknowledge a delivery; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
        tracing::error!(subscriber = %self.component, topic = %self.topic, %id,
            "gave up acknowledging a delivery; it will be delivered again after the visibility timeout");
    }
}
