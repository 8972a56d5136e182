//! configurable-http-proxy's command line (`bin/configurable-http-proxy`
//! 5.3.0, commander.js), as JupyterHub and its tests pass it: every flag in
//! section 2 of `CHP-COMPAT.md`, as `--flag value` or `--flag=value`.
//!
//! Written by hand rather than with clap because commander's rules are the
//! contract: an unknown flag exits 1 (clap exits 2), `--ip ''` is a value,
//! `--no-x-forward` is the negation of an option that is on by default, and
//! a malformed `--custom-header` says what commander's callback says.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChpArgs {
    /// `--ip`: `None` or `''`/`*` for all interfaces.
    pub ip: Option<String>,
    pub port: u16,
    pub socket: Option<PathBuf>,
    pub api_ip: String,
    /// `--api-port`; default `port + 1`.
    pub api_port: u16,
    pub api_socket: Option<PathBuf>,
    pub default_target: Option<String>,
    pub error_target: Option<String>,
    pub error_path: Option<PathBuf>,
    pub host_routing: bool,
    pub ssl_key: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_ca: Option<PathBuf>,
    /// `--ssl-request-cert`: clients of the public port must present a
    /// certificate chaining to `--ssl-ca` (Node's `requestCert`, whose
    /// `rejectUnauthorized` is on unless set to false, which the command
    /// line cannot do).
    pub ssl_request_cert: bool,
    pub api_ssl_key: Option<PathBuf>,
    pub api_ssl_cert: Option<PathBuf>,
    pub api_ssl_ca: Option<PathBuf>,
    /// `--api-ssl-request-cert`: as `ssl_request_cert`, for the API.
    pub api_ssl_request_cert: bool,
    /// `--api-ssl-reject-unauthorized`: what Node does anyway once a
    /// certificate is requested; kept to say it was given.
    pub api_ssl_reject_unauthorized: bool,
    pub client_ssl_key: Option<PathBuf>,
    pub client_ssl_cert: Option<PathBuf>,
    pub client_ssl_ca: Option<PathBuf>,
    pub log_level: String,
    /// `--timeout` (ms): a client socket idle this long is closed.
    pub timeout_ms: Option<u64>,
    /// `--proxy-timeout` (ms): no upstream answer within it is an error.
    pub proxy_timeout_ms: Option<u64>,
    pub keep_alive_timeout_ms: u64,
    /// On unless `--no-x-forward`.
    pub x_forward: bool,
    /// On unless `--no-prepend-path`.
    pub prepend_path: bool,
    /// On unless `--no-include-prefix`.
    pub include_prefix: bool,
    /// `--custom-header k:v`, in order (a repeated name: the last wins).
    pub custom_headers: BTreeMap<String, String>,
    pub redirect_port: Option<u16>,
    pub redirect_to: Option<u16>,
    pub pid_file: Option<PathBuf>,
    pub metrics_ip: String,
    pub metrics_port: Option<u16>,
    pub metrics_socket: Option<PathBuf>,
    pub insecure: bool,
    pub auto_rewrite: bool,
    pub change_origin: bool,
    pub protocol_rewrite: Option<String>,
    /// Flags accepted and ignored, as CHP ignores them too: each is warned
    /// about once at start.
    pub ignored: Vec<String>,
}

impl Default for ChpArgs {
    fn default() -> Self {
        ChpArgs {
            ip: None,
            port: 8000,
            socket: None,
            api_ip: "localhost".into(),
            api_port: 8001,
            api_socket: None,
            default_target: None,
            error_target: None,
            error_path: None,
            host_routing: false,
            ssl_key: None,
            ssl_cert: None,
            ssl_ca: None,
            api_ssl_key: None,
            api_ssl_cert: None,
            api_ssl_ca: None,
            ssl_request_cert: false,
            api_ssl_request_cert: false,
            api_ssl_reject_unauthorized: false,
            client_ssl_key: None,
            client_ssl_cert: None,
            client_ssl_ca: None,
            log_level: "info".into(),
            timeout_ms: None,
            proxy_timeout_ms: None,
            keep_alive_timeout_ms: 5000,
            x_forward: true,
            prepend_path: true,
            include_prefix: true,
            custom_headers: BTreeMap::new(),
            redirect_port: None,
            redirect_to: None,
            pid_file: None,
            metrics_ip: String::new(),
            metrics_port: None,
            metrics_socket: None,
            insecure: false,
            auto_rewrite: false,
            change_origin: false,
            protocol_rewrite: None,
            ignored: Vec::new(),
        }
    }
}

/// What parsing ends with when it does not give arguments to run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `-h`/`--help`: print this, exit 0.
    Help(String),
    /// `-V`/`--version`: print this, exit 0.
    Version(String),
    /// A usage error: print this on stderr, exit 1 (as commander does).
    Usage(String),
}

/// The flags that take a value.
const VALUED: &[&str] = &[
    "ip",
    "port",
    "socket",
    "api-ip",
    "api-port",
    "api-socket",
    "default-target",
    "error-target",
    "error-path",
    "ssl-key",
    "ssl-cert",
    "ssl-ca",
    "ssl-protocol",
    "ssl-ciphers",
    "ssl-dhparam",
    "api-ssl-key",
    "api-ssl-cert",
    "api-ssl-ca",
    "client-ssl-key",
    "client-ssl-cert",
    "client-ssl-ca",
    "log-level",
    "timeout",
    "proxy-timeout",
    "keep-alive-timeout",
    "custom-header",
    "redirect-port",
    "redirect-to",
    "pid-file",
    "metrics-ip",
    "metrics-port",
    "metrics-socket",
    "protocol-rewrite",
    "storage-backend",
];

/// The flags that take none.
const SWITCHES: &[&str] = &[
    "host-routing",
    "api-ssl-request-cert",
    "api-ssl-reject-unauthorized",
    "no-x-forward",
    "no-prepend-path",
    "no-include-prefix",
    "insecure",
    "auto-rewrite",
    "change-origin",
    "ssl-request-cert",
    "ssl-reject-unauthorized",
    "ssl-allow-rc4",
    "client-ssl-request-cert",
    "client-ssl-reject-unauthorized",
];

/// Accepted and ignored, with the reason the warning gives.
fn ignored_because(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "storage-backend" => "a JavaScript storage class: routes live in memory",
        "ssl-protocol" | "ssl-ciphers" | "ssl-allow-rc4" | "ssl-dhparam" => {
            "TLS 1.2 and 1.3 with rustls's safe defaults only"
        }
        "ssl-reject-unauthorized" => {
            "without --ssl-request-cert it has no effect, with it certificates are required anyway"
        }
        "client-ssl-request-cert" | "client-ssl-reject-unauthorized" => "no effect in CHP either",
        _ => return None,
    })
}

pub const USAGE: &str = "\
Usage: configurable-http-proxy [options]
       sessiongate chp [options]

configurable-http-proxy's command line, served by sessiongate's gateway.

Options:
  -V, --version                   output the version number
  --ip <ip-address>               Public-facing IP of the proxy ('' or * for all)
  --port <n>                      Public-facing port of the proxy (default 8000)
  --socket <path>                 Unix socket for the proxy instead of IP and port
  --api-ip <ip>                   Inward-facing IP for API requests (default localhost)
  --api-port <n>                  Inward-facing port for API requests (default --port + 1)
  --api-socket <path>             Unix socket for the API instead of IP and port
  --default-target <host>         Default proxy target (proto://host[:port])
  --error-target <host>           Server for error pages: GET <host>/<code>?url=...
  --error-path <path>             Directory of error pages: <code>.html or error.html
  --host-routing                  Use host routing (host as first level of path)
  --ssl-key <keyfile>             TLS key for the public port
  --ssl-cert <certfile>           TLS certificate for the public port
  --ssl-ca <ca-file>              CA of the public port's client certificates
  --ssl-request-cert              Require client certificates on the public port
  --api-ssl-key <keyfile>         TLS key for the API
  --api-ssl-cert <certfile>       TLS certificate for the API
  --api-ssl-ca <ca-file>          CA of API clients' certificates
  --api-ssl-request-cert          Require API clients' certificates (chaining to --api-ssl-ca)
  --api-ssl-reject-unauthorized   Refuse API clients without a valid certificate (the
                                  default once one is requested, as in Node)
  --client-ssl-key <keyfile>      Client key for https:// targets
  --client-ssl-cert <certfile>    Client certificate for https:// targets
  --client-ssl-ca <ca-file>       CA that https:// targets' certificates chain to
  --default-target <host>         Target of requests that match no route
  --redirect-port <port>          Redirect HTTP on this port to HTTPS
  --redirect-to <port>            HTTPS port that --redirect-port redirects to
  --pid-file <pid-file>           Write our PID to a file (removed on exit)
  --no-x-forward                  Don't add X-Forwarded-* headers
  --no-prepend-path               Don't prepend target paths to proxied requests
  --no-include-prefix             Don't include the routing prefix in proxied requests
  --auto-rewrite                  Rewrite the Location host/port of redirects
  --change-origin                 Send the target's host as Host
  --protocol-rewrite <proto>      Rewrite the Location protocol of redirects
  --custom-header <k:v>           Header to add to proxied requests (repeatable)
  --insecure                      Don't verify https:// targets' certificates
  --metrics-ip <ip>               IP of the metrics server (default all)
  --metrics-port <n>              Port of the metrics server (default none)
  --metrics-socket <path>         Unix socket of the metrics server
  --log-level <loglevel>          debug, info, warn or error (default info)
  --timeout <n>                   Client socket idle timeout (ms)
  --proxy-timeout <n>             Upstream answer timeout (ms)
  --keep-alive-timeout <n>        Keep-alive idle timeout (ms, default 5000)
  -h, --help                      display help for command

Accepted and ignored, as CHP ignores them too: --storage-backend, --ssl-protocol,
--ssl-ciphers, --ssl-allow-rc4, --ssl-dhparam, --ssl-reject-unauthorized,
--client-ssl-request-cert, --client-ssl-reject-unauthorized.

Environment: CONFIGPROXY_AUTH_TOKEN (the REST API's token; unset: the API is
not authenticated, with a warning).
";

/// Parses `args` (without the program name).
pub fn parse<I, S>(args: I) -> Result<ChpArgs, Exit>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut out = ChpArgs::default();
    let mut api_port = None;
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(Exit::Help(USAGE.to_string())),
            "-V" | "--version" => return Err(Exit::Version(crate::chp::CHP_VERSION.to_string())),
            _ => {}
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(Exit::Usage(format!(
                "error: too many arguments. Expected 0 arguments but got {arg:?}."
            )));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if SWITCHES.contains(&name) {
            if inline.is_some() {
                return Err(Exit::Usage(format!(
                    "error: option '--{name}' does not take a value"
                )));
            }
            set_switch(&mut out, name);
            continue;
        }
        if !VALUED.contains(&name) {
            return Err(Exit::Usage(format!("error: unknown option '--{name}'")));
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| {
                Exit::Usage(format!("error: option '--{name} <value>' argument missing"))
            })?,
        };
        if name == "api-port" {
            api_port = Some(number(name, &value)?);
            continue;
        }
        set_value(&mut out, name, value)?;
    }
    out.api_port = api_port.unwrap_or_else(|| out.port.saturating_add(1));
    check(&out)?;
    Ok(out)
}

fn set_switch(out: &mut ChpArgs, name: &str) {
    match name {
        "host-routing" => out.host_routing = true,
        "ssl-request-cert" => out.ssl_request_cert = true,
        "api-ssl-request-cert" => out.api_ssl_request_cert = true,
        "api-ssl-reject-unauthorized" => out.api_ssl_reject_unauthorized = true,
        "no-x-forward" => out.x_forward = false,
        "no-prepend-path" => out.prepend_path = false,
        "no-include-prefix" => out.include_prefix = false,
        "insecure" => out.insecure = true,
        "auto-rewrite" => out.auto_rewrite = true,
        "change-origin" => out.change_origin = true,
        other => {
            if ignored_because(other).is_some() && !out.ignored.iter().any(|i| i == other) {
                out.ignored.push(other.to_string());
            }
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, Exit> {
    // commander's parseInt takes a leading number ("8000abc" is 8000); a
    // value with none is a usage error here rather than NaN.
    let digits: String = value
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().map_err(|_| {
        Exit::Usage(format!(
            "error: option '--{name}': {value:?} is not a number"
        ))
    })
}

fn set_value(out: &mut ChpArgs, name: &str, value: String) -> Result<(), Exit> {
    let path = || PathBuf::from(&value);
    match name {
        "ip" => out.ip = Some(value),
        "port" => out.port = number(name, &value)?,
        "socket" => out.socket = Some(path()),
        "api-ip" => out.api_ip = value,
        "api-socket" => out.api_socket = Some(path()),
        "default-target" => out.default_target = Some(value),
        "error-target" => out.error_target = Some(value),
        "error-path" => out.error_path = Some(path()),
        "ssl-key" => out.ssl_key = Some(path()),
        "ssl-cert" => out.ssl_cert = Some(path()),
        "ssl-ca" => out.ssl_ca = Some(path()),
        "api-ssl-key" => out.api_ssl_key = Some(path()),
        "api-ssl-cert" => out.api_ssl_cert = Some(path()),
        "api-ssl-ca" => out.api_ssl_ca = Some(path()),
        "client-ssl-key" => out.client_ssl_key = Some(path()),
        "client-ssl-cert" => out.client_ssl_cert = Some(path()),
        "client-ssl-ca" => out.client_ssl_ca = Some(path()),
        "log-level" => out.log_level = value.to_ascii_lowercase(),
        "timeout" => out.timeout_ms = Some(number(name, &value)?),
        "proxy-timeout" => out.proxy_timeout_ms = Some(number(name, &value)?),
        "keep-alive-timeout" => out.keep_alive_timeout_ms = number(name, &value)?,
        "custom-header" => {
            let v = value.trim();
            match v.find(':') {
                Some(colon) if colon > 0 => {
                    out.custom_headers.insert(
                        v[..colon].trim().to_string(),
                        v[colon + 1..].trim().to_string(),
                    );
                }
                _ => {
                    return Err(Exit::Usage(format!(
                        "A colon was expected in custom header: {v}"
                    )))
                }
            }
        }
        "redirect-port" => out.redirect_port = Some(number(name, &value)?),
        "redirect-to" => out.redirect_to = Some(number(name, &value)?),
        "pid-file" => out.pid_file = Some(path()),
        "metrics-ip" => out.metrics_ip = value,
        "metrics-port" => out.metrics_port = Some(number(name, &value)?),
        "metrics-socket" => out.metrics_socket = Some(path()),
        "protocol-rewrite" => out.protocol_rewrite = Some(value),
        other => {
            if ignored_because(other).is_some() && !out.ignored.iter().any(|i| i == other) {
                out.ignored.push(other.to_string());
            }
        }
    }
    Ok(())
}

/// The combinations CHP refuses, with its messages.
fn check(a: &ChpArgs) -> Result<(), Exit> {
    if a.error_target.is_some() && a.error_path.is_some() {
        return Err(Exit::Usage(
            "Cannot specify both error-target and error-path. Pick one.".into(),
        ));
    }
    if a.redirect_port.is_some() && a.ssl_key.is_none() && a.ssl_cert.is_none() {
        return Err(Exit::Usage(
            "HTTPS redirection specified but certificates not provided.".into(),
        ));
    }
    if a.socket.is_some() && (a.ip.is_some() || a.port != 8000) {
        return Err(Exit::Usage(
            "error: option '--socket <path>' cannot be used with option '--port <n>' or '--ip <ip-address>'".into(),
        ));
    }
    Ok(())
}

/// Why each ignored flag is ignored, for the start-up warnings.
pub fn ignored_reason(flag: &str) -> &'static str {
    ignored_because(flag).unwrap_or("not supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(args: &[&str]) -> ChpArgs {
        parse(args.iter().copied()).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
    }

    fn usage(args: &[&str]) -> String {
        match parse(args.iter().copied()) {
            Err(Exit::Usage(m)) => m,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn jupyterhubs_default_command_line_parses_in_both_forms() {
        // What ConfigurableHTTPProxy.start passes by default.
        let a = ok(&[
            "--ip",
            "",
            "--port",
            "8000",
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            "8001",
            "--error-target",
            "http://127.0.0.1:8081/hub/error",
            "--log-level",
            "info",
        ]);
        assert_eq!(a.ip.as_deref(), Some(""));
        assert_eq!(
            (a.port, a.api_ip.as_str(), a.api_port),
            (8000, "127.0.0.1", 8001)
        );
        assert_eq!(
            a.error_target.as_deref(),
            Some("http://127.0.0.1:8081/hub/error")
        );
        let b = ok(&[
            "--ip=::",
            "--port=8000",
            "--log-level=debug",
            "--api-port=9000",
        ]);
        assert_eq!(
            (b.ip.as_deref(), b.port, b.api_port),
            (Some("::"), 8000, 9000)
        );
        assert_eq!(b.log_level, "debug");
    }

    #[test]
    fn the_api_port_defaults_to_the_port_plus_one_and_switches_negate() {
        let a = ok(&[
            "--port",
            "9000",
            "--no-x-forward",
            "--no-prepend-path",
            "--no-include-prefix",
            "--host-routing",
        ]);
        assert_eq!(a.api_port, 9001);
        assert!(!a.x_forward && !a.prepend_path && !a.include_prefix && a.host_routing);
        let d = ok(&[]);
        assert_eq!(
            (d.port, d.api_port, d.api_ip.as_str()),
            (8000, 8001, "localhost")
        );
        assert!(d.x_forward && d.prepend_path && d.include_prefix);
    }

    #[test]
    fn custom_headers_are_trimmed_and_a_missing_colon_is_refused() {
        let a = ok(&["--custom-header", " k1 : v1 ", "--custom-header=k2:v:2"]);
        assert_eq!(a.custom_headers.get("k1").map(String::as_str), Some("v1"));
        assert_eq!(a.custom_headers.get("k2").map(String::as_str), Some("v:2"));
        assert_eq!(
            usage(&["--custom-header", "novalue"]),
            "A colon was expected in custom header: novalue"
        );
        assert!(usage(&["--custom-header", ":v"]).contains("colon"));
    }

    #[test]
    fn unknown_flags_missing_values_and_conflicts_are_usage_errors() {
        assert_eq!(usage(&["--bogus"]), "error: unknown option '--bogus'");
        assert!(usage(&["--port"]).contains("argument missing"));
        assert!(usage(&["--port", "x"]).contains("not a number"));
        assert!(usage(&["--host-routing=yes"]).contains("does not take a value"));
        assert_eq!(
            usage(&["--error-target", "http://a", "--error-path", "/tmp"]),
            "Cannot specify both error-target and error-path. Pick one."
        );
        assert!(usage(&["--redirect-port", "80"]).contains("certificates not provided"));
        assert!(usage(&["stray"]).contains("too many arguments"));
    }

    #[test]
    fn ignored_flags_are_accepted_and_listed_once() {
        let a = ok(&[
            "--storage-backend",
            "./x.js",
            "--ssl-protocol=TLSv1_2",
            "--ssl-allow-rc4",
            "--client-ssl-request-cert",
            "--ssl-allow-rc4",
        ]);
        assert_eq!(
            a.ignored,
            [
                "storage-backend",
                "ssl-protocol",
                "ssl-allow-rc4",
                "client-ssl-request-cert"
            ]
        );
        assert!(ignored_reason("storage-backend").contains("memory"));
    }

    #[test]
    fn help_and_version_end_parsing() {
        assert!(matches!(parse(["-h"]), Err(Exit::Help(h)) if h.contains("--host-routing")));
        assert!(
            matches!(parse(["--version"]), Err(Exit::Version(v)) if v == crate::chp::CHP_VERSION)
        );
    }
}
