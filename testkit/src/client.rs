//! A raw HTTP/1.1 client, written by hand so that a test sees exactly what
//! went over the wire: one request per fresh connection (`Connection:
//! close`), the response read off the socket as it came.
//!
//! [`Endpoints`] puts it in front of a running sessiongate, in this process
//! or a child.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::wait::DEADLINE;

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name`, in order (`Set-Cookie` comes once
    /// per cookie).
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) on a fresh
/// connection and reads one response: the body by `Content-Length`, by
/// chunks, or to the end of the stream.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let s = TcpStream::connect(addr).await?;
    exchange_on(s, addr, request).await
}

/// As [`exchange`], from the local address `from` (any `127.x.y.z` reaches
/// a loopback listener), for tests of what a server does per client
/// address.
pub async fn exchange_from(
    from: IpAddr,
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<RawResponse> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    let s = socket.connect(addr).await?;
    exchange_on(s, addr, request).await
}

async fn exchange_on(
    mut s: TcpStream,
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<RawResponse> {
    s.write_all(request).await?;
    tokio::time::timeout(DEADLINE, read_response(&mut s))
        .await
        .map_err(|_| std::io::Error::other(format!("{addr}: no answer within {DEADLINE:?}")))?
}

async fn read_response(s: &mut TcpStream) -> std::io::Result<RawResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before the end of the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed before the end of the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        s.read_to_end(&mut rest).await?;
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(&rest).ok_or_else(|| bad("bad chunked body"))?
        } else {
            rest
        }
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// One GET over a fresh connection, with extra header lines (each ending in
/// `\r\n`); returns status and body.
pub async fn http(addr: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    let resp = exchange(addr, req.as_bytes()).await.unwrap();
    (resp.status, resp.text())
}

/// One JSON API request; `token: None` sends no `Authorization` header. The
/// body comes back as JSON, or as a JSON string when it is not JSON, or
/// `null` when empty (204).
pub async fn api_request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let resp = exchange(addr, req.as_bytes()).await?;
    let text = resp.text();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((resp.status, json))
}

/// Where a running sessiongate answers and its admin token. Both harnesses
/// (in process, and the binary as a child in the control plane's tests)
/// dereference to it, so a test's helpers take `&Endpoints` and work
/// against either.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The data plane.
    pub gateway: SocketAddr,
    /// The control-plane API.
    pub api: SocketAddr,
    /// The HTTPS listener, when there is one.
    pub https: Option<SocketAddr>,
    /// The admin token, or empty when the server generated its own.
    pub token: String,
}

/// The body of `POST /api/v1/sessions` that creates a public session `name`
/// of the user `ann` for the origin on `127.0.0.1:<port>`: no access check,
/// so a plain client reaches it.
pub fn public_session(name: &str, port: u16) -> Value {
    serde_json::json!({"name": name, "owner": "ann", "public": true,
           "remote_host": "127.0.0.1", "remote_port": port})
}

impl Endpoints {
    /// A request to the API with the admin token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_with_token(Some(&self.token), method, path, body)
            .await
    }

    /// Creates the user `ann` and her public session `name` to loopback
    /// `port` ([`crate::server::public_session`]); fails the test on any
    /// other answer than 201.
    pub async fn ann_public_session(&self, name: &str, port: u16) {
        let (s, v) = self
            .api(
                "POST",
                "/api/v1/users",
                Some(serde_json::json!({"name": "ann"})),
            )
            .await;
        assert!(s == 201 || s == 409, "creating ann: {s} {v}");
        let body = public_session(name, port);
        let (s, v) = self.api("POST", "/api/v1/sessions", Some(body)).await;
        assert_eq!(s, 201, "creating session {name}: {v}");
    }

    /// A request to the API with another token, or none.
    pub async fn api_with_token(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_request(self.api, token, method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The gateway's answer for `http://<session>.localhost/`.
    pub async fn open(&self, session: &str) -> (u16, String) {
        http(self.gateway, &format!("{session}.localhost"), "/", "").await
    }

    /// The API's base URL, as `ctl --server` takes it.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
}
