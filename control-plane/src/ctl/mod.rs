//! `sessiongate ctl`: the operator CLI over the REST API.
//!
//! Every command is one API request; the server does all the validation, so
//! the CLI and the API can never disagree about what is allowed. Requests
//! are the API's own request types and answers its own response types, so a
//! change to the API that the CLI does not follow fails to compile here
//! rather than at an operator's prompt. The output is a human table by
//! default (or `key: value` lines for one thing), and the server's own JSON,
//! pretty-printed, with `--output json`, so that scripts see exactly what the
//! API answered.
//!
//! Failures are one line, `sessiongate ctl: <reason>`, and exit status 1
//! (printed by `main`); the reason of an API error is its status, code and
//! message, as the server wrote them.
//!
//! # Layout
//! - `args`: the command line (clap): [`CtlArgs`] and a type per command group.
//! - `commands`: a function per command group: arguments → the API's request
//!   type → one request → the answer printed.
//! - `client`: the HTTP client: base URL, token, timeouts, size limit, the
//!   server's errors as [`CtlError`], answers kept as text and parsed on demand.
//! - `render`: tables and details from the typed answers; the re-indented JSON.

mod args;
pub(crate) mod client;
mod commands;
mod render;

pub use args::{
    CreateEnvironment, CreateSession, CtlArgs, CtlCommand, EnvironmentsCommand, GroupsCommand,
    Names, Output, Paging, SessionsCommand, TokenKindArg, TokensCommand, UsersCommand,
};

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
    /// An answer that is not what the API sends: not JSON, or not the type
    /// the endpoint documents.
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
    let api = client::ApiClient::new(&args.server, args.token.as_deref())?;
    let mut text = String::new();
    let result = commands::execute(&api, args.command, args.output, &mut text).await;
    // A bulk action that partly failed still prints what happened to each.
    out.write_all(text.as_bytes())?;
    out.flush()?;
    result
}
