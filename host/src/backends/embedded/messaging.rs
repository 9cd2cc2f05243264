//! Messaging on the embedded database: `send` commits the message and one
//! delivery row per subscriber in a single transaction before returning;
//! the [`Dispatcher`] (the receive side, started by [`EmbeddedReceiver`])
//! hands due deliveries to subscribers and follows the shared
//! [`delivery`] rules: retries with exponential backoff, then the message
//! moves to `<topic>.deadletter`. Rows are only removed after a successful
//! delivery, so a restart resumes whatever was not delivered (at least once).
//!
//! What is stored is bounded (docs/messaging.md, "What is stored"): a
//! message no subscriber here wants (no subscription to its topic, or
//! every subscription filters its event type out) is not stored at all;
//! dead letters are kept under [`DeadLetterRetention`]. A delivery that
//! found no free instance is retried without counting an attempt.

use super::{EmbeddedDb, now_ms};
use crate::capabilities::BackendError;
use crate::capabilities::messaging::delivery::{
    self, AfterFailure, DeadLetterRetention, DeliveryPolicy,
};
use crate::capabilities::messaging::metrics::messaging as metrics;
use crate::capabilities::messaging::{
    BrokerError, BrokerMessage, ComponentSubscription, Deliverer, Message, MessageBroker,
    MessageReceiver, ReceiveOptions, event_type,
};
use async_trait::async_trait;
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

/// Subscriptions of each (client, topic).
type Subscribers = BTreeMap<(String, String), Vec<ComponentSubscription>>;

/// The subscribers of (`client`, `topic`) that want `message` (its event
/// type passes their filter).
fn wanting(
    subscribers: &Subscribers,
    client: &str,
    topic: &str,
    message: &BrokerMessage,
) -> Vec<String> {
    let Some(subs) = subscribers.get(&(client.to_string(), topic.to_string())) else {
        return Vec::new();
    };
    let kind = event_type(message);
    subs.iter()
        .filter(|s| s.wants(kind.as_deref()))
        .map(|s| s.component.clone())
        .collect()
}

/// The embedded broker: the producer side.
pub struct EmbeddedBroker {
    db: Arc<EmbeddedDb>,
    subscribers: Arc<Subscribers>,
    wake: Arc<Notify>,
}

impl EmbeddedBroker {
    /// `subscriptions` are those of the components this process runs:
    /// each message sent gets one delivery row per subscriber.
    pub fn new(db: Arc<EmbeddedDb>, subscriptions: &[ComponentSubscription]) -> Self {
        let mut subscribers: Subscribers = BTreeMap::new();
        for s in subscriptions {
            subscribers
                .entry((s.client.clone(), s.topic.clone()))
                .or_default()
                .push(s.clone());
        }
        EmbeddedBroker {
            db,
            subscribers: Arc::new(subscribers),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The receive side, with the delivery policy of each client.
    pub fn receiver(&self, policies: BTreeMap<String, DeliveryPolicy>) -> EmbeddedReceiver {
        EmbeddedReceiver {
            db: self.db.clone(),
            subscribers: self.subscribers.clone(),
            wake: self.wake.clone(),
            policies: Arc::new(policies),
        }
    }

    /// Stores `message` with a delivery per subscriber in `to` (a dead
    /// letter also with none, then pruned to the retention); stores
    /// nothing for a message no one wants.
    async fn store(
        &self,
        client: String,
        topic: String,
        message: BrokerMessage,
        to: Vec<String>,
    ) -> Result<bool, BackendError> {
        let dead_letters = topic.ends_with(delivery::DEAD_LETTER_SUFFIX);
        if to.is_empty() && !dead_letters {
            tracing::debug!(%client, %topic, "no subscription here wants the message; not stored");
            return Ok(false);
        }
        let retention = DeadLetterRetention::current();
        // The writer runs this in its own savepoint of the next group
        // commit (all of it or none) and answers after that commit's fsync.
        self.db
            .call(move |s| {
                enqueue(&s.conn, &to, &client, &topic, &message)?;
                if dead_letters {
                    prune_dead_letters(&s.conn, &topic, retention)?;
                }
                Ok(())
            })
            .await?;
        Ok(true)
    }
}

/// Starts the [`Dispatcher`] of the queue.
pub struct EmbeddedReceiver {
    db: Arc<EmbeddedDb>,
    subscribers: Arc<Subscribers>,
    wake: Arc<Notify>,
    policies: Arc<BTreeMap<String, DeliveryPolicy>>,
}

impl MessageReceiver for EmbeddedReceiver {
    /// One dispatcher for the whole queue: its delivery rows were made for
    /// the subscriptions the broker was opened with.
    fn start(
        &self,
        _subscriptions: &[ComponentSubscription],
        deliverer: Arc<dyn Deliverer>,
        options: ReceiveOptions,
    ) -> Result<Vec<JoinHandle<()>>, BackendError> {
        let here: Vec<String> = self
            .subscribers
            .values()
            .flatten()
            .map(|s| s.component.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let dispatcher = Dispatcher {
            db: self.db.clone(),
            subscribers: self.subscribers.clone(),
            here: Arc::new(serde_json::to_string(&here).unwrap_or_else(|_| "[]".into())),
            wake: self.wake.clone(),
            deliverer,
            policies: self.policies.clone(),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
        };
        let sampler = sample(
            self.db.clone(),
            self.subscribers.clone(),
            options.shutdown.clone(),
        );
        Ok(vec![
            tokio::spawn(dispatcher.run(options.shutdown, options.drain)),
            tokio::spawn(sampler),
        ])
    }
}

/// Inserts a message and its deliveries; returns the message's sequence
/// number. Runs inside the caller's transaction (a group commit's
/// savepoint), which makes the message and its deliveries one write.
fn enqueue(
    tx: &Connection,
    to: &[String],
    client: &str,
    topic: &str,
    message: &BrokerMessage,
) -> rusqlite::Result<i64> {
    let metadata = serde_json::to_string(&message.metadata).unwrap_or_else(|_| "[]".into());
    let now = now_ms();
    tx.execute(
        "INSERT INTO messages (client, topic, content_type, metadata, data, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            client,
            topic,
            message.content_type,
            metadata,
            message.data,
            now
        ],
    )?;
    let seq = tx.last_insert_rowid();
    for subscriber in to {
        tx.execute(
            "INSERT INTO deliveries (seq, subscriber, attempts, due_ms) VALUES (?1, ?2, 0, ?3)",
            params![seq, subscriber, now],
        )?;
    }
    Ok(seq)
}

/// Removes the dead letters of `topic` past `retention` (the oldest first:
/// beyond the newest `max_count`, or older than `max_age`), with any
/// deliveries of them still waiting. Runs inside the caller's transaction.
fn prune_dead_letters(
    tx: &Connection,
    topic: &str,
    retention: DeadLetterRetention,
) -> rusqlite::Result<usize> {
    let oldest_kept = now_ms() - retention.max_age.as_millis() as i64;
    let count = i64::try_from(retention.max_count).unwrap_or(i64::MAX);
    let doomed = "SELECT seq FROM messages WHERE topic = ?1 AND (created_ms < ?2 OR seq NOT IN
                    (SELECT seq FROM messages WHERE topic = ?1 ORDER BY seq DESC LIMIT ?3))";
    tx.execute(
        &format!("DELETE FROM deliveries WHERE seq IN ({doomed})"),
        params![topic, oldest_kept, count],
    )?;
    tx.execute(
        &format!("DELETE FROM messages WHERE seq IN ({doomed})"),
        params![topic, oldest_kept, count],
    )
}

#[async_trait]
impl MessageBroker for EmbeddedBroker {
    async fn send(
        &self,
        client: &str,
        topic: &str,
        message: BrokerMessage,
    ) -> Result<(), BrokerError> {
        let to = wanting(&self.subscribers, client, topic, &message);
        let stored = self
            .store(client.to_string(), topic.to_string(), message, to)
            .await
            .map_err(BrokerError)?;
        if stored {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}

/// One due delivery.
struct Due {
    seq: i64,
    subscriber: String,
    attempts: u32,
    client: String,
    topic: String,
    message: BrokerMessage,
}

/// Delivers queued messages to subscribed components.
#[derive(Clone)]
struct Dispatcher {
    db: Arc<EmbeddedDb>,
    subscribers: Arc<Subscribers>,
    /// The subscribers run here, as a JSON array for `json_each`: rows of
    /// a component not run by this process wait for a process that runs it.
    here: Arc<String>,
    wake: Arc<Notify>,
    deliverer: Arc<dyn Deliverer>,
    policies: Arc<BTreeMap<String, DeliveryPolicy>>,
    in_flight: Arc<Mutex<HashSet<(i64, String)>>>,
    permits: Arc<Semaphore>,
}

/// The longest the dispatcher sleeps without a wake-up.
const MAX_IDLE: Duration = Duration::from_millis(1000);

impl Dispatcher {
    /// Runs until `shutdown` turns true, then waits (at most `drain`) for
    /// deliveries in progress.
    async fn run(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next_wake = match self.dispatch_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "message dispatcher could not read the queue; retrying");
                    MAX_IDLE
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next_wake) => {}
            }
        }
        let _ = tokio::time::timeout(drain, async {
            loop {
                if self.in_flight.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Starts every due delivery not already running; returns how long to
    /// sleep until the next one is due.
    async fn dispatch_due(&self) -> Result<Duration, BackendError> {
        let now = now_ms();
        let here = self.here.clone();
        // Rows running now are read as they were before their outcome was
        // written: one that ends while this loop waits for a permit would
        // otherwise be delivered again from that stale copy. They are
        // skipped here and read afresh next time if still due.
        let running: HashSet<(i64, String)> = self.in_flight.lock().unwrap().clone();
        let (due, next_due): (Vec<Due>, Option<i64>) = self
            .db
            .call(move |s| {
                let mut stmt = s.conn.prepare_cached(
                    "SELECT d.seq, d.subscriber, d.attempts, m.client, m.topic, m.content_type, m.metadata, m.data
                     FROM deliveries d JOIN messages m ON m.seq = d.seq
                     WHERE d.due_ms <= ?1 AND d.subscriber IN (SELECT value FROM json_each(?2))
                     ORDER BY d.due_ms, d.seq LIMIT 256",
                )?;
                let due = stmt
                    .query_map(params![now, here.as_str()], |r| {
                        let metadata: String = r.get(6)?;
                        Ok(Due {
                            seq: r.get(0)?,
                            subscriber: r.get(1)?,
                            attempts: r.get(2)?,
                            client: r.get(3)?,
                            topic: r.get(4)?,
                            message: BrokerMessage {
                                content_type: r.get(5)?,
                                metadata: serde_json::from_str(&metadata).unwrap_or_default(),
                                data: r.get(7)?,
                            },
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let next: Option<i64> = s.conn.query_row(
                    "SELECT MIN(due_ms) FROM deliveries
                     WHERE due_ms > ?1 AND subscriber IN (SELECT value FROM json_each(?2))",
                    params![now, here.as_str()],
                    |r| r.get(0),
                )?;
                Ok((due, next))
            })
            .await?;
        for d in due {
            let key = (d.seq, d.subscriber.clone());
            if running.contains(&key) || !self.in_flight.lock().unwrap().insert(key.clone()) {
                continue;
            }
            let permit = self.permits.clone().acquire_owned().await.ok();
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver(d).await;
                this.in_flight.lock().unwrap().remove(&key);
                drop(permit);
                this.wake.notify_one();
            });
        }
        Ok(next_due
            .map(|t| Duration::from_millis((t - now_ms()).max(1) as u64))
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE))
    }

    async fn deliver(&self, d: Due) {
        let message = Message {
            topic: Some(d.topic.clone()),
            inner: d.message.clone(),
        };
        let result = self.deliverer.deliver(&d.subscriber, message).await;
        let policy = self.policies.get(&d.client).copied().unwrap_or_default();
        let outcome = match result {
            Ok(()) => self.complete(d.seq, d.subscriber.clone()).await,
            Err(error) if error.is_capacity() => {
                // The handler never ran: not an attempt.
                tracing::debug!(subscriber = %d.subscriber, topic = %d.topic, %error, "no instance free; delivery postponed");
                let due = now_ms() + delivery::CAPACITY_RETRY.as_millis() as i64;
                self.retry_later(
                    d.seq,
                    d.subscriber.clone(),
                    d.attempts,
                    due,
                    error.to_string(),
                )
                .await
            }
            Err(error) => {
                let error = error.to_string();
                let attempts = d.attempts + 1;
                match policy.after_failure(&d.subscriber, &d.topic, attempts, &error) {
                    AfterFailure::RetryIn(wait) => {
                        metrics().retried(&d.topic, &d.subscriber);
                        let due = now_ms() + wait.as_millis() as i64;
                        self.retry_later(d.seq, d.subscriber.clone(), attempts, due, error)
                            .await
                    }
                    AfterFailure::DeadLetter => {
                        metrics().dead_lettered(&d.topic);
                        self.dead_letter(d, attempts, error).await
                    }
                }
            }
        };
        if let Err(e) = outcome {
            // The row stays due, so the delivery is retried: at least once.
            tracing::error!(error = %e, "could not record the outcome of a delivery; it will be repeated");
        }
    }

    async fn complete(&self, seq: i64, subscriber: String) -> Result<(), BackendError> {
        self.db
            .call(move |s| {
                // Both deletes in the call's savepoint: kept or undone together.
                s.conn.execute(
                    "DELETE FROM deliveries WHERE seq = ?1 AND subscriber = ?2",
                    params![seq, subscriber],
                )?;
                s.conn.execute(
                    "DELETE FROM messages WHERE seq = ?1
                     AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?1)",
                    params![seq],
                )?;
                Ok(())
            })
            .await
    }

    async fn retry_later(
        &self,
        seq: i64,
        subscriber: String,
        attempts: u32,
        due: i64,
        error: String,
    ) -> Result<(), BackendError> {
        self.db
            .call(move |s| {
                s.conn.execute(
                    "UPDATE deliveries SET attempts = ?3, due_ms = ?4, last_error = ?5
                     WHERE seq = ?1 AND subscriber = ?2",
                    params![seq, subscriber, attempts, due, error],
                )?;
                Ok(())
            })
            .await
    }

    /// Removes the delivery and publishes the message on `<topic>.deadletter`
    /// (kept in the queue, so it can be inspected or consumed by a
    /// subscriber of that topic). A dead letter of a dead letter is kept as
    /// it is, without further deliveries.
    async fn dead_letter(&self, d: Due, attempts: u32, error: String) -> Result<(), BackendError> {
        let subscribers = self.subscribers.clone();
        let retention = DeadLetterRetention::current();
        self.db
            .call(move |s| {
                // One savepoint of a group commit: the delivery's removal and
                // the dead letter are kept or undone together.
                let tx = &s.conn;
                tx.execute(
                    "DELETE FROM deliveries WHERE seq = ?1 AND subscriber = ?2",
                    params![d.seq, d.subscriber],
                )?;
                if let Some(topic) = delivery::dead_letter_topic(&d.topic) {
                    let message = delivery::dead_letter(
                        &d.message,
                        &d.topic,
                        &d.subscriber,
                        attempts,
                        &error,
                    );
                    let to = wanting(&subscribers, &d.client, &topic, &message);
                    enqueue(tx, &to, &d.client, &topic, &message)?;
                    prune_dead_letters(tx, &topic, retention)?;
                    tx.execute(
                        "DELETE FROM messages WHERE seq = ?1
                         AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?1)",
                        params![d.seq],
                    )?;
                }
                Ok(())
            })
            .await
    }
}

/// How often the queue gauges are refreshed and old dead letters pruned.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Until shutdown: sets `messaging_queue_depth`, `messaging_consumer_lag`
/// (deliveries not yet attempted) and `messaging_dead_letters` from the
/// queue, and prunes dead letters past their retention. First removes
/// messages left without any delivery by an earlier version (which
/// stored messages nobody subscribed to).
async fn sample(
    db: Arc<EmbeddedDb>,
    subscribers: Arc<Subscribers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cleared = db
        .call(|s| {
            s.conn.execute(
                "DELETE FROM messages WHERE topic NOT LIKE '%.deadletter'
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = messages.seq)",
                [],
            )
        })
        .await;
    match cleared {
        Ok(n) if n > 0 => tracing::info!(
            removed = n,
            "removed stored messages no subscriber was waiting for"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not remove stored messages no subscriber was waiting for")
        }
    }
    let retention = DeadLetterRetention::current();
    while !*shutdown.borrow() {
        let sampled = db
            .call(move |s| {
                // Pruned and counted in one savepoint of a group commit.
                let tx = &s.conn;
                let dead_topics: Vec<String> = tx
                    .prepare("SELECT DISTINCT topic FROM messages WHERE topic LIKE '%.deadletter'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for t in &dead_topics {
                    prune_dead_letters(tx, t, retention)?;
                }
                let backlog: Vec<(String, String, u64, u64)> = tx
                    .prepare(
                        "SELECT m.topic, d.subscriber, COUNT(*), SUM(d.attempts = 0)
                         FROM deliveries d JOIN messages m ON m.seq = d.seq GROUP BY 1, 2",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let dead: Vec<(String, u64)> = tx
                    .prepare(
                        "SELECT topic, COUNT(*) FROM messages WHERE topic LIKE '%.deadletter' GROUP BY 1",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok((backlog, dead))
            })
            .await;
        match sampled {
            Ok((backlog, dead)) => {
                let m = metrics();
                for sub in subscribers.values().flatten() {
                    m.set_backlog(&sub.topic, &sub.component, 0, 0);
                    if let Some(t) = delivery::dead_letter_topic(&sub.topic) {
                        m.set_dead_letters(&t, 0);
                    }
                }
                for (topic, subscriber, depth, lag) in backlog {
                    m.set_backlog(&topic, &subscriber, depth, lag);
                }
                for (topic, n) in dead {
                    m.set_dead_letters(&topic, n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not measure the message queue"),
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Messages currently stored for `topic` in the embedded database of
/// `data_dir`, oldest first, as (sequence number, message), for
/// inspection of dead letters. Opens the database read-only
/// ([`super::db::open_read_only`]), so it works while a host runs on the
/// same directory. Errors: no database there, or not one of this host
/// (no `messages` table).
pub fn stored_messages(
    data_dir: &std::path::Path,
    topic: &str,
) -> Result<Vec<(i64, BrokerMessage)>, BackendError> {
    let conn = super::db::open_read_only(data_dir)?;
    let read = || -> rusqlite::Result<Vec<(i64, BrokerMessage)>> {
        let mut stmt = conn.prepare(
            "SELECT seq, content_type, metadata, data FROM messages WHERE topic = ?1 ORDER BY seq",
        )?;
        stmt.query_map(params![topic], |r| {
            let metadata: String = r.get(2)?;
            Ok((
                r.get(0)?,
                BrokerMessage {
                    content_type: r.get(1)?,
                    metadata: serde_json::from_str(&metadata).unwrap_or_default(),
                    data: r.get(3)?,
                },
            ))
        })?
        .collect()
    };
    read().map_err(|e| {
        BackendError::unavailable(
            super::NAME,
            format!(
                "cannot read the stored messages from {} ({e}); pass the --data-dir of a host that ran with the embedded backend",
                data_dir.join("wasmshop.db").display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::messaging::DeliveryError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers "no instance free" to the first `busy` deliveries, then
    /// succeeds.
    struct Busy {
        busy: u32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Deliverer for Busy {
        async fn deliver(&self, _component: &str, _message: Message) -> Result<(), DeliveryError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.busy {
                Err(DeliveryError::Capacity("the instance pool is full".into()))
            } else {
                Ok(())
            }
        }
    }

    fn subscription(topic: &str, event_types: &[&str]) -> ComponentSubscription {
        ComponentSubscription {
            component: "sub".into(),
            client: "bus".into(),
            topic: topic.into(),
            event_types: event_types.iter().map(|t| t.to_string()).collect(),
        }
    }

    async fn rows(db: &EmbeddedDb, sql: &'static str) -> i64 {
        db.call(move |s| s.conn.query_row(sql, [], |r| r.get(0)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_full_pool_does_not_use_up_delivery_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let broker = EmbeddedBroker::new(db.clone(), &[subscription("t", &[])]);
        // One attempt only: a counted capacity failure would dead-letter it.
        let receiver = broker.receiver(BTreeMap::from([(
            "bus".to_string(),
            DeliveryPolicy::new(1, 10),
        )]));
        let deliverer = Arc::new(Busy {
            busy: 3,
            calls: AtomicU32::new(0),
        });
        let (stop, shutdown) = watch::channel(false);
        let tasks = receiver
            .start(
                &[],
                deliverer.clone(),
                ReceiveOptions {
                    shutdown,
                    drain: Duration::from_secs(1),
                    max_in_flight: 4,
                },
            )
            .unwrap();
        broker
            .send("bus", "t", BrokerMessage::default())
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(20), async {
            while rows(&db, "SELECT COUNT(*) FROM messages").await > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        assert!(delivered.is_ok(), "the message is delivered in the end");
        assert_eq!(deliverer.calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            rows(
                &db,
                "SELECT COUNT(*) FROM messages WHERE topic = 't.deadletter'"
            )
            .await,
            0,
            "three capacity failures used none of the one attempt"
        );
    }

    #[tokio::test]
    async fn unwanted_messages_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let broker = EmbeddedBroker::new(db.clone(), &[subscription("t", &["Wanted"])]);
        let typed = |t: &str| BrokerMessage {
            metadata: vec![("ce-type".into(), t.into())],
            ..BrokerMessage::default()
        };
        broker.send("bus", "nobody", typed("Wanted")).await.unwrap();
        broker.send("bus", "t", typed("Other")).await.unwrap();
        assert_eq!(rows(&db, "SELECT COUNT(*) FROM messages").await, 0);
        broker.send("bus", "t", typed("Wanted")).await.unwrap();
        broker
            .send("bus", "t.deadletter", typed("Other"))
            .await
            .unwrap();
        assert_eq!(
            rows(&db, "SELECT COUNT(*) FROM messages").await,
            2,
            "a wanted message, and a dead letter (kept without a subscriber)"
        );
    }
}
