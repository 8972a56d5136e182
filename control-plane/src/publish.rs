//! Sessions → routes: what the gateway's table holds for each session.
//!
//! A session is routed while it is live: running, paused (answers 503), or
//! pending or evicted (only its access link is served, so that opening the
//! link can activate it). Its route id is `session:<name>`, so per-route
//! activity and live connections follow it across updates. Every session
//! route carries its access list, so a private one lets in the owner and
//! the members of its groups as they are at this version of the table.

use std::sync::Arc;

use gateway::headers::AddedHeaders;
use gateway::{RouteSpec, RouteTarget, Upstream};
use http::header::{HeaderName, HeaderValue};

use crate::access::{access_list, GroupCache};
use crate::session::lifecycle::SessionState;
use crate::session::model::{
    parameter_header, SessionKind, SessionRecord, PARAMETER_HEADER_PREFIX,
};

pub const SESSION_ROUTE_PREFIX: &str = "session:";

pub fn route_id(name: &str) -> Arc<str> {
    format!("{SESSION_ROUTE_PREFIX}{name}").into()
}

/// The session name of a session route id.
pub fn session_name(route_id: &str) -> Option<&str> {
    route_id.strip_prefix(SESSION_ROUTE_PREFIX)
}

/// Why a stored session has no route: a record that validation should have
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteSpecError {
    #[error("a tunnel session without remote_port")]
    MissingPort,
    #[error("a link session without url")]
    MissingUrl,
    #[error(transparent)]
    Upstream(#[from] gateway::UpstreamError),
    #[error("request parameter {0:?} cannot travel in a header")]
    Parameter(String),
    #[error(transparent)]
    AddedHeader(#[from] gateway::headers::AddedHeaderError),
}

/// The route for `s`, or `None` if the gateway should not route it.
/// Fails only on a record that validation should have refused.
pub fn route_spec(
    s: &SessionRecord,
    groups: &GroupCache,
) -> Result<Option<RouteSpec>, RouteSpecError> {
    if !s.state.is_live() {
        return Ok(None);
    }
    let target = route_target(s)?;
    Ok(Some(RouteSpec {
        id: route_id(&s.name),
        hosts: s.custom_domain.iter().cloned().collect(),
        labels: vec![s.name.clone()],
        slugs: s.slug.iter().cloned().collect(),
        target,
        strip_prefix: s.strip_prefix,
        rewrite_host: s.rewrite_host,
        paused: s.state == SessionState::Paused,
        public: s.public,
        access: Some(access_list(s, groups)),
        inactive: matches!(s.state, SessionState::Pending | SessionState::Evicted),
        tls_verify: s.tls_verify,
        allow_any_upgrade: s.allow_any_upgrade,
        request_headers: parameter_headers(s)?,
        target_path: None,
        workspace_port: s.workspace_port.filter(|&p| p != 0),
    }))
}

/// The headers that carry `s`'s request parameters to its backend, when
/// its environment says so (`parameter_headers`): one
/// `X-Workshop-Param-<name>` per parameter, and every client header under
/// that prefix removed, whether or not the session has parameters, so that
/// the backend can trust what it reads there. The request endpoint checked
/// names and values; one that fails here is a corrupt record.
fn parameter_headers(s: &SessionRecord) -> Result<Option<Arc<AddedHeaders>>, RouteSpecError> {
    if !s.parameter_headers {
        return Ok(None);
    }
    let headers = s
        .parameters
        .iter()
        .map(|p| {
            let bad = || RouteSpecError::Parameter(p.name.clone());
            let name =
                HeaderName::from_bytes(parameter_header(&p.name).as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&p.value).map_err(|_| bad())?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, RouteSpecError>>()?;
    Ok(Some(Arc::new(AddedHeaders::new(
        Some(PARAMETER_HEADER_PREFIX),
        headers,
    )?)))
}

/// Where `s`'s route sends its traffic: its upstream, or its link's URL.
pub fn route_target(s: &SessionRecord) -> Result<RouteTarget, RouteSpecError> {
    Ok(match s.kind {
        SessionKind::Tunnel => {
            let host = s.remote_host.as_deref().unwrap_or("localhost");
            let port = s.remote_port.ok_or(RouteSpecError::MissingPort)?;
            let scheme = if s.https { "https" } else { "http" };
            let url = if host.contains(':') {
                format!("{scheme}://[{host}]:{port}")
            } else {
                format!("{scheme}://{host}:{port}")
            };
            RouteTarget::Upstream(Upstream::parse(&url)?)
        }
        SessionKind::Link => {
            RouteTarget::Redirect(s.url.as_deref().ok_or(RouteSpecError::MissingUrl)?.into())
        }
    })
}
