//! The OpenAPI document, generated from the handlers' annotations and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{access, directory, environments, gateway, routes, sessions, workshop};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiongate control plane",
        description = "Sessions, users, groups and routes. Every /api/v1 endpoint needs \
            `Authorization: Bearer <token>`; a read-only token may only GET."
    ),
    paths(
        sessions::list_sessions,
        sessions::create_session,
        sessions::get_session,
        sessions::patch_session,
        sessions::patch_sessions,
        sessions::delete_session,
        sessions::session_action,
        sessions::set_groups,
        sessions::bulk_action,
        access::create_access,
        access::create_client_cert,
        access::rotate_keys,
        environments::list_environments,
        environments::create_environment,
        environments::get_environment,
        environments::patch_environment,
        environments::stop_environment,
        environments::delete_environment,
        workshop::token,
        workshop::revoke_token,
        workshop::request,
        workshop::activate,
        workshop::user_sessions,
        workshop::catalog,
        workshop::catalog_workshops,
        workshop::environment_status,
        workshop::session_schedule,
        workshop::session_extend,
        workshop::session_terminate,
        directory::list_users,
        directory::create_user,
        directory::get_user,
        directory::console_link,
        directory::update_user,
        directory::delete_user,
        directory::list_groups,
        directory::create_group,
        directory::get_group,
        directory::delete_group,
        directory::get_members,
        directory::set_members,
        directory::add_member,
        directory::remove_member,
        directory::list_tokens,
        directory::create_token,
        directory::delete_token,
        routes::list_routes,
        gateway::list_gateways,
        gateway::stream,
        gateway::ack,
        gateway::activity,
        gateway::activate,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "sessions", description = "Sessions and their lifecycle"),
        (name = "users", description = "People who own and open sessions"),
        (name = "groups", description = "Groups sessions are shared with"),
        (name = "tokens", description = "API tokens (admin and read-only)"),
        (name = "routes", description = "The gateway's route table"),
        (name = "access", description = "Browser access: one-time access links, cookie keys"),
        (name = "environments", description = "Workshop environments: a workshop, a pool of backends, capacity"),
        (name = "workshop", description = "The training portal's API, on the portal host and this listener"),
        (name = "gateways", description = "Gateways that follow this control plane: the route stream, their acks, activity and access links (gateway tokens only), and their status"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
