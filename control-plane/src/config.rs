//! Configuration: a TOML file (or the embedded defaults), every key overridable
//! by a `SESSIONGATE_<SECTION>_<KEY>` environment variable. An unknown key or a
//! bad value is an error that names it; nothing starts on a bad configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway::{
    names, RouteSpec, RouteTarget, ServerConfig, TableSettings, Upstream, UpstreamConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub control_plane: ControlPlaneConfig,
    pub sessions: SessionsConfig,
    pub access: AccessConfig,
    pub tls: TlsConfig,
    pub workshop: WorkshopConfig,
    pub log: LogConfig,
    pub console: ConsoleConfig,
    pub oidc: OidcConfig,
    /// Shared, not copied, by every holder of the configuration (the server,
    /// the reloader): with a million static routes each copy is hundreds of
    /// megabytes.
    pub routes: Arc<[StaticRoute]>,
    /// The SHA-256 of the file's text it was loaded from, so that the
    /// reloader does not parse an unchanged file again.
    #[serde(skip)]
    pub source: SourceDigest,
}

/// The SHA-256 of the text a configuration was loaded from (`None`: the
/// embedded defaults). Not part of what the configuration says: any two are
/// equal, so that two configurations that say the same compare equal
/// whatever their files' comments and spacing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceDigest(pub Option<[u8; 32]>);

impl PartialEq for SourceDigest {
    fn eq(&self, _: &SourceDigest) -> bool {
        true
    }
}

/// The SHA-256 of `text`.
pub fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    out
}

/// The web console (`/ui/`). It is always on the control-plane listener;
/// these put it on the portal host too, for users whose browsers reach the
/// gateway but not the control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Also serve `/ui/` on `gateway.portal_host`: a static route (slug
    /// `/ui`) from the gateways to the control plane, and console links on
    /// the portal host.
    pub portal: bool,
    /// Where the gateways reach the control plane for it; empty:
    /// `http://<control_plane.listen>` (right for `serve`; a remote gateway
    /// needs the address it reaches the control plane at).
    pub upstream: String,
}

/// Logging: the format of every line, and the access log. Levels and
/// targets come from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` (one object per line) for log shippers.
    pub format: LogFormat,
    /// One line per request (target `access`): method, host, path, status,
    /// bytes, duration, upstream, user, remote address and request id.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The training-portal-compatible workshop API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkshopConfig {
    /// The portal's name in the catalog.
    pub portal_name: String,
    /// The portal's URL in the catalog; empty: `http://<portal_host>:<port>`.
    pub portal_url: String,
    /// Where users go back to when no allowed `index_url` was given.
    pub index_url: String,
    /// Origins `index_url` may point at (`https://hub.example.com`).
    pub index_urls: Vec<String>,
    /// OAuth2 client credentials (HTTP Basic on `/oauth2/token/`); empty
    /// disables the token endpoint.
    pub client_id: String,
    pub client_secret: String,
    /// The robot account of the password grant.
    pub robot_username: String,
    pub robot_password: String,
    /// How long an access token lives.
    pub token_ttl_secs: u64,
    /// The most sessions users may hold at once across all environments
    /// (pending ones included), as the portal's `sessions.maximum`; 0: no
    /// limit beyond each environment's capacity.
    pub sessions_maximum: u64,
    /// The most sessions one registered user may hold at once, as the
    /// portal's `sessions.registered`. Reported in the catalog; sessiongate
    /// has no registration of its own, so no user is held to it. 0: no limit.
    pub sessions_registered: u64,
    /// The most sessions one user of the request endpoint may hold at once
    /// across all environments, as the portal's `sessions.anonymous` (the
    /// portal puts every user its REST API makes in `anonymous`). 0: no limit.
    pub sessions_anonymous: u64,
}

impl Default for WorkshopConfig {
    fn default() -> Self {
        WorkshopConfig {
            portal_name: "sessiongate".into(),
            portal_url: String::new(),
            index_url: String::new(),
            index_urls: Vec::new(),
            client_id: String::new(),
            client_secret: String::new(),
            robot_username: String::new(),
            robot_password: String::new(),
            token_ttl_secs: 36_000,
            sessions_maximum: 0,
            sessions_registered: 0,
            sessions_anonymous: 0,
        }
    }
}

/// TLS: termination on `gateway.https_listen`, certificates, re-encryption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Pairs `NAME.crt` + `NAME.key` (PEM); empty means `<data_dir>/certs`.
    pub certs_dir: String,
    /// The pair served when no certificate matches the SNI name (or there is
    /// none); empty means the one named after the first base domain.
    pub default_certificate: String,
    /// With no certificate in `certs_dir` at start, generate a development
    /// CA and a certificate for the first base domain there.
    pub generate_dev_certificate: bool,
    /// With the development CA in `certs_dir` (`ca.crt` + `ca.key`): give a
    /// served name that no loaded certificate covers as browsers accept (a
    /// session under `*.localhost`, which browsers refuse) a short-lived
    /// leaf of its own from that CA, at its first handshake.
    pub on_demand_dev: bool,
    /// Answer plain HTTP with a 308 to the same URL over HTTPS.
    pub redirect_http: bool,
    /// How often the certificates directory is checked for changes.
    pub reload_interval_secs: u64,
    /// A PEM bundle trusted for `https://` upstreams besides the system roots.
    pub upstream_ca_file: String,
    /// Certificates from an ACME CA (`[tls.acme]`).
    pub acme: AcmeConfig,
}

/// `[tls.acme]`: certificates from an ACME CA (RFC 8555) for real names,
/// kept in `<data_dir>/acme`. Off while `directory_url` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The CA's directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// The account's contact address (optional).
    pub email: String,
    /// A PEM bundle trusted for the directory besides Mozilla's roots: a
    /// private ACME CA (step-ca, pebble).
    pub ca_file: String,
    /// `http-01` (answered on `gateway.http_listen`, port 80 for a public
    /// CA) or `tls-alpn-01` (on `gateway.https_listen`, port 443).
    pub challenge: String,
    /// Names ordered at start and kept renewed.
    pub domains: Vec<String>,
    /// Also order, at its first handshake, a certificate for a name the
    /// gateway serves (a base domain, a session's host or custom domain)
    /// that no loaded certificate covers. `localhost` names stay with the
    /// development CA.
    pub on_demand: bool,
    /// How often certificates are checked for renewal (due at two thirds
    /// of their lifetime).
    pub check_interval_secs: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: String::new(),
            email: String::new(),
            ca_file: String::new(),
            challenge: "http-01".into(),
            domains: Vec::new(),
            on_demand: false,
            check_interval_secs: 3600,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certs_dir: String::new(),
            default_certificate: String::new(),
            generate_dev_certificate: true,
            on_demand_dev: true,
            redirect_http: false,
            reload_interval_secs: 5,
            upstream_ca_file: String::new(),
            acme: AcmeConfig::default(),
        }
    }
}

/// `[oidc]`: OpenID Connect sign-in at the gateway and in the console,
/// beside access links. Off while `issuer` is empty.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The provider's issuer URL; discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Better from `SESSIONGATE_OIDC_CLIENT_SECRET` than from the file.
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// The host the callback lives on (`<scheme>://<redirect_host>/_sessiongate/oidc/callback`,
    /// with the scheme and port of access links); empty: `gateway.portal_host`.
    pub redirect_host: String,
    pub groups_claim: String,
    pub username_claim: String,
    /// Email domains allowed to sign in; empty: any.
    pub allowed_domains: Vec<String>,
    /// The user's groups follow the groups claim at each sign-in.
    pub sync_groups: bool,
    /// A PEM bundle trusted for the provider besides Mozilla's roots.
    pub ca_file: String,
    /// The console's "Sign in with ..." name; empty: the issuer's host.
    pub display_name: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            scopes: vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "groups".into(),
            ],
            redirect_host: String::new(),
            groups_claim: "groups".into(),
            username_claim: "preferred_username".into(),
            allowed_domains: Vec::new(),
            sync_groups: true,
            ca_file: String::new(),
            display_name: String::new(),
        }
    }
}

// Not derived: the client secret must not reach a log line.
impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_host", &self.redirect_host)
            .finish_non_exhaustive()
    }
}

/// Browser access: access links, cookies, signing keys, redirects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// How long an access link may wait to be opened.
    pub link_ttl_secs: u64,
    /// How long a browser's session cookie is valid.
    pub cookie_ttl_secs: u64,
    /// How long cookies signed by the previous key are accepted after a rotation.
    pub key_grace_secs: u64,
    /// The scheme of access links: `http`, or `https` behind a TLS terminator.
    pub link_scheme: String,
    /// The port of access links; 0 means the gateway's own HTTP port.
    pub link_port: u16,
    /// Where a browser without a valid cookie is sent (with
    /// `notification=session-invalid`); empty answers 401. Must be on
    /// `redirect_origins`, or it is ignored.
    pub login_url: String,
    /// Origins (`https://portal.example.com`) that redirects may go to.
    pub redirect_origins: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        let d = crate::access::AccessSettings::default();
        AccessConfig {
            link_ttl_secs: d.link_ttl.as_secs(),
            cookie_ttl_secs: d.cookie_ttl.as_secs(),
            key_grace_secs: d.key_grace.as_secs(),
            link_scheme: d.link_scheme,
            link_port: 0,
            login_url: String::new(),
            redirect_origins: Vec::new(),
        }
    }
}

/// The session lifecycle: deadlines, retention and the reaper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A pending session not activated within this is deleted.
    pub activation_deadline_secs: u64,
    /// Expired and deleted records are purged after this.
    pub retention_secs: u64,
    /// An evicted session without activity for this long expires.
    pub evicted_expiry_secs: u64,
    /// How often the reaper looks for due sessions.
    pub reaper_interval_secs: u64,
    /// What session and environment targets may be: CIDRs (`10.0.0.0/8`),
    /// addresses, host names and `*.example.org` (any name under it).
    /// Empty: anything but link-local and cloud metadata addresses.
    /// sessiongate's own listeners are refused either way.
    pub allowed_targets: Vec<String>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        let d = crate::session::lifecycle::LifecycleSettings::default();
        SessionsConfig {
            activation_deadline_secs: d.activation_deadline.as_secs(),
            retention_secs: d.retention.as_secs(),
            evicted_expiry_secs: d.evicted_expiry.as_secs(),
            reaper_interval_secs: d.reaper_interval.as_secs(),
            allowed_targets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub http_listen: SocketAddr,
    /// TLS listener; empty for none.
    pub https_listen: String,
    pub base_domains: Vec<String>,
    pub portal_host: String,
    pub max_connections: usize,
    /// Connections from one IPv4 address or IPv6 /64; more are closed at
    /// once and counted.
    pub max_connections_per_ip: usize,
    pub header_read_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    /// A connection older than this finishes what is open and closes.
    pub max_connection_age_secs: u64,
    /// A WebSocket with no byte either way for this long is closed.
    pub tunnel_idle_timeout_secs: u64,
    pub max_header_bytes: usize,
    pub upstream_connect_timeout_secs: u64,
    pub upstream_response_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Proxies in front of the gateway (`10.0.0.0/8`, `fd00::/8`, or single
    /// addresses) whose `X-Forwarded-For`, `Forwarded`, `X-Real-IP`,
    /// `X-Forwarded-User` and `X-Forwarded-Prefix` are kept and appended
    /// to. From any other peer they are replaced or removed, as a client
    /// could say anything in them. Empty: no one is trusted.
    pub trusted_proxies: Vec<String>,
    /// `sessiongate gateway`: the control plane to follow, the URL `ctl
    /// --server` takes (its API listener); several, comma-separated, for
    /// replicas, tried in turn. Overridden by `--control-plane`.
    pub control_plane_url: String,
    /// `sessiongate gateway`: `/metrics`, `/healthz` and `/readyz`.
    pub admin_listen: SocketAddr,
    /// `sessiongate gateway`: where its table file lives (relative to the
    /// working directory).
    pub data_dir: PathBuf,
    /// The address sessions' workspace ports (raw TCP) are opened on.
    pub workspace_listen_address: String,
    /// Clients (CIDRs) that may connect to a workspace port.
    pub workspace_allowed_clients: Vec<String>,
    /// The ports a workspace port may be, `LOW-HIGH` (inclusive).
    pub workspace_port_range: String,
    /// Open connections per session's workspace port.
    pub workspace_max_connections: usize,
    /// A workspace connection idle this long (no byte either way) closes.
    pub workspace_idle_timeout_secs: u64,
    /// Workspace ports speak TLS and require a client certificate from
    /// the workspace CA (`<data_dir>/workspace-ca`) naming a user the
    /// session lets in.
    pub workspace_tls: bool,
    /// Also count workspace bytes per session, labelled by session name
    /// (a series per session with a workspace port).
    pub workspace_session_metrics: bool,
}

/// Keys of `[gateway]` that only `sessiongate gateway` (or `serve`'s
/// gateway) reads: `sessiongate control-plane` ignores them, with a
/// warning, rather than refusing a file shared with its gateways.
pub const GATEWAY_ONLY_KEYS: &[&str] = &[
    "http_listen",
    "workspace_allowed_clients",
    "workspace_max_connections",
    "workspace_idle_timeout_secs",
    "workspace_tls",
    "workspace_session_metrics",
    "https_listen",
    "admin_listen",
    "control_plane_url",
    "data_dir",
    "max_connections",
    "max_connections_per_ip",
    "header_read_timeout_secs",
    "idle_timeout_secs",
    "max_connection_age_secs",
    "tunnel_idle_timeout_secs",
    "max_header_bytes",
    "upstream_connect_timeout_secs",
    "upstream_response_timeout_secs",
    "shutdown_grace_secs",
    "trusted_proxies",
];

/// The gateway-only keys set in the file at `path` or by
/// `SESSIONGATE_GATEWAY_<KEY>` in `env`: what `sessiongate control-plane`
/// warns it ignores.
pub fn ignored_gateway_keys(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) {
        if let Ok(doc) = text.parse::<toml::Table>() {
            if let Some(g) = doc.get("gateway").and_then(|g| g.as_table()) {
                out.extend(
                    GATEWAY_ONLY_KEYS
                        .iter()
                        .filter(|k| g.contains_key(**k))
                        .map(|k| format!("gateway.{k}")),
                );
            }
        }
    }
    for (var, _) in env {
        if let Some(key) = var
            .strip_prefix(ENV_PREFIX)
            .and_then(|r| r.strip_prefix("GATEWAY_"))
            .map(|k| k.to_ascii_lowercase())
        {
            if GATEWAY_ONLY_KEYS.contains(&key.as_str()) {
                out.push(var);
            }
        }
    }
    out
}

/// The control-plane listener and its data. Its limits are the gateway's
/// kind, smaller: the API answers operators and portals, not browsers, and
/// a client that holds connections or sends half a head must not take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the store lives (also `--database`): empty for SQLite at
    /// `<data_dir>/sessiongate.db`; `sqlite://PATH` for another file;
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS` (or
    /// `postgresql://`) for PostgreSQL. Migrations run at start. Logs and
    /// errors show the URL with its password as `***`.
    pub database: String,
    /// Time a client has to send a request head, and the longest a
    /// keep-alive connection waits for its next one.
    pub header_read_timeout_secs: u64,
    /// Simultaneous API connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request body; larger ones answer 413.
    pub max_body_bytes: usize,
    /// Failed authentications one client address may make per window, at
    /// each kind of secret (API tokens; `/oauth2/token/`'s client secret,
    /// robot password and refresh tokens; access links); past it, 429 with
    /// `Retry-After` until the window ends.
    pub max_auth_failures: u32,
    /// The window of `max_auth_failures`, from an address's first failure.
    pub auth_failure_window_secs: u64,
    /// How long an API write waits for every connected remote gateway to
    /// apply the table version it made, before answering anyway with the
    /// laggards named in a `Warning` header.
    pub gateway_ack_timeout_ms: u64,
}

/// A route from the configuration file: exactly one of `host` and `slug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub rewrite_host: bool,
    /// For an `https://` upstream: verify its certificate (default true).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Pass on upgrades to any protocol (`h2c`, a custom tunnel), not only
    /// WebSocket (default false).
    #[serde(default)]
    pub allow_any_upgrade: bool,
}

fn default_true() -> bool {
    true
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let server = ServerConfig::default();
        let upstream = UpstreamConfig::default();
        GatewayConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https_listen: "127.0.0.1:8443".into(),
            base_domains: vec!["localhost".into()],
            portal_host: "localhost".into(),
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
            header_read_timeout_secs: server.header_read_timeout.as_secs(),
            idle_timeout_secs: server.idle_timeout.as_secs(),
            max_connection_age_secs: server.max_connection_age.as_secs(),
            tunnel_idle_timeout_secs: server.tunnel_idle_timeout.as_secs(),
            max_header_bytes: server.max_header_bytes,
            upstream_connect_timeout_secs: upstream.connect_timeout.as_secs(),
            upstream_response_timeout_secs: upstream.response_timeout.as_secs(),
            shutdown_grace_secs: server.shutdown_grace.as_secs(),
            trusted_proxies: Vec::new(),
            control_plane_url: String::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            data_dir: PathBuf::from("data"),
            workspace_listen_address: "127.0.0.1".into(),
            workspace_allowed_clients: vec!["127.0.0.0/8".into(), "::1/128".into()],
            workspace_port_range: "30000-32767".into(),
            workspace_max_connections: 64,
            workspace_idle_timeout_secs: 3600,
            workspace_tls: false,
            workspace_session_metrics: false,
        }
    }
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        let limits = crate::api::server::ApiLimits::default();
        let failures = crate::limits::FailureLimits::default();
        ControlPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data_dir: PathBuf::from("data"),
            database: String::new(),
            header_read_timeout_secs: limits.header_read_timeout.as_secs(),
            max_connections: limits.max_connections,
            max_body_bytes: limits.max_body_bytes,
            max_auth_failures: failures.max_failures,
            auth_failure_window_secs: failures.window.as_secs(),
            gateway_ack_timeout_ms: 1000,
        }
    }
}

/// `control_plane.max_body_bytes` bounds: the API's bodies are JSON
/// documents and forms; a kilobyte holds the smallest, a gigabyte is no
/// longer one.
const MIN_BODY_BYTES: usize = 1024;
const MAX_BODY_BYTES: usize = 1 << 30;

/// Why a configuration was refused. The message names the key or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Sections that environment variables may address. Longest first, so that
/// `CONTROL_PLANE_LISTEN` is not read as a `CONTROL` section.
const ENV_SECTIONS: &[&str] = &[
    "control_plane",
    "sessions",
    "gateway",
    "access",
    "tls",
    "workshop",
    "log",
    "console",
    "oidc",
];
const ENV_PREFIX: &str = "SESSIONGATE_";

impl Config {
    /// Loads `path` (or the embedded defaults when `None`), applies the
    /// `SESSIONGATE_*` variables from `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, path, env)
    }

    /// As [`Config::load`], from text already read.
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(embedded defaults)".into());
        // Parse as the typed config first: its errors carry the line and key.
        let parsed: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: one_line(&e.to_string()),
        })?;
        let overrides = env_overrides(env)?;
        let config = if overrides.is_empty() {
            parsed
        } else {
            let mut table = toml::Table::try_from(&parsed).map_err(|e| ConfigError::Parse {
                path: origin.clone(),
                message: e.to_string(),
            })?;
            let defaults =
                toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                    path: origin.clone(),
                    message: e.to_string(),
                })?;
            for ((section, key), (var, raw)) in overrides {
                let Some(default) = defaults
                    .get(&section)
                    .and_then(|s| s.as_table())
                    .and_then(|s| s.get(&key))
                else {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("unknown key `{section}.{key}`"),
                    });
                };
                let value = env_value(default, &raw).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?;
                let sect = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(t) = sect.as_table_mut() {
                    t.insert(key.clone(), value);
                }
                // Deserialize per variable so that a bad value names its variable.
                toml::Value::Table(table.clone())
                    .try_into::<Config>()
                    .map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        message: one_line(&e.to_string()),
                    })?;
            }
            toml::Value::Table(table)
                .try_into::<Config>()
                .map_err(|e| ConfigError::Parse {
                    path: origin,
                    message: one_line(&e.to_string()),
                })?
        };
        config.validate()?;
        Ok(Config {
            source: SourceDigest(path.map(|_| sha256(text))),
            ..config
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        if g.base_domains.is_empty() {
            return Err(invalid(
                "gateway.base_domains",
                "at least one base domain is needed".into(),
            ));
        }
        for d in &g.base_domains {
            if !is_hostname(d) {
                return Err(invalid(
                    "gateway.base_domains",
                    format!("{d:?} is not a hostname"),
                ));
            }
        }
        if !is_hostname(&g.portal_host) {
            return Err(invalid(
                "gateway.portal_host",
                format!("{:?} is not a hostname", g.portal_host),
            ));
        }
        gateway::headers::TrustedProxies::parse(&g.trusted_proxies)
            .map_err(|e| invalid("gateway.trusted_proxies", e.to_string()))?;
        gateway::headers::TrustedProxies::parse(&g.workspace_allowed_clients)
            .map_err(|e| invalid("gateway.workspace_allowed_clients", e.to_string()))?;
        if g.workspace_listen_address
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return Err(invalid(
                "gateway.workspace_listen_address",
                format!("{:?} is not an IP address", g.workspace_listen_address),
            ));
        }
        if parse_port_range(&g.workspace_port_range).is_none() {
            return Err(invalid(
                "gateway.workspace_port_range",
                format!(
                    "{:?} is not LOW-HIGH with 1 <= LOW <= HIGH <= 65535",
                    g.workspace_port_range
                ),
            ));
        }
        if g.workspace_max_connections == 0 || g.workspace_idle_timeout_secs == 0 {
            return Err(invalid(
                "gateway.workspace_max_connections",
                "workspace_max_connections and workspace_idle_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        let url = g.control_plane_url.trim();
        if !url.is_empty() {
            // The same URLs `ctl --server` takes, comma-separated.
            crate::follow::control_plane_urls(url)
                .map_err(|e| invalid("gateway.control_plane_url", e))?;
        }
        let ack = self.control_plane.gateway_ack_timeout_ms;
        if ack > 60_000 {
            return Err(invalid(
                "control_plane.gateway_ack_timeout_ms",
                format!("{ack} is more than 60000 (a minute)"),
            ));
        }
        if g.max_connections == 0 {
            return Err(invalid(
                "gateway.max_connections",
                "must be at least 1".into(),
            ));
        }
        if g.max_connections_per_ip == 0 {
            return Err(invalid(
                "gateway.max_connections_per_ip",
                "must be at least 1 (set it to max_connections for no per-client limit)".into(),
            ));
        }
        for (key, v) in [
            ("gateway.max_connection_age_secs", g.max_connection_age_secs),
            (
                "gateway.tunnel_idle_timeout_secs",
                g.tunnel_idle_timeout_secs,
            ),
        ] {
            if v == 0 || v > crate::session::model::MAX_SECS {
                return Err(invalid(
                    key,
                    format!("must be 1-{} seconds", crate::session::model::MAX_SECS),
                ));
            }
        }
        if g.max_header_bytes < gateway::server::MIN_HEADER_BYTES {
            return Err(invalid(
                "gateway.max_header_bytes",
                format!(
                    "{} is below the minimum of {}",
                    g.max_header_bytes,
                    gateway::server::MIN_HEADER_BYTES
                ),
            ));
        }
        for (key, v) in [
            (
                "gateway.header_read_timeout_secs",
                g.header_read_timeout_secs,
            ),
            ("gateway.idle_timeout_secs", g.idle_timeout_secs),
            (
                "gateway.upstream_connect_timeout_secs",
                g.upstream_connect_timeout_secs,
            ),
            (
                "gateway.upstream_response_timeout_secs",
                g.upstream_response_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1 second".into()));
            }
        }
        let sess = &self.sessions;
        for (key, v) in [
            (
                "sessions.activation_deadline_secs",
                sess.activation_deadline_secs,
            ),
            ("sessions.retention_secs", sess.retention_secs),
            ("sessions.evicted_expiry_secs", sess.evicted_expiry_secs),
            ("sessions.reaper_interval_secs", sess.reaper_interval_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1 second".into()));
            }
            if v > crate::session::model::MAX_SECS {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most {} seconds",
                        crate::session::model::MAX_SECS
                    ),
                ));
            }
        }
        let cp = &self.control_plane;
        if cp.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "control_plane.data_dir",
                "must not be empty".into(),
            ));
        }
        self.database()?;
        for (key, v) in [
            (
                "control_plane.header_read_timeout_secs",
                cp.header_read_timeout_secs,
            ),
            (
                "control_plane.auth_failure_window_secs",
                cp.auth_failure_window_secs,
            ),
        ] {
            if v == 0 || v > 86_400 {
                return Err(invalid(key, "must be 1-86400 seconds".into()));
            }
        }
        if cp.max_connections == 0 {
            return Err(invalid(
                "control_plane.max_connections",
                "must be at least 1".into(),
            ));
        }
        if cp.max_auth_failures == 0 {
            return Err(invalid(
                "control_plane.max_auth_failures",
                "must be at least 1".into(),
            ));
        }
        if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&cp.max_body_bytes) {
            return Err(invalid(
                "control_plane.max_body_bytes",
                format!(
                    "{} is not {MIN_BODY_BYTES}-{MAX_BODY_BYTES} bytes",
                    cp.max_body_bytes
                ),
            ));
        }
        crate::session::targets::TargetRules::parse(&self.sessions.allowed_targets)
            .map_err(|m| invalid("sessions.allowed_targets", m))?;
        let a = &self.access;
        for (key, v) in [
            ("access.link_ttl_secs", a.link_ttl_secs),
            ("access.cookie_ttl_secs", a.cookie_ttl_secs),
            ("access.key_grace_secs", a.key_grace_secs),
        ] {
            if v == 0 || v > crate::session::model::MAX_SECS {
                return Err(invalid(
                    key,
                    format!("must be 1-{} seconds", crate::session::model::MAX_SECS),
                ));
            }
        }
        if !matches!(a.link_scheme.as_str(), "http" | "https") {
            return Err(invalid(
                "access.link_scheme",
                format!("{:?} is neither http nor https", a.link_scheme),
            ));
        }
        if !g.https_listen.trim().is_empty() && self.https_listen().is_none() {
            return Err(invalid(
                "gateway.https_listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8443 (or \"\" for none)",
                    g.https_listen
                ),
            ));
        }
        let t = &self.tls;
        if t.reload_interval_secs == 0 || t.reload_interval_secs > 86_400 {
            return Err(invalid(
                "tls.reload_interval_secs",
                "must be 1-86400 seconds".into(),
            ));
        }
        let o = &self.oidc;
        if !o.issuer.is_empty() {
            match url::Url::parse(&o.issuer) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {}
                _ => {
                    return Err(invalid(
                        "oidc.issuer",
                        format!("{:?} is not an http(s) URL", o.issuer),
                    ))
                }
            }
            if o.client_id.is_empty() {
                return Err(invalid(
                    "oidc.client_id",
                    "is required with oidc.issuer".into(),
                ));
            }
            if !o.scopes.iter().any(|s| s == "openid") {
                return Err(invalid("oidc.scopes", "must include \"openid\"".into()));
            }
            if !o.redirect_host.is_empty() && !is_hostname(&o.redirect_host) {
                return Err(invalid(
                    "oidc.redirect_host",
                    format!("{:?} is not a host name", o.redirect_host),
                ));
            }
            if o.username_claim.is_empty() || o.groups_claim.is_empty() {
                return Err(invalid(
                    "oidc.username_claim",
                    "username_claim and groups_claim name claims; they may not be empty".into(),
                ));
            }
        }
        let acme = &t.acme;
        if !acme.directory_url.is_empty() {
            match url::Url::parse(&acme.directory_url) {
                Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
                _ => {
                    return Err(invalid(
                        "tls.acme.directory_url",
                        format!(
                            "{:?} is not an https:// URL of an ACME directory",
                            acme.directory_url
                        ),
                    ))
                }
            }
            if certs::acme::ChallengeKind::parse(&acme.challenge).is_none() {
                return Err(invalid(
                    "tls.acme.challenge",
                    format!(
                        "{:?} is not http-01 or tls-alpn-01 (dns-01 is not supported)",
                        acme.challenge
                    ),
                ));
            }
            if self.https_listen().is_none() {
                return Err(invalid(
                    "tls.acme.directory_url",
                    "needs gateway.https_listen, where the certificates are served".into(),
                ));
            }
            if acme.domains.is_empty() && !acme.on_demand {
                return Err(invalid(
                    "tls.acme.domains",
                    "name at least one domain, or set tls.acme.on_demand".into(),
                ));
            }
            for d in &acme.domains {
                if d.starts_with("*.") {
                    return Err(invalid(
                        "tls.acme.domains",
                        format!("{d:?}: a wildcard needs the dns-01 challenge, which is not supported; list the names, or use on_demand"),
                    ));
                }
            }
            if acme.check_interval_secs == 0 || acme.check_interval_secs > 86_400 {
                return Err(invalid(
                    "tls.acme.check_interval_secs",
                    "must be 1-86400 seconds".into(),
                ));
            }
        }
        if t.redirect_http && self.https_listen().is_none() {
            return Err(invalid(
                "tls.redirect_http",
                "needs gateway.https_listen".into(),
            ));
        }
        if !t.default_certificate.is_empty()
            && !t
                .default_certificate
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
        {
            return Err(invalid(
                "tls.default_certificate",
                format!(
                    "{:?} is not a certificate name (a file stem in certs_dir)",
                    t.default_certificate
                ),
            ));
        }
        crate::access::RedirectPolicy::new(&a.redirect_origins)
            .map_err(|m| invalid("access.redirect_origins", m))?;
        let w = &self.workshop;
        crate::access::RedirectPolicy::new(&w.index_urls)
            .map_err(|m| invalid("workshop.index_urls", m))?;
        if w.token_ttl_secs == 0 || w.token_ttl_secs > crate::session::model::MAX_SECS {
            return Err(invalid(
                "workshop.token_ttl_secs",
                "must be at least 1 second".into(),
            ));
        }
        for (key, v) in [
            ("workshop.sessions_maximum", w.sessions_maximum),
            ("workshop.sessions_registered", w.sessions_registered),
            ("workshop.sessions_anonymous", w.sessions_anonymous),
        ] {
            if v > crate::workshop::caps::MAX_SESSIONS_CAP {
                return Err(invalid(
                    key,
                    format!(
                        "{v} is more than {} (0 means no limit)",
                        crate::workshop::caps::MAX_SESSIONS_CAP
                    ),
                ));
            }
        }
        let creds = [
            &w.client_id,
            &w.client_secret,
            &w.robot_username,
            &w.robot_password,
        ];
        if creds.iter().any(|c| !c.is_empty()) && creds.iter().any(|c| c.is_empty()) {
            return Err(invalid(
                "workshop.client_id",
                "client_id, client_secret, robot_username and robot_password go together: set all four or none".into(),
            ));
        }
        if !a.login_url.trim().is_empty() && crate::access::origin_of(a.login_url.trim()).is_none()
        {
            return Err(invalid(
                "access.login_url",
                format!("{:?} is not an absolute http(s) URL", a.login_url),
            ));
        }
        // Compiling the routes checks hosts, slugs, upstreams and conflicts.
        gateway::RouteTable::build(&self.table_settings(), self.route_specs()?, None, 0)
            .map_err(|e| invalid("routes", e.to_string()))?;
        Ok(())
    }

    /// `control_plane.database`, read (validated at load).
    pub fn database(&self) -> Result<crate::store::DatabaseUrl, ConfigError> {
        let cp = &self.control_plane;
        crate::store::DatabaseUrl::parse(&cp.database, &cp.data_dir).map_err(|message| {
            ConfigError::Invalid {
                key: "control_plane.database".into(),
                message,
            }
        })
    }

    pub fn lifecycle_settings(&self) -> crate::session::lifecycle::LifecycleSettings {
        let s = &self.sessions;
        crate::session::lifecycle::LifecycleSettings {
            activation_deadline: Duration::from_secs(s.activation_deadline_secs),
            retention: Duration::from_secs(s.retention_secs),
            evicted_expiry: Duration::from_secs(s.evicted_expiry_secs),
            reaper_interval: Duration::from_secs(s.reaper_interval_secs),
        }
    }

    /// The access settings; `gateway_port` and `https_port` are the bound
    /// ports, used when `access.link_port` is 0 (by `link_scheme`).
    pub fn access_settings(
        &self,
        gateway_port: u16,
        https_port: Option<u16>,
    ) -> crate::access::AccessSettings {
        let a = &self.access;
        crate::access::AccessSettings {
            link_ttl: Duration::from_secs(a.link_ttl_secs),
            cookie_ttl: Duration::from_secs(a.cookie_ttl_secs),
            key_grace: Duration::from_secs(a.key_grace_secs),
            link_scheme: a.link_scheme.clone(),
            link_port: Some(match (a.link_port, a.link_scheme.as_str(), https_port) {
                (0, "https", Some(p)) => p,
                (0, _, _) => gateway_port,
                (p, _, _) => p,
            }),
            console_portal_host: self
                .console
                .portal
                .then(|| self.gateway.portal_host.clone()),
        }
    }

    /// The workshop settings; `gateway_port` is the bound HTTP port, for
    /// the portal URL when none is configured.
    pub fn workshop_settings(
        &self,
        gateway_port: u16,
    ) -> crate::workshop::portal::WorkshopSettings {
        let w = &self.workshop;
        let oauth = (!w.client_id.is_empty()).then(|| crate::workshop::portal::OAuthClient {
            client_id: w.client_id.clone(),
            client_secret: w.client_secret.clone(),
            robot_username: w.robot_username.clone(),
            robot_password: w.robot_password.clone(),
        });
        crate::workshop::portal::WorkshopSettings {
            portal_name: w.portal_name.clone(),
            portal_url: if w.portal_url.is_empty() {
                format!("http://{}:{gateway_port}", self.gateway.portal_host)
            } else {
                w.portal_url.clone()
            },
            index_url: w.index_url.clone(),
            index_policy: crate::access::RedirectPolicy::new(&w.index_urls).unwrap_or_default(),
            oauth,
            token_ttl_secs: w.token_ttl_secs,
            caps: crate::workshop::caps::SessionCaps {
                maximum: w.sessions_maximum,
                registered: w.sessions_registered,
                anonymous: w.sessions_anonymous,
            },
        }
    }

    /// The TLS listener's address, if there is one.
    pub fn https_listen(&self) -> Option<SocketAddr> {
        let s = self.gateway.https_listen.trim();
        (!s.is_empty()).then(|| s.parse().ok()).flatten()
    }

    /// The certificates directory.
    pub fn certs_dir(&self) -> PathBuf {
        if self.tls.certs_dir.trim().is_empty() {
            self.control_plane.data_dir.join("certs")
        } else {
            PathBuf::from(self.tls.certs_dir.trim())
        }
    }

    /// The name of the default certificate pair.
    pub fn default_certificate(&self) -> String {
        if self.tls.default_certificate.is_empty() {
            self.gateway
                .base_domains
                .first()
                .map(|d| names::normalize_name(d))
                .unwrap_or_else(|| "localhost".into())
        } else {
            self.tls.default_certificate.clone()
        }
    }

    /// The redirect allow-list (validated at load).
    pub fn redirect_policy(&self) -> crate::access::RedirectPolicy {
        crate::access::RedirectPolicy::new(&self.access.redirect_origins).unwrap_or_default()
    }

    /// The login URL when it is set and allowed.
    /// OpenID Connect's settings, when `[oidc]` is on; the ports as for
    /// [`Self::access_settings`].
    pub fn oidc_settings(
        &self,
        gateway_port: u16,
        https_port: Option<u16>,
    ) -> Option<crate::oidc::OidcSettings> {
        let o = &self.oidc;
        if o.issuer.is_empty() {
            return None;
        }
        let access = self.access_settings(gateway_port, https_port);
        let redirect_host = if o.redirect_host.is_empty() {
            self.gateway.portal_host.clone()
        } else {
            o.redirect_host.to_ascii_lowercase()
        };
        let display_name = if o.display_name.is_empty() {
            url::Url::parse(&o.issuer)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| o.issuer.clone())
        } else {
            o.display_name.clone()
        };
        Some(crate::oidc::OidcSettings {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            scopes: o.scopes.clone(),
            scheme: access.link_scheme.clone(),
            redirect_host,
            port: access.link_port,
            groups_claim: o.groups_claim.clone(),
            username_claim: o.username_claim.clone(),
            allowed_domains: o.allowed_domains.clone(),
            sync_groups: o.sync_groups,
            ca_file: (!o.ca_file.trim().is_empty()).then(|| PathBuf::from(o.ca_file.trim())),
            display_name,
        })
    }

    pub fn login_url(&self) -> Option<String> {
        let url = self.access.login_url.trim();
        (!url.is_empty() && self.redirect_policy().allows(url)).then(|| url.to_string())
    }

    pub fn table_settings(&self) -> TableSettings {
        TableSettings {
            base_domains: self.gateway.base_domains.clone(),
            portal_host: Some(self.gateway.portal_host.clone()),
        }
    }

    /// The static routes as specs. Ids are `static:host:<host>` and
    /// `static:slug:<slug>`; with `console.portal`, also `static:console`
    /// (slug `/ui` on the portal host, to the control plane).
    pub fn route_specs(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut specs = self.file_route_specs()?;
        if self.console.portal {
            let upstream = if self.console.upstream.trim().is_empty() {
                format!("http://{}", self.control_plane.listen)
            } else {
                self.console.upstream.trim().to_string()
            };
            let upstream = Upstream::parse(&upstream).map_err(|e| ConfigError::Invalid {
                key: "console.upstream".into(),
                message: e.to_string(),
            })?;
            specs.push(
                RouteSpec::new("static:console", RouteTarget::Upstream(upstream)).slug("/ui"),
            );
        }
        Ok(specs)
    }

    fn file_route_specs(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        // Many static routes share an upstream: parsed once, each route's
        // copy shares the one parsed authority instead of holding its own.
        let mut upstreams: std::collections::HashMap<&str, Upstream> = Default::default();
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = |field: &str| format!("routes[{i}].{field}");
                let upstream = match upstreams.get(r.upstream.as_str()) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Upstream::parse(&r.upstream).map_err(|e| ConfigError::Invalid {
                            key: key("upstream"),
                            message: e.to_string(),
                        })?;
                        upstreams.insert(&r.upstream, u.clone());
                        u
                    }
                };
                let target = RouteTarget::Upstream(upstream);
                let spec = match (&r.host, &r.slug) {
                    (Some(h), None) => RouteSpec::new(format!("static:host:{h}"), target).host(h),
                    (None, Some(s)) => RouteSpec::new(format!("static:slug:{s}"), target).slug(s),
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: format!("routes[{i}]"),
                            message: "needs exactly one of `host` and `slug`".into(),
                        })
                    }
                };
                if r.strip_prefix && r.slug.is_none() {
                    return Err(ConfigError::Invalid {
                        key: key("strip_prefix"),
                        message: "only applies to slug routes".into(),
                    });
                }
                Ok(spec
                    .strip_prefix(r.strip_prefix)
                    .rewrite_host(r.rewrite_host)
                    .tls_verify(r.tls_verify)
                    .allow_any_upgrade(r.allow_any_upgrade))
            })
            .collect()
    }

    /// The proxies whose forwarding headers are kept (validated at load).
    /// The gateway's workspace ports, as `[gateway]` says.
    pub fn workspace_config(&self) -> gateway::workspace::WorkspaceConfig {
        let g = &self.gateway;
        gateway::workspace::WorkspaceConfig {
            listen: self.workspace_policy().listen,
            allowed_clients: gateway::headers::TrustedProxies::parse(&g.workspace_allowed_clients)
                .unwrap_or_default(),
            max_connections: g.workspace_max_connections,
            idle_timeout: Duration::from_secs(g.workspace_idle_timeout_secs),
            connect_timeout: Duration::from_secs(g.upstream_connect_timeout_secs),
            tls: None,
        }
    }

    /// Where the control plane may put workspace ports (checked at load).
    pub fn workspace_policy(&self) -> crate::control::WorkspacePolicy {
        let g = &self.gateway;
        let d = crate::control::WorkspacePolicy::default();
        crate::control::WorkspacePolicy {
            listen: g.workspace_listen_address.parse().unwrap_or(d.listen),
            range: parse_port_range(&g.workspace_port_range).unwrap_or(d.range),
            ca_dir: self.control_plane.data_dir.join("workspace-ca"),
        }
    }

    pub fn trusted_proxies(&self) -> gateway::headers::TrustedProxies {
        gateway::headers::TrustedProxies::parse(&self.gateway.trusted_proxies).unwrap_or_default()
    }

    pub fn server_config(&self) -> ServerConfig {
        let g = &self.gateway;
        ServerConfig {
            max_connections: g.max_connections,
            max_connections_per_ip: g.max_connections_per_ip,
            header_read_timeout: Duration::from_secs(g.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(g.idle_timeout_secs),
            max_connection_age: Duration::from_secs(g.max_connection_age_secs),
            tunnel_idle_timeout: Duration::from_secs(g.tunnel_idle_timeout_secs),
            max_header_bytes: g.max_header_bytes,
            shutdown_grace: Duration::from_secs(g.shutdown_grace_secs),
            ..ServerConfig::default()
        }
    }

    /// The control-plane listener's limits.
    pub fn api_limits(&self) -> crate::api::server::ApiLimits {
        let cp = &self.control_plane;
        crate::api::server::ApiLimits {
            header_read_timeout: Duration::from_secs(cp.header_read_timeout_secs),
            max_connections: cp.max_connections,
            max_body_bytes: cp.max_body_bytes,
        }
    }

    /// The failed-authentication limit per client address.
    pub fn failure_limits(&self) -> crate::limits::FailureLimits {
        let cp = &self.control_plane;
        crate::limits::FailureLimits {
            max_failures: cp.max_auth_failures,
            window: Duration::from_secs(cp.auth_failure_window_secs),
            ..crate::limits::FailureLimits::default()
        }
    }

    /// `sessions.allowed_targets` (validated at load).
    pub fn target_rules(&self) -> crate::session::targets::TargetRules {
        crate::session::targets::TargetRules::parse(&self.sessions.allowed_targets)
            .unwrap_or_default()
    }

    pub fn upstream_config(&self) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(self.gateway.upstream_connect_timeout_secs),
            response_timeout: Duration::from_secs(self.gateway.upstream_response_timeout_secs),
            ..UpstreamConfig::default()
        }
    }
}

/// `SESSIONGATE_GATEWAY_HTTP_LISTEN=…` → `(("gateway", "http_listen"), (var, value))`.
/// Variables of other sections (such as `SESSIONGATE_ADMIN_TOKEN`) are not config keys.
type Overrides = BTreeMap<(String, String), (String, String)>;

fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Overrides, ConfigError> {
    let mut out = BTreeMap::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // A secret, read by `sessiongate gateway` itself, never a key.
        if rest == "GATEWAY_TOKEN" {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        for section in ENV_SECTIONS {
            if let Some(key) = lower
                .strip_prefix(section)
                .and_then(|k| k.strip_prefix('_'))
            {
                if key.is_empty() {
                    return Err(ConfigError::Env {
                        var,
                        message: "names a section but no key".into(),
                    });
                }
                out.insert(
                    (section.to_string(), key.to_string()),
                    (var.clone(), value.clone()),
                );
                break;
            }
        }
    }
    Ok(out)
}

/// Reads an environment value as the type of the key's default: lists are
/// comma-separated (or a TOML array), numbers and booleans are parsed.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Array(_) => {
            if raw.trim_start().starts_with('[') {
                let doc: toml::Table =
                    toml::from_str(&format!("v = {raw}")).map_err(|e| one_line(&e.to_string()))?;
                doc.get("v").cloned().unwrap_or(toml::Value::Array(vec![]))
            } else {
                toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                )
            }
        }
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("{raw:?} is not a boolean (true or false)")),
        }),
        _ => toml::Value::String(raw.to_string()),
    })
}

/// A hostname in any case, with or without one trailing dot.
/// `LOW-HIGH`, inclusive, 1 <= LOW <= HIGH.
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (low, high) = s.split_once('-')?;
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (low >= 1 && low <= high).then_some((low, high))
}

fn is_hostname(s: &str) -> bool {
    names::is_hostname(&names::normalize_name(s))
}

/// toml's errors span several lines (a source excerpt); logs want one.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
