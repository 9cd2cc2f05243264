//! The embedded backend: one SQLite database (WAL, `synchronous=FULL`) in
//! the data directory holds key-value data and the message queue, so an
//! acknowledged write or an accepted message survives `kill -9` and power
//! loss alike.

mod keyvalue;
mod messaging;

pub use keyvalue::EmbeddedKeyValue;
pub use messaging::{DEAD_LETTER_SUFFIX, Dispatcher, EmbeddedBroker, stored_messages};

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// reuses a version an old `cas` handle might hold.
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
CREATE INDEX IF NOT EXISTS messages_topic ON messages (topic);
"#;

impl EmbeddedDb {
    /// Opens (creating if needed) `wasmshop.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            format!(
                "cannot create the data directory {} ({e}); pass a writable one with --data-dir",
                data_dir.display()
            )
        })?;
        let path = data_dir.join("wasmshop.db");
        let open = || -> rusqlite::Result<(Connection, i64)> {
            let conn = Connection::open(&path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(SCHEMA)?;
            let max: i64 =
                conn.query_row("SELECT COALESCE(MAX(version), 0) FROM kv", [], |r| r.get(0))?;
            Ok((conn, max + 1))
        };
        let (conn, next_version) = open().map_err(|e| {
            format!(
                "cannot open the embedded database {} ({e}); check the file is not corrupt or used by another program",
                path.display()
            )
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
    ) -> Result<R, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut state)
        })
        .await
        .map_err(|e| format!("embedded database task failed: {e}"))?
        .map_err(|e| format!("embedded database error: {e}"))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
