//! One writer for the route table that turns bursts of changes into few
//! table versions.
//!
//! The control plane publishes one session change at a time, from many tasks.
//! Each [`RouteHandle::apply`] makes a table version of its own; under a burst,
//! [`RoutePublisher`] instead lets the changes queue while a version is being
//! made, then takes everything queued (up to [`MAX_BATCH`] submissions) into
//! the next version. There is no waiting window, only one yield to the
//! scheduler after the first submission: a lone change waits microseconds, and
//! batches form when changes arrive faster than versions are made (`bench
//! table-updates`: 16 concurrent submitters give batches of about 14).
//!
//! Each submission stays all or nothing on its own: one that is invalid or
//! conflicts is skipped and answered with its error, and the others in the
//! same batch go ahead.

use tokio::sync::{mpsc, oneshot};

use crate::table::{RouteChange, RouteHandle, TableError};

/// The most submissions one table version takes. It bounds how long the task
/// holds a runtime worker in one go and how long the first submission of a
/// batch waits for the last: at 100k routes a change in a batch costs 12–23 µs
/// (`bench table-updates`, shared 2-CPU machine), so a full batch about 1 ms.
/// Larger batches would gain little: the fixed cost of a version (copying
/// shard pointers) is about that of one change.
pub const MAX_BATCH: usize = 64;

/// Submissions that may wait in the queue; beyond that `submit` waits for
/// room, which pushes back on the callers instead of growing memory.
const QUEUE_CAPACITY: usize = 1024;

/// A cloneable sender of route changes to the one task that applies them.
#[derive(Clone, Debug)]
pub struct RoutePublisher {
    queue: mpsc::Sender<Submission>,
}

/// One caller's changes and where its answer goes.
struct Submission {
    changes: Vec<RouteChange>,
    answer: oneshot::Sender<Result<u64, TableError>>,
}

/// Why a submission was not applied.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The changes are invalid or conflict with the table; nothing was applied.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The publisher's task is gone (its runtime shut down, or it panicked), so
    /// the changes may or may not have been applied.
    #[error("route publisher stopped")]
    Stopped,
}

impl RoutePublisher {
    /// Starts the publishing task on the current tokio runtime. It runs until
    /// every clone of the returned publisher is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(handle: RouteHandle) -> RoutePublisher {
        let (queue, submissions) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(publish_batches(handle, submissions));
        RoutePublisher { queue }
    }

    /// Applies `changes`, all or nothing, and returns the table version at
    /// which they are visible: the answer comes only after that table is
    /// stored, so every reader that loads the table after this returns sees
    /// them. Dropping the future after it has queued the changes does not
    /// withdraw them.
    pub async fn submit(&self, changes: Vec<RouteChange>) -> Result<u64, PublishError> {
        self.queue(changes).await?.applied().await
    }

    /// Queues `changes` behind every submission queued before them and
    /// returns at once (or once there is room in the queue); [`Queued::applied`]
    /// waits for the table. A caller that serialises its writers (the control
    /// plane's write lock) can let the next writer in once its changes are
    /// queued: the queue keeps their order, and the next writer's storage work
    /// overlaps this table update instead of waiting for it.
    pub async fn queue(&self, changes: Vec<RouteChange>) -> Result<Queued, PublishError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Submission { changes, answer })
            .await
            .map_err(|_| PublishError::Stopped)?;
        Ok(Queued { answered })
    }
}

/// Changes in the publisher's queue; they are applied whether or not this is
/// awaited.
#[derive(Debug)]
pub struct Queued {
    answered: oneshot::Receiver<Result<u64, TableError>>,
}

impl Queued {
    /// Waits until the changes are in the table, and returns its version.
    pub async fn applied(self) -> Result<u64, PublishError> {
        Ok(self.answered.await.map_err(|_| PublishError::Stopped)??)
    }
}

/// The publishing task: waits for a submission, takes whatever else is queued
/// behind it, applies them all as one table version, answers each.
async fn publish_batches(handle: RouteHandle, mut submissions: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = submissions.recv().await {
        batch.push(first);
        // Let the tasks that are ready to run (such as callers woken by the
        // previous batch's answers) queue their changes behind this one before
        // the batch closes. Without it the task tends to run right after each
        // send (tokio favours a task just woken), and every batch held one
        // submission. A yield, not a timer: tokio runs the task again after the
        // tasks already ready, so a lone change waits microseconds.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match submissions.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (groups, answers): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|s| (s.changes, s.answer)).unzip();
        // Synchronous and short (see MAX_BATCH); the handle's lock is never
        // held across an await.
        let applied = handle.apply_each(groups);
        for (answer, result) in answers.into_iter().zip(applied.results) {
            // A caller that stopped waiting does not need its answer.
            let _ = answer.send(result.map(|()| applied.version));
        }
        // Freeing the replaced version costs about as much as making the new
        // one: done after the answers, not before.
        drop(applied.previous);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::router::lookup;
    use crate::table::{RouteSpec, RouteTarget, TableSettings, Upstream};

    fn spec(id: &str, label: &str) -> RouteSpec {
        let target = RouteTarget::Upstream(Upstream::parse("http://127.0.0.1:1").unwrap());
        RouteSpec::new(id, target).label(label)
    }

    fn handle() -> RouteHandle {
        let handle = RouteHandle::new();
        let settings = TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: None,
        };
        handle.publish(&settings, vec![spec("a", "a")]).unwrap();
        handle
    }

    #[tokio::test]
    async fn submit_returns_after_the_change_is_visible() {
        let handle = handle();
        let publisher = RoutePublisher::spawn(handle.clone());
        let version = publisher
            .submit(vec![RouteChange::Upsert(spec("b", "b"))])
            .await
            .unwrap();
        let table = handle.load();
        assert!(table.version() >= version);
        let m = lookup(&table, "b.example.test", "/").unwrap();
        assert_eq!(&*m.route.id, "b");
    }

    #[tokio::test]
    async fn queued_submissions_share_one_version_and_fail_alone() {
        let handle = handle();
        let before = handle.load().version();
        let state_a = Arc::clone(&handle.load().route("a").unwrap().state);
        let publisher = RoutePublisher::spawn(handle.clone());
        // On this single-threaded runtime the task runs only once this test
        // task waits, so all three submissions are queued by then.
        let mut paused = spec("a", "a");
        paused.paused = true;
        let (first, clash, last) = tokio::join!(
            publisher.submit(vec![RouteChange::Upsert(spec("b", "b"))]),
            // Label "b" is now held by route b: refused on its own.
            publisher.submit(vec![
                RouteChange::Remove("a".into()),
                RouteChange::Upsert(spec("c", "b")),
            ]),
            publisher.submit(vec![RouteChange::Upsert(paused)]),
        );
        let err = clash.unwrap_err();
        assert!(matches!(err, PublishError::Table(_)), "{err}");
        assert!(err.to_string().contains("claimed by both"), "{err}");
        assert_eq!(first.unwrap(), before + 1);
        assert_eq!(last.unwrap(), before + 1);
        let table = handle.load();
        assert_eq!(table.version(), before + 1);
        assert_eq!(table.len(), 2);
        let a = table.route("a").unwrap();
        assert!(a.paused, "the refused submission's removal was not applied");
        assert!(Arc::ptr_eq(&a.state, &state_a));
        assert!(table.route("c").is_none());
        assert_eq!(
            &*lookup(&table, "b.example.test", "/").unwrap().route.id,
            "b"
        );
    }

    #[tokio::test]
    async fn a_batch_where_nothing_applies_makes_no_version() {
        let handle = handle();
        let before = handle.load().version();
        let publisher = RoutePublisher::spawn(handle.clone());
        let err = publisher
            .submit(vec![RouteChange::Upsert(spec("x", "a"))])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
        assert_eq!(publisher.submit(vec![]).await.unwrap(), before);
        assert_eq!(handle.load().version(), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submitters_all_see_their_changes() {
        let handle = handle();
        let publisher = RoutePublisher::spawn(handle.clone());
        let mut tasks = Vec::new();
        for t in 0..8 {
            let publisher = publisher.clone();
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let name = format!("t{t}-{i}");
                    let version = publisher
                        .submit(vec![RouteChange::Upsert(spec(&name, &name))])
                        .await
                        .unwrap();
                    let table = handle.load();
                    assert!(table.version() >= version);
                    let host = format!("{name}.example.test");
                    assert!(lookup(&table, &host, "/").is_some(), "{name}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(handle.load().len(), 1 + 8 * 50);
    }

    #[test]
    fn a_stopped_publisher_answers_stopped() {
        let handle = handle();
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let publisher = first.block_on(async { RoutePublisher::spawn(handle) });
        // Shutting the runtime down drops the publishing task and its queue.
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = second
            .block_on(publisher.submit(vec![RouteChange::Remove("a".into())]))
            .unwrap_err();
        assert!(matches!(err, PublishError::Stopped), "{err}");
    }
}
