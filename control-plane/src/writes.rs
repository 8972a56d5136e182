//! The control plane's write lock, with group commit for session writes.
//!
//! Every write to the store holds this lock, so writes are serial (SQLite has
//! one writer anyway). Most take it with [`Writes::exclusive`] and run a
//! transaction of their own. The frequent session writes (create, patch,
//! lifecycle action) instead [`join`](Writes::join) a transaction shared with
//! the writers queued behind them: each runs inside a savepoint (so it stays
//! all or nothing on its own), and the last writer of a burst commits for
//! all of them. One commit, and one `fdatasync`, then covers the burst.
//!
//! Nothing is acknowledged before its commit: a writer that joined waits for
//! the commit that covers it, and only then is its route change queued to the
//! publisher (in commit order) and its answer given. If the commit fails,
//! every writer in it gets the error and nothing of theirs is published.
//!
//! Who commits: a writer finishing its savepoint commits at once unless
//! another writer is already waiting for the lock, which will then see the
//! open transaction and join it. A writer that leaves the transaction open
//! also arms a short timer: should the waiting writer give up (its request
//! dropped), the timer commits instead, so no one waits on a writer that
//! never comes. [`Writes::exclusive`] commits an open batch before it
//! returns, so the other writers' own transactions never meet it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gateway::{Queued, RouteChange, RoutePublisher};
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::Transaction;
use tokio::sync::{oneshot, Mutex, MutexGuard};

use crate::store::{Store, StoreError};

/// Writers one commit covers at most: bounds how long the first of them
/// waits for the last.
const MAX_BATCH: usize = 64;

/// How long a writer that left the transaction open waits for the next
/// writer to commit it before it commits itself.
const COMMIT_FALLBACK: Duration = Duration::from_millis(20);

/// The savepoint each joined writer runs in.
const SAVEPOINT: &str = "sg_write";

/// What the lock guards: the shared transaction, open between writers of a
/// burst, and the writers waiting for its commit.
#[derive(Default)]
pub struct Batch {
    tx: Option<Transaction<'static, Sqlite>>,
    pending: Vec<Pending>,
    /// A joined writer went away inside its savepoint: roll it back before
    /// anything else touches the transaction.
    savepoint_open: bool,
}

/// A writer whose savepoint is released and who waits for the commit.
struct Pending {
    changes: Vec<RouteChange>,
    done: oneshot::Sender<Result<Option<Queued>, WriteError>>,
}

/// The write lock.
pub struct Writes {
    batch: Mutex<Batch>,
    /// Writers waiting for the lock; a finishing writer leaves the
    /// transaction open only when this is not zero.
    waiting: AtomicUsize,
    /// Shared commits that succeeded, and the joined writes they covered.
    commits: AtomicU64,
    committed_writes: AtomicU64,
    store: Store,
    publisher: RoutePublisher,
}

/// The lock, held by a writer with a transaction of its own.
pub type WriteGuard<'a> = MutexGuard<'a, Batch>;

/// Why a joined write was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared commit failed; the writer's own statements had succeeded.
    #[error("{0}")]
    Commit(String),
    /// Committed, but the change could not be queued to the route table.
    #[error("{0}")]
    Publish(String),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Store(e.into())
    }
}

impl Writes {
    pub fn new(store: Store, publisher: RoutePublisher) -> Writes {
        Writes {
            batch: Mutex::new(Batch::default()),
            waiting: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            committed_writes: AtomicU64::new(0),
            store,
            publisher,
        }
    }

    /// Shared commits so far, and the joined writes they covered: their
    /// ratio is the batching achieved.
    pub fn commit_counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.committed_writes.load(Ordering::Relaxed),
        )
    }

    async fn lock(&self) -> MutexGuard<'_, Batch> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.batch.lock().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// The lock, with no shared transaction open: the caller runs its own.
    pub async fn exclusive(&self) -> WriteGuard<'_> {
        let mut guard = self.lock().await;
        self.commit(&mut guard).await;
        guard
    }

    /// The lock and a savepoint in the shared transaction (begun if none is
    /// open). Run the write's statements on [`Joined::conn`], then
    /// [`finish`](Joined::finish) it, or [`abort`](Joined::abort) it on error.
    pub async fn join(&self) -> Result<Joined<'_>, WriteError> {
        let mut guard = self.lock().await;
        rollback_abandoned(&mut guard).await;
        if guard.tx.is_none() {
            guard.tx = Some(self.store.begin().await?);
        }
        let tx = guard.tx.as_mut().ok_or_else(no_tx)?;
        sqlx::query(&format!("SAVEPOINT {SAVEPOINT}"))
            .execute(&mut **tx)
            .await?;
        guard.savepoint_open = true;
        Ok(Joined {
            writes: self,
            guard: Some(guard),
        })
    }

    /// Commits the open transaction, if any, and answers its writers: their
    /// route changes are queued in commit order.
    async fn commit(&self, guard: &mut MutexGuard<'_, Batch>) {
        rollback_abandoned(guard).await;
        let pending = std::mem::take(&mut guard.pending);
        let Some(tx) = guard.tx.take() else {
            return;
        };
        match tx.commit().await {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.committed_writes
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                for p in pending {
                    let queued = if p.changes.is_empty() {
                        Ok(None)
                    } else {
                        self.publisher
                            .queue(p.changes)
                            .await
                            .map(Some)
                            .map_err(|e| WriteError::Publish(e.to_string()))
                    };
                    // A writer that stopped waiting is committed all the same.
                    let _ = p.done.send(queued);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writers = pending.len(), "shared commit failed");
                for p in pending {
                    let _ = p
                        .done
                        .send(Err(WriteError::Commit(format!("commit failed: {e}"))));
                }
            }
        }
    }

    /// Commits whatever is open: the fallback timer, and shutdown before the
    /// store closes (the shared transaction holds one of its connections).
    pub async fn flush(&self) {
        let mut guard = self.lock().await;
        self.commit(&mut guard).await;
    }
}

fn no_tx() -> WriteError {
    WriteError::Commit("no shared transaction is open".into())
}

/// Undoes the savepoint of a writer that went away inside it. If SQLite no
/// longer has it (an error that ended the whole transaction), the
/// transaction is dropped and its waiting writers are told.
async fn rollback_abandoned(guard: &mut MutexGuard<'_, Batch>) {
    if !guard.savepoint_open {
        return;
    }
    guard.savepoint_open = false;
    let Some(tx) = guard.tx.as_mut() else {
        return;
    };
    let mut undone = sqlx::query(&format!("ROLLBACK TO {SAVEPOINT}"))
        .execute(&mut **tx)
        .await;
    if undone.is_ok() {
        undone = sqlx::query(&format!("RELEASE {SAVEPOINT}"))
            .execute(&mut **tx)
            .await;
    }
    if let Err(e) = undone {
        tracing::error!(error = %e, "rolling back a write's savepoint; dropping the batch");
        guard.tx = None;
        for p in guard.pending.drain(..) {
            let _ = p
                .done
                .send(Err(WriteError::Commit(format!("transaction lost: {e}"))));
        }
    }
}

/// A writer inside its savepoint, holding the lock. Dropped without
/// [`finish`](Joined::finish) or [`abort`](Joined::abort) (its request
/// cancelled), it leaves `savepoint_open` set, and the next holder of the
/// lock rolls the savepoint back before anything else.
pub struct Joined<'a> {
    writes: &'a Writes,
    guard: Option<MutexGuard<'a, Batch>>,
}

impl Joined<'_> {
    /// The connection of the shared transaction.
    pub fn conn(&mut self) -> Result<&mut SqliteConnection, WriteError> {
        let tx = self
            .guard
            .as_mut()
            .and_then(|g| g.tx.as_mut())
            .ok_or_else(no_tx)?;
        Ok(&mut **tx)
    }

    /// Undoes this writer's statements and lets the next writer in.
    pub async fn abort(mut self) {
        if let Some(mut guard) = self.guard.take() {
            rollback_abandoned(&mut guard).await;
        }
    }

    /// Keeps this writer's statements, waits for the commit that covers
    /// them, and returns its route change as queued to the publisher
    /// (`None` without changes). `changes` must be computed under the lock,
    /// from the state this write saw.
    pub async fn finish(mut self, changes: Vec<RouteChange>) -> Result<Option<Queued>, WriteError> {
        let writes = self.writes;
        let Some(mut guard) = self.guard.take() else {
            return Err(no_tx());
        };
        let released = match guard.tx.as_mut() {
            Some(tx) => sqlx::query(&format!("RELEASE {SAVEPOINT}"))
                .execute(&mut **tx)
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = released {
            rollback_abandoned(&mut guard).await;
            return Err(e.into());
        }
        guard.savepoint_open = false;
        let (done, answer) = oneshot::channel();
        guard.pending.push(Pending { changes, done });
        let commit_now =
            writes.waiting.load(Ordering::SeqCst) == 0 || guard.pending.len() >= MAX_BATCH;
        if commit_now {
            writes.commit(&mut guard).await;
        }
        drop(guard);
        let mut answer = answer;
        let result = match tokio::time::timeout(COMMIT_FALLBACK, &mut answer).await {
            Ok(r) => r,
            Err(_) => {
                // The writer that was waiting did not commit in time.
                writes.flush().await;
                answer.await
            }
        };
        result.unwrap_or_else(|_| Err(WriteError::Commit("the shared commit was dropped".into())))
    }
}
