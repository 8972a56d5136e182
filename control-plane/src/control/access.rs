//! Browser access, the control plane's half: the cookie signing keys and
//! their rotation, access links (one-time, or a workshop's, valid until its
//! deadline for the browser it first let in), and opening a link (the
//! session activated, the cookie signed). The gateway's half —
//! checking the cookie on every request — is `gateway::access`.

use std::sync::Arc;

use gateway::access::{Activation, ActivationError, ActivationRequest, KeyRing};

use super::sessions::transition;
use super::{unknown, ControlPlane};
use crate::access::{self as acc, AccessLink, AccessSettings, KeyRotation};
use crate::auth;
use crate::clock::Clock;
use crate::error::ControlError;
use crate::limits::Guessed;
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::{self, invalid, SessionRecord};
use crate::store::{self, AccessTokenRow};
use crate::time::rfc3339_millis;
use crate::writes::Writes;

/// Loads the cookie keys, creating the first one on a new store.
pub(super) async fn load_keys(
    writes: &Writes,
    clock: &dyn Clock,
    settings: &AccessSettings,
) -> Result<KeyRing, ControlError> {
    let mut tx = writes.begin().await?;
    let mut rows = store::signing_keys(&mut tx).await?;
    if rows.iter().all(|r| r.retired_ms.is_some()) {
        let now = clock.now_ms();
        let key = acc::new_key(now)?;
        store::signing_key_rotate(&mut tx, &key, now).await?;
        rows = store::signing_keys(&mut tx).await?;
        tracing::info!(key = %key.id, "cookie signing key created");
    }
    tx.commit().await?;
    Ok(acc::key_ring(&rows, settings.key_grace)?)
}

/// The longest an OpenID Connect hand-off link lives.
pub const HANDOFF_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl ControlPlane {
    /// The URL on the session's own host that opens it with `token` (what
    /// `POST …/access` answers).
    pub fn activation_url(&self, s: &SessionRecord, token: &str) -> String {
        self.link_url(s, token, &self.access)
    }

    /// Replaces the cookie signing key. Cookies signed by the replaced key
    /// keep working for the grace period (`access.key_grace_secs`), and
    /// those signed by any older key stop at once.
    pub async fn rotate_keys(&self) -> Result<KeyRotation, ControlError> {
        let now = self.now_ms();
        let grace = self.access.key_grace;
        let key = acc::new_key(now)?;
        let mut tx = self.writes.begin().await?;
        store::signing_key_rotate(&mut tx, &key, now).await?;
        let rows = store::signing_keys(&mut tx).await?;
        let ring = acc::key_ring(&rows, grace)?;
        let _lock = tx.commit().await?;
        let ring = Arc::new(ring);
        self.keys.store_shared(Arc::clone(&ring));
        self.gateways().rotate_keys(ring);
        let previous = rows.iter().find(|r| r.retired_ms.is_some());
        tracing::info!(key = %key.id, previous = ?previous.map(|r| &r.id), "cookie signing key rotated");
        Ok(KeyRotation {
            current: key.id,
            previous: previous.map(|r| r.id.clone()),
            previous_valid_until: previous
                .and_then(|r| r.retired_ms)
                .map(|ms| rfc3339_millis(ms + grace.as_millis() as u64)),
        })
    }

    /// Issues a one-time access link for `user` on session `name`.
    pub async fn create_access_link(
        &self,
        name: &str,
        user: &str,
        path: Option<&str>,
    ) -> Result<AccessLink, ControlError> {
        self.issue_link(name, user, path, self.access.link_ttl)
            .await
    }

    /// An OpenID Connect sign-in's hand-off to the session's own host: an
    /// access link (single use, for that session's host) that lives at most
    /// [`HANDOFF_TTL`], since the browser follows it at once.
    pub async fn create_handoff_link(
        &self,
        name: &str,
        user: &str,
        path: &str,
    ) -> Result<AccessLink, ControlError> {
        let ttl = self.access.link_ttl.min(HANDOFF_TTL);
        self.issue_link(name, user, Some(path), ttl).await
    }

    /// A client certificate naming `user` for session `name`'s workspace
    /// port over TLS, from the workspace CA (made at first need). The user
    /// must be one the session lets in now; revoking them later closes
    /// their connections, as for WebSockets.
    pub async fn issue_client_cert(
        &self,
        name: &str,
        user: &str,
        days: Option<u64>,
    ) -> Result<crate::access::ClientCert, ControlError> {
        model::validate_user_name("user", user)?;
        let days = days.unwrap_or(30);
        if !(1..=397).contains(&days) {
            return Err(ControlError::Invalid(invalid("days", "must be 1 to 397")));
        }
        let s = self.get_session(name).await?;
        if !s.state.is_live() {
            return Err(ControlError::Finished {
                name: name.to_string(),
                state: s.state,
            });
        }
        if s.workspace_port.is_none() {
            return Err(ControlError::Conflict(format!(
                "session {name:?} has no workspace_port"
            )));
        }
        if !self.user_exists(user).await? {
            return Err(unknown("user", "user", &[user.to_string()]));
        }
        if !acc::allowed(&s, user, &self.group_cache()) {
            return Err(ControlError::Forbidden(format!(
                "user {user:?} is neither the owner of session {name:?} nor a member of a group it is shared with"
            )));
        }
        let dir = self.workspace_policy().ca_dir.clone();
        let validity = std::time::Duration::from_secs(days * 86_400);
        let issued = tokio::task::spawn_blocking({
            let user = user.to_string();
            move || -> Result<(String, String, String), certs::CertError> {
                let files = super::workspace_ca(&dir)?;
                let (cert, key) =
                    certs::dev::client_certificate(&files.ca_cert, &files.ca_key, &user, validity)?;
                // Checked to be a CA, then given as the file has it.
                certs::read_ca(&files.ca_cert)?;
                let ca = std::fs::read_to_string(&files.ca_cert).map_err(|e| {
                    certs::CertError::Generate {
                        what: "workspace CA",
                        reason: format!("{}: {e}", files.ca_cert.display()),
                    }
                })?;
                Ok((cert, key, ca))
            }
        })
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
        .map_err(|e| ControlError::Internal(e.to_string()))?;
        tracing::info!(session = %name, user = %user, days, "workspace client certificate issued");
        Ok(crate::access::ClientCert {
            certificate: issued.0,
            key: issued.1,
            ca: issued.2,
            expires: rfc3339_millis(self.now_ms() + days * 86_400_000),
        })
    }

    async fn issue_link(
        &self,
        name: &str,
        user: &str,
        path: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<AccessLink, ControlError> {
        model::validate_user_name("user", user)?;
        let path = path.unwrap_or("/");
        acc::validate_entry_path(path).map_err(|m| ControlError::Invalid(invalid("path", m)))?;
        let now = self.now_ms();
        let token = auth::random_token()?;
        let expires_ms = now + ttl.as_millis() as u64;
        let mut tx = self.writes.begin().await?;
        let s = store::session_get(&mut tx, name)
            .await?
            .ok_or_else(|| ControlError::not_found("session", name))?;
        if !s.state.is_live() {
            return Err(ControlError::Finished {
                name: name.to_string(),
                state: s.state,
            });
        }
        if !store::user_exists(&mut tx, user).await? {
            return Err(unknown("user", "user", &[user.to_string()]));
        }
        if !acc::allowed(&s, user, &self.group_cache()) {
            return Err(ControlError::Forbidden(format!(
                "user {user:?} is neither the owner of session {name:?} nor a member of a group it is shared with"
            )));
        }
        store::access_token_insert(
            &mut tx,
            &AccessTokenRow {
                hash: auth::hash_token(&token),
                session: s.name.clone(),
                user: user.to_string(),
                path: path.to_string(),
                created_ms: now,
                expires_ms,
                reusable: false,
                used_ms: None,
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(session = %name, user = %user, "access link issued");
        Ok(AccessLink {
            url: self.link_url(&s, &token, &self.access),
            expires: rfc3339_millis(expires_ms),
        })
    }

    /// The link's URL, on the host the session is used on, since that is
    /// where the cookie will be: its custom domain if it has one, else its
    /// slug on the portal host if it has one, else `<name>.<first base
    /// domain>`.
    fn link_url(&self, s: &SessionRecord, token: &str, settings: &AccessSettings) -> String {
        let table = self.routes.load();
        let scheme = settings.link_scheme.as_str();
        let port = match (settings.link_port, scheme) {
            (None, _) | (Some(80), "http") | (Some(443), "https") => String::new(),
            (Some(p), _) => format!(":{p}"),
        };
        let path = gateway::access::ACTIVATE_PATH;
        let portal = table.portal_host().map(str::to_string);
        let base = table.base_domains().next().map(str::to_string);
        match (&s.custom_domain, &s.slug, portal, base) {
            (Some(d), _, _, _) => format!("{scheme}://{d}{port}{path}?token={token}"),
            (None, Some(slug), Some(portal), _) => {
                format!("{scheme}://{portal}{port}{slug}{path}?token={token}")
            }
            (None, _, _, Some(base)) => {
                format!("{scheme}://{}.{base}{port}{path}?token={token}", s.name)
            }
            _ => format!("{scheme}://{}{port}{path}?token={token}", s.name),
        }
    }

    /// A workshop access link for `user` on `session`, valid for `ttl_ms`
    /// from `now`, in `tx`: the token of the link's URL. As the training
    /// portal does, the same user asking again gets the same link back
    /// while it was never opened, its deadline moved to `now + ttl_ms`
    /// (the window restarts). Only the token's hash is stored, so the
    /// token is derived from the cookie signing key, the session, the user
    /// and when the link was made ([`KeyRing::derive_token`]): that is what
    /// lets the same URL be made again. After a key rotation it cannot be,
    /// and a new link is made instead (the old one stays valid until its
    /// deadline).
    ///
    /// The link stays valid until its deadline however often it is
    /// opened, so that a browser that reloads it is not locked out; the
    /// first use binds it to the browser it let in ([`Self::activate_link`]).
    pub(crate) async fn workshop_link(
        &self,
        tx: &mut crate::store::Conn,
        session: &str,
        user: &str,
        now: u64,
        ttl_ms: u64,
    ) -> Result<String, ControlError> {
        // An `Arc`, not a guard: it is held across the store's awaits.
        let keys = arc_swap::Guard::into_inner(self.keys.load());
        let derive = |created_ms: u64| {
            keys.derive_token(&format!("workshop link\0{session}\0{user}\0{created_ms}"))
        };
        if let Some(t) = store::access_token_unused(tx, session, user).await? {
            let token = derive(t.created_ms);
            if auth::hash_token(&token) == t.hash {
                store::access_token_set_expiry(tx, &t.hash, now + ttl_ms).await?;
                return Ok(token);
            }
        }
        let token = derive(now);
        let hash = auth::hash_token(&token);
        // Made in this very millisecond by an earlier request: the same link.
        if store::access_token_get(tx, &hash).await?.is_some() {
            store::access_token_set_expiry(tx, &hash, now + ttl_ms).await?;
            return Ok(token);
        }
        store::access_token_insert(
            tx,
            &AccessTokenRow {
                hash,
                session: session.to_string(),
                user: user.to_string(),
                path: "/".into(),
                created_ms: now,
                expires_ms: now + ttl_ms,
                reusable: true,
                used_ms: None,
            },
        )
        .await?;
        Ok(token)
    }

    /// Opens an access link on `req.session`'s host: a pending or evicted
    /// session becomes running, and the answer carries the signed cookie.
    /// A one-time link (`POST …/access`) is deleted whatever the outcome. A
    /// workshop link stays valid until its deadline: its first use binds it
    /// to the browser it let in, which alone may open it again (it comes
    /// with the cookie that use set: `req.holder`); another browser is
    /// refused.
    pub async fn activate_link(
        &self,
        req: ActivationRequest,
    ) -> Result<Activation, ActivationError> {
        match self.open_link(&req).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(session = %req.session, error = %e, "access link: store error");
                Err(ActivationError::Unavailable(
                    "the session store failed".into(),
                ))
            }
        }
    }

    /// [`activate_link`](Self::activate_link)'s work: the outer error is the
    /// store's, the inner one the link's refusal.
    async fn open_link(
        &self,
        req: &ActivationRequest,
    ) -> Result<Result<Activation, ActivationError>, ControlError> {
        // A guesser is refused before its token costs a transaction.
        let failures = self.failures(Guessed::AccessLink);
        if let Err(t) = failures.check(req.client) {
            return Ok(Err(ActivationError::TooManyFailures {
                retry_after_secs: t.retry_after_secs,
            }));
        }
        let now = self.now_ms();
        let hash = auth::hash_token(&req.token);
        let mut tx = self.writes.begin().await?;
        let Some(t) = store::access_token_get(&mut tx, &hash).await? else {
            failures.fail(req.client);
            return Ok(Err(ActivationError::InvalidToken));
        };
        let expired = t.expires_ms <= now;
        if !t.reusable || expired {
            // Spent: refusals still commit its removal.
            store::access_token_delete(&mut tx, &hash).await?;
        }
        let opened_elsewhere =
            t.used_ms.is_some() && req.holder.as_deref() != Some(t.user.as_str());
        let old = if expired {
            Err(ActivationError::InvalidToken)
        } else if t.session != *req.session {
            Err(ActivationError::WrongSession)
        } else if opened_elsewhere {
            Err(ActivationError::AlreadyUsed)
        } else {
            match store::session_get(&mut tx, &t.session).await? {
                None => Err(ActivationError::InvalidToken),
                Some(o) if !o.state.is_live() => Err(ActivationError::Gone {
                    session: o.name.clone(),
                    state: o.state.to_string(),
                }),
                Some(o) if !acc::allowed(&o, &t.user, &self.group_cache()) => {
                    Err(ActivationError::NotAllowed)
                }
                Some(o) => Ok(o),
            }
        };
        let old = match old {
            Ok(old) => old,
            Err(refused) => {
                tx.commit().await?;
                tracing::info!(session = %req.session, user = %t.user, reason = %refused, "access link refused");
                return Ok(Err(refused));
            }
        };
        if t.reusable && t.used_ms.is_none() {
            store::access_token_set_used(&mut tx, &hash, now).await?;
        }
        let rec = if matches!(old.state, SessionState::Pending | SessionState::Evicted) {
            let rec = transition(&old, Action::Activate, None, now)?;
            store::session_update_row(&mut tx, &rec).await?;
            Some(rec)
        } else {
            None
        };
        let _lock = tx.commit().await?;
        if let Some(rec) = &rec {
            self.publish(Some(&old), Some(rec)).await?;
            tracing::info!(session = %rec.name, from = %old.state, "session activated");
        }
        let ttl = self.access.cookie_ttl.as_secs().max(1);
        let signed = self.keys.load().sign(&old.name, &t.user, now / 1000 + ttl);
        Ok(signed
            .map(|cookie| Activation {
                cookie,
                max_age: ttl,
                path: t.path,
                user: t.user,
            })
            .map_err(ActivationError::Unavailable))
    }
}
