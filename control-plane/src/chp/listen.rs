//! The listeners of `sessiongate chp`: each of the public port, the API and
//! the metrics server is a TCP address or a unix socket (`--socket`,
//! `--api-socket`, `--metrics-socket`), and the first two may speak TLS
//! (`--ssl-*`, `--api-ssl-*`, with client certificates where asked).
//! Plus the plain-HTTP port that redirects to HTTPS (`--redirect-port`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::ChpError;

/// A bound listener.
pub enum Bound {
    Tcp(TcpListener),
    /// A unix socket, and its file, removed when this is dropped.
    Unix(UnixListener, SocketFile),
}

impl Bound {
    /// Where it listens, as CHP's start-up lines show it.
    pub fn shown(&self) -> String {
        match self {
            Bound::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Bound::Unix(_, f) => f.0.display().to_string(),
        }
    }

    /// The TCP port, if it is on one (the redirect needs it).
    pub fn port(&self) -> Option<u16> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Bound::Unix(..) => None,
        }
    }
}

/// A unix socket's file, removed when the listener goes, so that the next
/// start can bind it again.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The address for `ip` (`''` and `*` are every interface; a name is
/// resolved) and `port`.
async fn listen_addr(ip: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    match ip.unwrap_or("") {
        "" | "*" => Ok(SocketAddr::new(IpAddr::from([0u8; 16]), port)),
        ip => {
            if let Ok(a) = ip.trim_matches(['[', ']']).parse::<IpAddr>() {
                return Ok(SocketAddr::new(a, port));
            }
            tokio::net::lookup_host((ip, port))
                .await
                .map_err(|e| e.to_string())?
                .next()
                .ok_or_else(|| format!("{ip:?} resolves to no address"))
        }
    }
}

/// Binds `ip:port` over TCP.
pub async fn tcp(what: &'static str, ip: Option<&str>, port: u16) -> Result<Bound, ChpError> {
    let shown = format!("{}:{port}", ip.unwrap_or(""));
    let bind_error = |source| ChpError::Bind {
        what,
        addr: shown.clone(),
        source,
    };
    let addr = listen_addr(ip, port)
        .await
        .map_err(|e| bind_error(std::io::Error::other(e)))?;
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    })
    .map_err(bind_error)?;
    socket.listen(1024).map(Bound::Tcp).map_err(bind_error)
}

/// Binds the unix socket at `path`. A socket file left by a process that
/// is gone (nothing accepts on it) is replaced; one that a live process
/// serves is an error, as is any other file there.
pub async fn unix(what: &'static str, path: &Path) -> Result<Bound, ChpError> {
    let bind_error = |source| ChpError::Bind {
        what,
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(bind_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(bind_error(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is listening on it",
            )));
        }
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    Ok(Bound::Unix(listener, SocketFile(path.to_path_buf())))
}

/// The TLS acceptor for a listener: the certificate chain and key, and
/// client certificates required (chaining to `ca`, else Mozilla's roots)
/// when `request_cert`, as Node's `requestCert` with its default
/// `rejectUnauthorized`.
pub fn tls_acceptor(
    flag: &'static str,
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    request_cert: bool,
) -> Result<TlsAcceptor, ChpError> {
    let invalid = |e: certs::CertError| ChpError::Invalid {
        flag,
        message: e.to_string(),
    };
    let loaded = certs::LoadedCert::from_files("chp", cert, key).map_err(invalid)?;
    let store = certs::CertStore::new([loaded], Some("chp"));
    let resolver = Arc::new(certs::SniResolver::new(store));
    let clients = if request_cert {
        certs::ClientCerts::Required(ca)
    } else {
        certs::ClientCerts::None
    };
    let config = certs::server_config_with_client_certs(resolver, clients).map_err(invalid)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `bound`, through TLS when `tls` is given, until `stop`.
pub async fn serve_app(
    bound: Bound,
    tls: Option<TlsAcceptor>,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    what: &'static str,
) {
    let served = match (bound, tls) {
        (Bound::Tcp(l), None) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        (Bound::Tcp(l), Some(t)) => {
            axum::serve(TlsAccept::spawn(l, t), app)
                .with_graceful_shutdown(stop)
                .await
        }
        (Bound::Unix(l, _file), None) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        (Bound::Unix(l, _file), Some(t)) => {
            axum::serve(TlsAccept::spawn(l, t), app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(listener = what, error = %e, "listener failed");
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener for axum: connections are accepted by a task of their
/// own and each handshake runs in its own task, so that a slow client
/// holds up no one; finished handshakes queue for `accept`.
struct TlsAccept<S> {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<S>, String)>,
    shown: String,
}

impl<S> TlsAccept<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn spawn<L>(mut inner: L, acceptor: TlsAcceptor) -> TlsAccept<S>
    where
        L: axum::serve::Listener<Io = S>,
        L::Addr: std::fmt::Debug,
    {
        let shown = inner
            .local_addr()
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (io, addr) = inner.accept().await;
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, format!("{addr:?}"))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(client = ?addr, error = %e, "TLS handshake refused")
                        }
                        Err(_) => tracing::debug!(client = ?addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsAccept { ready, shown }
    }
}

impl<S> axum::serve::Listener for TlsAccept<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = tokio_rustls::server::TlsStream<S>;
    type Addr = String;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task is gone only with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.shown.clone())
    }
}

/// `--redirect-port`: every plain-HTTP request is answered `301` to
/// `https://<its host, without port>[:to]<its path>`, the port left out when
/// it is 443; a request without `Host` gets `400`, as CHP answers.
pub fn redirect_app(to: u16) -> Router {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    use http::StatusCode;
    Router::new().fallback(move |req: Request| async move {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let Some(host) = host else {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "This server is HTTPS-only on port {to}, but an HTTP request was made and the host could not be determined from the request."
                ),
            )
                .into_response();
        };
        // The host without its port; an IPv6 literal keeps its brackets.
        let name = match host.find(']') {
            Some(end) if host.starts_with('[') => &host[..=end],
            _ => host.split(':').next().unwrap_or(""),
        };
        let url = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = if to == 443 {
            format!("https://{name}{url}")
        } else {
            format!("https://{name}:{to}{url}")
        };
        match http::HeaderValue::from_str(&location) {
            Ok(v) => (StatusCode::MOVED_PERMANENTLY, [(http::header::LOCATION, v)]).into_response(),
            Err(_) => (StatusCode::BAD_REQUEST, "Host is not a valid header value").into_response(),
        }
    })
}
