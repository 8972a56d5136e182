//! Group commit of session writes, over a real SQLite file and a real
//! PostgreSQL database: concurrent writes share commits, each is durable
//! (visible to another connection to the database) and routed by the time
//! it is acknowledged, and a write that fails inside a shared transaction
//! leaves nothing behind while the others commit.

use std::sync::Arc;

use control_plane::auth::hash_token;
use control_plane::clock::SystemClock;
use control_plane::control::{ControlPlane, Parts, Settings};
use control_plane::error::ControlError;
use control_plane::session::model::{NewSession, SessionPatch};
use control_plane::session::{Action, SessionState};
use control_plane::store::Engine;
use gateway::RouteHandle;
use sqlx::{AnyConnection, Connection};
use testkit::routes::{empty_table, settings_with};
use testkit::TempDir;
use tokio::sync::Mutex;

struct Fixture {
    cp: Arc<ControlPlane>,
    routes: RouteHandle,
    /// A connection of its own to the database: it sees committed data
    /// only.
    reader: Arc<Mutex<AnyConnection>>,
    /// Declared last: removed once the store is closed.
    _dir: TempDir,
}

async fn fixture(engine: Engine, name: &str) -> Fixture {
    let dir = TempDir::new(&format!("group-{name}"));
    let (store, url) = crate::common::store(engine, dir.path(), &format!("group-{name}")).await;
    let routes = empty_table(&settings_with(&["localhost"], None));
    let cp = Arc::new(
        ControlPlane::start(
            Parts::new(store, routes.clone(), Arc::new(SystemClock)),
            Settings::new(hash_token("group-commit-test-admin-token")),
        )
        .await
        .unwrap(),
    );
    crate::common::add_user(&cp, "ann").await;
    let reader = AnyConnection::connect(&url).await.unwrap();
    Fixture {
        cp,
        routes,
        reader: Arc::new(Mutex::new(reader)),
        _dir: dir,
    }
}

fn session(name: &str, owner: &str) -> NewSession {
    NewSession {
        name: name.into(),
        owner: owner.into(),
        remote_port: Some(9),
        public: true,
        ..NewSession::default()
    }
}

/// The state stored for `name`, as another connection sees it.
async fn committed_state(reader: &Mutex<AnyConnection>, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM sessions WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *reader.lock().await)
        .await
        .unwrap()
}

fn routed(routes: &RouteHandle, name: &str) -> bool {
    routes.load().route(&format!("session:{name}")).is_some()
}

async fn concurrent_writes_share_commits_and_are_durable_when_acknowledged(engine: Engine) {
    let f = fixture(engine, "durable").await;
    let n = 64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let (cp, routes, reader) = (f.cp.clone(), f.routes.clone(), f.reader.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("s{i}");
            cp.create_session(session(&name, "ann")).await.unwrap();
            // Acknowledged: committed (another connection sees it) and routed.
            assert_eq!(
                committed_state(&reader, &name).await.as_deref(),
                Some("running"),
                "{name} acknowledged before its commit"
            );
            assert!(routed(&routes, &name), "{name} acknowledged before routing");
            let port = 10_000 + i as u16;
            cp.patch_session(
                &name,
                SessionPatch {
                    remote_port: Some(port),
                    ..SessionPatch::default()
                },
            )
            .await
            .unwrap();
            let port_now: Option<i64> =
                sqlx::query_scalar("SELECT remote_port FROM sessions WHERE name = $1")
                    .bind(&name)
                    .fetch_one(&mut *reader.lock().await)
                    .await
                    .unwrap();
            assert_eq!(
                port_now,
                Some(i64::from(port)),
                "{name}: patch not committed"
            );
            cp.session_action(&name, Action::Pause, None).await.unwrap();
            assert_eq!(
                committed_state(&reader, &name).await.as_deref(),
                Some("paused"),
                "{name}: action not committed"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (commits, writes) = f.cp.commit_counts();
    assert_eq!(
        writes,
        3 * n as u64,
        "every joined write was committed once"
    );
    assert!(
        commits < writes,
        "{writes} concurrent writes took {commits} commits: none shared"
    );
}

async fn a_failed_write_in_a_shared_transaction_leaves_nothing_and_others_commit(engine: Engine) {
    let f = fixture(engine, "isolated").await;
    // A finished record named "old": creating "old" again first purges it,
    // so a create that fails after that must bring it back.
    f.cp.create_session(session("old", "ann")).await.unwrap();
    f.cp.session_action("old", Action::Delete, None)
        .await
        .unwrap();
    assert_eq!(
        committed_state(&f.reader, "old").await.as_deref(),
        Some("deleted")
    );

    let mut tasks = Vec::new();
    for i in 0..48 {
        let cp = f.cp.clone();
        tasks.push(tokio::spawn(async move {
            // Every fourth fails after the purge: unknown owner.
            let (name, owner) = match i % 4 {
                0 => ("old".to_string(), "nobody"),
                _ => (format!("ok{i}"), "ann"),
            };
            let result = cp.create_session(session(&name, owner)).await;
            (name, result)
        }));
    }
    // And two creates of the same new name: exactly one wins.
    let dup = |cp: Arc<ControlPlane>| async move { cp.create_session(session("dup", "ann")).await };
    let (d1, d2) = tokio::join!(
        tokio::spawn(dup(f.cp.clone())),
        tokio::spawn(dup(f.cp.clone()))
    );
    let dups = [d1.unwrap(), d2.unwrap()];
    assert_eq!(dups.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(dups
        .iter()
        .any(|r| matches!(r, Err(ControlError::Conflict(m)) if m.contains("already exists"))));

    for t in tasks {
        let (name, result) = t.await.unwrap();
        if name == "old" {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("nobody"), "{err}");
        } else {
            assert_eq!(result.unwrap().state, SessionState::Running);
            assert_eq!(
                committed_state(&f.reader, &name).await.as_deref(),
                Some("running")
            );
        }
    }
    // The purge done inside the failed writes was rolled back with them.
    assert_eq!(
        committed_state(&f.reader, "old").await.as_deref(),
        Some("deleted")
    );
    assert!(!routed(&f.routes, "old"));
    assert_eq!(
        f.cp.get_session("old").await.unwrap().state,
        SessionState::Deleted
    );
}

async fn writes_cancelled_at_any_point_leave_the_store_and_the_table_consistent(engine: Engine) {
    let f = fixture(engine, "cancelled").await;
    let n = 200;
    let mut tasks = Vec::new();
    for i in 0..n {
        let cp = f.cp.clone();
        tasks.push(tokio::spawn(async move {
            // Dropped after 0-999 µs: while waiting for the lock, inside its
            // savepoint, while waiting for the commit, or not at all.
            let limit = std::time::Duration::from_micros((i * 7919 % 1000) as u64);
            let _ =
                tokio::time::timeout(limit, cp.create_session(session(&format!("c{i}"), "ann")))
                    .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A write after them all: it commits, and its route change is applied
    // after every change queued before it.
    f.cp.create_session(session("last", "ann")).await.unwrap();
    assert!(routed(&f.routes, "last"));
    let mut stored = 0;
    for i in 0..n {
        let name = format!("c{i}");
        let committed = committed_state(&f.reader, &name).await;
        assert!(
            committed.is_none() || committed.as_deref() == Some("running"),
            "{name}: {committed:?}"
        );
        assert_eq!(
            committed.is_some(),
            routed(&f.routes, &name),
            "{name}: stored and routed disagree"
        );
        stored += usize::from(committed.is_some());
    }
    // Some were cut short and some were not (the limits span 0-999 µs).
    assert!(stored < n, "no write was cancelled");
    let (_, writes) = f.cp.commit_counts();
    // Every stored create and "last", each counted by the commit that took it.
    assert_eq!(writes, stored as u64 + 1);
}

crate::common::on_both_engines! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_writes_share_commits_and_are_durable_when_acknowledged,
    a_failed_write_in_a_shared_transaction_leaves_nothing_and_others_commit,
    writes_cancelled_at_any_point_leave_the_store_and_the_table_consistent;
}
