//! `/oauth2/token/` and `/oauth2/revoke-token/` for the training portal's
//! API: one client and its robot account (the `[workshop]` settings), the
//! password and refresh grants, revocation, and the tokens they issue,
//! stored only as hashes.
//!
//! Tokens behave as django-oauth-toolkit 2.3.0 (the portal's provider) makes
//! them behave with the portal's settings: each grant issues an access
//! token and a refresh token together; the refresh grant rotates (the old
//! refresh token and its access token end, `ROTATE_REFRESH_TOKEN` with no
//! grace period); revoking a refresh token ends its access token, revoking
//! an access token leaves its refresh token usable.
//!
//! The client is confidential: it must present its secret. DOT would accept
//! the portal's robot client, which Educates registers as `public`, with its
//! `client_id` alone; here the secret is configured, every known client of
//! the portal sends it, and accepting the id alone would leave the robot's
//! password as the only secret between a guesser and a token.

use super::portal::{OAuthClient, OAuthError, TokenAnswer};
use super::Portal;
use crate::auth;
use crate::error::ControlError;
use crate::store;

/// A refresh token outlives its access token ten times over (the portal:
/// 10 h and 30 days).
const REFRESH_TTL_FACTOR: u64 = 10;

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
        let user_ok = secret_eq(username, &oauth.robot_username);
        let pass_ok = secret_eq(password, &oauth.robot_password);
        if !(user_ok & pass_ok) {
            return Err(OAuthError::InvalidGrant);
        }
        let mut tx = self.control.writes().begin().await?;
        let answer = self.issue_tokens(&mut tx, username).await?;
        tx.commit().await?;
        tracing::info!(user = %username, "workshop API token issued");
        Ok(answer)
    }

    /// The refresh grant, which rotates: the refresh token is used once, and
    /// the access token issued with it ends with it. Taking the old pair and
    /// storing the new one is one transaction, so a failure leaves the old
    /// pair working and two grants racing with one token get one new pair.
    pub async fn oauth_refresh_grant(
        &self,
        client: (&str, &str),
        refresh_token: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        self.check_client(client)?;
        let now = self.control.now_ms();
        let hash = auth::hash_token(refresh_token);
        let mut tx = self.control.writes().begin().await?;
        let Some(user) = store::oauth_refresh_take(&mut tx, &hash, now).await? else {
            return Err(OAuthError::InvalidGrant);
        };
        let answer = self.issue_tokens(&mut tx, &user).await?;
        tx.commit().await?;
        tracing::info!(user = %user, "workshop API token refreshed");
        Ok(answer)
    }

    /// Revokes `token`, an access or a refresh token (RFC 7009 §2.1): the
    /// hint is not needed to find it, since one lookup covers both kinds.
    /// An unknown, expired or already revoked token is no error: the
    /// client's goal, that the token no longer works, is met.
    pub async fn oauth_revoke(&self, client: (&str, &str), token: &str) -> Result<(), OAuthError> {
        self.check_client(client)?;
        let hash = auth::hash_token(token);
        let mut tx = self.control.writes().begin().await?;
        let revoked = store::oauth_token_revoke(&mut tx, &hash).await?;
        tx.commit().await?;
        if revoked {
            tracing::info!("workshop API token revoked");
        }
        Ok(())
    }

    fn check_client(&self, (id, secret): (&str, &str)) -> Result<OAuthClient, OAuthError> {
        let Some(oauth) = self.settings.oauth.clone() else {
            return Err(OAuthError::InvalidClient);
        };
        let id_ok = secret_eq(id, &oauth.client_id);
        let secret_ok = secret_eq(secret, &oauth.client_secret);
        if id_ok & secret_ok {
            Ok(oauth)
        } else {
            Err(OAuthError::InvalidClient)
        }
    }

    /// Stores a new access token and its refresh token in `tx` and returns
    /// them (the caller commits).
    async fn issue_tokens(
        &self,
        tx: &mut crate::store::Conn,
        username: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        let now = self.control.now_ms();
        let ttl = self.settings.token_ttl_secs;
        let access = auth::random_token()?;
        let refresh = auth::random_token()?;
        store::oauth_pair_insert(
            tx,
            username,
            (&auth::hash_token(&access), now + ttl * 1000),
            (
                &auth::hash_token(&refresh),
                now + ttl * 1000 * REFRESH_TTL_FACTOR,
            ),
        )
        .await?;
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

/// Compares a presented credential with the configured one in constant
/// time, through their digests so that not even the length shows.
fn secret_eq(presented: &str, configured: &str) -> bool {
    auth::constant_time_eq(
        auth::hash_token(presented).as_bytes(),
        auth::hash_token(configured).as_bytes(),
    )
}
