//! The store's tests, each run on both engines: SQLite in a temp file and
//! PostgreSQL in a fresh database of the test process's own cluster
//! (`testkit::postgres`, which fails the test when there is no PostgreSQL
//! to start). `on_both_engines!` makes `sqlite::<test>` and
//! `postgres::<test>` of each `async fn <test>(engine: Engine)`.

use super::*;

use std::collections::BTreeMap;

use crate::session::model::RequestParameter;
use crate::workshop::environment::WorkshopInfo;

/// A fresh, migrated store on `engine`; SQLite's file lives as long as it.
struct Fixture {
    store: Store,
    _dir: Option<testkit::TempDir>,
}

impl Fixture {
    async fn new(engine: Engine, name: &str) -> Fixture {
        match engine {
            Engine::Sqlite => {
                let dir = testkit::TempDir::new(&format!("store-{name}"));
                let store = Store::open(&dir.path().join("t.db")).await.unwrap();
                Fixture {
                    store,
                    _dir: Some(dir),
                }
            }
            Engine::Postgres => {
                let url = testkit::postgres::database(name).await;
                Fixture {
                    store: Store::open_postgres(&url).await.unwrap(),
                    _dir: None,
                }
            }
        }
    }

    async fn conn(&self) -> sqlx::pool::PoolConnection<Any> {
        self.store.conn().await.unwrap()
    }
}

macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Engine::Postgres).await
                }
            )*
        }
    };
}

on_both_engines!(
    durability_settings_hold_on_every_connection,
    users_are_listed_case_insensitively_with_wildcards_escaped_and_paged,
    groups_and_members_round_trip_in_byte_order,
    sessions_round_trip_every_column,
    sessions_updated_in_bulk_round_trip_every_column,
    session_listing_filters_and_pages,
    slug_neighbours_follow_byte_order_whatever_the_locale,
    live_names_are_unique_and_the_duplicate_is_named,
    touches_are_written_in_chunks_and_never_move_back,
    reap_candidates_and_purges,
    api_tokens_access_links_and_signing_keys,
    oauth_tokens_are_taken_once_and_revoked_with_their_access_token,
    environments_and_portal_counts,
    a_failed_statement_rolled_back_to_its_savepoint_leaves_the_transaction_usable,
    the_change_log_is_purged_by_prefix_so_a_held_row_proves_nothing_after_it_is_gone,
);

fn user(name: &str) -> UserRow {
    UserRow {
        id: format!("id-{name}"),
        name: name.into(),
        email: None,
        first_name: None,
        last_name: None,
        created_ms: 1_000,
    }
}

fn session(name: &str, owner: &str) -> SessionRecord {
    SessionRecord {
        name: name.into(),
        kind: SessionKind::Tunnel,
        remote_host: Some("127.0.0.1".into()),
        remote_port: Some(8080),
        url: None,
        https: false,
        tls_verify: true,
        slug: None,
        shared_origin: false,
        strip_prefix: false,
        rewrite_host: false,
        allow_any_upgrade: false,
        custom_domain: None,
        workspace_port: None,
        owner: owner.into(),
        groups: Vec::new(),
        public: false,
        state: SessionState::Running,
        created_ms: 1_000,
        activated_ms: None,
        expires_ms: None,
        last_activity_ms: None,
        paused_ms: None,
        state_changed_ms: 1_000,
        duration_secs: None,
        idle_timeout_secs: None,
        extendable: true,
        environment: None,
        labels: BTreeMap::new(),
        activate_by_ms: None,
        analytics_url: None,
        parameters: Vec::new(),
        parameter_headers: false,
    }
}

async fn durability_settings_hold_on_every_connection(engine: Engine) {
    let f = Fixture::new(engine, "durability").await;
    // Several connections at once, so that the pool opens more than one.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(f.conn().await);
    }
    for c in &mut conns {
        match engine {
            Engine::Sqlite => {
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&mut **c)
                    .await
                    .unwrap();
                let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut **c)
                    .await
                    .unwrap();
                let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                    .fetch_one(&mut **c)
                    .await
                    .unwrap();
                let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                    .fetch_one(&mut **c)
                    .await
                    .unwrap();
                assert_eq!(
                    (mode.as_str(), sync, fk, busy),
                    ("wal", 2, 1, 10_000),
                    "2 = FULL"
                );
            }
            Engine::Postgres => {
                let sync: String =
                    sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                        .fetch_one(&mut **c)
                        .await
                        .unwrap();
                assert_eq!(sync, "on");
            }
        }
    }
}

async fn users_are_listed_case_insensitively_with_wildcards_escaped_and_paged(engine: Engine) {
    let f = Fixture::new(engine, "users").await;
    let mut c = f.conn().await;
    for (name, email) in [
        ("ann", Some("Ann@Example.org")),
        ("bob", None),
        ("cy_1", None),
        ("cyx1", None),
        ("50%off", None),
    ] {
        user_insert(
            &mut c,
            &UserRow {
                email: email.map(String::from),
                ..user(name)
            },
        )
        .await
        .unwrap();
    }
    assert!(user_exists(&mut c, "ann").await.unwrap());
    assert!(
        !user_exists(&mut c, "Ann").await.unwrap(),
        "names are exact"
    );
    let names = |rows: Vec<UserRow>| rows.into_iter().map(|u| u.name).collect::<Vec<_>>();
    let (rows, total) = users_list(&mut c, Some("EXAMPLE"), 1, 10).await.unwrap();
    assert_eq!((names(rows), total), (vec!["ann".to_string()], 1));
    // `_` and `%` are literal, not wildcards.
    let (rows, _) = users_list(&mut c, Some("cy_"), 1, 10).await.unwrap();
    assert_eq!(names(rows), ["cy_1"]);
    let (rows, _) = users_list(&mut c, Some("0%"), 1, 10).await.unwrap();
    assert_eq!(names(rows), ["50%off"]);
    // Pages of two, by name in byte order.
    let (rows, total) = users_list(&mut c, None, 2, 2).await.unwrap();
    assert_eq!((names(rows), total), (vec!["bob".into(), "cy_1".into()], 5));
    let (rows, _) = users_list(&mut c, None, 1, 2).await.unwrap();
    assert_eq!(names(rows), ["50%off", "ann"]);

    let mut ann = user_get(&mut c, "ann").await.unwrap().unwrap();
    ann.first_name = Some("Ann".into());
    ann.last_name = Some("Lee".into());
    user_update(&mut c, &ann).await.unwrap();
    assert_eq!(user_get(&mut c, "ann").await.unwrap(), Some(ann));
    let (rows, _) = users_list(&mut c, Some("n l"), 1, 10).await.unwrap();
    assert_eq!(names(rows), ["ann"], "first and last name, joined");
    assert!(user_delete(&mut c, "bob").await.unwrap());
    assert!(!user_delete(&mut c, "bob").await.unwrap());
}

async fn groups_and_members_round_trip_in_byte_order(engine: Engine) {
    let f = Fixture::new(engine, "groups").await;
    let mut c = f.conn().await;
    for u in ["ann", "Bob", "cy"] {
        user_insert(&mut c, &user(u)).await.unwrap();
    }
    for (g, at) in [("labs", 5), ("Admins", 7), ("a-b", 9)] {
        group_insert(&mut c, g, at).await.unwrap();
    }
    let groups = groups_list(&mut c).await.unwrap();
    assert_eq!(
        groups,
        [("Admins".into(), 7), ("a-b".into(), 9), ("labs".into(), 5)],
        "byte order: upper case first"
    );
    assert_eq!(group_created(&mut c, "labs").await.unwrap(), Some(5));
    assert_eq!(group_created(&mut c, "nope").await.unwrap(), None);
    assert!(member_add(&mut c, "labs", "cy").await.unwrap());
    assert!(member_add(&mut c, "labs", "Bob").await.unwrap());
    assert!(
        !member_add(&mut c, "labs", "cy").await.unwrap(),
        "a second add changes nothing"
    );
    assert!(member_add(&mut c, "Admins", "cy").await.unwrap());
    let members = group_members(&mut c, None).await.unwrap();
    assert_eq!(members["labs"], ["Bob", "cy"]);
    assert_eq!(members["Admins"], ["cy"]);
    let of = groups_of_users(&mut c, &["cy".into(), "ann".into()])
        .await
        .unwrap();
    assert_eq!(of["cy"], ["Admins", "labs"]);
    assert!(!of.contains_key("ann"));
    assert_eq!(
        missing_users(&mut c, &["zed".into(), "ann".into(), "Ann".into()])
            .await
            .unwrap(),
        ["zed", "Ann"]
    );
    assert_eq!(
        missing_groups(&mut c, &["labs".into(), "LABS".into()])
            .await
            .unwrap(),
        ["LABS"]
    );
    assert!(member_remove(&mut c, "labs", "cy").await.unwrap());
    assert!(!member_remove(&mut c, "labs", "cy").await.unwrap());
    // Deleting a group takes its memberships with it.
    assert!(group_delete(&mut c, "labs").await.unwrap());
    assert!(group_members(&mut c, Some("labs"))
        .await
        .unwrap()
        .is_empty());
}

async fn sessions_round_trip_every_column(engine: Engine) {
    let f = Fixture::new(engine, "session-columns").await;
    let mut c = f.conn().await;
    user_insert(&mut c, &user("ann")).await.unwrap();
    for g in ["zeta", "Alpha", "beta"] {
        group_insert(&mut c, g, 1).await.unwrap();
    }
    // Every boolean true and every optional value set, then the opposite.
    let full = SessionRecord {
        kind: SessionKind::Link,
        remote_host: Some("backend.internal".into()),
        remote_port: Some(65_535),
        url: Some("https://example.org/x?y=1".into()),
        https: true,
        tls_verify: false,
        slug: Some("/labs/one".into()),
        shared_origin: true,
        strip_prefix: true,
        rewrite_host: true,
        allow_any_upgrade: true,
        custom_domain: Some("lab.example.org".into()),
        workspace_port: Some(1),
        groups: vec!["Alpha".into(), "beta".into(), "zeta".into()],
        public: true,
        state: SessionState::Paused,
        created_ms: 1_700_000_000_000,
        activated_ms: Some(1_700_000_000_001),
        expires_ms: Some(i64::MAX as u64),
        last_activity_ms: Some(3),
        paused_ms: Some(4),
        state_changed_ms: 5,
        duration_secs: Some(3_600),
        idle_timeout_secs: Some(600),
        extendable: false,
        environment: Some("env-1".into()),
        labels: BTreeMap::from([
            ("course".into(), "Rust 101".into()),
            ("émoji".into(), "✓".into()),
        ]),
        activate_by_ms: Some(6),
        analytics_url: Some("https://hooks.example.org/a".into()),
        parameters: vec![RequestParameter {
            name: "WORKSHOP_USER".into(),
            value: "o'brien \"quoted\"".into(),
        }],
        parameter_headers: true,
        ..session("full", "ann")
    };
    session_insert(&mut c, &full).await.unwrap();
    assert_eq!(
        session_get(&mut c, "full").await.unwrap().as_ref(),
        Some(&full)
    );
    let empty = session("empty", "ann");
    session_insert(&mut c, &empty).await.unwrap();
    assert_eq!(
        session_get(&mut c, "empty").await.unwrap().as_ref(),
        Some(&empty)
    );
    assert_eq!(session_get(&mut c, "none").await.unwrap(), None);

    // update_row keeps the groups as stored; update replaces them.
    let mut changed = SessionRecord {
        https: false,
        public: false,
        groups: Vec::new(),
        state: SessionState::Running,
        remote_port: None,
        ..full.clone()
    };
    session_update_row(&mut c, &changed).await.unwrap();
    let got = session_get(&mut c, "full").await.unwrap().unwrap();
    assert_eq!(got.groups, full.groups);
    assert_eq!(
        (got.https, got.public, got.remote_port),
        (false, false, None)
    );
    changed.groups = vec!["beta".into()];
    session_update(&mut c, &changed).await.unwrap();
    assert_eq!(
        session_get(&mut c, "full").await.unwrap().unwrap().groups,
        ["beta"]
    );
    // Read in bulk, the same records come back, groups and all.
    let all = sessions_in_states(&mut c, &[SessionState::Running])
        .await
        .unwrap();
    assert_eq!(all, [empty, changed]);
}

/// A record with every column of `session`'s flipped: each boolean, each
/// optional value set, each value another.
fn flipped(name: &str, owner: &str) -> SessionRecord {
    SessionRecord {
        kind: SessionKind::Link,
        remote_host: Some("backend.internal".into()),
        remote_port: Some(65_535),
        url: Some("https://example.org/x?y=1".into()),
        https: true,
        tls_verify: false,
        slug: Some(format!("/labs/{name}")),
        shared_origin: true,
        strip_prefix: true,
        rewrite_host: true,
        allow_any_upgrade: true,
        custom_domain: Some(format!("{name}.example.org")),
        workspace_port: Some(1),
        public: true,
        state: SessionState::Paused,
        created_ms: 1_700_000_000_000,
        activated_ms: Some(1_700_000_000_001),
        expires_ms: Some(i64::MAX as u64),
        last_activity_ms: Some(3),
        paused_ms: Some(4),
        state_changed_ms: 5,
        duration_secs: Some(3_600),
        idle_timeout_secs: Some(600),
        extendable: false,
        environment: Some("env-1".into()),
        labels: BTreeMap::from([
            ("course".into(), "Rust 101".into()),
            ("émoji".into(), "✓ \"q\"".into()),
        ]),
        activate_by_ms: Some(6),
        analytics_url: Some("https://hooks.example.org/a".into()),
        parameters: vec![RequestParameter {
            name: "WORKSHOP_USER".into(),
            value: "o'brien \"quoted\"".into(),
        }],
        parameter_headers: true,
        ..session(name, owner)
    }
}

async fn sessions_updated_in_bulk_round_trip_every_column(engine: Engine) {
    let f = Fixture::new(engine, "session-bulk-update").await;
    let mut c = f.conn().await;
    for u in ["ann", "bob"] {
        user_insert(&mut c, &user(u)).await.unwrap();
    }
    group_insert(&mut c, "team", 1).await.unwrap();
    let plain = SessionRecord {
        groups: vec!["team".into()],
        ..session("plain", "ann")
    };
    let full = flipped("full", "ann");
    let same = session("same", "ann");
    for s in [&plain, &full, &same] {
        session_insert(&mut c, s).await.unwrap();
    }
    let names: Vec<String> = ["plain", "full", "same", "none"]
        .iter()
        .map(|n| n.to_string())
        .collect();
    let got = sessions_get_many(&mut c, &names).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got["plain"], plain);
    assert_eq!(got["full"], full);

    // Every column flipped both ways, in one call; one record unchanged.
    let plain_now = SessionRecord {
        owner: "bob".into(),
        ..flipped("plain", "ann")
    };
    let full_now = SessionRecord {
        groups: Vec::new(),
        ..session("full", "bob")
    };
    sessions_update_rows(
        &mut c,
        &[(&plain, &plain_now), (&full, &full_now), (&same, &same)],
    )
    .await
    .unwrap();
    // The groups stay as stored.
    let plain_now = SessionRecord {
        groups: plain.groups.clone(),
        ..plain_now
    };
    let got = sessions_get_many(&mut c, &names).await.unwrap();
    assert_eq!(got["plain"], plain_now);
    assert_eq!(got["full"], full_now);
    assert_eq!(got["same"], same);
    assert_eq!(session_get(&mut c, "plain").await.unwrap(), Some(plain_now));
    // An audit line each, as `session_update_row` writes.
    for name in ["plain", "full", "same"] {
        let lines = audit_list(&mut c, name, 10).await.unwrap();
        assert_eq!(
            lines.iter().map(|l| l.action.as_str()).collect::<Vec<_>>(),
            ["create", "update"],
            "{name}"
        );
    }
    // On PostgreSQL, a change-log row each, in order.
    if engine == Engine::Postgres {
        let logged = changes_after(&mut c, 0, 100).await.unwrap();
        let names: Vec<&str> = logged.iter().map(|ch| ch.name.as_str()).collect();
        assert_eq!(names[names.len() - 3..], ["plain", "full", "same"]);
    }
    // Nothing to write is no statement at all.
    sessions_update_rows(&mut c, &[]).await.unwrap();
}

async fn session_listing_filters_and_pages(engine: Engine) {
    let f = Fixture::new(engine, "session-list").await;
    let mut c = f.conn().await;
    for u in ["ann", "bob"] {
        user_insert(&mut c, &user(u)).await.unwrap();
    }
    group_insert(&mut c, "labs", 1).await.unwrap();
    let cases = [
        ("a1", "ann", SessionState::Running, Some("Course")),
        ("a2", "ann", SessionState::Paused, None),
        ("b1", "bob", SessionState::Running, Some("other")),
        ("b2", "bob", SessionState::Deleted, None),
        ("B3", "bob", SessionState::Expired, None),
    ];
    for (name, owner, state, label) in cases {
        let mut s = SessionRecord {
            state,
            ..session(name, owner)
        };
        if let Some(l) = label {
            s.labels.insert("topic".into(), l.into());
        }
        if name.starts_with('a') {
            s.groups = vec!["labs".into()];
        }
        session_insert(&mut c, &s).await.unwrap();
    }
    let list = |f: SessionFilter| {
        let mut f = f;
        f.page = f.page.max(1);
        f.per_page = if f.per_page == 0 { 10 } else { f.per_page };
        f
    };
    let names =
        |r: (Vec<SessionRecord>, u64)| (r.0.into_iter().map(|s| s.name).collect::<Vec<_>>(), r.1);
    // Everything but deleted, in byte order.
    let got = names(
        sessions_list(&mut c, &list(SessionFilter::default()))
            .await
            .unwrap(),
    );
    assert_eq!(
        got,
        (vec!["B3".into(), "a1".into(), "a2".into(), "b1".into()], 4)
    );
    // A label matched case-insensitively, as a name or owner is.
    let f = list(SessionFilter {
        q: Some("COURSE".into()),
        ..SessionFilter::default()
    });
    assert_eq!(
        names(sessions_list(&mut c, &f).await.unwrap()),
        (vec!["a1".into()], 1)
    );
    let f = list(SessionFilter {
        q: Some("BOB".into()),
        states: vec![SessionState::Deleted, SessionState::Running],
        ..SessionFilter::default()
    });
    assert_eq!(
        names(sessions_list(&mut c, &f).await.unwrap()),
        (vec!["b1".into(), "b2".into()], 2)
    );
    let f = list(SessionFilter {
        owner: Some("ann".into()),
        group: Some("labs".into()),
        per_page: 1,
        page: 2,
        ..SessionFilter::default()
    });
    let (page, total) = sessions_list(&mut c, &f).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].name.as_str(), page[0].groups.as_slice()),
        ("a2", &["labs".to_string()][..])
    );
    assert_eq!(
        sessions_shared_with(&mut c, "labs").await.unwrap(),
        ["a1", "a2"]
    );
    // What a user signed in to the console sees: their own, then also
    // those shared with a group they join.
    let visible = |user: &str| {
        list(SessionFilter {
            visible_to: Some(user.into()),
            ..SessionFilter::default()
        })
    };
    assert_eq!(
        names(sessions_list(&mut c, &visible("bob")).await.unwrap()),
        (vec!["B3".into(), "b1".into()], 2)
    );
    member_add(&mut c, "labs", "bob").await.unwrap();
    assert_eq!(
        names(sessions_list(&mut c, &visible("bob")).await.unwrap()),
        (vec!["B3".into(), "a1".into(), "a2".into(), "b1".into()], 4)
    );
    assert_eq!(
        names(sessions_list(&mut c, &visible("ann")).await.unwrap()),
        (vec!["a1".into(), "a2".into()], 2)
    );
    assert_eq!(user_live_sessions(&mut c, "bob").await.unwrap(), 1);
    user_purge_finished_sessions(&mut c, "bob").await.unwrap();
    assert_eq!(session_get(&mut c, "B3").await.unwrap(), None);
    assert!(session_get(&mut c, "b1").await.unwrap().is_some());
}

async fn slug_neighbours_follow_byte_order_whatever_the_locale(engine: Engine) {
    let f = Fixture::new(engine, "slugs").await;
    let mut c = f.conn().await;
    user_insert(&mut c, &user("ann")).await.unwrap();
    user_insert(&mut c, &user("bob")).await.unwrap();
    for (name, owner, slug, state) in [
        ("s1", "ann", "/a", SessionState::Running),
        ("s2", "bob", "/a/b", SessionState::Running),
        ("s3", "ann", "/a/b/c", SessionState::Paused),
        // Sorts between "/a/" and "/a0" only by bytes; an en-US collation
        // that ignores punctuation would put "/ab" there instead.
        ("s4", "ann", "/ab", SessionState::Running),
        ("s5", "ann", "/a0", SessionState::Running),
        ("s6", "ann", "/a/x", SessionState::Expired),
    ] {
        let s = SessionRecord {
            slug: Some(slug.into()),
            state,
            ..session(name, owner)
        };
        session_insert(&mut c, &s).await.unwrap();
    }
    let got = live_slug_neighbours(&mut c, "/a/b", "s2").await.unwrap();
    assert_eq!(
        got,
        [
            ("s1".into(), "ann".into(), "/a".into()),
            ("s3".into(), "ann".into(), "/a/b/c".into()),
        ]
    );
    let got = live_slug_neighbours(&mut c, "/a", "s1").await.unwrap();
    let slugs: Vec<&str> = got.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(slugs, ["/a/b", "/a/b/c"]);
    assert_eq!(
        live_session_with(&mut c, "slug", "/a/x", "").await.unwrap(),
        None,
        "an expired session's slug is free"
    );
    assert_eq!(
        live_session_with(&mut c, "slug", "/ab", "").await.unwrap(),
        Some("s4".into())
    );
    assert_eq!(
        live_slug_session_of_another(&mut c, "ann", "")
            .await
            .unwrap(),
        Some("s2".into())
    );
    assert_eq!(
        live_slug_session_of_another(&mut c, "bob", "")
            .await
            .unwrap(),
        Some("s1".into())
    );
}

async fn live_names_are_unique_and_the_duplicate_is_named(engine: Engine) {
    let f = Fixture::new(engine, "unique").await;
    let mut c = f.conn().await;
    user_insert(&mut c, &user("ann")).await.unwrap();
    let with_domain = |name: &str, state| SessionRecord {
        custom_domain: Some("lab.example.org".into()),
        state,
        ..session(name, "ann")
    };
    session_insert(&mut c, &with_domain("old", SessionState::Deleted))
        .await
        .unwrap();
    session_insert(&mut c, &with_domain("one", SessionState::Running))
        .await
        .unwrap();
    let e = session_insert(&mut c, &with_domain("two", SessionState::Running))
        .await
        .unwrap_err();
    assert!(e.is_unique_violation(), "{e}");
    let e = user_insert(&mut c, &user("ann")).await.unwrap_err();
    assert!(e.is_unique_violation(), "{e}");
    // A foreign key: no session of an unknown owner.
    let e = session_insert(&mut c, &session("x", "nobody"))
        .await
        .unwrap_err();
    assert!(!e.is_unique_violation(), "{e}");
}

/// Touches span several chunks, and an older time never replaces a newer
/// one.
async fn touches_are_written_in_chunks_and_never_move_back(engine: Engine) {
    let f = Fixture::new(engine, "touch").await;
    let mut c = f.conn().await;
    user_insert(&mut c, &user("ann")).await.unwrap();
    let n = sessions::TOUCH_CHUNK * 2 + 7;
    for i in 0..n {
        let s = SessionRecord {
            // Every third session already has activity at 5,000.
            last_activity_ms: i.is_multiple_of(3).then_some(5_000),
            ..session(&format!("s{i}"), "ann")
        };
        session_insert(&mut c, &s).await.unwrap();
    }
    let mut touches: Vec<(String, u64)> = (0..n).map(|i| (format!("s{i}"), 4_000)).collect();
    touches.push(("unknown".into(), 9_000));
    sessions_touch(&mut c, &touches).await.unwrap();
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT name, last_activity_ms FROM sessions")
            .fetch_all(&mut *c)
            .await
            .unwrap();
    assert_eq!(rows.len(), n);
    for (name, at) in rows {
        let i: usize = name[1..].parse().unwrap();
        let want = if i.is_multiple_of(3) { 5_000 } else { 4_000 };
        assert_eq!(at, Some(want), "{name}");
    }
    sessions_touch(&mut c, &[]).await.unwrap();
}

async fn reap_candidates_and_purges(engine: Engine) {
    let f = Fixture::new(engine, "reap").await;
    let mut c = f.conn().await;
    user_insert(&mut c, &user("ann")).await.unwrap();
    for (name, state, expires, idle, changed) in [
        ("pending", SessionState::Pending, None, None, 10),
        ("evicted", SessionState::Evicted, None, None, 10),
        ("forever", SessionState::Running, None, None, 10),
        ("expiring", SessionState::Running, Some(99), None, 10),
        ("idling", SessionState::Running, None, Some(60), 10),
        ("gone-old", SessionState::Deleted, None, None, 10),
        ("gone-new", SessionState::Expired, None, None, 500),
    ] {
        let s = SessionRecord {
            state,
            expires_ms: expires,
            idle_timeout_secs: idle,
            state_changed_ms: changed,
            ..session(name, "ann")
        };
        session_insert(&mut c, &s).await.unwrap();
    }
    let names: Vec<String> = reap_candidates(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["evicted", "expiring", "idling", "pending"]);
    assert_eq!(
        sessions_purge_finished(&mut c, 100).await.unwrap(),
        ["gone-old"]
    );
    assert!(session_get(&mut c, "gone-new").await.unwrap().is_some());
    assert!(session_purge(&mut c, "gone-new").await.unwrap());
    assert!(!session_purge(&mut c, "gone-new").await.unwrap());
}

async fn the_change_log_is_purged_by_prefix_so_a_held_row_proves_nothing_after_it_is_gone(
    engine: Engine,
) {
    let f = Fixture::new(engine, "changes").await;
    let mut c = f.conn().await;
    // Logged only where other replicas read it.
    let mut tx = f.store.begin().await.unwrap();
    log_change(&mut tx, ChangeKind::Session, "s").await.unwrap();
    tx.commit().await.unwrap();
    let logged = changes_after(&mut c, 0, 10).await.unwrap();
    match engine {
        Engine::Sqlite => assert!(logged.is_empty(), "{logged:?}"),
        Engine::Postgres => assert_eq!(
            logged
                .iter()
                .map(|r| (&*r.kind, &*r.name))
                .collect::<Vec<_>>(),
            [("session", "s")]
        ),
    }
    sqlx::query("DELETE FROM changes")
        .execute(&mut *c)
        .await
        .unwrap();
    assert!(
        !changes_hold(&mut c, 1_000).await.unwrap(),
        "an empty log holds nothing"
    );
    // Writers' clocks differ: the third row was stamped before the second.
    for at in [100, 300, 200, 400] {
        sqlx::query(
            "INSERT INTO changes (kind, name, origin, at_ms) VALUES ('session', 'x', 'o', $1)",
        )
        .bind(at as i64)
        .execute(&mut *c)
        .await
        .unwrap();
    }
    async fn seqs_logged(c: &mut Conn) -> Vec<i64> {
        let rows = changes_after(c, 0, 10).await.unwrap();
        rows.iter().map(|r| r.seq).collect()
    }
    let seqs = seqs_logged(&mut c).await;
    assert_eq!(seqs.len(), 4);
    // Older than 350 are the first three; the newest of them stays, and
    // nothing after it goes, whatever its time.
    assert_eq!(changes_purge(&mut c, 350).await.unwrap(), 2);
    assert_eq!(seqs_logged(&mut c).await, seqs[2..]);
    assert!(!changes_hold(&mut c, seqs[1]).await.unwrap());
    assert!(changes_hold(&mut c, seqs[2]).await.unwrap());
    assert!(changes_hold(&mut c, seqs[3]).await.unwrap());
    assert_eq!(last_change(&mut c).await.unwrap(), seqs[3]);
}

async fn api_tokens_access_links_and_signing_keys(engine: Engine) {
    let f = Fixture::new(engine, "tokens").await;
    let mut c = f.conn().await;
    for (name, kind) in [("ci", "admin"), ("gw-1", "gateway"), ("Reader", "read")] {
        token_insert(
            &mut c,
            &TokenRow {
                name: name.into(),
                kind: kind.into(),
                hash: format!("hash-{name}"),
                created_ms: 7,
            },
        )
        .await
        .unwrap();
    }
    let names: Vec<String> = tokens_list(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["Reader", "ci", "gw-1"]);
    assert!(token_delete(&mut c, "ci").await.unwrap());
    assert!(!token_delete(&mut c, "ci").await.unwrap());

    user_insert(&mut c, &user("ann")).await.unwrap();
    session_insert(&mut c, &session("s", "ann")).await.unwrap();
    let link = |hash: &str, created: u64, reusable: bool| AccessTokenRow {
        hash: hash.into(),
        session: "s".into(),
        user: "ann".into(),
        path: "/lab?x=1".into(),
        created_ms: created,
        expires_ms: created + 100,
        reusable,
        used_ms: None,
    };
    access_token_insert(&mut c, &link("once", 10, false))
        .await
        .unwrap();
    access_token_insert(&mut c, &link("old", 20, true))
        .await
        .unwrap();
    access_token_insert(&mut c, &link("new", 30, true))
        .await
        .unwrap();
    let got = access_token_get(&mut c, "once").await.unwrap().unwrap();
    assert_eq!(
        (got.path.as_str(), got.reusable, got.used_ms),
        ("/lab?x=1", false, None)
    );
    let unused = access_token_unused(&mut c, "s", "ann")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unused.hash, "new");
    access_token_set_used(&mut c, "new", 35).await.unwrap();
    access_token_set_used(&mut c, "new", 36).await.unwrap();
    let used = access_token_get(&mut c, "new").await.unwrap().unwrap();
    assert_eq!(
        (used.reusable, used.used_ms),
        (true, Some(35)),
        "the first use stays"
    );
    assert_eq!(
        access_token_unused(&mut c, "s", "ann")
            .await
            .unwrap()
            .unwrap()
            .hash,
        "old"
    );
    access_token_set_expiry(&mut c, "old", 1_000).await.unwrap();
    assert_eq!(
        newest_access_links(&mut c, None).await.unwrap(),
        HashMap::from([("s".to_string(), 30)])
    );
    assert_eq!(
        newest_access_links(&mut c, Some("other")).await.unwrap(),
        HashMap::new()
    );
    assert_eq!(access_tokens_purge(&mut c, 130).await.unwrap(), 2);
    access_token_delete(&mut c, "old").await.unwrap();
    assert!(access_token_get(&mut c, "old").await.unwrap().is_none());

    let key = |id: &str, at: u64| SigningKeyRow {
        id: id.into(),
        secret: format!("c2VjcmV0LQ=={id}"),
        created_ms: at,
        retired_ms: None,
    };
    signing_key_rotate(&mut c, &key("k1", 1), 1).await.unwrap();
    signing_key_rotate(&mut c, &key("k2", 2), 2).await.unwrap();
    signing_key_rotate(&mut c, &key("k3", 3), 3).await.unwrap();
    let keys = signing_keys(&mut c).await.unwrap();
    let got: Vec<(&str, Option<u64>)> =
        keys.iter().map(|k| (k.id.as_str(), k.retired_ms)).collect();
    assert_eq!(got, [("k3", None), ("k2", Some(3))]);
}

async fn oauth_tokens_are_taken_once_and_revoked_with_their_access_token(engine: Engine) {
    let f = Fixture::new(engine, "oauth").await;
    let mut c = f.conn().await;
    oauth_pair_insert(&mut c, "robot", ("a1", 100), ("r1", 1_000))
        .await
        .unwrap();
    oauth_pair_insert(&mut c, "robot", ("a2", 100), ("r2", 1_000))
        .await
        .unwrap();
    assert_eq!(
        oauth_token_user(&mut c, "a1", "access", 50).await.unwrap(),
        Some("robot".into())
    );
    assert_eq!(
        oauth_token_user(&mut c, "a1", "access", 100).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        oauth_token_user(&mut c, "a1", "refresh", 50).await.unwrap(),
        None
    );
    assert_eq!(
        oauth_refresh_take(&mut c, "r1", 50).await.unwrap(),
        Some("robot".into())
    );
    assert_eq!(
        oauth_refresh_take(&mut c, "r1", 50).await.unwrap(),
        None,
        "taken once"
    );
    assert_eq!(
        oauth_token_user(&mut c, "a1", "access", 50).await.unwrap(),
        None
    );
    // Revoking an access token leaves its refresh token.
    assert!(oauth_token_revoke(&mut c, "a2").await.unwrap());
    assert!(oauth_token_revoke(&mut c, "r2").await.unwrap());
    assert!(!oauth_token_revoke(&mut c, "r2").await.unwrap());
    oauth_pair_insert(&mut c, "robot", ("a3", 10), ("r3", 20))
        .await
        .unwrap();
    assert_eq!(oauth_tokens_purge(&mut c, 20).await.unwrap(), 2);
}

async fn environments_and_portal_counts(engine: Engine) {
    let f = Fixture::new(engine, "environments").await;
    let mut c = f.conn().await;
    let env = EnvironmentRecord {
        name: "env-1".into(),
        workshop: WorkshopInfo {
            name: "lab".into(),
            title: "A lab".into(),
            tags: vec!["rust".into()],
            ..WorkshopInfo::default()
        },
        duration_secs: Some(1_800),
        capacity: 3,
        reserved: 1,
        state: EnvironmentState::Running,
        targets: vec![
            Target::parse("http://10.0.0.1:8888").unwrap(),
            Target::parse("https://[::1]:443").unwrap(),
        ],
        tls_verify: false,
        slug_prefix: Some("/labs".into()),
        extendable: true,
        parameter_headers: true,
        created_ms: 9,
        next_session: 4,
    };
    environment_insert(&mut c, &env).await.unwrap();
    assert_eq!(
        environment_get(&mut c, "env-1").await.unwrap().as_ref(),
        Some(&env)
    );
    let stopped = EnvironmentRecord {
        state: EnvironmentState::Stopping,
        tls_verify: true,
        extendable: false,
        parameter_headers: false,
        duration_secs: None,
        slug_prefix: None,
        next_session: 5,
        ..env.clone()
    };
    environment_update(&mut c, &stopped).await.unwrap();
    assert_eq!(environments_list(&mut c).await.unwrap(), [stopped]);

    for u in ["ann", "reserve"] {
        user_insert(&mut c, &user(u)).await.unwrap();
    }
    for (name, owner, state, created) in [
        ("env-1-s001", "reserve", SessionState::Pending, 30),
        ("env-1-s002", "reserve", SessionState::Pending, 20),
        ("env-1-s003", "ann", SessionState::Running, 10),
        ("env-1-s004", "ann", SessionState::Expired, 5),
    ] {
        let s = SessionRecord {
            environment: Some("env-1".into()),
            state,
            created_ms: created,
            ..session(name, owner)
        };
        session_insert(&mut c, &s).await.unwrap();
    }
    session_insert(&mut c, &session("plain", "ann"))
        .await
        .unwrap();
    assert_eq!(
        environment_allocations(&mut c).await.unwrap(),
        HashMap::from([("env-1".to_string(), 3)])
    );
    assert_eq!(
        portal_session_counts(&mut c, "reserve").await.unwrap(),
        (1, 3)
    );
    assert_eq!(portal_sessions_of_owner(&mut c, "ann").await.unwrap(), 1);
    assert_eq!(
        oldest_reserved_session(&mut c, "reserve").await.unwrap(),
        Some("env-1-s002".into())
    );
    assert_eq!(
        sessions_of_environment(&mut c, "env-1")
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(environment_delete(&mut c, "env-1").await.unwrap());
    assert!(!environment_delete(&mut c, "env-1").await.unwrap());
}

/// What the write lock's joined writes rely on: on PostgreSQL an error
/// aborts the whole transaction until it is rolled back to a savepoint.
async fn a_failed_statement_rolled_back_to_its_savepoint_leaves_the_transaction_usable(
    engine: Engine,
) {
    let f = Fixture::new(engine, "savepoint").await;
    let mut tx = f.store.begin().await.unwrap();
    user_insert(&mut tx, &user("ann")).await.unwrap();
    sqlx::query("SAVEPOINT sg_write_1")
        .execute(&mut *tx)
        .await
        .unwrap();
    group_insert(&mut tx, "labs", 1).await.unwrap();
    let e = user_insert(&mut tx, &user("ann")).await.unwrap_err();
    assert!(e.is_unique_violation(), "{e}");
    for s in ["ROLLBACK TO sg_write_1", "RELEASE sg_write_1"] {
        sqlx::query(s).execute(&mut *tx).await.unwrap();
    }
    user_insert(&mut tx, &user("bob")).await.unwrap();
    tx.commit().await.unwrap();
    let mut c = f.conn().await;
    assert!(user_exists(&mut c, "ann").await.unwrap());
    assert!(user_exists(&mut c, "bob").await.unwrap());
    assert_eq!(
        group_created(&mut c, "labs").await.unwrap(),
        None,
        "rolled back"
    );
}

/// The two migration sets name the same migrations, and leave the same
/// tables, columns (name, type, nullability, in order) and indexes.
#[tokio::test]
async fn both_engines_migrate_to_the_same_schema() {
    let versions = |m: &sqlx::migrate::Migrator| {
        m.iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&SQLITE_MIGRATOR), versions(&POSTGRES_MIGRATOR));

    let sqlite = Fixture::new(Engine::Sqlite, "schema").await;
    let postgres = Fixture::new(Engine::Postgres, "schema").await;
    let mut c = sqlite.conn().await;
    let mut lite = Schema::default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    for t in tables {
        let rows = sqlx::query(
            "SELECT name, type, \"notnull\" AS required FROM pragma_table_info($1) ORDER BY cid",
        )
        .bind(&t)
        .fetch_all(&mut *c)
        .await
        .unwrap();
        let cols = rows
            .iter()
            .map(|r| {
                let ty: String = r.get("type");
                // INTEGER is BIGINT on PostgreSQL (see its 0001).
                let ty = match ty.to_ascii_lowercase().as_str() {
                    "integer" => "bigint".to_string(),
                    other => other.to_string(),
                };
                (r.get("name"), ty, r.get::<i64, _>("required") != 0)
            })
            .collect();
        lite.tables.insert(t, cols);
    }
    lite.indexes = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();

    let mut c = postgres.conn().await;
    let mut pg = Schema::default();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS name, data_type::text AS type, \
         CASE WHEN is_nullable::text = 'NO' THEN 1 ELSE 0 END AS required \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    for r in rows {
        pg.tables.entry(r.get("t")).or_default().push((
            r.get("name"),
            r.get("type"),
            r.get::<i32, _>("required") != 0,
        ));
    }
    // Indexes made by CREATE INDEX, not by PRIMARY KEY or UNIQUE.
    pg.indexes = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
         AND indexname NOT IN (SELECT conname FROM pg_constraint) ORDER BY indexname",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();

    assert!(lite.tables.len() >= 9, "{:?}", lite.tables.keys());
    assert!(lite.tables["sessions"].contains(&(
        "parameter_headers".into(),
        "boolean".into(),
        true
    )));
    assert!(lite.indexes.contains(&"sessions_live_slug".to_string()));
    assert_eq!(lite.tables, pg.tables);
    assert_eq!(lite.indexes, pg.indexes);
}

/// Table → columns as (name, lower-case type, NOT NULL); explicit indexes.
#[derive(Debug, Default)]
struct Schema {
    tables: BTreeMap<String, Vec<(String, String, bool)>>,
    indexes: Vec<String>,
}
