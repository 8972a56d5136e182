//! Who may do what (issue 19): one set of rules for the API and the
//! console, so that a page never offers what the API would refuse and the
//! API never allows what a page hides.
//!
//! - An **admin** token may do everything; a **read-only** token may read
//!   everything and change nothing.
//! - A **user** (signed in to the console with a console link, and so to
//!   the API with the console's cookie) sees the sessions they own and
//!   those shared with a group they are in. An owner may open, delete,
//!   keep alive, extend and share their sessions (with groups they are in:
//!   sharing adds and removes only such groups), and create sessions they
//!   own. Evict, expire, pause, resume and changing a session's target stay
//!   with operators. A member of a group a session is shared with may open
//!   it. A session a user may not see is "not found" to them, as if it did
//!   not exist.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::access::GroupCache;
use crate::auth::TokenKind;
use crate::error::ControlError;
use crate::session::model::SessionRecord;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An API token (admin or read-only); `name` is `None` for the admin
    /// token of the configuration.
    Operator {
        kind: TokenKind,
        name: Option<Arc<str>>,
    },
    /// A user signed in to the console.
    User { name: String },
}

/// What is asked of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOp<'a> {
    View,
    /// Make an access link (open it in a browser).
    Open,
    Delete,
    Keepalive,
    Extend,
    /// Replace the groups it is shared with by these.
    Share(&'a [String]),
    /// Anything else (evict, expire, pause, resume, activate, a patch):
    /// operators only. The name is what the refusal says.
    Operate(&'a str),
}

impl SessionOp<'_> {
    /// What lifecycle `action` (named `verb` in a refusal) asks of a
    /// session: the owner's own actions, or an operator's.
    pub fn of_action(action: crate::session::lifecycle::Action, verb: &str) -> SessionOp<'_> {
        use crate::session::lifecycle::Action;
        match action {
            Action::Delete => SessionOp::Delete,
            Action::Extend => SessionOp::Extend,
            Action::Keepalive => SessionOp::Keepalive,
            _ => SessionOp::Operate(verb),
        }
    }
}

impl Caller {
    /// How the audit log names it: `token:<name>` or `user:<name>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator { name, .. } => {
                format!("token:{}", name.as_deref().unwrap_or("admin"))
            }
            Caller::User { name } => format!("user:{name}"),
        }
    }

    /// An admin token.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Caller::Operator {
                kind: TokenKind::Admin,
                ..
            }
        )
    }

    /// A user, not an operator.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::User { name } => Some(name),
            Caller::Operator { .. } => None,
        }
    }

    /// Whether it may change anything at all (then each change is checked).
    pub fn may_write(&self) -> bool {
        !matches!(
            self,
            Caller::Operator {
                kind: TokenKind::Readonly | TokenKind::Gateway,
                ..
            }
        )
    }

    /// Whether it may see `rec` at all.
    pub fn may_view(&self, rec: &SessionRecord, groups: &GroupCache) -> bool {
        match self {
            Caller::Operator { .. } => true,
            Caller::User { name } => {
                rec.owner == *name
                    || rec
                        .groups
                        .iter()
                        .any(|g| groups.get(g).is_some_and(|m| m.contains(name)))
            }
        }
    }

    /// Checks `op` on `rec`: `Ok`, or the refusal the API answers (404 for
    /// a session the caller may not see, 403 for one it may see but not
    /// change that way).
    pub fn check(
        &self,
        rec: &SessionRecord,
        op: SessionOp<'_>,
        groups: &GroupCache,
    ) -> Result<(), ControlError> {
        if !self.may_view(rec, groups) {
            return Err(ControlError::not_found("session", &rec.name));
        }
        if op == SessionOp::View {
            return Ok(());
        }
        let Caller::User { name } = self else {
            return if self.may_write() {
                Ok(())
            } else {
                Err(ControlError::Forbidden(format!(
                    "a read-only token cannot change session {:?}",
                    rec.name
                )))
            };
        };
        let owner = rec.owner == *name;
        let refuse = |what: &str| {
            Err(ControlError::Forbidden(format!(
                "user {name:?} may not {what} session {:?}{}",
                rec.name,
                if owner { "" } else { ": only its owner may" }
            )))
        };
        match op {
            SessionOp::View => Ok(()),
            SessionOp::Open => Ok(()),
            SessionOp::Delete if owner => Ok(()),
            SessionOp::Keepalive if owner => Ok(()),
            SessionOp::Extend if owner => Ok(()),
            SessionOp::Delete => refuse("delete"),
            SessionOp::Keepalive => refuse("keep alive"),
            SessionOp::Extend => refuse("extend"),
            SessionOp::Share(_) if !owner => refuse("share"),
            SessionOp::Share(new) => {
                let mine = user_groups(name, groups);
                let old: BTreeSet<&String> = rec.groups.iter().collect();
                let new: BTreeSet<&String> = new.iter().collect();
                let foreign: Vec<&str> = old
                    .symmetric_difference(&new)
                    .filter(|g| !mine.contains(g.as_str()))
                    .map(|g| g.as_str())
                    .collect();
                if foreign.is_empty() {
                    Ok(())
                } else {
                    Err(ControlError::Forbidden(format!(
                        "user {name:?} may share only with groups they are in, not {}",
                        foreign.join(", ")
                    )))
                }
            }
            SessionOp::Operate(what) => Err(ControlError::Forbidden(format!(
                "only an operator may {what} a session"
            ))),
        }
    }
}

/// The groups `user` is in.
pub fn user_groups(user: &str, groups: &GroupCache) -> BTreeSet<String> {
    groups
        .iter()
        .filter(|(_, m)| m.contains(user))
        .map(|(g, _)| g.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::members;

    fn rec(owner: &str, groups: &[&str]) -> SessionRecord {
        let mut r = SessionRecord::for_test(
            "lab",
            crate::session::lifecycle::SessionState::Running,
            1_000,
        );
        r.owner = owner.into();
        r.groups = groups.iter().map(|g| g.to_string()).collect();
        r
    }

    fn cache() -> GroupCache {
        let mut c = GroupCache::new();
        c.insert("team".into(), members(vec!["ann".into(), "bob".into()]));
        c.insert("ops".into(), members(vec!["cat".into()]));
        c
    }

    fn user(n: &str) -> Caller {
        Caller::User { name: n.into() }
    }

    fn status(r: Result<(), ControlError>) -> u16 {
        match r {
            Ok(()) => 200,
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn users_see_their_own_and_shared_sessions_and_act_only_as_owners() {
        let g = cache();
        let shared = rec("ann", &["team"]);
        let private = rec("ann", &[]);
        let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
        for (caller, r, op, want) in [
            (&ann, &private, SessionOp::View, 200),
            (&bob, &private, SessionOp::View, 404),
            (&bob, &shared, SessionOp::View, 200),
            (&bob, &shared, SessionOp::Open, 200),
            (&cat, &shared, SessionOp::Open, 404),
            (&ann, &shared, SessionOp::Delete, 200),
            (&bob, &shared, SessionOp::Delete, 403),
            (&ann, &shared, SessionOp::Keepalive, 200),
            (&ann, &shared, SessionOp::Extend, 200),
            (&bob, &shared, SessionOp::Extend, 403),
            (&ann, &shared, SessionOp::Operate("evict"), 403),
            (&bob, &private, SessionOp::Delete, 404),
        ] {
            assert_eq!(status(caller.check(r, op, &g)), want, "{caller:?} {op:?}");
        }
    }

    #[test]
    fn an_owner_shares_only_with_groups_they_are_in() {
        let g = cache();
        let ann = user("ann");
        let r = rec("ann", &["ops"]);
        let keep_ops_add_team = ["ops".to_string(), "team".to_string()];
        let drop_ops = ["team".to_string()];
        assert_eq!(
            status(ann.check(&r, SessionOp::Share(&keep_ops_add_team), &g)),
            200
        );
        // Removing a group she is not in (an operator shared it) is refused.
        let e = ann.check(&r, SessionOp::Share(&drop_ops), &g).unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
        assert!(e.to_string().contains("ops"), "{e}");
    }

    #[test]
    fn a_read_only_token_reads_and_changes_nothing() {
        let g = cache();
        let ro = Caller::Operator {
            kind: TokenKind::Readonly,
            name: Some("dash".into()),
        };
        let r = rec("ann", &[]);
        assert_eq!(status(ro.check(&r, SessionOp::View, &g)), 200);
        assert_eq!(status(ro.check(&r, SessionOp::Delete, &g)), 403);
        assert_eq!(ro.actor(), "token:dash");
        let admin = Caller::Operator {
            kind: TokenKind::Admin,
            name: None,
        };
        assert_eq!(
            status(admin.check(&r, SessionOp::Operate("evict"), &g)),
            200
        );
        assert_eq!(admin.actor(), "token:admin");
    }
}
