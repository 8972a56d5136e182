//! One function per command group: the arguments become the API's own
//! request type, the answer comes back as the API's own response type and
//! goes to `render`, or, with `--output json`, is printed as the server
//! wrote it.
//!
//! Nothing is validated here beyond what clap parses: the server says what
//! is wrong, so the CLI and the API cannot disagree about what is allowed.

use std::fmt::Write as _;

use serde::de::{DeserializeOwned, IgnoredAny};

use super::args::{
    CreateEnvironment, CreateSession, CtlCommand, EnvironmentsCommand, GroupsCommand, Output,
    Paging, SessionsCommand, TokenKindArg, TokensCommand, UsersCommand,
};
use super::client::{seg, with_query, ApiClient, Reply};
use super::render;
use super::CtlError;
use crate::access::{AccessLink, AccessRequest, KeyRotation};
use crate::api::directory::TokenInfo;
use crate::api::directory::{CreatedToken, MemberBody, MembersBody, NewToken};
use crate::api::gateway::GatewaysView;
use crate::api::routes::RoutesView;
use crate::api::sessions::{BulkAction, BulkRequest, BulkResponse, ExtendBody, GroupsBody, Page};
use crate::auth::TokenKind;
use crate::session::model::{Group, NewGroup, NewSession, NewUser, Session, SessionKind, User};
use crate::workshop::environment::{Environment, NewEnvironment, WorkshopInfo};

const SESSIONS: &str = "/api/v1/sessions";
const USERS: &str = "/api/v1/users";
const GROUPS: &str = "/api/v1/groups";
const TOKENS: &str = "/api/v1/tokens";
const ENVIRONMENTS: &str = "/api/v1/environments";

/// Runs one command, appending what it prints to `out`.
pub(super) async fn execute(
    api: &ApiClient,
    command: CtlCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    match command {
        CtlCommand::Sessions(c) => sessions(api, c, output, out).await,
        CtlCommand::Users(c) => users(api, c, output, out).await,
        CtlCommand::Groups(c) => groups(api, c, output, out).await,
        CtlCommand::Tokens(c) => tokens(api, c, output, out).await,
        CtlCommand::Environments(c) => environments(api, c, output, out).await,
        CtlCommand::Routes => routes(api, output, out).await,
        CtlCommand::Gateways => {
            let reply = api.get::<GatewaysView>("/api/v1/gateways").await?;
            emit(out, output, &reply, render::gateways_table)
        }
        CtlCommand::RotateKeys => rotate_keys(api, output, out).await,
    }
}

async fn sessions(
    api: &ApiClient,
    command: SessionsCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    use SessionsCommand as S;
    // The rest act on sessions by name: `action` is the word in a single
    // session's URL and in the bulk error line, `bulk_action` the same in
    // the bulk request.
    let (action, bulk_action, names) = match command {
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
            add_paging(paging, &mut query);
            let reply = api
                .get::<Page<Session>>(&with_query(SESSIONS, &query)?)
                .await?;
            return emit(out, output, &reply, |p, out| {
                render::page(p, "sessions", render::sessions_table, out)
            });
        }
        S::Get { name } => {
            let reply = api.get(&named(SESSIONS, &name)).await?;
            return emit(out, output, &reply, render::session_details);
        }
        S::Create(c) => {
            let reply = api.post(SESSIONS, &new_session(*c)).await?;
            return emit(out, output, &reply, render::session_details);
        }
        S::Extend { name, seconds } => {
            let path = format!("{}/extend", named(SESSIONS, &name));
            // No body asks for the session's own duration.
            let reply = match seconds {
                Some(s) => {
                    let body = ExtendBody { seconds: Some(s) };
                    api.post(&path, &body).await?
                }
                None => api.post_empty(&path).await?,
            };
            return emit(out, output, &reply, render::session_line);
        }
        S::Share { name, groups } => {
            let path = format!("{}/groups", named(SESSIONS, &name));
            let reply = api.put(&path, &GroupsBody { groups }).await?;
            return emit(out, output, &reply, render::session_line);
        }
        S::Access { name, user, path } => {
            let endpoint = format!("{}/access", named(SESSIONS, &name));
            let reply = api
                .post::<AccessLink>(&endpoint, &AccessRequest { user, path })
                .await?;
            return emit(out, output, &reply, render::access_link);
        }
        S::ClientCert {
            name,
            user,
            days,
            out: dir,
        } => {
            let endpoint = format!("{}/client-cert", named(SESSIONS, &name));
            let body = crate::access::ClientCertRequest {
                user: user.clone(),
                days,
            };
            let reply = api
                .post::<crate::access::ClientCert>(&endpoint, &body)
                .await?;
            if matches!(output, Output::Json) {
                print_json(out, &reply);
                return Ok(());
            }
            let cert = reply.parse()?;
            let files = [
                (format!("{user}.crt"), &cert.certificate, false),
                (format!("{user}.key"), &cert.key, true),
                ("workspace-ca.crt".to_string(), &cert.ca, false),
            ];
            for (file, text, private) in files {
                let path = dir.join(&file);
                // Atomic, and a key is 0600 from its first byte.
                certs::dev::write_atomically(&path, text.as_bytes(), private)
                    .map_err(|e| CtlError::Setup(e.to_string()))?;
                let _ = writeln!(out, "wrote {}", path.display());
            }
            let _ = writeln!(out, "valid until {}", cert.expires);
            return Ok(());
        }
        S::Delete(n) => ("delete", BulkAction::Delete, n.names),
        S::Pause(n) => ("pause", BulkAction::Pause, n.names),
        S::Resume(n) => ("resume", BulkAction::Resume, n.names),
        S::Evict(n) => ("evict", BulkAction::Evict, n.names),
        S::Expire(n) => ("expire", BulkAction::Expire, n.names),
        S::Keepalive(n) => ("keepalive", BulkAction::Keepalive, n.names),
        S::Activate(n) => ("activate", BulkAction::Activate, n.names),
    };
    match names.as_slice() {
        // One name: its own endpoint, whose error says exactly what is wrong.
        [name] => {
            let reply: Reply<Session> = match bulk_action {
                BulkAction::Delete => api.delete(&named(SESSIONS, name)).await?,
                _ => {
                    let path = format!("{}/{action}", named(SESSIONS, name));
                    api.post_empty(&path).await?
                }
            };
            emit(out, output, &reply, render::session_line)
        }
        _ => {
            let request = BulkRequest {
                action: bulk_action,
                names,
            };
            let reply = api
                .post::<BulkResponse>(&format!("{SESSIONS}/bulk"), &request)
                .await?;
            // Parsed whatever the output: the exit status depends on it.
            let bulk = reply.parse()?;
            match output {
                Output::Json => print_json(out, &reply),
                Output::Table => render::bulk_table(&bulk, out),
            }
            bulk_outcome(action, &bulk)
        }
    }
}

/// One item of a collection: `/api/v1/users/ann`, the name percent-encoded.
fn named(collection: &str, name: &str) -> String {
    format!("{collection}/{}", seg(name))
}

/// The error for a bulk response in which some names were not applied.
fn bulk_outcome(action: &str, bulk: &BulkResponse) -> Result<(), CtlError> {
    let failed: Vec<String> = bulk
        .results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            let code = r.error.as_ref().map_or("-", |e| e.code.as_str());
            format!("{} ({code})", r.name)
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(CtlError::Partial {
        action: action.to_string(),
        failed: failed.len(),
        total: bulk.results.len(),
        detail: failed.join(", "),
    })
}

/// `sessions create`'s arguments as the API's request. Flags left off stay
/// unset, so that the server's defaults apply (and the request carries only
/// what was given).
fn new_session(c: CreateSession) -> NewSession {
    NewSession {
        name: c.name,
        kind: c.url.is_some().then_some(SessionKind::Link),
        remote_host: c.host,
        remote_port: c.port,
        url: c.url,
        https: c.https,
        tls_verify: c.no_tls_verify.then_some(false),
        slug: c.slug,
        shared_origin: c.shared_origin,
        strip_prefix: c.strip_prefix,
        rewrite_host: c.rewrite_host,
        allow_any_upgrade: c.allow_any_upgrade,
        custom_domain: c.custom_domain,
        workspace_port: c.workspace_port,
        owner: c.owner,
        groups: c.groups,
        public: c.public,
        duration: c.duration,
        idle_timeout: c.idle_timeout,
        extendable: c.not_extendable.then_some(false),
        environment: c.environment,
        // A key given twice: the last value wins.
        labels: c.labels.into_iter().collect(),
        pending: c.pending,
    }
}

fn add_paging(paging: Paging, query: &mut Vec<(&str, String)>) {
    query.extend(paging.page.map(|p| ("page", p.to_string())));
    query.extend(paging.per_page.map(|p| ("per_page", p.to_string())));
}

async fn users(
    api: &ApiClient,
    command: UsersCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    match command {
        UsersCommand::List { q, paging } => {
            let mut query: Vec<(&str, String)> = q.map(|q| ("q", q)).into_iter().collect();
            add_paging(paging, &mut query);
            let reply = api.get::<Page<User>>(&with_query(USERS, &query)?).await?;
            emit(out, output, &reply, |p, out| {
                render::page(p, "users", render::users_table, out)
            })
        }
        UsersCommand::Get { name } => {
            let reply = api.get(&named(USERS, &name)).await?;
            emit(out, output, &reply, render::user_details)
        }
        UsersCommand::Create {
            name,
            email,
            first_name,
            last_name,
        } => {
            let user = NewUser {
                name,
                email,
                first_name,
                last_name,
            };
            let reply = api.post(USERS, &user).await?;
            emit(out, output, &reply, render::user_details)
        }
        UsersCommand::Delete { name } => {
            let path = named(USERS, &name);
            delete(api, &path, output, out, format!("user {name} deleted")).await
        }
        UsersCommand::ConsoleLink { name } => {
            let path = format!("{}/console-link", named(USERS, &name));
            let reply = api.post_empty::<AccessLink>(&path).await?;
            emit(out, output, &reply, render::access_link)
        }
    }
}

async fn groups(
    api: &ApiClient,
    command: GroupsCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    use GroupsCommand as G;
    let reply: Reply<Group> = match command {
        G::List => {
            let reply = api.get::<Vec<Group>>(GROUPS).await?;
            return emit(out, output, &reply, |g, out| render::groups_table(g, out));
        }
        G::Get { name } => api.get(&named(GROUPS, &name)).await?,
        G::Create { name, members } => api.post(GROUPS, &NewGroup { name, members }).await?,
        G::Delete { name } => {
            let done = format!("group {name} deleted");
            return delete(api, &named(GROUPS, &name), output, out, done).await;
        }
        G::AddMember { group, user } => {
            let path = format!("{}/members", named(GROUPS, &group));
            api.post(&path, &MemberBody { user }).await?
        }
        G::RemoveMember { group, user } => {
            let path = format!("{}/members/{}", named(GROUPS, &group), seg(&user));
            api.delete(&path).await?
        }
        G::SetMembers { group, users } => {
            let path = format!("{}/members", named(GROUPS, &group));
            api.put(&path, &MembersBody { members: users }).await?
        }
    };
    emit(out, output, &reply, render::group_details)
}

async fn tokens(
    api: &ApiClient,
    command: TokensCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    match command {
        TokensCommand::List => {
            let reply = api.get::<Vec<TokenInfo>>(TOKENS).await?;
            emit(out, output, &reply, |t, out| render::tokens_table(t, out))
        }
        TokensCommand::Create { name, kind } => {
            let token = NewToken {
                name,
                kind: Some(token_kind(kind)),
            };
            let reply = api.post::<CreatedToken>(TOKENS, &token).await?;
            emit(out, output, &reply, render::token_created)
        }
        TokensCommand::Delete { name } => {
            let path = named(TOKENS, &name);
            delete(api, &path, output, out, format!("token {name} revoked")).await
        }
    }
}

fn token_kind(kind: TokenKindArg) -> TokenKind {
    match kind {
        TokenKindArg::Readonly => TokenKind::Readonly,
        TokenKindArg::Admin => TokenKind::Admin,
        TokenKindArg::Gateway => TokenKind::Gateway,
    }
}

async fn environments(
    api: &ApiClient,
    command: EnvironmentsCommand,
    output: Output,
    out: &mut String,
) -> Result<(), CtlError> {
    use EnvironmentsCommand as E;
    match command {
        E::List => {
            let reply = api.get::<Vec<Environment>>(ENVIRONMENTS).await?;
            emit(out, output, &reply, |e, out| {
                render::environments_table(e, out)
            })
        }
        E::Get { name } => {
            let reply = api.get(&named(ENVIRONMENTS, &name)).await?;
            emit(out, output, &reply, render::environment_details)
        }
        E::Create(c) => {
            let reply = api.post(ENVIRONMENTS, &new_environment(c)).await?;
            emit(out, output, &reply, render::environment_details)
        }
        E::Stop { name } => {
            let path = format!("{}/stop", named(ENVIRONMENTS, &name));
            let reply = api.post_empty(&path).await?;
            emit(out, output, &reply, render::environment_stopped)
        }
        E::Delete { name } => {
            let done = format!("environment {name} deleted");
            delete(api, &named(ENVIRONMENTS, &name), output, out, done).await
        }
    }
}

/// `environments create`'s arguments as the API's request. The workshop's
/// other catalog fields stay empty, which the server reads as absent (its
/// name becomes the environment's).
fn new_environment(c: CreateEnvironment) -> NewEnvironment {
    NewEnvironment {
        name: c.name,
        workshop: WorkshopInfo {
            title: c.title.unwrap_or_default(),
            description: c.description.unwrap_or_default(),
            ..WorkshopInfo::default()
        },
        duration: c.duration,
        capacity: c.capacity,
        reserved: c.reserved,
        targets: c.targets,
        tls_verify: !c.no_tls_verify,
        slug_prefix: None,
        // The server's defaults, which the CLI has no flags to change.
        extendable: true,
        parameter_headers: false,
    }
}

async fn routes(api: &ApiClient, output: Output, out: &mut String) -> Result<(), CtlError> {
    let reply = api.get::<RoutesView>("/api/v1/routes").await?;
    emit(out, output, &reply, render::routes_table)
}

async fn rotate_keys(api: &ApiClient, output: Output, out: &mut String) -> Result<(), CtlError> {
    let reply = api
        .post_empty::<KeyRotation>("/api/v1/access/keys/rotate")
        .await?;
    emit(out, output, &reply, render::key_rotation)
}

/// Prints an answer: the server's JSON as it came with `--output json`,
/// otherwise the typed answer through `render`.
fn emit<T: DeserializeOwned>(
    out: &mut String,
    output: Output,
    reply: &Reply<T>,
    render: impl FnOnce(&T, &mut String),
) -> Result<(), CtlError> {
    match output {
        Output::Json => print_json(out, reply),
        Output::Table => render(&reply.parse()?, out),
    }
    Ok(())
}

/// The server's JSON, re-indented; nothing for an empty answer (a 204).
fn print_json<T>(out: &mut String, reply: &Reply<T>) {
    if !reply.raw().trim().is_empty() {
        out.push_str(&render::pretty(reply.raw()));
        out.push('\n');
    }
}

/// Deletes a user, group, token or environment. The API answers 204 with
/// no body, so people get `done` instead, and `--output json` prints
/// nothing, as the server did.
async fn delete(
    api: &ApiClient,
    path: &str,
    output: Output,
    out: &mut String,
    done: String,
) -> Result<(), CtlError> {
    api.delete::<IgnoredAny>(path).await?;
    if output == Output::Table {
        let _ = writeln!(out, "{done}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::api::sessions::{BulkError, BulkResult};
    use crate::ctl::args::parse;

    /// The JSON body a `create` command line sends.
    fn body_of(argv: &[&str]) -> Value {
        let args = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let body = match args.command {
            CtlCommand::Sessions(SessionsCommand::Create(c)) => {
                serde_json::to_value(new_session(*c))
            }
            CtlCommand::Environments(EnvironmentsCommand::Create(c)) => {
                serde_json::to_value(new_environment(c))
            }
            other => panic!("{argv:?}: not a create: {other:?}"),
        };
        body.unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let cases = [
            (
                "sessions create lab --owner ann --port 9001",
                json!({"name": "lab", "owner": "ann", "remote_port": 9001}),
            ),
            (
                "sessions create lab --owner ann --url https://example.org/ --group g \
                 --duration 60 --not-extendable --label a=1 --label a=2",
                json!({"name": "lab", "owner": "ann", "kind": "link",
                       "url": "https://example.org/", "extendable": false, "duration": 60,
                       "groups": ["g"], "labels": {"a": "2"}}),
            ),
            (
                "sessions create lab --owner ann --port 1 --host h --https --no-tls-verify \
                 --slug /lab --shared-origin --strip-prefix --rewrite-host --custom-domain x.org \
                 --public --idle-timeout 30 --environment e --pending",
                json!({"name": "lab", "owner": "ann", "remote_port": 1, "remote_host": "h",
                       "https": true, "tls_verify": false, "slug": "/lab", "shared_origin": true,
                       "strip_prefix": true, "rewrite_host": true, "custom_domain": "x.org",
                       "public": true, "idle_timeout": 30, "environment": "e",
                       "pending": true}),
            ),
            // The workshop is also the API's answer type, so it goes whole;
            // empty fields are what the server assumes when they are absent.
            (
                "environments create w --target http://a:1 --capacity 1 --title Lab \
                 --no-tls-verify",
                json!({"name": "w", "capacity": 1, "reserved": 0, "targets": ["http://a:1"],
                       "tls_verify": false, "extendable": true,
                       "workshop": {"name": "", "title": "Lab", "description": "",
                                    "vendor": "", "authors": [], "difficulty": "",
                                    "duration": "", "tags": [], "labels": {}, "logo": "",
                                    "url": ""}}),
            ),
        ];
        for (line, want) in cases {
            let argv: Vec<&str> = std::iter::once("ctl")
                .chain(line.split_whitespace())
                .collect();
            assert_eq!(body_of(&argv), want, "{line}");
        }
    }

    #[test]
    fn a_bulk_action_fails_when_any_name_failed() {
        let result = |name: &str, error: Option<&str>| BulkResult {
            name: name.into(),
            ok: error.is_none(),
            state: None,
            error: error.map(|code| BulkError {
                code: code.into(),
                message: "m".into(),
            }),
        };
        let bulk = |results| BulkResponse {
            action: BulkAction::Pause,
            applied: 0,
            results,
        };
        assert!(bulk_outcome("pause", &bulk(vec![result("a", None)])).is_ok());
        let failed = bulk(vec![
            result("a", None),
            result("b", Some("not_found")),
            // Not applied, without a reason: still a failure.
            BulkResult {
                ok: false,
                ..result("c", None)
            },
        ]);
        assert_eq!(
            bulk_outcome("pause", &failed).unwrap_err().to_string(),
            "pause: 2 of 3 sessions failed: b (not_found), c (-)"
        );
    }
}
