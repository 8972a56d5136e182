//! The portal host's one browser origin. Every slug session is served at
//! `<portal host>/<slug>/`, so every slug app is the same origin: it can
//! read the others' responses with `fetch` and set cookies on their paths.
//! Headers cannot separate them; these rules keep users from being put
//! there unawares:
//!
//! - no slug under another user's slug, or above one: the longer slug
//!   would take the other's paths, its access links included
//!   (`<slug>/__sessiongate/activate`), and its cookies;
//! - no slug above a workshop environment's `slug_prefix`, where other
//!   users' sessions will be;
//! - a slug while another user has one only with `shared_origin: true`,
//!   the creator's acceptance (environments with a `slug_prefix` set it
//!   for their sessions: the operator opted in).
//!
//! Checked in the write's transaction, when a slug is set or changed.

use crate::store::Conn;

use crate::error::ControlError;
use crate::session::model::{invalid, SessionRecord};
use crate::store;

/// Refuses `rec`'s slug, when it is new (not `old_slug`), if it nests with
/// another user's slug or an environment's prefix, or if it would share
/// the origin with another user's slug session without `shared_origin`.
pub(crate) async fn check_portal_slug(
    c: &mut Conn,
    rec: &SessionRecord,
    old_slug: Option<&str>,
) -> Result<(), ControlError> {
    let Some(slug) = rec.slug.as_deref() else {
        return Ok(());
    };
    if old_slug == Some(slug) {
        return Ok(());
    }
    for (name, owner, other) in store::live_slug_neighbours(c, slug, &rec.name).await? {
        if owner == rec.owner {
            continue;
        }
        let message = if slug.starts_with(&format!("{other}/")) {
            format!("{slug:?} is under {other:?}, the slug of session {name:?}, which another user owns")
        } else {
            format!("{slug:?} would take in {other:?}, the slug of session {name:?}, which another user owns")
        };
        return Err(invalid("slug", message).into());
    }
    for e in store::environments_list(c).await? {
        let Some(prefix) = e.slug_prefix.as_deref() else {
            continue;
        };
        if rec.environment.as_deref() != Some(e.name.as_str()) && under_or_at(prefix, slug) {
            return Err(invalid(
                "slug",
                format!(
                    "{slug:?} would take in the sessions of environment {:?} (slug_prefix {prefix:?}), which other users own",
                    e.name
                ),
            )
            .into());
        }
    }
    if !rec.shared_origin {
        if let Some(other) = store::live_slug_session_of_another(c, &rec.owner, &rec.name).await? {
            return Err(invalid(
                "shared_origin",
                format!(
                    "session {other:?} of another user has a slug on the portal host; a slug here shares \
                     one browser origin with it (each app can read the other's responses and set its \
                     cookies): set shared_origin to true to accept that, or use the session's own host"
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Refuses a new environment's `slug_prefix` under which its sessions
/// (`<prefix>/<session>`) would nest with a live session's slug or another
/// environment's sessions.
pub(crate) async fn check_slug_prefix(
    c: &mut Conn,
    environment: &str,
    prefix: &str,
) -> Result<(), ControlError> {
    let refused = |m: String| -> ControlError { invalid("slug_prefix", m).into() };
    if let Some(name) = store::live_session_with(c, "slug", prefix, "").await? {
        return Err(refused(format!(
            "{prefix:?} is the slug of session {name:?}: the environment's sessions would be under it"
        )));
    }
    for (name, _, other) in store::live_slug_neighbours(c, prefix, "").await? {
        if under_or_at(&other, prefix) {
            continue;
        }
        return Err(refused(format!(
            "{prefix:?} is under {other:?}, the slug of session {name:?}: the environment's sessions would be under it"
        )));
    }
    for e in store::environments_list(c).await? {
        let Some(p) = e.slug_prefix.as_deref() else {
            continue;
        };
        if e.name != environment
            && p != prefix
            && (under_or_at(p, prefix) || under_or_at(prefix, p))
        {
            return Err(refused(format!(
                "{prefix:?} nests with environment {:?}'s slug_prefix {p:?}: one's sessions could be under the other's",
                e.name
            )));
        }
    }
    Ok(())
}

/// Whether `path` is `base` or lies under it (`/a/b` under `/a`).
fn under_or_at(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::under_or_at;

    #[test]
    fn under_or_at_is_by_whole_segments() {
        let cases: &[(&str, &str, bool)] = &[
            ("/a", "/a", true),
            ("/a/b", "/a", true),
            ("/a/b/c", "/a", true),
            ("/ab", "/a", false),
            ("/a", "/a/b", false),
            ("/b/a", "/a", false),
        ];
        for (path, base, want) in cases {
            assert_eq!(under_or_at(path, base), *want, "{path} under {base}");
        }
    }
}
