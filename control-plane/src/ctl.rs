//! `sessiongate ctl`: the operator CLI over the REST API.
//!
//! Every command is one or two API requests; the server does all the
//! validation, so the CLI and the API can never disagree about what is
//! allowed. The output is a human table by default (or `key: value` lines
//! for one thing), and the server's own JSON, pretty-printed, with
//! `--output json`, so that scripts see exactly what the API answered.
//!
//! Failures are one line, `sessiongate ctl: <reason>`, and exit status 1
//! (printed by `main`); the reason of an API error is its status, code and
//! message, as the server wrote them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Body;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The variable `sessiongate serve` reads its admin token from; accepted
/// here too so that one shell can run both.
const ADMIN_TOKEN_ENV: &str = "SESSIONGATE_ADMIN_TOKEN";

/// Long enough for a bulk action over many sessions on a busy server; short
/// enough that a wedged server does not hang a script forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses larger than this are refused rather than buffered: the largest
/// legitimate one is a page of 1000 sessions.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// `sessiongate ctl`'s arguments.
#[derive(Args, Debug)]
#[command(
    about = "Operate a running sessiongate through its REST API",
    long_about = "Operate a running sessiongate through its REST API: sessions, users, \
                  groups, API tokens and the route table. Human tables by default, the \
                  server's JSON with --output json. Failures print one line on stderr and \
                  exit with status 1."
)]
pub struct CtlArgs {
    /// The control-plane API's base URL (http:// only for now).
    #[arg(
        long,
        global = true,
        env = "SESSIONGATE_SERVER",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub server: String,

    /// API token (an admin token, or a read-only one for reading). Falls back
    /// to SESSIONGATE_ADMIN_TOKEN, the variable `serve` reads.
    #[arg(
        long,
        global = true,
        env = "SESSIONGATE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    pub token: Option<String>,

    /// Human tables, or the server's JSON.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Table
,
        help_heading = "Global options"
    )]
    pub output: Output,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List, create and act on sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage groups and their members.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage workshop environments.
    #[command(subcommand)]
    Environments(EnvironmentsCommand),
    /// Show the route table the gateway holds.
    Routes,
    /// Rotate the key that signs browser cookies (the previous one keeps
    /// verifying for access.key_grace_secs).
    RotateKeys,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List sessions (every state but deleted, unless --state says otherwise).
    List {
        /// Case-insensitive substring of the name, the owner or a label.
        #[arg(long)]
        q: Option<String>,
        /// Only this state (pending, running, paused, evicted, expired,
        /// deleted); repeat it or separate with commas for several.
        #[arg(long)]
        state: Vec<String>,
        /// Only this owner's sessions.
        #[arg(long)]
        owner: Option<String>,
        /// Only sessions shared with this group.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one session.
    Get { name: String },
    /// Create a session: a tunnel to --port, or a link to --url.
    Create(Box<CreateSession>),
    /// Delete sessions: their routes go away; the backends are not stopped.
    Delete(Names),
    /// Pause sessions: the gateway answers 503 and the expiry clock stops.
    Pause(Names),
    /// Resume paused sessions.
    Resume(Names),
    /// Evict sessions: live connections are closed; activate reopens them.
    Evict(Names),
    /// Expire sessions, for good.
    Expire(Names),
    /// Keep sessions alive: they expire a duration from now.
    Keepalive(Names),
    /// Activate pending or evicted sessions.
    Activate(Names),
    /// Push a session's expiry further out.
    Extend {
        name: String,
        /// Seconds to add (default: the session's duration).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Share a session with exactly these groups (none: unshare it).
    Share { name: String, groups: Vec<String> },
    /// Issue a one-time access link (valid 60 s) that signs USER in to the session.
    Access {
        name: String,
        /// The owner, or a member of a group the session is shared with.
        #[arg(long)]
        user: String,
        /// Where the browser lands, relative to the session's root (default /).
        #[arg(long)]
        path: Option<String>,
    },
}

/// One or more session names; several go in one bulk request.
#[derive(Args, Debug)]
pub struct Names {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct Paging {
    /// 1-based page.
    #[arg(long)]
    pub page: Option<u64>,
    /// Items per page (server default 50, at most 1000).
    #[arg(long)]
    pub per_page: Option<u64>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["port", "url"])))]
pub struct CreateSession {
    /// A DNS label; also the session's subdomain.
    pub name: String,
    /// An existing user's name.
    #[arg(long)]
    pub owner: String,
    /// Tunnel: the app's port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Tunnel: the app's host (server default: localhost).
    #[arg(long, value_name = "HOST", conflicts_with = "url")]
    pub host: Option<String>,
    /// Tunnel: the app speaks HTTPS.
    #[arg(long, conflicts_with = "url")]
    pub https: bool,
    /// Tunnel: do not verify the app's certificate.
    #[arg(long, conflicts_with = "url")]
    pub no_tls_verify: bool,
    /// Link: the external URL the session redirects to.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A path on the portal host, such as /lab.
    #[arg(long)]
    pub slug: Option<String>,
    /// Remove the slug before forwarding.
    #[arg(long)]
    pub strip_prefix: bool,
    /// Send the app's own host as Host.
    #[arg(long)]
    pub rewrite_host: bool,
    /// A full hostname routed to this session.
    #[arg(long, value_name = "DOMAIN")]
    pub custom_domain: Option<String>,
    /// A group whose members may open it; repeat for several.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Anyone may open it, signed in or not.
    #[arg(long)]
    pub public: bool,
    /// Seconds until it expires.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Seconds without traffic after which it expires.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Refuse extend.
    #[arg(long)]
    pub not_extendable: bool,
    /// The environment (workshop, image) it was started from; free text.
    #[arg(long)]
    pub environment: Option<String>,
    /// A label, key=value; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Wait for activation instead of running at once.
    #[arg(long)]
    pub pending: bool,
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// List users.
    List {
        /// Case-insensitive substring of the name, e-mail or full name.
        #[arg(long)]
        q: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one user.
    Get { name: String },
    /// Create a user.
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        first_name: Option<String>,
        #[arg(long)]
        last_name: Option<String>,
    },
    /// Delete a user (refused while they own sessions).
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupsCommand {
    /// List groups.
    List,
    /// Show one group.
    Get { name: String },
    /// Create a group.
    Create {
        name: String,
        /// A member; repeat for several.
        #[arg(long = "member", value_name = "USER")]
        members: Vec<String>,
    },
    /// Delete a group; sessions shared with it no longer are.
    Delete { name: String },
    /// Add a user to a group.
    AddMember { group: String, user: String },
    /// Remove a user from a group.
    RemoveMember { group: String, user: String },
    /// Make these users the group's only members (none: empty it).
    SetMembers { group: String, users: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum EnvironmentsCommand {
    /// List environments with their capacity and allocated sessions.
    List,
    /// Show one environment.
    Get { name: String },
    /// Create an environment: a workshop served by a pool of backends.
    Create {
        name: String,
        /// A backend, http(s)://host:port, serving one session at a time; repeat it.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The most sessions at once (at most the number of targets).
        #[arg(long)]
        capacity: u64,
        /// Sessions kept created ahead of requests.
        #[arg(long, default_value_t = 0)]
        reserved: u64,
        /// Seconds each session lasts.
        #[arg(long)]
        duration: Option<u64>,
        /// The workshop's title in the catalog.
        #[arg(long)]
        title: Option<String>,
        /// The workshop's description in the catalog.
        #[arg(long)]
        description: Option<String>,
        /// Do not verify https targets' certificates (self-signed apps).
        #[arg(long)]
        no_tls_verify: bool,
    },
    /// Stop an environment: no new sessions; its sessions run to their end.
    Stop { name: String },
    /// Delete an environment that has no unfinished sessions.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// List API tokens (names and kinds; the tokens themselves are not kept).
    List,
    /// Create an API token and print it, this once.
    Create {
        /// A DNS label naming what uses it, such as grafana.
        name: String,
        #[arg(long, value_enum, default_value_t = TokenKindArg::Readonly)]
        kind: TokenKindArg,
    },
    /// Revoke an API token at once.
    Delete { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenKindArg {
    Readonly,
    Admin,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Why a command failed; `Display` is the one line printed after
/// `sessiongate ctl: `.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No connection, or no answer.
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// An answer that is not what the API sends.
    #[error("{server}: {reason}")]
    BadResponse { server: String, reason: String },
    /// Settings that cannot work, such as a missing token.
    #[error("{0}")]
    Setup(String),
    /// Some of a bulk action's sessions were not changed.
    #[error("{action}: {failed} of {total} sessions failed: {detail}")]
    Partial {
        action: String,
        failed: usize,
        total: usize,
        detail: String,
    },
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `ctl` command, writing its output to `out`.
pub async fn run(args: CtlArgs, out: &mut dyn std::io::Write) -> Result<(), CtlError> {
    let api = ApiClient::new(&args.server, args.token.as_deref())?;
    let mut text = String::new();
    let result = execute(&api, args.command, args.output, &mut text).await;
    // A bulk action that partly failed still prints what happened to each.
    out.write_all(text.as_bytes())?;
    out.flush()?;
    result
}

async fn execute(
    api: &ApiClient,
    command: CtlCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    let json = output == Output::Json;
    match command {
        CtlCommand::Sessions(c) => sessions(api, c, json, out).await,
        CtlCommand::Users(c) => users(api, c, json, out).await,
        CtlCommand::Groups(c) => groups(api, c, json, out).await,
        CtlCommand::Tokens(c) => tokens(api, c, json, out).await,
        CtlCommand::Environments(c) => environments(api, c, json, out).await,
        CtlCommand::Routes => {
            let v = api.send(Method::GET, "/api/v1/routes", None).await?;
            emit(out, json, &v, routes_table);
            Ok(())
        }
        CtlCommand::RotateKeys => {
            let v = api
                .send(Method::POST, "/api/v1/access/keys/rotate", None)
                .await?;
            emit(out, json, &v, |v, out| {
                out.push_str(&format!(
                    "signing key {}",
                    v["current"].as_str().unwrap_or("?")
                ));
                if let Some(p) = v["previous"].as_str() {
                    out.push_str(&format!(
                        "; {p} verifies until {}",
                        v["previous_valid_until"].as_str().unwrap_or("?")
                    ));
                }
                out.push('\n');
            });
            Ok(())
        }
    }
}

async fn sessions(
    api: &ApiClient,
    command: SessionsCommand,
    json: bool,
    out: &mut String,
) -> Result<(), CtlError> {
    use SessionsCommand as S;
    let (action, names) = match command {
        S::List {
            q,
            state,
            owner,
            group,
            paging,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(q.map(|q| ("q", q)));
            query.extend(state.into_iter().map(|s| ("state", s)));
            query.extend(owner.map(|o| ("owner", o)));
            query.extend(group.map(|g| ("group", g)));
            paging.add_to(&mut query);
            let path = with_query("/api/v1/sessions", &query)?;
            let v = api.send(Method::GET, &path, None).await?;
            emit(out, json, &v, |v, out| {
                page_table(v, "sessions", sessions_table, out)
            });
            return Ok(());
        }
        S::Get { name } => {
            let v = api
                .send(
                    Method::GET,
                    &format!("/api/v1/sessions/{}", seg(&name)),
                    None,
                )
                .await?;
            emit(out, json, &v, session_details);
            return Ok(());
        }
        S::Create(c) => {
            let v = api
                .send(Method::POST, "/api/v1/sessions", Some(new_session(*c)))
                .await?;
            emit(out, json, &v, session_details);
            return Ok(());
        }
        S::Extend { name, seconds } => {
            let body = seconds.map(|s| json!({ "seconds": s }));
            let path = format!("/api/v1/sessions/{}/extend", seg(&name));
            let v = api.send(Method::POST, &path, body).await?;
            emit(out, json, &v, session_line);
            return Ok(());
        }
        S::Share { name, groups } => {
            let path = format!("/api/v1/sessions/{}/groups", seg(&name));
            let v = api
                .send(Method::PUT, &path, Some(json!({ "groups": groups })))
                .await?;
            emit(out, json, &v, session_line);
            return Ok(());
        }
        S::Access { name, user, path } => {
            let p = format!("/api/v1/sessions/{}/access", seg(&name));
            let mut body = json!({ "user": user });
            if let Some(path) = path {
                body["path"] = json!(path);
            }
            let v = api.send(Method::POST, &p, Some(body)).await?;
            emit(out, json, &v, |v, out| {
                out.push_str(&format!(
                    "{}\n(one use, until {})\n",
                    v["url"].as_str().unwrap_or("?"),
                    v["expires"].as_str().unwrap_or("?")
                ));
            });
            return Ok(());
        }
        S::Delete(n) => ("delete", n.names),
        S::Pause(n) => ("pause", n.names),
        S::Resume(n) => ("resume", n.names),
        S::Evict(n) => ("evict", n.names),
        S::Expire(n) => ("expire", n.names),
        S::Keepalive(n) => ("keepalive", n.names),
        S::Activate(n) => ("activate", n.names),
    };
    match names.as_slice() {
        // One name: its own endpoint, whose error says exactly what is wrong.
        [name] => {
            let v = if action == "delete" {
                let path = format!("/api/v1/sessions/{}", seg(name));
                api.send(Method::DELETE, &path, None).await?
            } else {
                let path = format!("/api/v1/sessions/{}/{action}", seg(name));
                api.send(Method::POST, &path, None).await?
            };
            emit(out, json, &v, session_line);
            Ok(())
        }
        _ => {
            let body = json!({ "action": action, "names": names });
            let v = api
                .send(Method::POST, "/api/v1/sessions/bulk", Some(body))
                .await?;
            emit(out, json, &v, bulk_table);
            bulk_outcome(action, &v.json)
        }
    }
}

/// The error for a bulk response in which some names were not applied.
fn bulk_outcome(action: &str, v: &Value) -> Result<(), CtlError> {
    let results = v["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r["ok"] != Value::Bool(true))
        .map(|r| format!("{} ({})", text(&r["name"]), text(&r["error"]["code"])))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(CtlError::Partial {
        action: action.to_string(),
        failed: failed.len(),
        total: results.len(),
        detail: failed.join(", "),
    })
}

fn new_session(c: CreateSession) -> Value {
    let mut b = serde_json::Map::new();
    b.insert("name".into(), c.name.into());
    b.insert("owner".into(), c.owner.into());
    if let Some(url) = c.url {
        b.insert("kind".into(), "link".into());
        b.insert("url".into(), url.into());
    }
    if let Some(port) = c.port {
        b.insert("remote_port".into(), port.into());
    }
    if let Some(host) = c.host {
        b.insert("remote_host".into(), host.into());
    }
    let flags = [
        ("https", c.https),
        ("strip_prefix", c.strip_prefix),
        ("rewrite_host", c.rewrite_host),
        ("public", c.public),
        ("pending", c.pending),
    ];
    for (k, on) in flags {
        if on {
            b.insert(k.into(), true.into());
        }
    }
    if c.no_tls_verify {
        b.insert("tls_verify".into(), false.into());
    }
    if c.not_extendable {
        b.insert("extendable".into(), false.into());
    }
    let optional = [
        ("slug", c.slug),
        ("custom_domain", c.custom_domain),
        ("environment", c.environment),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            b.insert(k.into(), v.into());
        }
    }
    for (k, v) in [("duration", c.duration), ("idle_timeout", c.idle_timeout)] {
        if let Some(v) = v {
            b.insert(k.into(), v.into());
        }
    }
    if !c.groups.is_empty() {
        b.insert("groups".into(), c.groups.into());
    }
    if !c.labels.is_empty() {
        let labels: BTreeMap<String, String> = c.labels.into_iter().collect();
        b.insert("labels".into(), json!(labels));
    }
    Value::Object(b)
}

async fn users(
    api: &ApiClient,
    command: UsersCommand,
    json: bool,
    out: &mut String,
) -> Result<(), CtlError> {
    match command {
        UsersCommand::List { q, paging } => {
            let mut query: Vec<(&str, String)> = q.map(|q| ("q", q)).into_iter().collect();
            paging.add_to(&mut query);
            let path = with_query("/api/v1/users", &query)?;
            let v = api.send(Method::GET, &path, None).await?;
            emit(out, json, &v, |v, out| {
                page_table(v, "users", users_table, out)
            });
        }
        UsersCommand::Get { name } => {
            let path = format!("/api/v1/users/{}", seg(&name));
            let v = api.send(Method::GET, &path, None).await?;
            emit(out, json, &v, user_details);
        }
        UsersCommand::Create {
            name,
            email,
            first_name,
            last_name,
        } => {
            let mut b = serde_json::Map::new();
            b.insert("name".into(), name.into());
            let optional = [
                ("email", email),
                ("first_name", first_name),
                ("last_name", last_name),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    b.insert(k.into(), v.into());
                }
            }
            let v = api
                .send(Method::POST, "/api/v1/users", Some(Value::Object(b)))
                .await?;
            emit(out, json, &v, user_details);
        }
        UsersCommand::Delete { name } => {
            let path = format!("/api/v1/users/{}", seg(&name));
            api.send(Method::DELETE, &path, None).await?;
            if !json {
                let _ = writeln!(out, "user {name} deleted");
            }
        }
    }
    Ok(())
}

async fn groups(
    api: &ApiClient,
    command: GroupsCommand,
    json: bool,
    out: &mut String,
) -> Result<(), CtlError> {
    use GroupsCommand as G;
    let v = match command {
        G::List => {
            let v = api.send(Method::GET, "/api/v1/groups", None).await?;
            emit(out, json, &v, groups_table);
            return Ok(());
        }
        G::Get { name } => {
            let path = format!("/api/v1/groups/{}", seg(&name));
            api.send(Method::GET, &path, None).await?
        }
        G::Create { name, members } => {
            let body = json!({ "name": name, "members": members });
            api.send(Method::POST, "/api/v1/groups", Some(body)).await?
        }
        G::Delete { name } => {
            let path = format!("/api/v1/groups/{}", seg(&name));
            api.send(Method::DELETE, &path, None).await?;
            if !json {
                let _ = writeln!(out, "group {name} deleted");
            }
            return Ok(());
        }
        G::AddMember { group, user } => {
            let path = format!("/api/v1/groups/{}/members", seg(&group));
            api.send(Method::POST, &path, Some(json!({ "user": user })))
                .await?
        }
        G::RemoveMember { group, user } => {
            let path = format!("/api/v1/groups/{}/members/{}", seg(&group), seg(&user));
            api.send(Method::DELETE, &path, None).await?
        }
        G::SetMembers { group, users } => {
            let path = format!("/api/v1/groups/{}/members", seg(&group));
            api.send(Method::PUT, &path, Some(json!({ "members": users })))
                .await?
        }
    };
    emit(out, json, &v, group_details);
    Ok(())
}

async fn tokens(
    api: &ApiClient,
    command: TokensCommand,
    json: bool,
    out: &mut String,
) -> Result<(), CtlError> {
    match command {
        TokensCommand::List => {
            let v = api.send(Method::GET, "/api/v1/tokens", None).await?;
            emit(out, json, &v, tokens_table);
        }
        TokensCommand::Create { name, kind } => {
            let kind = match kind {
                TokenKindArg::Readonly => "readonly",
                TokenKindArg::Admin => "admin",
            };
            let body = json!({ "name": name, "kind": kind });
            let v = api.send(Method::POST, "/api/v1/tokens", Some(body)).await?;
            // The token last, alone on its line, so `| tail -n 1` takes it.
            emit(out, json, &v, |v, out| {
                let _ = writeln!(
                    out,
                    "{} token {:?} created; it is shown this once, only its hash is kept:",
                    text(&v["kind"]),
                    text(&v["name"]),
                );
                let _ = writeln!(out, "{}", text(&v["token"]));
            });
        }
        TokensCommand::Delete { name } => {
            let path = format!("/api/v1/tokens/{}", seg(&name));
            api.send(Method::DELETE, &path, None).await?;
            if !json {
                let _ = writeln!(out, "token {name} revoked");
            }
        }
    }
    Ok(())
}

async fn environments(
    api: &ApiClient,
    command: EnvironmentsCommand,
    json: bool,
    out: &mut String,
) -> Result<(), CtlError> {
    use EnvironmentsCommand as E;
    match command {
        E::List => {
            let v = api.send(Method::GET, "/api/v1/environments", None).await?;
            emit(out, json, &v, |v, out| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .map(|e| {
                        vec![
                            text(&e["name"]),
                            text(&e["state"]),
                            text(&e["workshop"]["title"]),
                            text(&e["capacity"]),
                            text(&e["reserved"]),
                            text(&e["allocated"]),
                            e["targets"].as_array().map_or(0, Vec::len).to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "STATE",
                        "TITLE",
                        "CAPACITY",
                        "RESERVED",
                        "ALLOCATED",
                        "TARGETS",
                    ],
                    &rows,
                    out,
                );
            });
        }
        E::Get { name } => {
            let path = format!("/api/v1/environments/{}", seg(&name));
            let v = api.send(Method::GET, &path, None).await?;
            emit(out, json, &v, environment_details);
        }
        E::Create {
            name,
            targets,
            capacity,
            reserved,
            duration,
            title,
            description,
            no_tls_verify,
        } => {
            let mut body = json!({
                "name": name, "targets": targets, "capacity": capacity,
                "reserved": reserved, "tls_verify": !no_tls_verify,
                "workshop": {},
            });
            if let Some(d) = duration {
                body["duration"] = json!(d);
            }
            if let Some(t) = title {
                body["workshop"]["title"] = json!(t);
            }
            if let Some(d) = description {
                body["workshop"]["description"] = json!(d);
            }
            let v = api
                .send(Method::POST, "/api/v1/environments", Some(body))
                .await?;
            emit(out, json, &v, environment_details);
        }
        E::Stop { name } => {
            let path = format!("/api/v1/environments/{}/stop", seg(&name));
            let v = api.send(Method::POST, &path, None).await?;
            emit(out, json, &v, |v, out| {
                let _ = writeln!(
                    out,
                    "environment {} is {}; {} sessions run to their end",
                    text(&v["name"]),
                    text(&v["state"]),
                    text(&v["allocated"])
                );
            });
        }
        E::Delete { name } => {
            let path = format!("/api/v1/environments/{}", seg(&name));
            api.send(Method::DELETE, &path, None).await?;
            if !json {
                let _ = writeln!(out, "environment {name} deleted");
            }
        }
    }
    Ok(())
}

fn environment_details(v: &Value, out: &mut String) {
    let targets: Vec<String> = v["targets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(text)
        .collect();
    for (k, val) in [
        ("name", text(&v["name"])),
        ("state", text(&v["state"])),
        ("workshop", text(&v["workshop"]["name"])),
        ("title", text(&v["workshop"]["title"])),
        ("duration", text(&v["duration"])),
        ("capacity", text(&v["capacity"])),
        ("reserved", text(&v["reserved"])),
        ("allocated", text(&v["allocated"])),
        ("targets", targets.join(", ")),
        ("tls_verify", text(&v["tls_verify"])),
        ("created", text(&v["created"])),
    ] {
        let _ = writeln!(out, "{k:<11} {val}");
    }
}

impl Paging {
    fn add_to(self, query: &mut Vec<(&str, String)>) {
        query.extend(self.page.map(|p| ("page", p.to_string())));
        query.extend(self.per_page.map(|p| ("per_page", p.to_string())));
    }
}

fn with_query(path: &str, query: &[(&str, String)]) -> Result<String, CtlError> {
    if query.is_empty() {
        return Ok(path.to_string());
    }
    let q = serde_urlencoded::to_string(query)
        .map_err(|e| CtlError::Setup(format!("query string: {e}")))?;
    Ok(format!("{path}?{q}"))
}

/// Percent-encodes one path segment, so that any name reaches the server
/// (which then says what is wrong with it) instead of making a bad URL.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A 2xx answer: its JSON for the tables, its text for `--output json`.
struct Answer {
    /// `null` for an empty body (204).
    json: Value,
    raw: String,
}

/// The API client: one base URL, one token, JSON in and out.
struct ApiClient {
    client: Client<HttpConnector, Body>,
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    base: String,
    token: HeaderValue,
}

impl ApiClient {
    fn new(server: &str, token: Option<&str>) -> Result<ApiClient, CtlError> {
        let base = base_url(server)?;
        let token = token
            .map(str::to_string)
            .or_else(|| std::env::var(ADMIN_TOKEN_ENV).ok())
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                CtlError::Setup(format!(
                    "no API token: pass --token or set SESSIONGATE_TOKEN (or {ADMIN_TOKEN_ENV})"
                ))
            })?;
        let mut token =
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                CtlError::Setup("the API token contains characters a header cannot carry".into())
            })?;
        token.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient {
            client,
            base,
            token,
        })
    }

    /// One request: a 2xx answer, or the server's error.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<Answer, CtlError> {
        let uri: Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .map_err(|e| CtlError::Setup(format!("{}{path_and_query}: {e}", self.base)))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.token.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("sessiongate-ctl/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| CtlError::Setup(format!("building the request: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let reason = client_error_reason(&e);
                if e.is_connect() {
                    self.unreachable(reason)
                } else {
                    self.bad_response(format!("no answer: {reason}"))
                }
            })?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| self.bad_response(format!("reading the answer: {e}")))?;
            Ok::<_, CtlError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                self.unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
            })??;
        if status.is_success() {
            let raw = String::from_utf8(bytes.to_vec())
                .map_err(|_| self.bad_response(format!("{status}: not UTF-8")))?;
            if raw.trim().is_empty() {
                return Ok(Answer {
                    json: Value::Null,
                    raw,
                });
            }
            let json = serde_json::from_str(&raw)
                .map_err(|e| self.bad_response(format!("{status}: not JSON: {e}")))?;
            return Ok(Answer { json, raw });
        }
        Err(api_error(status.as_u16(), &bytes))
    }

    fn unreachable(&self, reason: String) -> CtlError {
        CtlError::Unreachable {
            server: self.base.clone(),
            reason,
        }
    }

    fn bad_response(&self, reason: String) -> CtlError {
        CtlError::BadResponse {
            server: self.base.clone(),
            reason,
        }
    }
}

/// `--server` as a base URL: `http://host[:port][/prefix]`.
fn base_url(server: &str) -> Result<String, CtlError> {
    let bad = |why: &str| CtlError::Setup(format!("--server {server:?}: {why}"));
    let uri: Uri = server
        .parse()
        .map_err(|_| bad("not a URL such as http://127.0.0.1:9090"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported yet (TLS comes later); use an http:// address",
            ))
        }
        _ => return Err(bad("not a URL such as http://127.0.0.1:9090")),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information in the URL is not used; pass --token"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// The innermost reason of a client error, in lower case: `connection
/// refused`, not hyper's wrapping of it.
fn client_error_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::Other => lower_first(&io.to_string()),
                kind => kind.to_string(),
            };
        }
        last = s.to_string();
        source = s.source();
    }
    lower_first(&last)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The server's `{"error": {"code", "message"}}`, or, from something that
/// is not our API (a proxy in between), its status and the start of its body.
fn api_error(status: u16, body: &[u8]) -> CtlError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    match error {
        Some(e) if e["code"].is_string() => CtlError::Api {
            status,
            code: text(&e["code"]),
            message: text(&e["message"]),
        },
        _ => {
            let body = String::from_utf8_lossy(body);
            let first = body.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(200).collect();
            CtlError::Api {
                status,
                code: http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_"),
                message: if first.is_empty() {
                    "no error body".into()
                } else {
                    first
                },
            }
        }
    }
}

/// Writes the answer as the server's JSON, pretty, or through `table`.
fn emit(out: &mut String, json: bool, a: &Answer, table: impl FnOnce(&Value, &mut String)) {
    if json {
        if !a.raw.trim().is_empty() {
            out.push_str(&pretty(&a.raw));
            out.push('\n');
        }
    } else {
        table(&a.json, out);
    }
}

/// Re-indents JSON text the way `serde_json::to_string_pretty` does, but
/// keeps the server's key order (a `serde_json::Value` sorts its keys), so
/// `--output json` shows fields in the order the API documents them.
/// `raw` has already been parsed, so it is valid JSON.
fn pretty(raw: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(raw.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(text).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// Aligned columns, two spaces apart, no trailing blanks.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `key: value` lines with the values aligned.
fn details(pairs: &[(&str, String)], out: &mut String) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        let _ = writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
}

/// A page's table, and a footer when the page is not everything.
fn page_table(v: &Value, what: &str, rows: fn(&[Value], &mut String), out: &mut String) {
    let items = v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let total = v["total"].as_u64().unwrap_or(items.len() as u64);
    if total == 0 {
        let _ = writeln!(out, "no {what}");
        return;
    }
    if !items.is_empty() {
        rows(items, out);
    }
    if items.len() as u64 != total {
        let _ = writeln!(
            out,
            "{} of {total} {what} (page {}, {} per page)",
            items.len(),
            text(&v["page"]),
            text(&v["per_page"]),
        );
    }
}

/// `1h 02m`, `3d 4h`: what a person reads at a glance.
fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn target(s: &Value) -> String {
    if s["kind"] == "link" {
        return text(&s["url"]);
    }
    let scheme = if s["https"] == Value::Bool(true) {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://{}:{}",
        s["remote_host"].as_str().unwrap_or("localhost"),
        text(&s["remote_port"])
    )
}

/// Time left, frozen while paused; `never` without an expiry.
fn countdown(s: &Value) -> String {
    match s["countdown"].as_u64() {
        Some(secs) if s["state"] == "paused" => format!("{} (paused)", human_secs(secs)),
        Some(secs) => human_secs(secs),
        // Pending: the clock starts at activation.
        None if s["expires"].is_null()
            && ["running", "paused", "evicted"].contains(&s["state"].as_str().unwrap_or("")) =>
        {
            "never".into()
        }
        None => "-".into(),
    }
}

fn access(s: &Value) -> String {
    let groups = list(&s["groups"]);
    match (s["public"] == Value::Bool(true), groups.as_str()) {
        (true, "-") => "(public)".into(),
        (true, g) => format!("(public) {g}"),
        (false, g) => g.to_string(),
    }
}

fn sessions_table(items: &[Value], out: &mut String) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                text(&s["name"]),
                text(&s["state"]),
                text(&s["owner"]),
                text(&s["kind"]),
                target(s),
                countdown(s),
                access(s),
                labels(&s["labels"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "OWNER",
            "KIND",
            "TARGET",
            "EXPIRES IN",
            "GROUPS",
            "LABELS",
        ],
        &rows,
        out,
    );
}

fn session_details(s: &Value, out: &mut String) {
    let secs = |v: &Value| match v.as_u64() {
        Some(n) => format!("{n}s ({})", human_secs(n)),
        None => "-".into(),
    };
    let mut pairs = vec![
        ("name", text(&s["name"])),
        ("state", text(&s["state"])),
        ("owner", text(&s["owner"])),
        ("kind", text(&s["kind"])),
        ("target", target(s)),
    ];
    if s["kind"] != "link" {
        pairs.push(("tls verify", text(&s["tls_verify"])));
        pairs.push(("rewrite host", text(&s["rewrite_host"])));
    }
    pairs.extend([
        ("slug", text(&s["slug"])),
        ("strip prefix", text(&s["strip_prefix"])),
        ("custom domain", text(&s["custom_domain"])),
        ("public", text(&s["public"])),
        ("groups", list(&s["groups"])),
        ("created", text(&s["created"])),
        ("activated", text(&s["activated"])),
        ("expires", text(&s["expires"])),
        ("expires in", countdown(s)),
        ("last activity", text(&s["last_activity"])),
        ("duration", secs(&s["duration"])),
        ("idle timeout", secs(&s["idle_timeout"])),
        ("extendable", text(&s["extendable"])),
        ("environment", text(&s["environment"])),
        ("labels", labels(&s["labels"])),
    ]);
    details(&pairs, out);
}

/// After an action: the session's name, state and time left.
fn session_line(s: &Value, out: &mut String) {
    let _ = write!(out, "{}: {}", text(&s["name"]), text(&s["state"]));
    match (s["countdown"].as_u64(), countdown(s).as_str()) {
        (Some(secs), _) if s["state"] == "paused" => {
            let _ = write!(out, ", {} left when resumed", human_secs(secs));
        }
        (_, "-") => {}
        (_, "never") => out.push_str(", no expiry"),
        (_, c) => {
            let _ = write!(out, ", expires in {c}");
        }
    }
    if s["public"] == Value::Bool(true) {
        out.push_str(", public");
    }
    if s["groups"].as_array().is_some_and(|g| !g.is_empty()) {
        let _ = write!(out, ", shared with {}", list(&s["groups"]));
    }
    out.push('\n');
}

fn bulk_table(v: &Value, out: &mut String) {
    let results = v["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let ok = r["ok"] == Value::Bool(true);
            let error = if ok {
                String::new()
            } else {
                format!(
                    "{}: {}",
                    text(&r["error"]["code"]),
                    text(&r["error"]["message"])
                )
            };
            vec![
                text(&r["name"]),
                if ok { "ok".into() } else { "failed".into() },
                text(&r["state"]),
                error,
            ]
        })
        .collect();
    table(&["NAME", "RESULT", "STATE", "ERROR"], &rows, out);
    let _ = writeln!(
        out,
        "{}: applied to {} of {}",
        text(&v["action"]),
        text(&v["applied"]),
        results.len()
    );
}

fn full_name(u: &Value) -> String {
    let parts: Vec<&str> = [&u["first_name"], &u["last_name"]]
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn users_table(items: &[Value], out: &mut String) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|u| {
            vec![
                text(&u["name"]),
                text(&u["email"]),
                full_name(u),
                list(&u["groups"]),
                text(&u["created"]),
            ]
        })
        .collect();
    table(
        &["NAME", "EMAIL", "FULL NAME", "GROUPS", "CREATED"],
        &rows,
        out,
    );
}

fn user_details(u: &Value, out: &mut String) {
    details(
        &[
            ("name", text(&u["name"])),
            ("id", text(&u["id"])),
            ("email", text(&u["email"])),
            ("first name", text(&u["first_name"])),
            ("last name", text(&u["last_name"])),
            ("groups", list(&u["groups"])),
            ("created", text(&u["created"])),
        ],
        out,
    );
}

fn groups_table(v: &Value, out: &mut String) {
    let items = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        out.push_str("no groups\n");
        return;
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| vec![text(&g["name"]), list(&g["members"]), text(&g["created"])])
        .collect();
    table(&["NAME", "MEMBERS", "CREATED"], &rows, out);
}

fn group_details(g: &Value, out: &mut String) {
    details(
        &[
            ("name", text(&g["name"])),
            ("members", list(&g["members"])),
            ("created", text(&g["created"])),
        ],
        out,
    );
}

fn tokens_table(v: &Value, out: &mut String) {
    let items = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        out.push_str("no tokens (besides the admin token)\n");
        return;
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| vec![text(&t["name"]), text(&t["kind"]), text(&t["created"])])
        .collect();
    table(&["NAME", "KIND", "CREATED"], &rows, out);
}

fn routes_table(v: &Value, out: &mut String) {
    let routes = v["routes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(
        out,
        "route table version {}, {} routes, base domains {}",
        text(&v["version"]),
        routes.len(),
        list(&v["base_domains"])
    );
    if routes.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let mut addresses: Vec<String> = Vec::new();
            for key in ["hosts", "labels", "slugs"] {
                addresses.extend(r[key].as_array().into_iter().flatten().map(text));
            }
            let target = match &r["upstream"] {
                Value::Null => format!("redirect {}", text(&r["redirect"])),
                u => text(u),
            };
            let flags: Vec<&str> = [
                ("paused", "paused"),
                ("public", "public"),
                ("strip_prefix", "strip-prefix"),
                ("rewrite_host", "rewrite-host"),
            ]
            .into_iter()
            .filter(|(k, _)| r[*k] == Value::Bool(true))
            .map(|(_, name)| name)
            .collect();
            vec![
                text(&r["id"]),
                if addresses.is_empty() {
                    "-".into()
                } else {
                    addresses.join(",")
                },
                target,
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
                text(&r["last_activity"]),
                text(&r["upgraded_connections"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "MATCHES",
            "TARGET",
            "FLAGS",
            "LAST ACTIVITY",
            "UPGRADED",
        ],
        &rows,
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_keep_a_prefix_and_refuse_https() {
        assert_eq!(
            base_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            base_url("http://cp.example:80/sg/").unwrap(),
            "http://cp.example:80/sg"
        );
        let e = base_url("https://cp.example").unwrap_err().to_string();
        assert!(e.contains("https is not supported yet"), "{e}");
        for bad in [
            "127.0.0.1:9090",
            "ftp://x",
            "http://",
            "http://a/?x=1",
            "not a url",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("lab-1"), "lab-1");
        assert_eq!(seg("ann.lee@example.org"), "ann.lee@example.org");
        assert_eq!(seg("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(seg("é"), "%C3%A9");
    }

    #[test]
    fn api_errors_read_the_error_body_or_name_the_status() {
        let e = api_error(
            409,
            br#"{"error":{"code":"invalid_transition","message":"session \"x\": cannot pause a session that is paused","state":"paused"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "409 invalid_transition: session \"x\": cannot pause a session that is paused"
        );
        assert_eq!(
            api_error(502, b"<html>bad gateway</html>\nmore").to_string(),
            "502 bad_gateway: <html>bad gateway</html>"
        );
        assert_eq!(
            api_error(500, b"").to_string(),
            "500 internal_server_error: no error body"
        );
    }

    #[test]
    fn pretty_json_matches_serde_json_and_keeps_key_order() {
        let v = json!({
            "a": {"z": 1, "b": [1, 2.5, null, true], "e": {}, "f": []},
            "s": "x, {y}: [\"q\\\"] \\",
            "u": "é",
        });
        assert_eq!(
            pretty(&v.to_string()),
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert_eq!(
            pretty("{\"z\": 1, \"a\": [ ], \"m\": { \"k\": \"v\" }}"),
            "{\n  \"z\": 1,\n  \"a\": [],\n  \"m\": {\n    \"k\": \"v\"\n  }\n}"
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let mut out = String::new();
        table(
            &["NAME", "STATE"],
            &[
                vec!["a-long-name".into(), "running".into()],
                vec!["b".into(), "".into()],
            ],
            &mut out,
        );
        assert_eq!(out, "NAME         STATE\na-long-name  running\nb\n");
    }

    #[test]
    fn countdowns_read_at_a_glance() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(61), "1m 01s");
        assert_eq!(human_secs(3600 + 120), "1h 02m");
        assert_eq!(human_secs(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        let paused = json!({"state": "paused", "countdown": 90, "expires": "x"});
        assert_eq!(countdown(&paused), "1m 30s (paused)");
        let forever = json!({"state": "running", "countdown": null, "expires": null});
        assert_eq!(countdown(&forever), "never");
        let gone = json!({"state": "expired", "countdown": null, "expires": "x"});
        assert_eq!(countdown(&gone), "-");
    }

    #[test]
    fn a_page_that_is_not_everything_says_so() {
        let v = json!({
            "items": [{"name": "a", "state": "running", "owner": "ann", "kind": "tunnel",
                       "remote_host": null, "remote_port": 8888, "https": false,
                       "countdown": null, "expires": null, "groups": ["g"], "public": true,
                       "labels": {"course": "rust"}}],
            "total": 3, "page": 2, "per_page": 1,
        });
        let mut out = String::new();
        page_table(&v, "sessions", sessions_table, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(
            lines[1].contains("http://localhost:8888") && lines[1].contains("(public) g"),
            "{out}"
        );
        assert!(
            lines[1].contains("course=rust") && lines[1].contains("never"),
            "{out}"
        );
        assert_eq!(lines[2], "1 of 3 sessions (page 2, 1 per page)");
        let mut out = String::new();
        page_table(
            &json!({"items": [], "total": 0, "page": 1, "per_page": 50}),
            "sessions",
            sessions_table,
            &mut out,
        );
        assert_eq!(out, "no sessions\n");
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let c = CreateSession {
            name: "lab".into(),
            owner: "ann".into(),
            port: None,
            host: None,
            https: false,
            no_tls_verify: false,
            url: Some("https://example.org/".into()),
            slug: None,
            strip_prefix: false,
            rewrite_host: false,
            custom_domain: None,
            groups: vec!["g".into()],
            public: false,
            duration: Some(60),
            idle_timeout: None,
            not_extendable: true,
            environment: None,
            labels: vec![("a".into(), "1".into())],
            pending: false,
        };
        assert_eq!(
            new_session(c),
            json!({"name": "lab", "owner": "ann", "kind": "link", "url": "https://example.org/",
                   "extendable": false, "duration": 60, "groups": ["g"], "labels": {"a": "1"}})
        );
        assert!(parse_label("k=v=w").is_ok_and(|(k, v)| k == "k" && v == "v=w"));
        assert!(parse_label("=v").is_err());
        assert!(parse_label("kv").is_err());
    }
}
