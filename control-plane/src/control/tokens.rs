//! API tokens: the admin token from the configuration, and the tokens made
//! through the API (read-only for dashboards, or admin), stored only as
//! hashes. The set the API checks against is swapped whole on a change, so
//! checking a request's token takes no lock.

use std::sync::Arc;

use super::ControlPlane;
use crate::auth::{self, TokenKind, TokenSet};
use crate::error::ControlError;
use crate::session::model;
use crate::store::{self, TokenRow};

impl ControlPlane {
    /// What the bearer token may do, if it is valid.
    pub fn check_token(&self, token: &str) -> Option<TokenKind> {
        self.tokens.load().check(token)
    }

    /// The kind of the token named `name` (`None`: the configuration's
    /// admin token), if it still exists.
    pub fn token_kind_of(&self, name: Option<&str>) -> Option<TokenKind> {
        self.tokens.load().kind_of(name)
    }

    /// The name of the gateway token `token`, if it is one (and still
    /// exists): what its gateway is listed as. No lock, no store: every ack
    /// and activity report asks.
    pub fn gateway_token_name(&self, token: &str) -> Option<Arc<str>> {
        match self.tokens.load().check_named(token) {
            Some((TokenKind::Gateway, name)) => name,
            _ => None,
        }
    }

    /// Creates a token; the plain token is returned this once.
    pub async fn create_token(
        &self,
        name: &str,
        kind: TokenKind,
    ) -> Result<(TokenRow, String), ControlError> {
        model::validate_name("name", name)?;
        let token = auth::random_token()?;
        let row = TokenRow {
            name: name.to_string(),
            kind: kind.as_str().to_string(),
            hash: auth::hash_token(&token),
            created_ms: self.now_ms(),
        };
        let mut tx = self.writes.begin().await?;
        if store::tokens_list(&mut tx)
            .await?
            .iter()
            .any(|t| t.name == name)
        {
            return Err(ControlError::Conflict(format!(
                "token {name:?} already exists"
            )));
        }
        store::token_insert(&mut tx, &row).await?;
        let _lock = tx.commit().await?;
        self.change_tokens(|set| set.add_named(row.hash.clone(), kind, name));
        tracing::info!(token = %name, kind = kind.as_str(), "api token created");
        Ok((row, token))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::tokens_list(&mut c).await?)
    }

    pub async fn delete_token(&self, name: &str) -> Result<(), ControlError> {
        let mut tx = self.writes.begin().await?;
        let row = store::tokens_list(&mut tx)
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ControlError::not_found("token", name))?;
        store::token_delete(&mut tx, name).await?;
        let _lock = tx.commit().await?;
        self.change_tokens(|set| set.remove(&row.hash));
        tracing::info!(token = %name, "api token deleted");
        Ok(())
    }

    /// Swaps in a changed copy of the token set. Called under the write
    /// lock, so no change is lost to another.
    fn change_tokens(&self, change: impl FnOnce(&mut TokenSet)) {
        let mut set = TokenSet::clone(&self.tokens.load());
        change(&mut set);
        self.tokens.store(Arc::new(set));
    }
}
