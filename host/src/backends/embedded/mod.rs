//! The embedded backend: one SQLite database (WAL, `synchronous=FULL`) in
//! the data directory holds key-value data and the message queue, so an
//! acknowledged write or an accepted message survives `kill -9` and power
//! loss alike.

mod keyvalue;
mod messaging;

pub use keyvalue::{EmbeddedKeyValue, EmbeddedStore};
pub use messaging::{EmbeddedBroker, EmbeddedReceiver, stored_messages};

use super::{BackendUnit, Contribution, OpenContext};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::KeyValueBackend;
use crate::capabilities::messaging::MessageBroker;
use crate::capabilities::messaging::delivery::{self, DeliveryPolicy};
use rusqlite::Connection;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The name errors and logs give this backend.
pub const NAME: &str = "embedded";

/// `[key_value_store.<label>] type = "embedded"`: no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {}

/// `[messaging.<client>] type = "embedded"`: the delivery policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// Delivery attempts before a message goes to `<topic>.deadletter`.
    #[serde(default = "delivery::default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubled after each
    /// failure (capped at 30 s).
    #[serde(default = "delivery::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        MessagingSettings {
            max_attempts: delivery::DEFAULT_MAX_ATTEMPTS,
            initial_backoff_ms: delivery::DEFAULT_INITIAL_BACKOFF_MS,
        }
    }
}

/// The embedded backend has no flags of its own (`--data-dir` is the host's).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "embedded-flags")]
pub struct Flags {}

/// The embedded backend of an app: the database, always open (it is the
/// default of every label and client), one key-value backend and one
/// broker shared by all labels and clients.
pub struct Embedded {
    store: Arc<EmbeddedKeyValue>,
    broker: Arc<EmbeddedBroker>,
    policies: BTreeMap<String, DeliveryPolicy>,
}

impl BackendUnit for Embedded {
    type StoreConfig = StoreSettings;
    type MessagingConfig = MessagingSettings;
    type Args = Flags;

    fn open(context: &OpenContext<'_>, _flags: &Flags) -> Result<Self, BackendError> {
        let db = EmbeddedDb::open(context.data_dir)?;
        Ok(Embedded {
            store: Arc::new(EmbeddedKeyValue::new(db.clone())),
            broker: Arc::new(EmbeddedBroker::new(db, context.subscriptions)),
            policies: BTreeMap::new(),
        })
    }

    fn store(
        &mut self,
        _label: &str,
        _settings: &StoreSettings,
    ) -> Result<Arc<dyn KeyValueBackend>, BackendError> {
        Ok(self.store.clone())
    }

    fn broker(
        &mut self,
        client: &str,
        settings: &MessagingSettings,
    ) -> Result<Arc<dyn MessageBroker>, BackendError> {
        self.policies.insert(
            client.to_string(),
            DeliveryPolicy::new(settings.max_attempts, settings.initial_backoff_ms),
        );
        Ok(self.broker.clone())
    }

    /// The dispatcher always runs: the queue may hold deliveries from an
    /// earlier run even when no client is embedded now.
    fn finish(self) -> Contribution {
        Contribution {
            receiver: Some(Arc::new(self.broker.receiver(self.policies))),
            ..Contribution::default()
        }
    }
}

/// The database file and its single connection. SQLite serialises writers
/// anyway; one connection behind a mutex, used from blocking threads, keeps
/// the async runtime free and the code simple.
pub struct EmbeddedDb {
    conn: Arc<Mutex<DbState>>,
    path: PathBuf,
}

struct DbState {
    conn: Connection,
    /// Next CAS version; global so a deleted-and-recreated key never
    /// reuses a version an old `cas` handle might hold, also across a
    /// restart (see `kv_meta` in the schema).
    next_version: i64,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    topic TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    data BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL REFERENCES messages(seq),
    subscriber TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_ms INTEGER NOT NULL,
    last_error TEXT,
    PRIMARY KEY (seq, subscriber)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due_ms);
-- The highest version a deleted row held: with MAX(kv.version) it bounds
-- every version ever used, so a reopened database never hands out a
-- version an old `cas` handle may hold (kept in the deleting transaction).
CREATE TABLE IF NOT EXISTS kv_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS kv_deleted AFTER DELETE ON kv BEGIN
    INSERT INTO kv_meta (name, value) VALUES ('max_deleted_version', OLD.version)
    ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value);
END;
CREATE INDEX IF NOT EXISTS messages_topic ON messages (topic);
"#;

impl EmbeddedDb {
    /// Opens (creating if needed) `wasmshop.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, BackendError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            BackendError::unavailable(NAME, format!(
                "cannot create the data directory {} ({e}); pass a writable one with --data-dir",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("wasmshop.db");
        let open = || -> rusqlite::Result<(Connection, i64)> {
            let conn = Connection::open(&path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(SCHEMA)?;
            let max: i64 = conn.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM kv), 0),
                            COALESCE((SELECT value FROM kv_meta WHERE name = 'max_deleted_version'), 0))",
                [],
                |r| r.get(0),
            )?;
            Ok((conn, max + 1))
        };
        let (conn, next_version) = open().map_err(|e| {
            BackendError::unavailable(NAME, format!(
                "cannot open the embedded database {} ({e}); check the file is not corrupt or used by another program",
                path.display()
            ))
        })?;
        Ok(Arc::new(EmbeddedDb {
            conn: Arc::new(Mutex::new(DbState { conn, next_version })),
            path,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbState) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BackendError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut state)
        })
        .await
        .map_err(|e| BackendError::rejected(NAME, format!("embedded database task failed: {e}")))?
        .map_err(|e| BackendError::rejected(NAME, format!("embedded database error: {e}; check free disk space and that nothing else writes {}", self.path.display())))
    }

    /// `SELECT 1`, for `/readyz`.
    async fn ping(&self) -> Result<(), BackendError> {
        self.call(|s| s.conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
