//! The lifecycle reaper on a manual clock, over a real SQLite file (and a
//! real PostgreSQL database) and a real route table: activation deadlines, expiry, idle timeouts (from the
//! gateway's per-route activity), evicted sessions, retention, the stopped
//! clock of a paused session, and the counters.

use std::sync::Arc;
use std::time::Duration;

use control_plane::auth::hash_token;
use control_plane::clock::{Clock, ManualClock};
use control_plane::control::{ControlPlane, Parts, Settings};
use control_plane::session::lifecycle::LifecycleSettings;
use control_plane::session::model::NewSession;
use control_plane::session::reaper::ReapReport;
use control_plane::session::{Action, SessionState};
use control_plane::store::Engine;
use gateway::RouteHandle;
use testkit::routes::{empty_table, settings_with};
use testkit::TempDir;

struct Fixture {
    cp: Arc<ControlPlane>,
    clock: ManualClock,
    routes: RouteHandle,
    /// Declared last: removed once the store is closed.
    _dir: TempDir,
}

const MIN: Duration = Duration::from_secs(60);

async fn fixture(engine: Engine, name: &str) -> Fixture {
    let dir = TempDir::new(&format!("reaper-{name}"));
    let (store, _) = crate::common::store(engine, dir.path(), &format!("reaper-{name}")).await;
    let routes = empty_table(&settings_with(&["localhost"], None));
    let clock = ManualClock::starting_now();
    let cp = Arc::new(
        ControlPlane::start(
            Parts::new(store, routes.clone(), Arc::new(clock.clone())),
            Settings {
                lifecycle: LifecycleSettings {
                    activation_deadline: MIN,
                    retention: Duration::from_secs(86_400),
                    evicted_expiry: Duration::from_secs(30 * 86_400),
                    reaper_interval: Duration::from_secs(5),
                },
                ..Settings::new(hash_token("reaper-test-admin-token"))
            },
        )
        .await
        .unwrap(),
    );
    crate::common::add_user(&cp, "ann").await;
    Fixture {
        cp,
        clock,
        routes,
        _dir: dir,
    }
}

fn session(name: &str) -> NewSession {
    NewSession {
        name: name.into(),
        owner: "ann".into(),
        remote_port: Some(9),
        public: true,
        ..NewSession::default()
    }
}

impl Fixture {
    async fn state(&self, name: &str) -> Option<SessionState> {
        self.cp.get_session(name).await.ok().map(|s| s.state)
    }

    fn routed(&self, name: &str) -> bool {
        self.routes
            .load()
            .route(&format!("session:{name}"))
            .is_some()
    }

    async fn reap(&self) -> ReapReport {
        self.cp.reap().await.unwrap()
    }
}

async fn pending_sessions_past_the_activation_deadline_are_deleted_then_purged(engine: Engine) {
    let f = fixture(engine, "pending").await;
    f.cp.create_session(NewSession {
        pending: true,
        ..session("p")
    })
    .await
    .unwrap();
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(f.reap().await, ReapReport::default());
    assert_eq!(f.state("p").await, Some(SessionState::Pending));

    f.clock.advance(Duration::from_secs(1));
    let r = f.reap().await;
    assert_eq!(r.deleted_unactivated, ["p"]);
    assert_eq!(f.state("p").await, Some(SessionState::Deleted));
    assert_eq!(f.cp.metrics().reaper_count("delete_unactivated"), 1);

    // Kept for the retention, then purged.
    f.clock.advance(Duration::from_secs(86_399));
    assert!(f.reap().await.purged.is_empty());
    f.clock.advance(Duration::from_secs(2));
    assert_eq!(f.reap().await.purged, ["p"]);
    assert_eq!(f.state("p").await, None);
    assert_eq!(f.cp.metrics().reaper_count("purge"), 1);
}

async fn running_sessions_expire_at_expires_and_keepalive_postpones_it(engine: Engine) {
    let f = fixture(engine, "expires").await;
    f.cp.create_session(NewSession {
        duration: Some(600),
        ..session("e")
    })
    .await
    .unwrap();
    f.cp.create_session(session("forever")).await.unwrap();
    assert!(f.routed("e"));

    f.clock.advance(Duration::from_secs(500));
    f.cp.session_action("e", Action::Keepalive, None)
        .await
        .unwrap();
    // 500 s in: keepalive set expires to now + 600 s.
    f.clock.advance(Duration::from_secs(599));
    assert!(f.reap().await.expired.is_empty());
    f.clock.advance(Duration::from_secs(1));
    let r = f.reap().await;
    assert_eq!(r.expired, ["e"]);
    assert_eq!(f.state("e").await, Some(SessionState::Expired));
    assert!(!f.routed("e"), "an expired session is no longer routed");
    // No expiry, no idle timeout: a session that is never reaped.
    f.clock.advance(Duration::from_secs(365 * 86_400));
    f.reap().await;
    assert_eq!(f.state("forever").await, Some(SessionState::Running));
    assert_eq!(f.cp.metrics().reaper_count("expire"), 1);
}

async fn a_paused_sessions_expiry_clock_stops(engine: Engine) {
    let f = fixture(engine, "paused").await;
    f.cp.create_session(NewSession {
        duration: Some(100),
        ..session("p")
    })
    .await
    .unwrap();
    f.clock.advance(Duration::from_secs(40));
    f.cp.session_action("p", Action::Pause, None).await.unwrap();
    f.clock.advance(Duration::from_secs(3600));
    f.reap().await;
    let s = f.cp.get_session("p").await.unwrap();
    assert_eq!(s.state, SessionState::Paused);
    assert_eq!(s.countdown_secs(f.clock.now_ms()), Some(60));
    f.cp.session_action("p", Action::Resume, None)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(59));
    assert!(f.reap().await.expired.is_empty());
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.reap().await.expired, ["p"]);
}

async fn idle_sessions_expire_by_the_gateways_activity(engine: Engine) {
    let f = fixture(engine, "idle").await;
    // The proxy's activity clock is the wall clock. Create the sessions an
    // hour "ago" on the manual clock, so that traffic recorded now is
    // unambiguously an hour after their creation.
    let hour_ago = control_plane::clock::SystemClock.now_ms() - 3_600_000;
    f.clock.set(hour_ago);
    for name in ["busy", "quiet"] {
        f.cp.create_session(NewSession {
            idle_timeout: Some(300),
            ..session(name)
        })
        .await
        .unwrap();
    }

    // Traffic on "busy", recorded the way the proxy records it: on the
    // route's runtime state, which the reaper reads.
    let state = Arc::clone(&f.routes.load().route("session:busy").unwrap().state);
    state.touch();
    let touched = state.last_activity_ms().unwrap();
    f.clock.set(touched + 100_000);
    let r = f.reap().await;
    assert_eq!(r.expired_idle, ["quiet"], "idle for an hour");
    let busy = f.cp.get_session("busy").await.unwrap();
    assert_eq!(busy.state, SessionState::Running);
    assert_eq!(
        busy.last_activity_ms,
        Some(touched),
        "activity written to the store"
    );

    f.clock.set(touched + 299_000);
    assert!(f.reap().await.expired_idle.is_empty());
    // A keep-alive counts as activity too.
    f.cp.session_action("busy", Action::Keepalive, None)
        .await
        .unwrap();
    f.clock.set(touched + 598_000);
    assert!(f.reap().await.expired_idle.is_empty());
    f.clock.set(touched + 599_000);
    assert_eq!(f.reap().await.expired_idle, ["busy"]);
    assert!(!f.routed("busy"));
    assert_eq!(f.cp.metrics().reaper_count("expire_idle"), 2);
}

async fn evicted_sessions_expire_after_thirty_days_without_activity(engine: Engine) {
    let f = fixture(engine, "evicted").await;
    for n in ["old", "reopened"] {
        f.cp.create_session(session(n)).await.unwrap();
        f.cp.session_action(n, Action::Evict, None).await.unwrap();
    }
    f.clock.advance(Duration::from_secs(29 * 86_400));
    assert!(f.reap().await.expired_evicted.is_empty());
    // The owner opens one again: running, and its eviction age is gone.
    f.cp.session_action("reopened", Action::Activate, None)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(86_400));
    let r = f.reap().await;
    assert_eq!(r.expired_evicted, ["old"]);
    assert_eq!(f.state("old").await, Some(SessionState::Expired));
    assert_eq!(f.state("reopened").await, Some(SessionState::Running));
    assert_eq!(f.cp.metrics().reaper_count("expire_evicted"), 1);
    assert!(f
        .cp
        .metrics()
        .render()
        .contains("sessiongate_reaper_actions_total{action=\"expire_evicted\"} 1"));
}

crate::common::on_both_engines! {
    #[tokio::test]
    pending_sessions_past_the_activation_deadline_are_deleted_then_purged,
    running_sessions_expire_at_expires_and_keepalive_postpones_it,
    a_paused_sessions_expiry_clock_stops,
    idle_sessions_expire_by_the_gateways_activity,
    evicted_sessions_expire_after_thirty_days_without_activity;
}
