//! `GET /api/v1/routes`: the table the gateway holds, with its version.

use axum::extract::State;
use axum::Json;
use gateway::RouteTarget;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Control, ErrorBody};
use crate::time::rfc3339_millis;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RoutesView {
    pub version: u64,
    pub base_domains: Vec<String>,
    pub portal_host: Option<String>,
    pub routes: Vec<RouteView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    /// `session:<name>` or `static:host:<host>` / `static:slug:<slug>`.
    pub id: String,
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
    pub slugs: Vec<String>,
    /// `http://host:port`, or null for a redirect.
    pub upstream: Option<String>,
    /// The external URL of a link route, or null.
    pub redirect: Option<String>,
    pub strip_prefix: bool,
    pub rewrite_host: bool,
    pub paused: bool,
    pub public: bool,
    /// RFC 3339, to within a second; null if it never served traffic.
    pub last_activity: Option<String>,
    pub upgraded_connections: usize,
}

#[utoipa::path(
    get, path = "/api/v1/routes", tag = "routes",
    responses(
        (status = 200, description = "The current route table", body = RoutesView),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_routes(State(cp): State<Control>) -> Json<RoutesView> {
    cp.gateways().collect_local();
    let table = cp.routes().current();
    // Live connections are held by the gateways; those in this process
    // are counted here.
    let local: Vec<_> = cp
        .gateways()
        .local()
        .iter()
        .map(|f| f.routes().current())
        .collect();
    let upgraded = |id: &str| -> usize {
        local
            .iter()
            .filter_map(|t| t.route(id))
            .map(|r| r.state.upgraded_count())
            .sum()
    };
    let mut routes: Vec<_> = table.routes().iter().collect();
    // The table's own order is its hash order; a listing reads better by id.
    routes.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Json(RoutesView {
        version: table.version(),
        base_domains: table.base_domains().map(str::to_string).collect(),
        portal_host: table.portal_host().map(str::to_string),
        routes: routes
            .into_iter()
            .map(|r| RouteView {
                id: r.id.to_string(),
                hosts: r.spec.hosts.clone(),
                labels: r.spec.labels.clone(),
                slugs: r.spec.slugs.clone(),
                upstream: match &r.target {
                    RouteTarget::Upstream(u) => Some(u.to_string()),
                    RouteTarget::Redirect(_) => None,
                },
                redirect: match &r.target {
                    RouteTarget::Redirect(url) => Some(url.to_string()),
                    RouteTarget::Upstream(_) => None,
                },
                strip_prefix: r.strip_prefix,
                rewrite_host: r.rewrite_host,
                paused: r.paused,
                public: r.public,
                last_activity: r.state.last_activity_ms().map(rfc3339_millis),
                upgraded_connections: upgraded(&r.id),
            })
            .collect(),
    })
}
