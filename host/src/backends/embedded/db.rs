//! The embedded database's connections (docs/embedded-store.md):
//!
//! - **one writer thread** owns the only write connection. Key-value writes
//!   reach it through a channel; it takes every write queued at that
//!   moment, applies them in one transaction (each compare-and-swap checked
//!   against the state including the earlier writes of the same batch),
//!   commits with one fsync (`synchronous=FULL`) and only then answers every
//!   caller (group commit). Other work on the write connection (the message
//!   queue's sends, acknowledgements, retries, dead letters:
//!   [`EmbeddedDb::call`]) joins the same batches, in its own savepoint,
//!   and is answered after the same commit.
//! - **a pool of reader threads**, each with its own read-only connection
//!   (WAL lets them read while the writer writes); they only ever see
//!   committed transactions, which in WAL mode with `synchronous=FULL` are
//!   on disk before any reader can see them.
//! - **short reads run where they are asked** ([`EmbeddedDb::read_here`]):
//!   a point read or a small `get_many` runs on the calling thread, on that
//!   thread's own read-only connection, instead of being handed to a
//!   reader thread and back (two thread wake-ups per read; see
//!   docs/embedded-store.md, "Connections and threads").

use super::NAME;
use super::cache::{Known, ReadCache, cache_key};
use crate::capabilities::BackendError;
use crate::capabilities::keyvalue::read_fence::{CommitLog, ReadFence, Reads};
use crate::capabilities::keyvalue::{CasVersion, add_to_stored};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Writes applied in one transaction at most; more queued writes wait for
/// the next commit, so one commit's answers are never held back for long.
const MAX_BATCH: usize = 512;

/// Page cache of each reader connection, in KiB (the PRAGMA takes a
/// negative number for KiB). Grown only as pages are touched.
const READER_CACHE_KIB: i64 = 32 * 1024;

/// Page cache of the write connection, in KiB: small, because SQLite walks
/// the writer's whole page cache at the end of every transaction
/// (`pcache1TruncateUnsafe` from `pager_end_transaction`), a cost that grew
/// with the database in the scale benchmark's profile; pages it drops are
/// read back through the memory map (docs/embedded-store.md, "Settings").
const WRITER_CACHE_KIB: i64 = 4 * 1024;

/// Bytes of the database file the write connection reads through `mmap`:
/// the pages its small cache does not hold come from the OS page cache
/// without a copy. Readers map none ([`READER_MMAP_BYTES`]).
const WRITER_MMAP_BYTES: i64 = 1 << 30;

/// Bytes a reader connection maps: none. A reader that begins a
/// transaction after any commit drops its page cache and unmaps the whole
/// file (`sqlite3PagerSharedLock` calls `unixUnfetch`), and with the
/// writer committing hundreds of times a second that `munmap` and the
/// faults that map the pages again were ~4% of the host's samples on
/// orders; reading those pages with `pread` costs 8% less CPU per order
/// and per create (docs/embedded-store.md, "Settings").
const READER_MMAP_BYTES: i64 = 0;

/// WAL pages after which a commit also checkpoints the WAL into the
/// database file (SQLite's default is 1000 pages of 4 KiB).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 1000;

/// Size the WAL file is truncated to after a checkpoint, in bytes.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// The database file, its writer thread and its reader threads.
pub struct EmbeddedDb {
    writer: mpsc::Sender<WriterJob>,
    readers: mpsc::Sender<ReadJob>,
    path: PathBuf,
    /// Which of a thread's own connections ([`HERE`]) belong to this
    /// database: unique per open, so a database opened again (a restart in
    /// a test) never reads through a connection of the earlier one.
    id: u64,
    /// Hot key-value entries, kept exact by the writer thread (`cache.rs`).
    cache: Arc<ReadCache>,
    /// The outcome of each batch, for reads of uncommitted values
    /// (`capabilities/keyvalue/read_fence.rs`).
    log: Arc<CommitLog>,
}

/// The read cache's budget when none is given: 16 MiB
/// (docs/embedded-store.md, "Read cache", says why not more).
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// The next [`EmbeddedDb::id`].
static NEXT_DB_ID: AtomicU64 = AtomicU64::new(1);

/// Read-only connections one thread keeps, one per database it read from
/// (a host opens one; tests open many): past this many the oldest closes.
const CONNECTIONS_PER_THREAD: usize = 4;

thread_local! {
    /// This thread's read-only connections for [`EmbeddedDb::read_here`],
    /// by [`EmbeddedDb::id`], opened on first use.
    static HERE: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
}

/// The writer's connection and version counter, as the writer thread
/// hands them to work queued with [`EmbeddedDb::call`]. That work runs
/// inside a batch's open transaction, in a savepoint of its own: it must
/// not begin, commit or roll back a transaction itself, nor write the `kv`
/// table (the read cache learns of key-value writes from [`WriteOp`]s
/// only).
pub struct DbState {
    pub(super) conn: Connection,
    /// Next CAS version; global so a deleted-and-recreated key never
    /// reuses a version an old `cas` handle might hold, also across a
    /// restart (see `kv_meta` in the schema).
    pub(super) next_version: i64,
    /// Transactions the writer has committed since it opened (one per
    /// batch): whether the current batch committed is whether it grew,
    /// and it lets a test see that work queued together shared one commit.
    pub(super) commits: u64,
    /// The read cache the writer keeps exact around each commit.
    pub(super) cache: Arc<ReadCache>,
    /// Number of the batch being applied (the first is 1); each batch's
    /// outcome goes to `log` before its jobs are answered.
    pub(super) batch: u64,
    pub(super) log: Arc<CommitLog>,
}

/// A read run on one of the reader threads.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// What the writer thread is asked to do; both kinds are grouped into
/// one transaction with whatever else is queued, in the order queued.
enum WriterJob {
    /// A key-value write.
    Write(Write),
    /// Other work on the write connection ([`EmbeddedDb::call`]).
    Call(Box<dyn Call>),
}

/// Work queued with [`EmbeddedDb::call`]: run inside a batch's
/// transaction, answered once the batch's fate is known.
trait Call: Send {
    /// Runs the work (once) on the open transaction. `Err` carries the
    /// text of its error when it failed (its savepoint is then undone).
    fn run(&mut self, state: &mut DbState) -> Result<(), String>;
    /// Answers the caller: the work's own result if its batch committed,
    /// else `batch`'s error (nothing of the work was kept).
    fn answer(self: Box<Self>, batch: Result<(), BackendError>);
}

/// What a [`Call`] answers: the batch's error, or the work's own result.
type CallAnswer<R> = Result<rusqlite::Result<R>, BackendError>;

/// A closure queued with [`EmbeddedDb::call`] and, once run, its result.
struct CallOf<R, F> {
    work: Option<F>,
    result: Option<rusqlite::Result<R>>,
    reply: oneshot::Sender<CallAnswer<R>>,
}

impl<R, F> Call for CallOf<R, F>
where
    R: Send,
    F: FnOnce(&mut DbState) -> rusqlite::Result<R> + Send,
{
    fn run(&mut self, state: &mut DbState) -> Result<(), String> {
        let Some(work) = self.work.take() else {
            return Err("the work was already run".into());
        };
        let result = work(state);
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.result = Some(result);
        outcome
    }

    fn answer(self: Box<Self>, batch: Result<(), BackendError>) {
        let answer = match (batch, self.result) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(result)) => Ok(result),
            // It panicked: its savepoint was undone.
            (Ok(()), None) => Err(BackendError::rejected(
                NAME,
                "the embedded database's writer failed on this work and kept none of it; retry the request",
            )),
        };
        let _ = self.reply.send(answer);
    }
}

/// One queued key-value write and where its answer goes.
struct Write {
    ns: Arc<str>,
    op: WriteOp,
    /// The batches whose uncommitted values the writing request read: the
    /// write is refused if one of them failed.
    after: Option<Reads>,
    reply: oneshot::Sender<Result<Applied, BackendError>>,
}

/// A key-value write in namespace `ns` (`<component>/<label>`).
#[derive(Debug, Clone)]
pub(super) enum WriteOp {
    /// Writes every entry, each with a fresh version.
    Set(Vec<(String, Vec<u8>)>),
    /// Deletes every key (absent keys are fine).
    Delete(Vec<String>),
    /// Adds `delta` to the decimal integer stored at `key` (absent = 0).
    Increment { key: String, delta: i64 },
    /// Writes `value` only if `key` is still at `expected`.
    Swap {
        key: String,
        expected: CasVersion,
        value: Vec<u8>,
    },
}

impl WriteOp {
    /// The keys the write may change.
    fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            WriteOp::Set(entries) => Box::new(entries.iter().map(|(k, _)| k.as_str())),
            WriteOp::Delete(keys) => Box::new(keys.iter().map(String::as_str)),
            WriteOp::Increment { key, .. } | WriteOp::Swap { key, .. } => {
                Box::new(std::iter::once(key.as_str()))
            }
        }
    }
}

/// How a write ended when its batch committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    /// Written (and committed).
    Done,
    /// The increment's new value (committed).
    Incremented(i64),
    /// The swap's key was not at the expected version; nothing written.
    CasFailed,
    /// The write was refused before anything was written (an increment of
    /// a value that is not a number).
    Refused(BackendError),
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

/// Settings every connection gets, with the page cache (`cache_kib`,
/// KiB) and the bytes of the file mapped (`mmap_bytes`) that differ
/// between the writer and the readers (see docs/embedded-store.md for
/// why).
fn tune(conn: &Connection, cache_kib: i64, mmap_bytes: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "mmap_size", mmap_bytes)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Opens the write connection: WAL, `synchronous=FULL`, the schema, and
/// the next version to hand out; the writer keeps `cache` exact.
fn open_writer(path: &Path, cache: Arc<ReadCache>) -> rusqlite::Result<DbState> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    tune(&conn, WRITER_CACHE_KIB, WRITER_MMAP_BYTES)?;
    conn.execute_batch(SCHEMA)?;
    let max: i64 = conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(version) FROM kv), 0),
                    COALESCE((SELECT value FROM kv_meta WHERE name = 'max_deleted_version'), 0))",
        [],
        |r| r.get(0),
    )?;
    Ok(DbState {
        conn,
        next_version: max + 1,
        commits: 0,
        cache,
        batch: 0,
        log: CommitLog::new(),
    })
}

/// Opens one read-only connection (after the writer made the file WAL).
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    tune(&conn, READER_CACHE_KIB, READER_MMAP_BYTES)?;
    Ok(conn)
}

/// Opens `wasmshop.db` in `data_dir` for an inspection command
/// (`wasmshop messages`) while a host may hold it: read-only, never
/// created, no schema and no pragma that changes the file, so it takes no
/// lock beyond a reader's and changes nothing a running host relies on.
/// The error names the file and what to pass instead.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, BackendError> {
    let path = data_dir.join("wasmshop.db");
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    })
    .map_err(|e| {
        BackendError::unavailable(
            NAME,
            format!(
                "cannot open the embedded database {} read-only ({e}); pass the --data-dir the host runs with",
                path.display()
            ),
        )
    })?;
    Ok(conn)
}

/// Reader connections: one per core, at least 2.
fn reader_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

fn stopped() -> BackendError {
    BackendError::unavailable(
        NAME,
        "the embedded database's worker thread stopped (see the error logged before); restart the host",
    )
}

impl EmbeddedDb {
    /// Opens (creating if needed) `wasmshop.db` in `data_dir` and starts
    /// its writer thread and reader threads, with a read cache of
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, BackendError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open`] with a read cache of `cache_bytes` (0: none).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Arc<Self>, BackendError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            BackendError::unavailable(NAME, format!(
                "cannot create the data directory {} ({e}); pass a writable one with --data-dir",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("wasmshop.db");
        let cannot_open = |e: rusqlite::Error| {
            BackendError::unavailable(
                NAME,
                format!(
                    "cannot open the embedded database {} ({e}); check the file is not corrupt or used by another program",
                    path.display()
                ),
            )
        };
        let cache = Arc::new(ReadCache::new(cache_bytes));
        let state = open_writer(&path, cache.clone()).map_err(cannot_open)?;
        let log = state.log.clone();
        let readers = (0..reader_count())
            .map(|_| open_reader(&path))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(cannot_open)?;
        let spawn_failed = |e: std::io::Error| {
            BackendError::unavailable(
                NAME,
                format!(
                    "cannot start a thread of the embedded database ({e}); check the process limits (ulimit -u)"
                ),
            )
        };
        let (writer, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(state, jobs))
            .map_err(spawn_failed)?;
        let (read_tx, read_rx) = mpsc::channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        for (i, conn) in readers.into_iter().enumerate() {
            let rx = read_rx.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || reader_loop(conn, rx))
                .map_err(spawn_failed)?;
        }
        Ok(Arc::new(EmbeddedDb {
            writer,
            readers: read_tx,
            path,
            id: NEXT_DB_ID.fetch_add(1, Ordering::Relaxed),
            cache,
            log,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read cache of key-value entries (`cache.rs`).
    pub(super) fn cache(&self) -> &ReadCache {
        &self.cache
    }

    /// The outcome of each of this database's batches.
    pub(super) fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    fn failed(&self, e: rusqlite::Error) -> BackendError {
        BackendError::rejected(
            NAME,
            format!(
                "embedded database error: {e}; check free disk space and that nothing else writes {}",
                self.path.display()
            ),
        )
    }

    /// Runs `f` on the write connection, on the writer thread, as one step
    /// of the next group commit: inside the batch's transaction, in its
    /// own savepoint (if `f` fails, what it wrote is undone and the rest of
    /// the batch is kept), in the order queued with the key-value writes.
    /// Answers only after the batch's commit (fsync), so what `f` wrote is
    /// on disk when `Ok` arrives. `f` must not begin, commit or roll back
    /// a transaction (the savepoint makes its writes atomic). Errors: `f`'s
    /// own error, or the batch's when its transaction failed as a whole.
    pub(super) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbState) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriterJob::Call(Box::new(CallOf {
                work: Some(f),
                result: None,
                reply,
            })))
            .map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())??
            .map_err(|e| self.failed(e))
    }

    /// Runs `f` on a read-only connection of the pool: it sees committed
    /// transactions only.
    pub(super) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BackendError> {
        let (tx, rx) = oneshot::channel();
        self.readers
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map_err(|e| self.failed(e))
    }

    /// Runs `f` at once on this thread's own read-only connection (opened
    /// on first use, kept for the thread's life): for reads short enough
    /// to run where the request runs (a point read, a small `get_many`),
    /// it saves the hand-off to a reader thread and back that
    /// [`Self::read`] costs. Same guarantees as [`Self::read`] (committed
    /// transactions only). It blocks the calling thread for the read, so
    /// reads that may be long (key listings, large batches) use
    /// [`Self::read`]. A panicking `f` is answered with an error, and its
    /// connection is closed.
    pub(super) fn read_here<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, BackendError> {
        HERE.with(|cell| {
            let mut conns = cell.borrow_mut();
            let at = match conns.iter().position(|(id, _)| *id == self.id) {
                Some(at) => at,
                None => {
                    let conn = open_reader(&self.path).map_err(|e| self.failed(e))?;
                    if conns.len() >= CONNECTIONS_PER_THREAD {
                        conns.remove(0);
                    }
                    conns.push((self.id, conn));
                    conns.len() - 1
                }
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(&conns[at].1))) {
                Ok(result) => result.map_err(|e| self.failed(e)),
                Err(_) => {
                    conns.remove(at);
                    tracing::error!(
                        "a read of the embedded database panicked; it was answered with an error"
                    );
                    Err(BackendError::rejected(
                        NAME,
                        "a read of the embedded database failed unexpectedly (logged); retry the request",
                    ))
                }
            }
        })
    }

    /// Queues a key-value write for the next group commit; answers once
    /// its batch is committed (on disk), or failed.
    ///
    /// A request that read uncommitted values of a batch
    /// ([`ReadFence`]) has the write refused if that batch failed.
    pub(super) async fn write(&self, ns: Arc<str>, op: WriteOp) -> Result<Applied, BackendError> {
        let (reply, rx) = oneshot::channel();
        let after = ReadFence::current().and_then(|f| f.dependency(&self.log));
        self.writer
            .send(WriterJob::Write(Write {
                ns,
                op,
                after,
                reply,
            }))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// `SELECT 1` on a reader and on the writer thread, for `/readyz`.
    pub(super) async fn ping(&self) -> Result<(), BackendError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        self.call(|s| s.conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

/// A reader thread: runs reads until the database is dropped.
fn reader_loop(conn: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        // A panicking read drops its answer (the caller gets an error); the
        // connection stays usable (a statement is reset when dropped).
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&conn))).is_err() {
            tracing::error!(
                "a read of the embedded database panicked; it was answered with an error"
            );
        }
    }
}

/// The writer thread: takes every queued job (at most [`MAX_BATCH`]),
/// runs them in one transaction in the order they came, commits once and
/// answers them all; until the database is dropped.
fn writer_loop(mut state: DbState, jobs: mpsc::Receiver<WriterJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut state, batch);
    }
}

fn rollback_open_transaction(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// One step of a batch, as [`apply_steps`] runs it.
enum Step<'a> {
    /// A key-value write in a namespace, and the batches it depends on.
    Write(&'a str, &'a WriteOp, Option<Reads>),
    /// Work queued with [`EmbeddedDb::call`].
    Call(&'a mut dyn Call),
}

/// Runs `batch` in one transaction and answers every job after the commit.
fn commit_batch(state: &mut DbState, mut batch: Vec<WriterJob>) {
    if batch.is_empty() {
        return;
    }
    state.batch += 1;
    let commits_before = state.commits;
    let mut steps: Vec<Step<'_>> = batch
        .iter_mut()
        .map(|job| match job {
            WriterJob::Write(w) => Step::Write(&w.ns, &w.op, w.after),
            WriterJob::Call(c) => Step::Call(&mut **c),
        })
        .collect();
    let results = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        apply_steps(state, &mut steps)
    })) {
        Ok(results) => results,
        Err(_) => {
            tracing::error!(
                "a batch of embedded database writes panicked; none of them was written"
            );
            rollback_open_transaction(&state.conn);
            let e = BackendError::rejected(
                NAME,
                "the embedded database's writer failed on this batch and wrote none of it; retry the request",
            );
            vec![Err(e); steps.len()]
        }
    };
    drop(steps);
    // Before any answer: a request that read this batch's uncommitted
    // values learns its fate no later than the batch's own writers.
    state
        .log
        .settle(state.batch, state.commits > commits_before);
    for (job, result) in batch.into_iter().zip(results) {
        match job {
            WriterJob::Write(w) => {
                let _ = w.reply.send(result);
            }
            WriterJob::Call(c) => c.answer(result.map(|_| ())),
        }
    }
}

/// [`apply_steps`] for key-value writes only (the unit tests' entry).
#[cfg(test)]
fn apply_batch(
    state: &mut DbState,
    ops: &[(&str, &WriteOp)],
) -> Vec<Result<Applied, BackendError>> {
    let mut steps: Vec<Step<'_>> = ops
        .iter()
        .map(|(ns, op)| Step::Write(ns, op, None))
        .collect();
    apply_steps(state, &mut steps)
}

/// One transaction for every step of the batch, each in its own savepoint
/// so a failing step is undone alone; then one commit (one fsync). A
/// step's result is only valid if the commit succeeded, so a failed commit
/// turns every result into that failure. Each compare-and-swap reads the
/// key inside the transaction, so it sees earlier writes of the batch. A
/// [`Step::Call`] keeps its own result (see [`Call::answer`]); its entry
/// here is `Ok` unless the batch failed as a whole.
fn apply_steps(state: &mut DbState, steps: &mut [Step<'_>]) -> Vec<Result<Applied, BackendError>> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        BackendError::rejected(
            NAME,
            format!(
                "embedded database error ({what}): {e}; check free disk space and that nothing else writes the database"
            ),
        )
    };
    if let Err(e) = state.conn.execute_batch("BEGIN IMMEDIATE") {
        return vec![Err(failed("starting a transaction", &e)); steps.len()];
    }
    let mut results = Vec::with_capacity(steps.len());
    // For the read cache: the final state of every key the batch wrote,
    // and every key a write step touched, kept or not (forgetting a key
    // is always safe; a failed step is undone whole, see `undo_step`).
    // Nothing is collected when the cache is off (no copy of each value).
    let mut written: Vec<(String, Known)> = Vec::new();
    let mut touched: Vec<String> = Vec::new();
    let cache = state.cache.clone();
    let caching = cache.enabled();
    for step in steps.iter_mut() {
        let result: Result<Applied, String> = match step {
            Step::Write(_, _, Some(after)) if state.log.failed(*after) => {
                results.push(Err(BackendError::unavailable(
                    NAME,
                    format!(
                        "write not made: the request read a value of embedded batch {} being committed, and that commit failed, so the value never existed; retry the request",
                        after.last
                    ),
                )));
                continue;
            }
            Step::Write(ns, op, _) => {
                let mut effects = Vec::new();
                if caching {
                    touched.extend(op.keys().map(|k| cache_key(ns, k)));
                }
                let applied = in_savepoint(&state.conn, |conn| {
                    let effects = caching.then_some(&mut effects);
                    apply(conn, &mut state.next_version, ns, op, effects)
                })
                .map_err(|e| e.to_string());
                if applied.is_ok() {
                    written.append(&mut effects);
                }
                applied
            }
            Step::Call(call) => run_call(state, &mut **call),
        };
        if state.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (as it may on a full
            // disk or an I/O error), or the work ended it: nothing of the
            // batch is known to be kept, and the steps after this one must
            // not run outside a transaction.
            let why = match &result {
                Err(e) => e.clone(),
                Ok(_) => "work on the write connection ended the batch's transaction".into(),
            };
            tracing::error!(error = %why, "a batch of embedded database writes was rolled back as a whole");
            // Forgetting keys is always safe, and right should the work
            // have committed the earlier steps instead.
            drop(cache.begin_commit(touched.iter().map(String::as_str)));
            return vec![
                Err(failed("writing; the whole batch was rolled back", &why));
                steps.len()
            ];
        }
        results.push(result.map_err(|e| failed("writing", &e)));
    }
    let pending = cache.begin_commit(touched.iter().map(String::as_str));
    pending.offer_uncommitted(&written, state.batch);
    if let Err(e) = state.conn.execute_batch("COMMIT") {
        rollback_open_transaction(&state.conn);
        return vec![Err(failed("committing", &e)); steps.len()];
    }
    pending.committed(written);
    state.commits += 1;
    results
}

/// Runs queued work in a savepoint: kept when it succeeds, undone when it
/// fails or panics. `Ok` either way (the work answers its own error); `Err`
/// only when the savepoint itself could not be made or released.
fn run_call(state: &mut DbState, call: &mut dyn Call) -> Result<Applied, String> {
    let savepoint = |conn: &Connection, sql: &str| -> Result<(), String> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    savepoint(&state.conn, "SAVEPOINT w")?;
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| call.run(state))).unwrap_or_else(|_| {
        tracing::error!("work on the embedded database panicked; it was answered with an error");
        Err("the work panicked".into())
    });
    if state.conn.is_autocommit() {
        return ran.map(|()| Applied::Done);
    }
    match ran {
        Ok(()) => savepoint(&state.conn, "RELEASE w")?,
        Err(_) => undo_step(&state.conn),
    }
    Ok(Applied::Done)
}

/// Undoes the step in savepoint `w`. Should that fail, the whole
/// transaction is rolled back instead, so a step is never kept in part:
/// its caller is told it was not made, and readers of the batch in
/// flight (fenced compare-and-swap reads) see only the batch's steps that
/// were, so a half-kept step would be a write nobody knows of. The batch
/// then fails as a whole ([`apply_steps`] finds the connection out of its
/// transaction).
fn undo_step(conn: &Connection) {
    if conn.execute_batch("ROLLBACK TO w; RELEASE w").is_err() {
        tracing::error!("undoing one write of a batch failed; the whole batch is rolled back");
        rollback_open_transaction(conn);
    }
}

/// Runs `f` in a savepoint: kept when it succeeds, undone when it fails.
fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    conn.prepare_cached("SAVEPOINT w")?.execute([])?;
    match f(conn) {
        Ok(r) => {
            conn.prepare_cached("RELEASE w")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            undo_step(conn);
            Err(e)
        }
    }
}

/// Writes a value with a fresh version; returns that version.
fn upsert(
    conn: &Connection,
    next_version: &mut i64,
    ns: &str,
    key: &str,
    value: &[u8],
) -> rusqlite::Result<i64> {
    let version = *next_version;
    *next_version += 1;
    conn.prepare_cached(
        "INSERT INTO kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, version = excluded.version",
    )?
    .execute(params![ns, key, value, version])?;
    Ok(version)
}

/// Applies one write inside the batch's transaction, adding to `written`
/// (when given: the read cache is on) the state it leaves each key in.
fn apply(
    conn: &Connection,
    next_version: &mut i64,
    ns: &str,
    op: &WriteOp,
    mut written: Option<&mut Vec<(String, Known)>>,
) -> rusqlite::Result<Applied> {
    // Values are copied for the cache only when it is on.
    let mut record = |key: &str, known: &dyn Fn() -> Known| {
        if let Some(written) = written.as_mut() {
            written.push((cache_key(ns, key), known()));
        }
    };
    match op {
        WriteOp::Set(entries) => {
            for (k, v) in entries {
                let version = upsert(conn, next_version, ns, k, v)?;
                record(k, &|| Some((Arc::from(&v[..]), version)));
            }
            Ok(Applied::Done)
        }
        WriteOp::Delete(keys) => {
            let mut stmt = conn.prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?;
            for k in keys {
                stmt.execute(params![ns, k])?;
                record(k, &|| None);
            }
            Ok(Applied::Done)
        }
        WriteOp::Increment { key, delta } => {
            let current: Option<Vec<u8>> = conn
                .prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND key = ?2")?
                .query_row(params![ns, key], |r| r.get(0))
                .optional()?;
            match add_to_stored(NAME, key, current.as_deref(), *delta) {
                Ok(next) => {
                    let text = next.to_string();
                    let version = upsert(conn, next_version, ns, key, text.as_bytes())?;
                    record(key, &|| Some((Arc::from(text.as_bytes()), version)));
                    Ok(Applied::Incremented(next))
                }
                Err(e) => Ok(Applied::Refused(e)),
            }
        }
        WriteOp::Swap {
            key,
            expected,
            value,
        } => {
            let current: Option<i64> = conn
                .prepare_cached("SELECT version FROM kv WHERE ns = ?1 AND key = ?2")?
                .query_row(params![ns, key], |r| r.get(0))
                .optional()?;
            let matches = match (expected, current) {
                (CasVersion::Absent, None) => true,
                (CasVersion::Version(v), Some(c)) => v.parse::<i64>().ok() == Some(c),
                _ => false,
            };
            if !matches {
                return Ok(Applied::CasFailed);
            }
            let version = upsert(conn, next_version, ns, key, value)?;
            record(key, &|| Some((Arc::from(&value[..]), version)));
            Ok(Applied::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The batch logic, applied directly (no threads): what one group
    //! commit decides for writes that meet in the same transaction.
    use super::*;

    fn state() -> (tempfile::TempDir, DbState) {
        let dir = tempfile::tempdir().unwrap();
        let state =
            open_writer(&dir.path().join("wasmshop.db"), Arc::new(ReadCache::new(0))).unwrap();
        (dir, state)
    }

    fn value(state: &DbState, key: &str) -> Option<(Vec<u8>, i64)> {
        state
            .conn
            .query_row(
                "SELECT value, version FROM kv WHERE ns = 'c/default' AND key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .unwrap()
    }

    fn swap(key: &str, expected: CasVersion, value: &str) -> WriteOp {
        WriteOp::Swap {
            key: key.into(),
            expected,
            value: value.as_bytes().to_vec(),
        }
    }

    fn run(state: &mut DbState, ops: &[WriteOp]) -> Vec<Applied> {
        let ops: Vec<(&str, &WriteOp)> = ops.iter().map(|o| ("c/default", o)).collect();
        apply_batch(state, &ops)
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn a_swap_is_checked_against_an_earlier_write_of_the_same_batch() {
        let (_dir, mut s) = state();
        let first = s.next_version;
        let results = run(
            &mut s,
            &[
                // Two creators of the same key: only the first wins.
                swap("k", CasVersion::Absent, "a"),
                swap("k", CasVersion::Absent, "b"),
                // A swap based on the version the first write gave: wins.
                swap("k", CasVersion::Version(first.to_string()), "c"),
                // A second swap based on that same version: it is stale now.
                swap("k", CasVersion::Version(first.to_string()), "d"),
            ],
        );
        assert_eq!(
            results,
            [
                Applied::Done,
                Applied::CasFailed,
                Applied::Done,
                Applied::CasFailed
            ]
        );
        let (v, version) = value(&s, "k").unwrap();
        assert_eq!(v, b"c");
        assert!(version > first);
    }

    #[test]
    fn a_write_based_on_a_failed_batch_is_refused_and_writes_nothing() {
        let (_dir, mut s) = state();
        s.log.settle(1, true);
        s.log.settle(2, false);
        let set = |v: &str| WriteOp::Set(vec![("k".into(), v.as_bytes().to_vec())]);
        let (kept, refused) = (set("after-committed"), set("after-failed"));
        let mut steps = vec![
            Step::Write("c/default", &kept, Some(Reads::one(1))),
            Step::Write("c/default", &refused, Some(Reads { first: 2, last: 3 })),
        ];
        let results = apply_steps(&mut s, &mut steps);
        assert_eq!(results[0].as_ref().unwrap(), &Applied::Done);
        let e = results[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("batch 3") && e.contains("retry"), "{e}");
        assert_eq!(value(&s, "k").unwrap().0, b"after-committed");
    }

    #[test]
    fn a_failing_write_does_not_fail_its_batch_neighbours() {
        let (_dir, mut s) = state();
        run(
            &mut s,
            &[WriteOp::Set(vec![("text".into(), b"abc".to_vec())])],
        );
        let results = run(
            &mut s,
            &[
                WriteOp::Set(vec![("before".into(), b"1".to_vec())]),
                WriteOp::Increment {
                    key: "text".into(),
                    delta: 1,
                },
                swap("before", CasVersion::Version("999999".into()), "x"),
                WriteOp::Increment {
                    key: "n".into(),
                    delta: 5,
                },
                WriteOp::Delete(vec!["absent".into()]),
            ],
        );
        assert!(matches!(results[1], Applied::Refused(_)), "{results:?}");
        assert_eq!(results[0], Applied::Done);
        assert_eq!(results[2], Applied::CasFailed);
        assert_eq!(results[3], Applied::Incremented(5));
        assert_eq!(results[4], Applied::Done);
        assert_eq!(value(&s, "before").unwrap().0, b"1");
        assert_eq!(value(&s, "text").unwrap().0, b"abc");
        assert_eq!(value(&s, "n").unwrap().0, b"5");
    }

    #[test]
    fn a_write_failing_in_the_database_is_undone_alone() {
        let (_dir, mut s) = state();
        // A trigger that refuses one key makes the second entry of a
        // set_many fail after its first entry was written.
        s.conn
            .execute_batch(
                "CREATE TEMP TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'refused on purpose'); END;",
            )
            .unwrap();
        let set = |entries: &[(&str, &str)]| {
            WriteOp::Set(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let ops = [
            set(&[("a", "1")]),
            set(&[("half", "1"), ("bad", "1")]),
            set(&[("b", "1")]),
        ];
        let ops: Vec<(&str, &WriteOp)> = ops.iter().map(|o| ("c/default", o)).collect();
        let results = apply_batch(&mut s, &ops);
        assert_eq!(results[0], Ok(Applied::Done));
        assert!(results[1].is_err(), "{results:?}");
        assert_eq!(results[2], Ok(Applied::Done));
        assert!(value(&s, "a").is_some());
        assert!(value(&s, "b").is_some());
        assert!(value(&s, "half").is_none(), "the failed write left nothing");
    }

    #[test]
    fn on_a_full_database_a_write_is_answered_ok_only_if_it_is_kept() {
        let (_dir, mut s) = state();
        let pages: i64 = s
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        s.conn
            .pragma_update(None, "max_page_count", pages + 4)
            .unwrap();
        let ops: Vec<WriteOp> = (0..12)
            .map(|i| WriteOp::Set(vec![(format!("k{i}"), vec![b'x'; 3000])]))
            .collect();
        let batch: Vec<(&str, &WriteOp)> = ops.iter().map(|o| ("c/default", o)).collect();
        let results = apply_batch(&mut s, &batch);
        assert!(results.iter().any(|r| r.is_err()), "the file is full");
        for (i, r) in results.iter().enumerate() {
            let kept = value(&s, &format!("k{i}")).is_some();
            assert_eq!(r.is_ok(), kept, "write {i}: {r:?}, kept: {kept}");
        }
        // The writer goes on once there is room again.
        s.conn
            .pragma_update(None, "max_page_count", 1 << 30)
            .unwrap();
        assert_eq!(run(&mut s, &ops[..1]), [Applied::Done]);
    }

    #[tokio::test]
    async fn concurrent_writes_are_all_answered_and_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let ns: Arc<str> = Arc::from("c/default");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (db, ns) = (db.clone(), ns.clone());
                tokio::spawn(async move {
                    db.write(ns, WriteOp::Set(vec![(format!("k{i}"), b"v".to_vec())]))
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Applied::Done);
        }
        let n: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 200);
    }

    #[tokio::test]
    async fn reads_on_the_calling_thread_see_each_database_s_own_committed_writes() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = EmbeddedDb::open(dir_a.path()).unwrap();
        let b = EmbeddedDb::open(dir_b.path()).unwrap();
        let ns: Arc<str> = Arc::from("c/default");
        let value = |db: &EmbeddedDb| {
            db.read_here(|c| {
                c.query_row("SELECT value FROM kv WHERE key = 'k'", [], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .optional()
            })
            .unwrap()
        };
        let set = |v: &[u8]| WriteOp::Set(vec![("k".into(), v.to_vec())]);
        assert_eq!(value(&a), None);
        a.write(ns.clone(), set(b"1")).await.unwrap();
        // The connection opened by the first read sees the later commit.
        assert_eq!(value(&a), Some(b"1".to_vec()));
        assert_eq!(value(&b), None, "another database, another connection");
        b.write(ns.clone(), set(b"2")).await.unwrap();
        assert_eq!(
            (value(&a), value(&b)),
            (Some(b"1".to_vec()), Some(b"2".to_vec()))
        );
        // A database opened again on the same file gets a fresh connection.
        drop(a);
        let again = EmbeddedDb::open(dir_a.path()).unwrap();
        assert_eq!(value(&again), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn a_panicking_read_on_the_calling_thread_is_an_error_and_the_next_read_works() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let panicked = db.read_here(|_| -> rusqlite::Result<()> { panic!("a bug in a read") });
        assert!(panicked.is_err());
        let n: i64 = db
            .read_here(|c| c.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn queue_work_and_key_value_writes_share_one_commit_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let ns: Arc<str> = Arc::from("c/default");
        let set = |key: &str| WriteOp::Set(vec![(key.to_string(), b"v".to_vec())]);
        let message = |s: &mut DbState, topic: &str| {
            s.conn.execute(
                "INSERT INTO messages (client, topic, metadata, data, created_ms)
                 VALUES ('bus', ?1, '[]', x'', 0)",
                [topic],
            )
        };
        // Hold the writer thread so that everything below queues up
        // behind it and forms the next batch.
        let (started, is_running) = oneshot::channel();
        let (release, gate) = mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let db = db.clone();
            async move {
                db.call(move |_| {
                    let _ = started.send(());
                    let _ = gate.recv();
                    Ok(())
                })
                .await
            }
        });
        is_running.await.unwrap();
        let (before, sent, refused, after, ()) = tokio::join!(
            db.write(ns.clone(), set("before")),
            // A send: it sees the write queued before it (same
            // transaction, not committed yet) and how many commits the
            // writer had made when it ran.
            db.call(move |s| {
                message(s, "kept")?;
                let seen: i64 =
                    s.conn
                        .query_row("SELECT COUNT(*) FROM kv WHERE key = 'before'", [], |r| {
                            r.get(0)
                        })?;
                Ok((seen, s.conn.is_autocommit(), s.commits))
            }),
            // Work that writes, then fails: undone alone.
            db.call(move |s| {
                message(s, "undone")?;
                s.conn.execute("INSERT INTO no_such_table VALUES (1)", [])
            }),
            db.write(ns.clone(), set("after")),
            async {
                release.send(()).unwrap();
            },
        );
        blocker.await.unwrap().unwrap();
        assert_eq!(before.unwrap(), Applied::Done);
        assert_eq!(after.unwrap(), Applied::Done);
        let (seen, autocommit, commits_then) = sent.unwrap();
        assert_eq!(seen, 1, "the send ran after the earlier write of its batch");
        assert!(!autocommit, "the send ran inside the batch's transaction");
        let refused = refused.expect_err("the failing work is answered with its error");
        assert!(refused.to_string().contains("no_such_table"), "{refused}");
        // The whole batch was one commit: the next work sees one more.
        let commits_now = db.call(|s| Ok(s.commits)).await.unwrap();
        assert_eq!(commits_now, commits_then + 1, "one commit for the batch");
        let (keys, topics): (i64, Vec<String>) = db
            .read(|c| {
                let keys = c.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))?;
                let topics = c
                    .prepare("SELECT topic FROM messages ORDER BY seq")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok((keys, topics))
            })
            .await
            .unwrap();
        assert_eq!(keys, 2, "both key-value writes are kept");
        assert_eq!(topics, ["kept"], "the failed work left nothing");
    }
}

#[cfg(test)]
mod measure {
    //! The effect of group commit, measured, not asserted (the machine is
    //! shared): `cargo test -p wasmshop-host --lib group_commit_effect --
    //! --ignored --nocapture` prints writes/s with 1 writer at a time (one
    //! commit and one fsync each, as before group commit) and with 64
    //! concurrent writers; `group_commit_effect_on_creates_with_events`
    //! does the same for a create that also sends an event and
    //! acknowledges it (queue work on the write connection).
    use super::*;
    use std::time::Instant;

    async fn writes_per_second(db: &Arc<EmbeddedDb>, writers: usize, per_writer: usize) -> f64 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        let op = WriteOp::Set(vec![(format!("w{w}-{i}"), vec![b'x'; 1000])]);
                        db.write(Arc::from("c/default"), op).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
    }

    /// A product create as the services do it: the key-value write, the
    /// event sent (a message and its delivery row), then the delivery
    /// acknowledged (both removed); each a separate call, as the host
    /// makes them.
    async fn creates_per_second(db: &Arc<EmbeddedDb>, writers: usize, per_writer: usize) -> f64 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        let op = WriteOp::Set(vec![(format!("p{w}-{i}"), vec![b'x'; 1000])]);
                        db.write(Arc::from("c/default"), op).await.unwrap();
                        let seq = db
                            .call(|s| {
                                s.conn.execute(
                                    "INSERT INTO messages (client, topic, metadata, data, created_ms)
                                     VALUES ('bus', 'products', '[]', zeroblob(300), 0)",
                                    [],
                                )?;
                                let seq = s.conn.last_insert_rowid();
                                s.conn.execute(
                                    "INSERT INTO deliveries (seq, subscriber, due_ms) VALUES (?1, 'order', 0)",
                                    [seq],
                                )?;
                                Ok(seq)
                            })
                            .await
                            .unwrap();
                        db.call(move |s| {
                            s.conn
                                .execute("DELETE FROM deliveries WHERE seq = ?1", [seq])?;
                            s.conn.execute("DELETE FROM messages WHERE seq = ?1", [seq])
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn group_commit_effect_on_creates_with_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let one = creates_per_second(&db, 1, 100).await;
        let many = creates_per_second(&db, 64, 20).await;
        println!(
            "creates (write + send + acknowledge): 1 at a time: {one:.0}/s; 64 concurrent: {many:.0}/s ({:.1}x)",
            many / one
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn group_commit_effect() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let one = writes_per_second(&db, 1, 300).await;
        let many = writes_per_second(&db, 64, 100).await;
        println!(
            "1 writer: {one:.0} writes/s; 64 writers: {many:.0} writes/s ({:.1}x)",
            many / one
        );
    }
}
