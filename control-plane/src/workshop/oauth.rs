//! `/oauth2/token/` for the training portal's API: one client and its
//! robot account (the `[workshop]` settings), the password and refresh
//! grants, and the access tokens they issue, stored only as hashes.

use super::portal::{OAuthClient, OAuthError, TokenAnswer};
use super::Portal;
use crate::auth;
use crate::error::ControlError;
use crate::store;

impl Portal {
    /// The password grant: client credentials and the robot account, each
    /// compared in constant time.
    pub async fn oauth_password_grant(
        &self,
        client: (&str, &str),
        username: &str,
        password: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        let oauth = self.check_client(client)?;
        let user_ok = auth::constant_time_eq(username.as_bytes(), oauth.robot_username.as_bytes());
        let pass_ok = auth::constant_time_eq(password.as_bytes(), oauth.robot_password.as_bytes());
        if !(user_ok & pass_ok) {
            return Err(OAuthError::InvalidGrant);
        }
        self.issue_tokens(username).await
    }

    /// The refresh grant: the refresh token is used once.
    pub async fn oauth_refresh_grant(
        &self,
        client: (&str, &str),
        refresh_token: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        self.check_client(client)?;
        let now = self.control.now_ms();
        let hash = auth::hash_token(refresh_token);
        let user = {
            let mut tx = self.control.writes().begin().await?;
            let user = store::oauth_token_user(&mut tx, &hash, "refresh", now).await?;
            store::oauth_token_delete(&mut tx, &hash, now).await?;
            tx.commit().await?;
            user
        };
        match user {
            Some(u) => self.issue_tokens(&u).await,
            None => Err(OAuthError::InvalidGrant),
        }
    }

    fn check_client(&self, (id, secret): (&str, &str)) -> Result<OAuthClient, OAuthError> {
        let Some(oauth) = self.settings.oauth.clone() else {
            return Err(OAuthError::InvalidClient);
        };
        let id_ok = auth::constant_time_eq(id.as_bytes(), oauth.client_id.as_bytes());
        let secret_ok = auth::constant_time_eq(secret.as_bytes(), oauth.client_secret.as_bytes());
        if id_ok & secret_ok {
            Ok(oauth)
        } else {
            Err(OAuthError::InvalidClient)
        }
    }

    async fn issue_tokens(&self, username: &str) -> Result<TokenAnswer, OAuthError> {
        let now = self.control.now_ms();
        let ttl = self.settings.token_ttl_secs;
        let access = auth::random_token()?;
        let refresh = auth::random_token()?;
        let mut tx = self.control.writes().begin().await?;
        store::oauth_token_insert(
            &mut tx,
            &auth::hash_token(&access),
            "access",
            username,
            now + ttl * 1000,
        )
        .await?;
        // A refresh token outlives its access token (here: ten times over).
        store::oauth_token_insert(
            &mut tx,
            &auth::hash_token(&refresh),
            "refresh",
            username,
            now + ttl * 10_000,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(user = %username, "workshop API token issued");
        Ok(TokenAnswer {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token: refresh,
            scope: "user:info".into(),
        })
    }

    /// Whether `token` is an unexpired OAuth2 access token.
    pub async fn check_oauth_token(&self, token: &str) -> Result<bool, ControlError> {
        let mut c = self.control.store().conn().await?;
        Ok(store::oauth_token_user(
            &mut c,
            &auth::hash_token(token),
            "access",
            self.control.now_ms(),
        )
        .await?
        .is_some())
    }
}
