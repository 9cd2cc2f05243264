//! Messaging on Redis Streams. A topic of a messaging client is the stream
//! `wasmshop:topic:<client>:<topic>`; `send` is `XADD` (trimmed with
//! `MAXLEN ~`) and returns once Redis accepted it. Each subscribing
//! component is a consumer group, each host process a consumer in it, so
//! across replicas every message is handled by one of them. An entry is
//! acknowledged after the handler succeeded; one left pending by a dead
//! process is taken over (`XAUTOCLAIM`) after the visibility timeout.
//! Failed attempts follow the shared [`delivery`] rules (exponential
//! backoff, then `<topic>.deadletter` with the `deadletter-*` metadata);
//! Redis' delivery counter bounds them across processes.
//! [`RedisBroker`] is the send side, [`RedisReceiver`] starts one
//! [`RedisConsumer`] per subscription.

use super::{MessagingSettings, RedisConn};
use crate::capabilities::BackendError;
use crate::capabilities::messaging::delivery::{self, AfterFailure, DeliveryPolicy};
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

/// Stream length bound when the runtime config sets none.
pub const DEFAULT_MAX_LEN: u64 = 100_000;
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

/// The producer side of one messaging client.
pub struct RedisBroker {
    conn: RedisConn,
    max_len: u64,
}

impl RedisBroker {
    /// `max_len` bounds each stream approximately (`None`: [`DEFAULT_MAX_LEN`]).
    pub fn new(conn: RedisConn, max_len: Option<u64>) -> Self {
        RedisBroker {
            conn,
            max_len: max_len.unwrap_or(DEFAULT_MAX_LEN),
        }
    }
}

/// `XADD` arguments of a message (after the stream key and MAXLEN).
fn xadd(key: &str, max_len: u64, message: &BrokerMessage) -> redis::Cmd {
    let metadata = serde_json::to_string(&message.metadata).unwrap_or_else(|_| "[]".into());
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_len)
        .arg("*")
        .arg("data")
        .arg(message.data.as_slice())
        .arg("metadata")
        .arg(metadata);
    if let Some(ct) = &message.content_type {
        cmd.arg("content-type").arg(ct);
    }
    cmd
}

#[async_trait]
impl MessageBroker for RedisBroker {
    async fn send(
        &self,
        client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError> {
        let cmd = xadd(&stream_key(client, topic), self.max_len, &message);
        self.conn
            .call(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
            .map_err(BrokerError)
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.conn.ping().await
    }
}

/// The receive side: one consumer per subscription whose client is
/// served by Redis, sharing one bound of deliveries in flight.
pub struct RedisReceiver {
    clients: BTreeMap<String, (RedisConn, MessagingSettings)>,
}

impl RedisReceiver {
    /// A receiver for `clients` (name → connection and settings).
    pub fn new(clients: BTreeMap<String, (RedisConn, MessagingSettings)>) -> Self {
        RedisReceiver { clients }
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
    max_len: u64,
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
            max_len: settings.max_len.unwrap_or(DEFAULT_MAX_LEN),
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

    /// Creates the component's group, from the start of the stream so that
    /// nothing sent before the first subscriber ran is missed.
    async fn ensure_group(&self) -> Result<(), BackendError> {
        let (key, group) = (self.key(), self.component.clone());
        let created = self
            .conn
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
                Err(error) => error.to_string(),
            };
            match self
                .policy
                .after_failure(&self.component, &self.topic, attempts, &error)
            {
                AfterFailure::RetryIn(wait) => {
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
                    self.finish(&entry.id, Some((&message, attempts, error)))
                        .await;
                    return;
                }
            }
        }
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
            let dead_key = stream_key(&self.client, &dead_topic);
            pipe.add_command(xadd(&dead_key, self.max_len, &message))
                .ignore();
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
