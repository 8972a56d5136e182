//! The console's own operations (issue 19): one-time console links.

use super::ControlPlane;
use crate::auth::{self, TokenKind};
use crate::error::ControlError;
use crate::session::model;
use crate::store;

/// How long a console link may wait to be opened: as long as a portal's
/// user takes to click it, not long enough to sit in a mailbox.
pub const CONSOLE_LINK_SECS: u64 = 300;

impl ControlPlane {
    /// A one-time console link token for `user` (who must exist), and when
    /// it expires (Unix ms). Only its hash is stored.
    pub async fn create_console_link(&self, user: &str) -> Result<(String, u64), ControlError> {
        model::validate_user_name("user", user)?;
        let token = auth::random_token()?;
        let expires_ms = self.now_ms() + CONSOLE_LINK_SECS * 1000;
        let mut tx = self.writes.begin().await?;
        if !store::user_exists(&mut tx, user).await? {
            return Err(ControlError::not_found("user", user));
        }
        store::console_links_purge(&mut tx, self.now_ms()).await?;
        store::console_link_insert(&mut tx, &auth::hash_token(&token), user, expires_ms).await?;
        let _lock = tx.commit().await?;
        tracing::info!(user = %user, "console link made");
        Ok((token, expires_ms))
    }

    /// Takes a console link: its user, once; `None` for an unknown, used
    /// or expired token.
    pub async fn take_console_link(&self, token: &str) -> Result<Option<String>, ControlError> {
        let mut tx = self.writes.begin().await?;
        let user =
            store::console_link_take(&mut tx, &auth::hash_token(token), self.now_ms()).await?;
        let _lock = tx.commit().await?;
        Ok(user)
    }

    /// The URL of the console link `token`: on the portal host with
    /// `console.portal`, else on `host` (the host the request for it was
    /// sent to: this listener, where the console always is).
    pub fn console_link_url(&self, host: &str, token: &str) -> String {
        let a = &self.access;
        match &a.console_portal_host {
            Some(portal) => {
                let port = a.link_port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{}://{portal}{port}/ui/link/{token}", a.link_scheme)
            }
            None => format!("http://{host}/ui/link/{token}"),
        }
    }

    /// What `token` may do, and its name (`None`: the configuration's admin
    /// token), if it is one of ours.
    pub fn check_token_named(
        &self,
        token: &str,
    ) -> Option<(TokenKind, Option<std::sync::Arc<str>>)> {
        self.tokens.load().check_named(token)
    }
}

impl ControlPlane {
    /// Session `name`'s history, oldest first (the newest 200 lines).
    pub async fn session_history(&self, name: &str) -> Result<Vec<store::AuditRow>, ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::audit_list(&mut c, name, 200).await?)
    }
}
