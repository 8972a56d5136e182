//! The `sessiongate` binary: command-line parsing, logging, wiring.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use control_plane::config::{Config, LogFormat};
use control_plane::ctl;
use control_plane::serve::{Mode, Server};

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "A reverse-proxy gateway for interactive sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and the control plane in one process.
    ///
    /// Without --config it runs on embedded defaults: gateway on
    /// 127.0.0.1:8080 (sessions at http://<name>.localhost:8080/), control
    /// plane on 127.0.0.1:9090, data in ./data. Every configuration key can be
    /// overridden by SESSIONGATE_<SECTION>_<KEY> (for example
    /// SESSIONGATE_GATEWAY_HTTP_LISTEN=0.0.0.0:8080). The admin token comes
    /// from SESSIONGATE_ADMIN_TOKEN, or is generated into <data_dir>/admin-token.
    /// SIGHUP, or a change to the file, reloads the static routes; SIGTERM or
    /// Ctrl-C stops accepting and drains in-flight requests.
    Serve {
        /// TOML configuration file.
        #[arg(long, short = 'c', env = "SESSIONGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Log format: `text` (for people) or `json` (one object per line).
        /// Same as SESSIONGATE_LOG_FORMAT; overrides log.format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// No access-log line per request. Same as
        /// SESSIONGATE_LOG_ACCESS_LOG=false; overrides log.access_log.
        #[arg(long)]
        no_access_log: bool,
        /// The store: empty for SQLite at <data_dir>/sessiongate.db (the
        /// default), sqlite://PATH for another file, or
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (also postgresql://,
        /// with libpq options such as ?sslmode=require) for PostgreSQL.
        /// Migrations run at start. Same as control_plane.database and
        /// SESSIONGATE_CONTROL_PLANE_DATABASE, which it overrides. Other
        /// users can read a command line (ps): put a password in the file
        /// or the environment instead.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Run the control plane alone: the API, the store, the reaper and the
    /// route stream that gateways follow. No gateway listeners.
    ///
    /// Same configuration file and environment as `serve`. Keys of
    /// [gateway] that only a gateway reads (http_listen, https_listen,
    /// admin_listen, control_plane_url, data_dir, the connection limits and
    /// timeouts, trusted_proxies) are ignored here, with a warning naming
    /// each, so that one file can serve both; base_domains and portal_host
    /// are the control plane's and travel to the gateways. Access links
    /// carry gateway.http_listen's port (or access.link_port): the port
    /// browsers reach the gateways on.
    ControlPlane {
        /// TOML configuration file.
        #[arg(long, short = 'c', env = "SESSIONGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Log format: `text` or `json`; overrides log.format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// The store: empty for SQLite at <data_dir>/sessiongate.db (the
        /// default), sqlite://PATH for another file, or
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (also postgresql://,
        /// with libpq options such as ?sslmode=require) for PostgreSQL.
        /// Migrations run at start. Same as control_plane.database and
        /// SESSIONGATE_CONTROL_PLANE_DATABASE, which it overrides. Other
        /// users can read a command line (ps): put a password in the file
        /// or the environment instead.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Run a gateway that follows a control plane over its route stream.
    ///
    /// It serves the HTTP and HTTPS listeners as `serve` does, and an admin
    /// listener (gateway.admin_listen, default 127.0.0.1:9091) with
    /// /metrics, /healthz and /readyz (503 until it holds a route table).
    /// It authenticates with a gateway token from SESSIONGATE_GATEWAY_TOKEN
    /// (`sessiongate ctl tokens create NAME --kind gateway`). It keeps the
    /// last table in <gateway.data_dir>/gateway-table.json and serves it at
    /// once on start, and while the control plane is away; it reconnects
    /// with backoff and resumes from the version it holds.
    Gateway {
        /// TOML configuration file.
        #[arg(long, short = 'c', env = "SESSIONGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The control plane's URL: the one `ctl --server` takes (its API
        /// listener, control_plane.listen). Several, comma-separated, for
        /// control-plane replicas: it follows one and moves to the next when
        /// that one fails. Also gateway.control_plane_url and
        /// SESSIONGATE_GATEWAY_CONTROL_PLANE_URL.
        #[arg(long)]
        control_plane: Option<String>,
        /// Log format: `text` or `json`; overrides log.format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// No access-log line per request; overrides log.access_log.
        #[arg(long)]
        no_access_log: bool,
    },
    /// Operate a running sessiongate through its REST API.
    Ctl(ctl::CtlArgs),
    /// TLS certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// configurable-http-proxy's command line and REST API, for JupyterHub
    /// (`sessiongate chp --help` lists CHP's flags). The binary does the
    /// same when it is invoked as `configurable-http-proxy` (a symlink):
    /// `c.ConfigurableHTTPProxy.command = ["sessiongate", "chp"]` in
    /// jupyterhub_config.py, or the symlink first on JupyterHub's PATH.
    #[command(disable_help_flag = true)]
    Chp {
        /// configurable-http-proxy's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA (DIR/ca.crt, DIR/ca.key) and a certificate for
    /// DOMAIN and *.DOMAIN signed by it (DIR/DOMAIN.crt, DIR/DOMAIN.key).
    ///
    /// An existing CA in DIR is reused, so browsers that trust it keep
    /// trusting new certificates. Point tls.certs_dir at DIR to serve them,
    /// and trust DIR/ca.crt in the browser, or `curl --cacert DIR/ca.crt`.
    Dev {
        #[arg(long)]
        domain: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print how to trust the development CA: the system store (Debian,
    /// Fedora, macOS), Chromium's and Firefox's NSS databases, and curl.
    ///
    /// The CA is `ca.crt` in the certificates directory (`tls.certs_dir`,
    /// by default `<data_dir>/certs`) of the configuration, or --ca.
    Trust {
        /// The CA certificate (PEM); default: ca.crt in the certificates
        /// directory that --config (or the embedded defaults) names.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The configuration file whose certificates directory holds the CA.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also install it in the system store, where update-ca-certificates
        /// or update-ca-trust is here (as root).
        #[arg(long)]
        install: bool,
    },
}

fn main() -> ExitCode {
    // JupyterHub (and its tests) start `configurable-http-proxy` by name.
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked_as == "configurable-http-proxy" {
        return run_chp(argv.collect());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            log_format,
            no_access_log,
            database,
        } => {
            set_database_env(database);
            // The flags act as their environment variables, so that the
            // configuration reloader, which re-reads the environment, sees
            // them too. Still one thread here: nothing else reads the
            // environment yet.
            if let Some(f) = log_format {
                let name = match f {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                };
                std::env::set_var("SESSIONGATE_LOG_FORMAT", name);
            }
            if no_access_log {
                std::env::set_var("SESSIONGATE_LOG_ACCESS_LOG", "false");
            }
            let cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cfg.log.format);
            match run_serve(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sessiongate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ControlPlane {
            config,
            log_format,
            database,
        } => {
            set_log_env(log_format, false);
            set_database_env(database);
            let cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cfg.log.format);
            for key in
                control_plane::config::ignored_gateway_keys(config.as_deref(), std::env::vars())
            {
                tracing::warn!(key = %key, "ignored by sessiongate control-plane: only a gateway reads it");
            }
            let run = |cfg: Config| async move {
                let server = Server::bind_mode(cfg, config, Mode::ControlPlane).await?;
                server.run(shutdown_signal()).await?;
                Ok::<_, anyhow::Error>(())
            };
            finish(run_on_runtime(run(cfg)))
        }
        Command::Gateway {
            config,
            control_plane,
            log_format,
            no_access_log,
        } => {
            set_log_env(log_format, no_access_log);
            let cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    return ExitCode::from(2);
                }
            };
            let url = control_plane
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| cfg.gateway.control_plane_url.trim().to_string());
            if url.is_empty() {
                eprintln!("sessiongate gateway: no control plane: pass --control-plane URL (or set gateway.control_plane_url, or SESSIONGATE_GATEWAY_CONTROL_PLANE_URL)");
                return ExitCode::from(2);
            }
            let token = std::env::var(control_plane::follow::GATEWAY_TOKEN_ENV).unwrap_or_default();
            if token.trim().is_empty() {
                eprintln!(
                    "sessiongate gateway: no token: set {} to a gateway token (sessiongate ctl tokens create NAME --kind gateway)",
                    control_plane::follow::GATEWAY_TOKEN_ENV
                );
                return ExitCode::from(2);
            }
            init_logging(cfg.log.format);
            let run = |cfg: Config| async move {
                control_plane::follow::run(cfg, &url, token.trim().to_string(), shutdown_signal())
                    .await?;
                Ok::<_, anyhow::Error>(())
            };
            finish(run_on_runtime(run(cfg)))
        }
        // No logging: ctl's output is its tables and its one-line errors.
        Command::Ctl(args) => run_ctl(args),
        Command::Certs(CertsCommand::Dev { domain, out }) => {
            match control_plane::certs_dev(&domain, &out) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sessiongate certs dev: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Certs(CertsCommand::Trust {
            ca,
            config,
            install,
        }) => {
            let ca = match ca {
                Some(ca) => ca,
                None => match Config::load(config.as_deref(), std::env::vars()) {
                    Ok(cfg) => cfg.certs_dir().join("ca.crt"),
                    Err(e) => {
                        eprintln!("sessiongate certs trust: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            match control_plane::trust::certs_trust(&ca, install) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sessiongate certs trust: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Chp { args } => run_chp(args),
    }
}

/// Runs a `ctl` command on a current-thread runtime: it makes one request at
/// a time, so more threads would only cost start-up time.
fn run_ctl(args: ctl::CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiongate ctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match rt.block_on(ctl::run(args, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        // `ctl ... | head`: the reader has what it wanted.
        Err(ctl::CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sessiongate ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--log-format` and `--no-access-log` act as their environment
/// variables (read before any other thread starts).
fn set_log_env(log_format: Option<LogFormat>, no_access_log: bool) {
    if let Some(f) = log_format {
        let name = match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        std::env::set_var("SESSIONGATE_LOG_FORMAT", name);
    }
    if no_access_log {
        std::env::set_var("SESSIONGATE_LOG_ACCESS_LOG", "false");
    }
}

/// `sessiongate chp` (or the binary as `configurable-http-proxy`): CHP's
/// exit codes: 1 for a usage error or a listener that cannot bind.
fn run_chp(args: Vec<String>) -> ExitCode {
    let parsed = match control_plane::chp::args::parse(args) {
        Ok(a) => a,
        Err(control_plane::chp::Exit::Help(h)) => {
            print!("{h}");
            return ExitCode::SUCCESS;
        }
        Err(control_plane::chp::Exit::Version(v)) => {
            println!("{v}");
            return ExitCode::SUCCESS;
        }
        Err(control_plane::chp::Exit::Usage(m)) => {
            eprintln!("{m}");
            return ExitCode::from(1);
        }
    };
    let level = match parsed.log_level.as_str() {
        "debug" => "debug",
        "warn" => "warn",
        "error" => "error",
        _ => "info",
    };
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", level);
    }
    init_logging(LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiongate chp: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(control_plane::chp::run(parsed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sessiongate chp: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--database` acts as SESSIONGATE_CONTROL_PLANE_DATABASE (set before
/// any other thread starts), as the log flags act as theirs.
fn set_database_env(database: Option<String>) {
    if let Some(url) = database {
        std::env::set_var("SESSIONGATE_CONTROL_PLANE_DATABASE", url);
    }
}

fn run_on_runtime(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(f)
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let server = Server::bind(config, path).await?;
        server.run(shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            // Colours only for a person at a terminal, never in files or journald.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        // One object per line; the event's fields at the top level, so that
        // shippers see `status`, `path`… without digging, and the request
        // span (with its `id`) under `span`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
