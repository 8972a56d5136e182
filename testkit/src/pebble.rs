//! A real ACME CA for tests: Debian's `pebble` (Let's Encrypt's test
//! server) and its `pebble-challtestsrv` as the DNS server pebble resolves
//! names with, both on loopback ports of their own. Every name resolves to
//! `127.0.0.1` unless a test points it elsewhere ([`Pebble::set_address`]),
//! so validations reach the gateway under test and nothing else.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port: bound, read, and released for a process that is
/// told to listen on it (pebble validates on fixed ports, so the gateway
/// under test must listen on ports chosen before either starts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// What pebble is started with.
#[derive(Clone, Debug)]
pub struct PebbleConfig {
    /// The certificate and key pebble's HTTPS (directory and management)
    /// serves, for `localhost`; its CA is what the client must trust.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where pebble sends HTTP-01 and TLS-ALPN-01 validations.
    pub http_port: u16,
    pub tls_port: u16,
    /// The lifetime of the certificates it issues.
    pub validity: Duration,
}

/// A running pebble and challtestsrv, killed when dropped.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// `https://localhost:PORT/dir`.
    pub directory_url: String,
    /// pebble's management interface (HTTPS): `/roots/0` is the root that
    /// its certificates chain to.
    pub management: SocketAddr,
    /// challtestsrv's management interface (plain HTTP).
    pub dns_management: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pebble {
    /// Starts challtestsrv, then pebble resolving through it, in `dir`.
    /// Panics (naming the package) where pebble is not installed.
    pub fn start(dir: &Path, config: &PebbleConfig) -> Pebble {
        assert!(
            Command::new("pebble").arg("-h").output().is_ok(),
            "pebble is not installed (apt-get install pebble)"
        );
        std::fs::create_dir_all(dir).expect("pebble's directory");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (dns_port, dns_management_port) = (free_port(), free_port());
        let mut dns = Command::new("pebble-challtestsrv");
        dns.args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-management",
            &format!("127.0.0.1:{dns_management_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]);
        let dns = spawn_logged(dns, "challtestsrv", &log);
        let (port, management_port) = (free_port(), free_port());
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": config.cert,
                "privateKey": config.key,
                "httpPort": config.http_port,
                "tlsPort": config.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": config.validity.as_secs(),
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, json.to_string()).expect("pebble's configuration");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleep before validating, no nonces refused at random,
            // no authorization reused (a refused challenge must be tried).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(dir);
        let pebble = spawn_logged(cmd, "pebble", &log);
        let me = Pebble {
            pebble,
            dns,
            directory_url: format!("https://localhost:{port}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            dns_management: SocketAddr::from(([127, 0, 0, 1], dns_management_port)),
            log,
        };
        for p in [port, management_port, dns_management_port] {
            wait_port(p, &me.log);
        }
        me
    }

    /// Makes `host` resolve to `ip` for pebble from now on.
    pub async fn set_address(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": host, "addresses": [ip] }).to_string();
        let req = format!(
            "POST /add-a HTTP/1.1\r\nHost: challtestsrv\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = crate::exchange(self.dns_management, req.as_bytes())
            .await
            .expect("challtestsrv answers");
        assert_eq!(resp.status, 200, "add-a: {}", resp.text());
    }

    /// What pebble and challtestsrv have written so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("pebble log:\n{}", self.log().join("\n"));
        }
    }
}

fn spawn_logged(mut cmd: Command, name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    let outputs: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    for out in outputs {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    l.push(format!("{name}: {line}"));
                }
            }
        });
    }
    child
}

fn wait_port(port: u16, log: &Arc<Mutex<Vec<String>>>) {
    let end = Instant::now() + crate::DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "pebble is not listening on {port}; log: {:#?}",
            log.lock().map(|l| l.clone()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
