//! The control plane's write lock, with group commit for session writes.
//!
//! Every write to the store holds this lock, so writes are serial: SQLite
//! has one writer anyway, and on PostgreSQL a control plane's writes queue
//! here rather than on the database's row locks. Most take it with [`Writes::begin`] and run a
//! transaction of their own. The frequent session writes (create, patch,
//! lifecycle action) instead [`join`](Writes::joined) a transaction shared with
//! the writers queued behind them: each runs inside a savepoint (so it stays
//! all or nothing on its own), and the last writer of a burst commits for
//! all of them. One commit, and one `fdatasync`, then covers the burst.
//!
//! Nothing is acknowledged before its commit: a writer that joined waits for
//! the commit that covers it, and only then is its route change queued to the
//! publisher (in commit order) and its answer given. If the commit fails,
//! every writer in it gets the error and nothing of theirs is published.
//!
//! A request can be dropped at any await. So every step that changes the
//! shared state (beginning, the savepoint, releasing or rolling it back, the
//! commit with the answers and route changes after it) runs in a task of its
//! own that holds the lock, and completes even if the writer is gone; only
//! the writer's own statements run in its future, inside its savepoint, and
//! the next holder of the lock rolls back a savepoint left open.
//!
//! Who commits: a writer finishing its savepoint commits at once unless
//! another writer is already waiting for the lock, which will then see the
//! open transaction and join it. A writer that leaves the transaction open
//! also arms a short timer: should the waiting writer give up (its request
//! dropped), the timer commits instead, so no one waits on a writer that
//! never comes. [`Writes::begin`] commits an open batch before it returns,
//! so the other writers' own transactions never meet it.
//!
//! The types make the rules hard to break: [`Writes::begin`]'s
//! [`WriteGuard`] is the only way to a transaction of one's own (the store's
//! `begin` is not public), and a joined write is a closure, so there is no
//! way to forget to abort it on an error.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::{Queued, RouteChange, RoutePublisher};
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

use crate::store::{Conn, Store, StoreError, Transaction};

/// Writers one commit covers at most: bounds how long the first of them
/// waits for the last.
const MAX_BATCH: usize = 64;

/// How long a writer that left the transaction open waits for the next
/// writer to commit it before it commits itself.
const COMMIT_FALLBACK: Duration = Duration::from_millis(20);

/// What the lock guards: the shared transaction, open between writers of a
/// burst, and the writers waiting for its commit.
#[derive(Default)]
struct Batch {
    tx: Option<Transaction>,
    pending: Vec<Pending>,
    /// The savepoint of the writer inside the transaction now, or of one
    /// that went away inside it (to roll back before anything else). Each
    /// has its own name, so a rollback can never reach further back.
    savepoint: Option<String>,
    savepoints_made: u64,
}

/// A writer whose savepoint is released and who waits for the commit.
struct Pending {
    changes: Vec<RouteChange>,
    done: oneshot::Sender<Result<Option<Queued>, WriteError>>,
}

/// The write lock. Cheap to clone.
#[derive(Clone)]
pub struct Writes {
    inner: Arc<Inner>,
}

struct Inner {
    batch: Arc<Mutex<Batch>>,
    /// Writers waiting for the lock; a finishing writer leaves the
    /// transaction open only when this is not zero.
    waiting: AtomicUsize,
    /// Shared commits that succeeded, and the joined writes they covered.
    commits: AtomicU64,
    committed_writes: AtomicU64,
    store: Store,
    publisher: RoutePublisher,
}

/// The lock, held; after [`WriteGuard::commit`], until the writer has done
/// what must follow its commit under the lock (publishing, caches).
pub struct WriteLock {
    _held: OwnedMutexGuard<Batch>,
}

/// The lock and a transaction of the holder's own: the only way to write to
/// the store outside a joined write. Dropped without
/// [`commit`](WriteGuard::commit), the transaction rolls back and the lock
/// is free again.
pub struct WriteGuard {
    // Field order: the transaction ends before the lock is let go.
    tx: Transaction,
    lock: WriteLock,
}

impl WriteGuard {
    /// Commits, keeping the lock until the returned guard is dropped.
    pub async fn commit(self) -> Result<WriteLock, StoreError> {
        let WriteGuard { tx, lock } = self;
        tx.commit().await?;
        Ok(lock)
    }

    /// Rolls back, and only then lets the lock go. (A transaction that
    /// wrote and is only dropped rolls back when its connection is next
    /// used: on SQLite the next writer, on another connection, could find
    /// the database's write lock still held.)
    pub async fn rollback(self) -> Result<(), StoreError> {
        let WriteGuard { tx, lock } = self;
        let rolled_back = tx.rollback().await;
        drop(lock);
        Ok(rolled_back?)
    }
}

impl Deref for WriteGuard {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.tx
    }
}

impl DerefMut for WriteGuard {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.tx
    }
}

/// The future a joined write's statements run in: it borrows the shared
/// transaction's connection, and the context the writer was given.
pub type WriteFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

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

/// Runs `step` to completion on its own task: a dropped caller does not cut
/// it short.
async fn uncancellable<T: Send + 'static>(
    step: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, WriteError> {
    tokio::spawn(step)
        .await
        .map_err(|e| WriteError::Commit(format!("write step failed: {e}")))
}

impl Writes {
    pub fn new(store: Store, publisher: RoutePublisher) -> Writes {
        Writes {
            inner: Arc::new(Inner {
                batch: Arc::new(Mutex::new(Batch::default())),
                waiting: AtomicUsize::new(0),
                commits: AtomicU64::new(0),
                committed_writes: AtomicU64::new(0),
                store,
                publisher,
            }),
        }
    }

    /// Shared commits so far, and the joined writes they covered: their
    /// ratio is the batching achieved.
    pub fn commit_counts(&self) -> (u64, u64) {
        (
            self.inner.commits.load(Ordering::Relaxed),
            self.inner.committed_writes.load(Ordering::Relaxed),
        )
    }

    /// The lock, with no shared transaction open, and a transaction of the
    /// caller's own.
    pub async fn begin(&self) -> Result<WriteGuard, WriteError> {
        let inner = self.inner.clone();
        let step = async move {
            let mut guard = inner.lock().await;
            inner.commit(&mut guard).await;
            guard
        };
        let guard = match uncancellable(step).await {
            Ok(guard) => guard,
            // The step panicked; the lock is free again.
            Err(_) => self.inner.lock().await,
        };
        let tx = self.inner.store.begin().await?;
        Ok(WriteGuard {
            tx,
            lock: WriteLock { _held: guard },
        })
    }

    /// Runs `write` as a joined write: inside a savepoint of the shared
    /// transaction, holding the lock. `write` gets `ctx` and the shared
    /// connection, and returns its value and the route changes its
    /// statements call for, computed from what it saw under the lock. On
    /// success this waits for the commit that covers the write and returns
    /// the changes as queued to the publisher (`None` without changes); on
    /// error the savepoint is rolled back and nothing of the write remains.
    pub async fn joined<C, T, E, F>(&self, ctx: &C, write: F) -> Result<(T, Option<Queued>), E>
    where
        C: ?Sized + Sync,
        E: From<WriteError>,
        F: for<'c> FnOnce(&'c C, &'c mut Conn) -> WriteFuture<'c, Result<(T, Vec<RouteChange>), E>>,
    {
        let mut joined = self.join().await?;
        let result = match joined.conn() {
            Ok(conn) => write(ctx, conn).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok((value, changes)) => Ok((value, joined.finish(changes).await?)),
            Err(e) => {
                joined.abort().await;
                Err(e)
            }
        }
    }

    /// The lock and a savepoint in the shared transaction (begun if none is
    /// open). Run the write's statements on [`Joined::conn`], then
    /// [`finish`](Joined::finish) it, or [`abort`](Joined::abort) it on error.
    async fn join(&self) -> Result<Joined, WriteError> {
        let inner = self.inner.clone();
        let step = async move {
            let mut guard = inner.lock().await;
            rollback_abandoned(&mut guard).await;
            if guard.tx.is_none() {
                guard.tx = Some(inner.store.begin().await?);
            }
            guard.savepoints_made += 1;
            let name = format!("sg_write_{}", guard.savepoints_made);
            // Marked before it is made: should it fail half way, the next
            // holder's rollback finds out.
            guard.savepoint = Some(name.clone());
            let tx = guard.tx.as_mut().ok_or_else(no_tx)?;
            sqlx::query(&format!("SAVEPOINT {name}"))
                .persistent(false)
                .execute(&mut **tx)
                .await?;
            Ok::<_, WriteError>(guard)
        };
        let guard = uncancellable(step).await??;
        Ok(Joined {
            writes: self.clone(),
            guard: Some(guard),
        })
    }

    /// Commits whatever is open: the fallback timer, and shutdown before the
    /// store closes (the shared transaction holds one of its connections).
    pub async fn flush(&self) {
        let inner = self.inner.clone();
        let _ = uncancellable(async move {
            let mut guard = inner.lock().await;
            inner.commit(&mut guard).await;
        })
        .await;
    }
}

/// The lock's guard, while a writer holds it.
type BatchGuard = OwnedMutexGuard<Batch>;

impl Inner {
    async fn lock(&self) -> BatchGuard {
        let _waiting = Waiting::enter(&self.waiting);
        self.batch.clone().lock_owned().await
    }

    /// Commits the open transaction, if any, and answers its writers: their
    /// route changes are queued in commit order.
    async fn commit(&self, guard: &mut BatchGuard) {
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
}

/// Counts a writer waiting for the lock until it has it, or until its
/// request is dropped while waiting: a count left behind would keep every
/// later writer from committing at once.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn no_tx() -> WriteError {
    WriteError::Commit("no shared transaction is open".into())
}

/// Undoes the savepoint of a writer that went away inside it (or failed).
/// If the database does not have it (it was never made, or an error ended
/// the whole transaction), the whole transaction is dropped and its waiting
/// writers are told: nothing of theirs was committed or published.
async fn rollback_abandoned(guard: &mut BatchGuard) {
    let Some(name) = guard.savepoint.clone() else {
        return;
    };
    let Some(tx) = guard.tx.as_mut() else {
        guard.savepoint = None;
        return;
    };
    let mut undone = sqlx::query(&format!("ROLLBACK TO {name}"))
        .persistent(false)
        .execute(&mut **tx)
        .await;
    if undone.is_ok() {
        undone = sqlx::query(&format!("RELEASE {name}"))
            .persistent(false)
            .execute(&mut **tx)
            .await;
    }
    guard.savepoint = None;
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
/// cancelled), it leaves its savepoint marked in the batch, and the next
/// holder of the lock rolls it back before anything else.
struct Joined {
    writes: Writes,
    guard: Option<BatchGuard>,
}

impl Joined {
    /// The connection of the shared transaction.
    fn conn(&mut self) -> Result<&mut Conn, WriteError> {
        let tx = self
            .guard
            .as_mut()
            .and_then(|g| g.tx.as_mut())
            .ok_or_else(no_tx)?;
        Ok(&mut **tx)
    }

    /// Undoes this writer's statements and lets the next writer in.
    async fn abort(mut self) {
        if let Some(mut guard) = self.guard.take() {
            let _ = uncancellable(async move { rollback_abandoned(&mut guard).await }).await;
        }
    }

    /// Keeps this writer's statements, waits for the commit that covers
    /// them, and returns its route change as queued to the publisher
    /// (`None` without changes). `changes` must be computed under the lock,
    /// from the state this write saw.
    async fn finish(mut self, changes: Vec<RouteChange>) -> Result<Option<Queued>, WriteError> {
        let Some(mut guard) = self.guard.take() else {
            return Err(no_tx());
        };
        let inner = self.writes.inner.clone();
        let (done, mut answer) = oneshot::channel();
        let step = async move {
            let Some(name) = guard.savepoint.clone() else {
                return Err(no_tx());
            };
            let released = match guard.tx.as_mut() {
                Some(tx) => sqlx::query(&format!("RELEASE {name}"))
                    .persistent(false)
                    .execute(&mut **tx)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            };
            if let Err(e) = released {
                rollback_abandoned(&mut guard).await;
                return Err(e.into());
            }
            guard.savepoint = None;
            guard.pending.push(Pending { changes, done });
            let commit_now =
                inner.waiting.load(Ordering::SeqCst) == 0 || guard.pending.len() >= MAX_BATCH;
            if commit_now {
                inner.commit(&mut guard).await;
            }
            Ok(())
        };
        uncancellable(step).await??;
        let result = match tokio::time::timeout(COMMIT_FALLBACK, &mut answer).await {
            Ok(r) => r,
            Err(_) => {
                // The writer that was waiting did not commit in time.
                self.writes.flush().await;
                answer.await
            }
        };
        result.unwrap_or_else(|_| Err(WriteError::Commit("the shared commit was dropped".into())))
    }
}
