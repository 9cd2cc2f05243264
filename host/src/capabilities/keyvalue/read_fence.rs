//! Reads of writes whose commit is still in flight, and the fence that
//! keeps everything derived from them inside the host until that commit is
//! durable (docs/embedded-store.md, "What readers see meanwhile").
//!
//! The embedded store may answer the read of a compare-and-swap with the
//! value a batch is committing (its fsync still running): the swap that
//! follows then joins the next batch instead of failing against the old
//! value and starting over. Should that commit fail, the value never
//! existed, so the request that read it must not have told anyone. For a
//! request holding a [`ReadFence`]:
//! - its writes to that store name the batches they depend on, and the
//!   writer refuses them if one failed ([`CommitLog::failed`]);
//! - its writes to other stores, its publishes, its outbound calls (each
//!   frame of their bodies too) and its answer wait for those batches'
//!   outcome ([`ReadFence::settle`]) and fail if one failed.
//!
//! Code running outside a fence's scope (deliveries, background work)
//! never reads an uncommitted value, nor does a request once its response
//! was handed over ([`ReadFence::close`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Failed batches a [`CommitLog`] remembers by number; older ones are
/// summed up as "everything before the oldest remembered" (a dependency
/// on one of them is refused, which is only ever too careful).
const MAX_REMEMBERED_FAILURES: usize = 4096;

/// The outcome of each numbered commit (batch) of one store, in order:
/// kept by its writer, read by fences.
pub struct CommitLog {
    /// The highest batch number whose outcome is known (batches settle in
    /// order, so every lower one is known too).
    settled: watch::Sender<u64>,
    failed: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    batches: BTreeSet<u64>,
    /// Batches below this number that failed may no longer be listed.
    forgotten_below: u64,
}

impl CommitLog {
    /// A log in which no batch has settled yet.
    pub fn new() -> Arc<Self> {
        Arc::new(CommitLog {
            settled: watch::Sender::new(0),
            failed: Mutex::new(Failures::default()),
        })
    }

    fn failures(&self) -> MutexGuard<'_, Failures> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that batch `batch` committed (`ok`) or failed. The writer
    /// calls this once per batch, in increasing order.
    pub fn settle(&self, batch: u64, ok: bool) {
        if !ok {
            let mut f = self.failures();
            f.batches.insert(batch);
            if f.batches.len() > MAX_REMEMBERED_FAILURES
                && let Some(oldest) = f.batches.pop_first()
            {
                f.forgotten_below = oldest + 1;
            }
        }
        self.settled.send_modify(|s| *s = (*s).max(batch));
    }

    /// Whether any batch of `batches`, all already settled, failed. A
    /// request that read several batches is checked against every batch
    /// from the first to the last it read: a failure in between that it
    /// did not read fails it too, which is only ever too careful.
    pub fn failed(&self, batches: Reads) -> bool {
        let f = self.failures();
        batches.first < f.forgotten_below
            || f.batches
                .range(batches.first..=batches.last)
                .next()
                .is_some()
    }

    /// Waits until every batch of `batches` has settled; `true` if they
    /// all committed.
    async fn committed(&self, batches: Reads) -> bool {
        let mut settled = self.settled.subscribe();
        if settled.wait_for(|s| *s >= batches.last).await.is_err() {
            return false;
        }
        !self.failed(batches)
    }
}

/// Why a fenced request may not answer: a value it read was never
/// committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a value this request read was being committed, and that commit failed (see the log before this line); nothing it decided on that value was kept: retry the request"
)]
pub struct UncommittedRead;

/// The batches of one store a request read uncommitted values of: every
/// batch from `first` to `last` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The earliest batch read.
    pub first: u64,
    /// The latest batch read.
    pub last: u64,
}

impl Reads {
    /// Only batch `batch`.
    pub fn one(batch: u64) -> Reads {
        Reads {
            first: batch,
            last: batch,
        }
    }
}

tokio::task_local! {
    static FENCE: Arc<ReadFence>;
}

/// The in-flight commits one request has read from, per store.
pub struct ReadFence {
    state: Mutex<FenceState>,
}

struct FenceState {
    /// Whether reads may still return uncommitted values.
    open: bool,
    reads: Vec<(Arc<CommitLog>, Reads)>,
}

impl ReadFence {
    /// An open fence that has read nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(ReadFence {
            state: Mutex::new(FenceState {
                open: true,
                reads: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FenceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with this fence as the current one ([`Self::current`]).
    pub fn scope<F: Future>(self: Arc<Self>, f: F) -> impl Future<Output = F::Output> {
        FENCE.scope(self, f)
    }

    /// The fence of the running task, if it runs in one's scope.
    pub fn current() -> Option<Arc<ReadFence>> {
        FENCE.try_with(Arc::clone).ok()
    }

    /// Records that the request is about to use a value of batch `batch`
    /// of `log`, not yet committed. `false` when the fence is closed: the
    /// caller must then read the committed value instead.
    pub fn record(&self, log: &Arc<CommitLog>, batch: u64) -> bool {
        let mut state = self.lock();
        if !state.open {
            return false;
        }
        match state.reads.iter_mut().find(|(l, _)| Arc::ptr_eq(l, log)) {
            Some((_, r)) => {
                r.first = r.first.min(batch);
                r.last = r.last.max(batch);
            }
            None => state.reads.push((log.clone(), Reads::one(batch))),
        }
        true
    }

    /// The batches of `log` this request's writes depend on, if it read
    /// uncommitted values of it.
    pub fn dependency(&self, log: &Arc<CommitLog>) -> Option<Reads> {
        self.lock()
            .reads
            .iter()
            .find(|(l, _)| Arc::ptr_eq(l, log))
            .map(|(_, b)| *b)
    }

    /// Whether the request has read any uncommitted value so far.
    pub fn has_reads(&self) -> bool {
        !self.lock().reads.is_empty()
    }

    /// Stops reads from returning uncommitted values (the request's
    /// response is being handed over; what follows must not change it).
    pub fn close(&self) {
        self.lock().open = false;
    }

    /// Waits until every batch this request read from has settled; fails
    /// if one of them failed. Immediate when it read none.
    pub async fn settle(&self) -> Result<(), UncommittedRead> {
        let reads = self.lock().reads.clone();
        for (log, batches) in reads {
            if !log.committed(batches).await {
                return Err(UncommittedRead);
            }
        }
        Ok(())
    }

    /// [`Self::settle`] for the fence of the running task, if any.
    pub async fn settle_current() -> Result<(), UncommittedRead> {
        match Self::current() {
            Some(fence) => fence.settle().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn settle_waits_for_the_batch_read_and_fails_if_it_failed() {
        let log = CommitLog::new();
        let fence = ReadFence::new();
        assert!(fence.settle().await.is_ok(), "nothing read: immediate");
        assert!(fence.record(&log, 3));
        assert!(fence.record(&log, 2));
        assert_eq!(fence.dependency(&log), Some(Reads { first: 2, last: 3 }));
        let waiting = tokio::spawn({
            let fence = fence.clone();
            async move { fence.settle().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "batch 3 has not settled");
        log.settle(2, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "batch 3 was read too");
        log.settle(3, true);
        assert!(waiting.await.unwrap());

        let failing = ReadFence::new();
        assert!(failing.record(&log, 4));
        log.settle(4, false);
        assert!(failing.settle().await.is_err());
        assert!(log.failed(Reads::one(4)) && !log.failed(Reads::one(3)));
    }

    /// A request that read batches 5 and 7 depends on 6 as well: had it
    /// read only 7, batch 5's failure would otherwise pass unseen.
    #[tokio::test]
    async fn a_failure_anywhere_between_the_first_and_last_batch_read_counts() {
        let log = CommitLog::new();
        let fence = ReadFence::new();
        assert!(fence.record(&log, 5));
        log.settle(5, false);
        log.settle(6, true);
        assert!(fence.record(&log, 7));
        log.settle(7, true);
        assert!(log.failed(fence.dependency(&log).unwrap()));
        assert!(fence.settle().await.is_err());
        assert!(!log.failed(Reads { first: 6, last: 7 }));
    }

    #[tokio::test]
    async fn a_closed_fence_takes_no_uncommitted_read() {
        let log = CommitLog::new();
        let fence = ReadFence::new();
        fence.close();
        assert!(!fence.record(&log, 1));
        assert_eq!(fence.dependency(&log), None);
        assert!(fence.settle().await.is_ok());
    }

    #[tokio::test]
    async fn the_current_fence_is_the_scope_s() {
        assert!(ReadFence::current().is_none());
        let fence = ReadFence::new();
        let inside = fence.scope(async { ReadFence::current().is_some() }).await;
        assert!(inside);
    }

    #[test]
    fn failures_past_the_memory_are_still_failures() {
        let log = CommitLog::new();
        for b in 1..=(MAX_REMEMBERED_FAILURES as u64 + 10) {
            log.settle(b, false);
        }
        let last = MAX_REMEMBERED_FAILURES as u64 + 10;
        assert!(log.failed(Reads::one(1)), "forgotten, yet refused");
        assert!(log.failed(Reads::one(last)));
        log.settle(last + 1, true);
        assert!(!log.failed(Reads::one(last + 1)));
    }
}
