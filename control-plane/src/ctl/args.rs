//! `sessiongate ctl`'s command line: the clap types, one enum per command
//! group and a struct where a command has many arguments. Parsing only: what
//! each command sends is in `commands`.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

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
        default_value_t = Output::Table,
        help_heading = "Global options"
    )]
    pub output: Output,

    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What a command prints.
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
    /// Show the gateways that follow this control plane: the version each
    /// holds, how far it lags, when it was last heard from.
    Gateways,
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
    /// Issue a client certificate naming USER for the session's workspace
    /// port over TLS (gateway.workspace_tls): writes USER.crt, USER.key
    /// (0600) and workspace-ca.crt into --out.
    ClientCert {
        name: String,
        /// The owner, or a member of a group the session is shared with.
        #[arg(long)]
        user: String,
        /// Days it is valid (default 30, at most 397).
        #[arg(long)]
        days: Option<u64>,
        /// The directory the files go to.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
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
    /// Accept that the slug shares the portal host's browser origin with
    /// other users' slug sessions (needed while there are any).
    #[arg(long, requires = "slug")]
    pub shared_origin: bool,
    /// Remove the slug before forwarding.
    #[arg(long)]
    pub strip_prefix: bool,
    /// Send the app's own host as Host.
    #[arg(long)]
    pub rewrite_host: bool,
    /// Pass on upgrades to any protocol (h2c, a custom tunnel), not only
    /// WebSocket.
    #[arg(long, conflicts_with = "url")]
    pub allow_any_upgrade: bool,
    /// A full hostname routed to this session.
    #[arg(long, value_name = "DOMAIN")]
    pub custom_domain: Option<String>,
    /// A raw TCP port on the gateway forwarded to the session's port (SSH,
    /// VNC, a database); 0 picks a free one in gateway.workspace_port_range.
    #[arg(long)]
    pub workspace_port: Option<u16>,
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
    /// A one-time link that signs the user in to the web console (valid 5
    /// minutes): what a portal hands its user, as it hands access links.
    ConsoleLink { name: String },
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
    Create(CreateEnvironment),
    /// Stop an environment: no new sessions; its sessions run to their end.
    Stop { name: String },
    /// Delete an environment that has no unfinished sessions.
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct CreateEnvironment {
    pub name: String,
    /// A backend, http(s)://host:port, serving one session at a time; repeat it.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// The most sessions at once (at most the number of targets).
    #[arg(long)]
    pub capacity: u64,
    /// Sessions kept created ahead of requests.
    #[arg(long, default_value_t = 0)]
    pub reserved: u64,
    /// Seconds each session lasts.
    #[arg(long)]
    pub duration: Option<u64>,
    /// The workshop's title in the catalog.
    #[arg(long)]
    pub title: Option<String>,
    /// The workshop's description in the catalog.
    #[arg(long)]
    pub description: Option<String>,
    /// Do not verify https targets' certificates (self-signed apps).
    #[arg(long)]
    pub no_tls_verify: bool,
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

/// `--kind`: the API's `TokenKind`, as clap parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenKindArg {
    Readonly,
    Admin,
    /// For `sessiongate gateway`: the route stream and activity reports only.
    Gateway,
}

/// `--label key=value`: split at the first `=`, so values may hold one; the
/// key's own rules are the server's.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Parses `ctl`'s arguments on their own (`argv[0]` is the program name),
/// for tests that start from a command line.
#[cfg(test)]
pub(super) fn parse(argv: &[&str]) -> Result<CtlArgs, clap::Error> {
    use clap::FromArgMatches as _;
    let matches = command().try_get_matches_from(argv)?;
    CtlArgs::from_arg_matches(&matches)
}

#[cfg(test)]
fn command() -> clap::Command {
    CtlArgs::augment_args(clap::Command::new("ctl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        command().debug_assert();
    }

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("course=rust", Some(("course", "rust"))),
            ("k=v=w", Some(("k", "v=w"))),
            ("k=", Some(("k", ""))),
            ("=v", None),
            ("kv", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = parse_label(input).ok();
            let got = got.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
            assert_eq!(got, *want, "{input:?}");
        }
    }

    /// The integration tests cover a missing target, both targets and
    /// `--url --https`; these are the other tunnel-only flags and labels.
    #[test]
    fn tunnel_flags_refuse_a_link_and_labels_need_a_key() {
        let create = |args: &[&str]| {
            let mut argv = vec!["ctl", "sessions", "create", "x", "--owner", "ann"];
            argv.extend_from_slice(args);
            parse(&argv).map(|_| ())
        };
        assert!(create(&["--port", "1"]).is_ok());
        assert!(create(&["--url", "http://a/"]).is_ok());
        for bad in [
            &["--url", "http://a/", "--host", "h"][..],
            &["--url", "http://a/", "--no-tls-verify"],
            &["--port", "1", "--label", "=v"],
        ] {
            assert!(create(bad).is_err(), "{bad:?}");
        }
    }
}
