//! The configuration's rules, case by case: defaults, files, environment
//! overrides, and errors that name the key.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn embedded_defaults_match_the_design() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.gateway.http_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.control_plane.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.gateway.base_domains, vec!["localhost"]);
    assert_eq!(c.gateway.portal_host, "localhost");
    assert_eq!(c.control_plane.data_dir, PathBuf::from("data"));
    assert_eq!(
        c.database().unwrap(),
        crate::store::DatabaseUrl::Sqlite(PathBuf::from("data/sessiongate.db")),
        "SQLite in the data dir, as before control_plane.database"
    );
    let server = c.server_config();
    assert_eq!(server.max_connections_per_ip, 256);
    assert_eq!(server.max_connection_age, Duration::from_secs(3600));
    assert_eq!(server.tunnel_idle_timeout, Duration::from_secs(3600));
}

#[test]
fn connection_limits_reach_the_server() {
    let c = Config::from_toml(
        "[gateway]\nmax_connections_per_ip = 8\nmax_connection_age_secs = 600\n",
        None,
        env(&[("SESSIONGATE_GATEWAY_TUNNEL_IDLE_TIMEOUT_SECS", "90")]),
    )
    .unwrap();
    let server = c.server_config();
    assert_eq!(server.max_connections_per_ip, 8);
    assert_eq!(server.max_connection_age, Duration::from_secs(600));
    assert_eq!(server.tunnel_idle_timeout, Duration::from_secs(90));
}

#[test]
fn file_keys_and_routes_parse() {
    let c = Config::from_toml(
        r#"
        [gateway]
        http_listen = "127.0.0.1:0"
        base_domains = ["localhost", "sessions.example.com"]
        [[routes]]
        host = "app.localhost"
        upstream = "http://127.0.0.1:9001"
        [[routes]]
        slug = "/lab"
        upstream = "http://127.0.0.1:9002"
        strip_prefix = true
        "#,
        None,
        env(&[]),
    )
    .unwrap();
    let specs = c.route_specs().unwrap();
    assert_eq!(&*specs[0].id, "static:host:app.localhost");
    assert_eq!(&*specs[1].id, "static:slug:/lab");
    assert!(specs[1].strip_prefix);
}

#[test]
fn shipped_example_configs_are_valid() {
    for (name, text) in [
        (
            "examples/quickstart.toml",
            include_str!("../../../examples/quickstart.toml"),
        ),
        (
            "deploy/sessiongate.example.toml",
            include_str!("../../../deploy/sessiongate.example.toml"),
        ),
    ] {
        let c = Config::from_toml(text, Some(Path::new(name)), env(&[]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!c.routes.is_empty(), "{name} shows no route");
    }
    // The split mode's files: a control plane's, and a gateway's that
    // names the control plane it follows.
    for (name, text) in [
        (
            "deploy/control-plane.example.toml",
            include_str!("../../../deploy/control-plane.example.toml"),
        ),
        (
            "deploy/gateway.example.toml",
            include_str!("../../../deploy/gateway.example.toml"),
        ),
    ] {
        Config::from_toml(text, Some(Path::new(name)), env(&[]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let gw = Config::from_toml(
        include_str!("../../../deploy/gateway.example.toml"),
        None,
        env(&[]),
    )
    .unwrap();
    assert!(gw.gateway.control_plane_url.starts_with("http://"));
}

#[test]
fn the_gateway_token_is_not_a_configuration_key_and_gateway_only_keys_are_named() {
    let c = Config::from_toml(
        "",
        None,
        env(&[("SESSIONGATE_GATEWAY_TOKEN", "secret-secret-secret")]),
    )
    .expect("SESSIONGATE_GATEWAY_TOKEN is the gateway's credential, not gateway.token");
    assert_eq!(c.control_plane.gateway_ack_timeout_ms, 1000);
    assert_eq!(c.gateway.admin_listen.port(), 9091);
    let err = Config::from_toml(
        "[control_plane]\ngateway_ack_timeout_ms = 600000\n",
        None,
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gateway_ack_timeout_ms"), "{err}");
    let err = Config::from_toml(
        "[gateway]\ncontrol_plane_url = \"cp:9090\"\n",
        None,
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gateway.control_plane_url"), "{err}");

    let dir = std::env::temp_dir().join(format!("sg-ignored-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cp.toml");
    std::fs::write(
        &file,
        "[gateway]\nhttp_listen = \"127.0.0.1:1\"\nbase_domains = [\"example.test\"]\n",
    )
    .unwrap();
    let keys = super::ignored_gateway_keys(
        Some(&file),
        env(&[
            ("SESSIONGATE_GATEWAY_ADMIN_LISTEN", "127.0.0.1:2"),
            ("SESSIONGATE_GATEWAY_BASE_DOMAINS", "x.test"),
        ]),
    );
    assert_eq!(
        keys,
        vec!["gateway.http_listen", "SESSIONGATE_GATEWAY_ADMIN_LISTEN"],
        "base_domains is the control plane's too"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_overrides_every_kind_of_key() {
    let c = Config::from_toml(
        "[gateway]\nmax_connections = 5\n",
        None,
        env(&[
            ("SESSIONGATE_GATEWAY_HTTP_LISTEN", "127.0.0.1:18080"),
            ("SESSIONGATE_GATEWAY_BASE_DOMAINS", "a.test, b.test"),
            ("SESSIONGATE_GATEWAY_MAX_CONNECTIONS", "77"),
            ("SESSIONGATE_CONTROL_PLANE_DATA_DIR", "/tmp/x"),
            ("SESSIONGATE_ADMIN_TOKEN", "not-a-config-key"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.gateway.http_listen.port(), 18080);
    assert_eq!(c.gateway.base_domains, vec!["a.test", "b.test"]);
    assert_eq!(c.gateway.max_connections, 77);
    assert_eq!(c.control_plane.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn the_oidc_client_secret_comes_from_the_environment_and_stays_out_of_debug() {
    let c = Config::from_toml(
        "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"sessiongate\"\n",
        None,
        env(&[("SESSIONGATE_OIDC_CLIENT_SECRET", "s3cret-from-env")]),
    )
    .unwrap();
    assert_eq!(c.oidc.client_secret, "s3cret-from-env");
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret-from-env"), "{shown}");
    let s = c.oidc_settings(8080, None).expect("oidc is on");
    // The callback host defaults to the portal host, with the access
    // links' scheme and port.
    assert_eq!(s.redirect_host, "localhost");
    assert_eq!((s.scheme.as_str(), s.port), ("http", Some(8080)));
}

#[test]
fn the_database_comes_from_the_file_or_the_environment() {
    use crate::store::{DatabaseUrl, Engine};
    let c = Config::from_toml(
        "[control_plane]\ndata_dir = \"/srv/sg\"\ndatabase = \"\"\n",
        None,
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        c.database().unwrap(),
        DatabaseUrl::Sqlite(PathBuf::from("/srv/sg/sessiongate.db"))
    );
    let c = Config::from_toml(
        "[control_plane]\ndatabase = \"sqlite:///var/lib/sg/x.db\"\n",
        None,
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        c.database().unwrap(),
        DatabaseUrl::Sqlite(PathBuf::from("/var/lib/sg/x.db"))
    );
    let c = Config::from_toml(
        "[control_plane]\ndatabase = \"sqlite://file.db\"\n",
        None,
        env(&[(
            "SESSIONGATE_CONTROL_PLANE_DATABASE",
            "postgresql://sg:pw@db.internal:5433/sessiongate?sslmode=require",
        )]),
    )
    .unwrap();
    let db = c.database().unwrap();
    assert_eq!(db.engine(), Engine::Postgres);
    assert_eq!(
        db.to_string(),
        "postgresql://sg:***@db.internal:5433/sessiongate?sslmode=require"
    );
}

#[test]
fn a_bad_database_names_the_key_and_never_the_password() {
    for (text, vars) in [
        (
            "[control_plane]\ndatabase = \"mysql://sg:hunter2@db/x\"\n",
            &[][..],
        ),
        (
            "[control_plane]\ndatabase = \"postgres://sg:hunter2@db:port/x\"\n",
            &[],
        ),
        (
            "[control_plane]\ndatabase = \"postgres://sg:hunter2@/x\"\n",
            &[],
        ),
        ("[control_plane]\ndatabase = \"sqlite://\"\n", &[]),
        (
            "",
            &[("SESSIONGATE_CONTROL_PLANE_DATABASE", "sg:hunter2@db/x")],
        ),
    ] {
        let err = Config::from_toml(text, None, env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("control_plane.database: "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

/// A configuration text, environment variables, and what the error must name.
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn errors_name_the_key_or_variable() {
    let cases: &[BadCase] = &[
        ("[gateway]\nbogus = 1\n", &[], "bogus"),
        ("[gatway]\n", &[], "gatway"),
        ("[gateway]\nmax_connections = \"many\"\n", &[], "max_connections"),
        ("[gateway]\nhttp_listen = \"nowhere\"\n", &[], "http_listen"),
        ("[gateway]\nmax_header_bytes = 100\n", &[], "gateway.max_header_bytes"),
        ("[gateway]\nbase_domains = []\n", &[], "gateway.base_domains"),
        ("[gateway]\nportal_host = \"a b\"\n", &[], "gateway.portal_host"),
        ("[gateway]\nidle_timeout_secs = 0\n", &[], "gateway.idle_timeout_secs"),
        (
            "[gateway]\nmax_connections_per_ip = 0\n",
            &[],
            "gateway.max_connections_per_ip",
        ),
        (
            "[gateway]\nmax_connection_age_secs = 0\n",
            &[],
            "gateway.max_connection_age_secs",
        ),
        (
            "[gateway]\ntunnel_idle_timeout_secs = 99999999999\n",
            &[],
            "gateway.tunnel_idle_timeout_secs",
        ),
        (
            "",
            &[("SESSIONGATE_GATEWAY_MAX_CONNECTIONS_PER_IP", "some")],
            "SESSIONGATE_GATEWAY_MAX_CONNECTIONS_PER_IP",
        ),
        (
            "[tls.acme]\ndirectory_url = \"http://acme.test/dir\"\ndomains = [\"a.example.com\"]\n",
            &[],
            "tls.acme.directory_url",
        ),
        (
            "[tls.acme]\ndirectory_url = \"https://acme.test/dir\"\ndomains = [\"a.example.com\"]\nchallenge = \"dns-01\"\n",
            &[],
            "dns-01 is not supported",
        ),
        (
            "[tls.acme]\ndirectory_url = \"https://acme.test/dir\"\ndomains = [\"*.example.com\"]\n",
            &[],
            "a wildcard needs the dns-01 challenge",
        ),
        (
            "[tls.acme]\ndirectory_url = \"https://acme.test/dir\"\n",
            &[],
            "tls.acme.domains",
        ),
        (
            "[gateway]\nhttps_listen = \"\"\n[tls.acme]\ndirectory_url = \"https://acme.test/dir\"\non_demand = true\n",
            &[],
            "needs gateway.https_listen",
        ),
        (
            "[tls.acme]\ndirectory_url = \"https://acme.test/dir\"\non_demand = true\ncheck_interval_secs = 0\n",
            &[],
            "tls.acme.check_interval_secs",
        ),
        ("[[routes]]\nupstream = \"http://127.0.0.1:1\"\n", &[], "routes[0]"),
        (
            "[[routes]]\nhost = \"a.localhost\"\nupstream = \"tcp://x:1\"\n",
            &[],
            "routes[0].upstream",
        ),
        (
            "[[routes]]\nhost = \"a.localhost\"\nupstream = \"http://x:1\"\nstrip_prefix = true\n",
            &[],
            "routes[0].strip_prefix",
        ),
        (
            "[[routes]]\nhost = \"a.localhost\"\nupstream = \"http://x:1\"\n[[routes]]\nhost = \"A.localhost\"\nupstream = \"http://x:2\"\n",
            &[],
            "claimed by both",
        ),
        ("", &[("SESSIONGATE_GATEWAY_NOPE", "1")], "SESSIONGATE_GATEWAY_NOPE"),
        (
            "",
            &[("SESSIONGATE_GATEWAY_MAX_CONNECTIONS", "lots")],
            "SESSIONGATE_GATEWAY_MAX_CONNECTIONS",
        ),
        (
            "",
            &[("SESSIONGATE_GATEWAY_HTTP_LISTEN", "nowhere")],
            "SESSIONGATE_GATEWAY_HTTP_LISTEN",
        ),
        ("not toml at all [", &[], "config file"),
        ("[access]\nlink_scheme = \"ftp\"\n", &[], "access.link_scheme"),
        ("[access]\ncookie_ttl_secs = 0\n", &[], "access.cookie_ttl_secs"),
        (
            "[access]\nredirect_origins = [\"https://p.example/login\"]\n",
            &[],
            "access.redirect_origins",
        ),
        ("[access]\nlogin_url = \"/login\"\n", &[], "access.login_url"),
        (
            "[control_plane]\nheader_read_timeout_secs = 0\n",
            &[],
            "control_plane.header_read_timeout_secs",
        ),
        (
            "[control_plane]\nmax_connections = 0\n",
            &[],
            "control_plane.max_connections",
        ),
        (
            "[control_plane]\nmax_body_bytes = 10\n",
            &[],
            "control_plane.max_body_bytes",
        ),
        (
            "[control_plane]\nmax_auth_failures = 0\n",
            &[],
            "control_plane.max_auth_failures",
        ),
        (
            "[control_plane]\nauth_failure_window_secs = 0\n",
            &[],
            "control_plane.auth_failure_window_secs",
        ),
        (
            "[sessions]\nallowed_targets = [\"10.0.0.0/40\"]\n",
            &[],
            "sessions.allowed_targets",
        ),
        (
            "",
            &[("SESSIONGATE_CONTROL_PLANE_MAX_BODY_BYTES", "big")],
            "SESSIONGATE_CONTROL_PLANE_MAX_BODY_BYTES",
        ),
        (
            "",
            &[("SESSIONGATE_ACCESS_KEY_GRACE_SECS", "soon")],
            "SESSIONGATE_ACCESS_KEY_GRACE_SECS",
        ),
    ];
    for (text, vars, want) in cases {
        let err = Config::from_toml(text, None, env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?} {vars:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn trusted_proxies_are_networks_checked_at_load() {
    let c = Config::load(None, env(&[])).unwrap();
    assert!(
        c.gateway.trusted_proxies.is_empty(),
        "trusts no one by default"
    );
    assert!(!c.trusted_proxies().contains("127.0.0.1".parse().unwrap()));
    let c = Config::from_toml(
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
        None,
        env(&[]),
    )
    .unwrap();
    assert!(c.trusted_proxies().contains("10.2.3.4".parse().unwrap()));
    assert!(c.trusted_proxies().contains("fd00::7".parse().unwrap()));
    assert!(!c.trusted_proxies().contains("192.0.2.1".parse().unwrap()));
    let c = Config::from_toml(
        "",
        None,
        env(&[("SESSIONGATE_GATEWAY_TRUSTED_PROXIES", "192.0.2.7, ::1")]),
    )
    .unwrap();
    assert_eq!(c.trusted_proxies().to_string(), "192.0.2.7/32, ::1/128");
    let cases: &[BadCase] = &[
        (
            "[gateway]\ntrusted_proxies = [\"10.0.0.1/8\"]\n",
            &[],
            "gateway.trusted_proxies: \"10.0.0.1/8\" has bits set past its prefix: the network is 10.0.0.0/8",
        ),
        (
            "[gateway]\ntrusted_proxies = [\"lb.internal\"]\n",
            &[],
            "gateway.trusted_proxies: \"lb.internal\" is not an IP address or a network such as 10.0.0.0/8 or fd00::/8",
        ),
        (
            "",
            &[("SESSIONGATE_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/40")],
            "gateway.trusted_proxies: \"10.0.0.0/40\": a prefix length of 40 is more than the address's 32 bits",
        ),
    ];
    for (text, vars, want) in cases {
        let err = Config::from_toml(text, None, env(vars)).unwrap_err();
        assert_eq!(err.to_string(), *want);
    }
}

#[test]
fn a_static_route_may_allow_any_upgrade() {
    let c = Config::from_toml(
        "[[routes]]\nslug = \"/vnc\"\nupstream = \"http://127.0.0.1:5900\"\nallow_any_upgrade = true\n\
         [[routes]]\nslug = \"/lab\"\nupstream = \"http://127.0.0.1:9001\"\n",
        None,
        env(&[]),
    )
    .unwrap();
    let specs = c.route_specs().unwrap();
    assert!(specs[0].allow_any_upgrade);
    assert!(!specs[1].allow_any_upgrade, "only WebSocket by default");
}

#[test]
fn workshop_session_caps_default_to_none_and_take_overrides() {
    let c = Config::load(None, env(&[])).unwrap();
    let caps = c.workshop_settings(8080).caps;
    assert_eq!(
        (caps.maximum, caps.registered, caps.anonymous),
        (0, 0, 0),
        "0: no limit, as in the portal"
    );
    let c = Config::from_toml(
        "[workshop]\nsessions_maximum = 20\nsessions_registered = 3\n",
        None,
        env(&[("SESSIONGATE_WORKSHOP_SESSIONS_ANONYMOUS", "1")]),
    )
    .unwrap();
    let caps = c.workshop_settings(8080).caps;
    assert_eq!((caps.maximum, caps.registered, caps.anonymous), (20, 3, 1));
    let cases: &[BadCase] = &[
        (
            "[workshop]\nsessions_maximum = 1000001\n",
            &[],
            "workshop.sessions_maximum: 1000001 is more than 1000000 (0 means no limit)",
        ),
        (
            "",
            &[("SESSIONGATE_WORKSHOP_SESSIONS_ANONYMOUS", "2000000")],
            "workshop.sessions_anonymous: 2000000 is more than 1000000 (0 means no limit)",
        ),
        (
            "",
            &[("SESSIONGATE_WORKSHOP_SESSIONS_REGISTERED", "some")],
            "SESSIONGATE_WORKSHOP_SESSIONS_REGISTERED",
        ),
        (
            "[workshop]\nsessions_maximum = -1\n",
            &[],
            "sessions_maximum",
        ),
    ];
    for (text, vars, want) in cases {
        let err = Config::from_toml(text, None, env(vars)).unwrap_err();
        assert!(err.to_string().contains(want), "{err} does not name {want}");
    }
}
