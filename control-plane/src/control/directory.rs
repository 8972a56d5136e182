//! Users, groups and their members.
//!
//! A change to a group's members is a change to who may open the sessions
//! shared with it: those sessions' routes are republished with the new
//! member lists, and the live connections of whoever lost access are closed
//! (see [`routing`](super::routing)).

use crate::store::Conn;

use super::{sorted_unique, unknown, ControlPlane};
use crate::auth;
use crate::error::ControlError;
use crate::session::model::{self, Group, NewGroup, NewUser, SessionRecord, UserPatch};
use crate::store::{self, UserRow};
use crate::time::rfc3339_millis;

/// A user as stored, and the groups they are a member of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub row: UserRow,
    pub groups: Vec<String>,
}

impl ControlPlane {
    pub async fn create_user(&self, input: NewUser) -> Result<UserRecord, ControlError> {
        model::validate_user_name("name", &input.name)?;
        model::validate_optional_text("email", &input.email)?;
        model::validate_optional_text("first_name", &input.first_name)?;
        model::validate_optional_text("last_name", &input.last_name)?;
        let row = UserRow {
            id: new_user_id()?,
            name: input.name,
            email: input.email,
            first_name: input.first_name,
            last_name: input.last_name,
            created_ms: self.now_ms(),
        };
        let mut tx = self.writes.begin().await?;
        if store::user_exists(&mut tx, &row.name).await? {
            return Err(ControlError::Conflict(format!(
                "user {:?} already exists",
                row.name
            )));
        }
        store::user_insert(&mut tx, &row).await?;
        tx.commit().await?;
        tracing::info!(user = %row.name, "user created");
        Ok(UserRecord {
            row,
            groups: Vec::new(),
        })
    }

    /// Whether user `name` exists (a console sign-in ends with its user).
    pub async fn user_exists(&self, name: &str) -> Result<bool, ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::user_exists(&mut c, name).await?)
    }

    pub async fn get_user(&self, name: &str) -> Result<UserRecord, ControlError> {
        let mut c = self.store.conn().await?;
        let row = store::user_get(&mut c, name)
            .await?
            .ok_or_else(|| ControlError::not_found("user", name))?;
        let mut groups = store::groups_of_users(&mut c, std::slice::from_ref(&row.name)).await?;
        let groups = groups.remove(&row.name).unwrap_or_default();
        Ok(UserRecord { row, groups })
    }

    pub async fn list_users(
        &self,
        q: Option<&str>,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<UserRecord>, u64), ControlError> {
        let mut c = self.store.conn().await?;
        let (rows, total) = store::users_list(&mut c, q, page, per_page).await?;
        let names: Vec<String> = rows.iter().map(|u| u.name.clone()).collect();
        let mut groups = store::groups_of_users(&mut c, &names).await?;
        let users = rows
            .into_iter()
            .map(|row| UserRecord {
                groups: groups.remove(&row.name).unwrap_or_default(),
                row,
            })
            .collect();
        Ok((users, total))
    }

    pub async fn update_user(
        &self,
        name: &str,
        patch: UserPatch,
    ) -> Result<UserRecord, ControlError> {
        for (field, v) in [
            ("email", &patch.email),
            ("first_name", &patch.first_name),
            ("last_name", &patch.last_name),
        ] {
            if let Some(v) = v {
                model::validate_optional_text(field, v)?;
            }
        }
        let mut tx = self.writes.begin().await?;
        let mut row = store::user_get(&mut tx, name)
            .await?
            .ok_or_else(|| ControlError::not_found("user", name))?;
        if let Some(v) = patch.email {
            row.email = v;
        }
        if let Some(v) = patch.first_name {
            row.first_name = v;
        }
        if let Some(v) = patch.last_name {
            row.last_name = v;
        }
        store::user_update(&mut tx, &row).await?;
        drop(tx.commit().await?);
        self.get_user(name).await
    }

    /// Deletes a user who owns no session that can still be used; their
    /// finished session records and group memberships go with them.
    pub async fn delete_user(&self, name: &str) -> Result<(), ControlError> {
        let mut tx = self.writes.begin().await?;
        if !store::user_exists(&mut tx, name).await? {
            return Err(ControlError::not_found("user", name));
        }
        let live = store::user_live_sessions(&mut tx, name).await?;
        if live > 0 {
            return Err(ControlError::Conflict(format!(
                "user {name:?} owns {live} session(s) that are not expired or deleted; \
                 delete or expire them first"
            )));
        }
        let groups: Vec<String> = store::groups_of_users(&mut tx, &[name.to_string()])
            .await?
            .remove(name)
            .unwrap_or_default();
        store::user_purge_finished_sessions(&mut tx, name).await?;
        store::user_delete(&mut tx, name).await?;
        let updates = member_lists(&mut tx, &groups).await?;
        let shared = sessions_shared(&mut tx, &groups).await?;
        let _lock = tx.commit().await?;
        self.groups_changed(updates, shared).await?;
        tracing::info!(user = %name, "user deleted");
        Ok(())
    }

    pub async fn create_group(&self, input: NewGroup) -> Result<Group, ControlError> {
        model::validate_name("name", &input.name)?;
        let members = sorted_unique(input.members);
        for m in &members {
            model::validate_user_name("members", m)?;
        }
        let now = self.now_ms();
        let mut tx = self.writes.begin().await?;
        if store::group_created(&mut tx, &input.name).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "group {:?} already exists",
                input.name
            )));
        }
        let missing = store::missing_users(&mut tx, &members).await?;
        if !missing.is_empty() {
            return Err(unknown("members", "user", &missing));
        }
        store::group_insert(&mut tx, &input.name, now).await?;
        for m in &members {
            store::member_add(&mut tx, &input.name, m).await?;
        }
        let _lock = tx.commit().await?;
        self.groups_changed(
            vec![(input.name.clone(), Some(members.clone()))],
            Vec::new(),
        )
        .await?;
        tracing::info!(group = %input.name, members = members.len(), "group created");
        Ok(Group {
            name: input.name,
            members,
            created: rfc3339_millis(now),
        })
    }

    pub async fn get_group(&self, name: &str) -> Result<Group, ControlError> {
        let mut c = self.store.conn().await?;
        group_view(&mut c, name).await
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>, ControlError> {
        let mut c = self.store.conn().await?;
        let groups = store::groups_list(&mut c).await?;
        let mut members = store::group_members(&mut c, None).await?;
        Ok(groups
            .into_iter()
            .map(|(name, created)| Group {
                members: members.remove(&name).unwrap_or_default(),
                name,
                created: rfc3339_millis(created),
            })
            .collect())
    }

    /// Deletes a group; sessions shared with it are no longer shared with it.
    pub async fn delete_group(&self, name: &str) -> Result<(), ControlError> {
        let mut tx = self.writes.begin().await?;
        let shared = sessions_shared(&mut tx, &[name.to_string()]).await?;
        if !store::group_delete(&mut tx, name).await? {
            return Err(ControlError::not_found("group", name));
        }
        let _lock = tx.commit().await?;
        let shared = shared
            .into_iter()
            .map(|mut s| {
                s.groups.retain(|g| g != name);
                s
            })
            .collect();
        self.groups_changed(vec![(name.to_string(), None)], shared)
            .await?;
        tracing::info!(group = %name, "group deleted");
        Ok(())
    }

    /// Replaces the members of a group.
    pub async fn set_members(
        &self,
        group: &str,
        members: Vec<String>,
    ) -> Result<Group, ControlError> {
        let members = sorted_unique(members);
        for m in &members {
            model::validate_user_name("members", m)?;
        }
        let mut tx = self.writes.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(ControlError::not_found("group", group));
        }
        let missing = store::missing_users(&mut tx, &members).await?;
        if !missing.is_empty() {
            return Err(unknown("members", "user", &missing));
        }
        let current = store::group_members(&mut tx, Some(group))
            .await?
            .remove(group)
            .unwrap_or_default();
        for old in &current {
            if !members.contains(old) {
                store::member_remove(&mut tx, group, old).await?;
            }
        }
        for m in &members {
            store::member_add(&mut tx, group, m).await?;
        }
        let view = self.members_changed(tx, group).await?;
        tracing::info!(group = %group, members = members.len(), "group members replaced");
        Ok(view)
    }

    pub async fn add_member(&self, group: &str, user: &str) -> Result<Group, ControlError> {
        model::validate_user_name("user", user)?;
        let mut tx = self.writes.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(ControlError::not_found("group", group));
        }
        if !store::user_exists(&mut tx, user).await? {
            return Err(unknown("user", "user", &[user.to_string()]));
        }
        store::member_add(&mut tx, group, user).await?;
        let view = self.members_changed(tx, group).await?;
        tracing::info!(group = %group, user = %user, "group member added");
        Ok(view)
    }

    pub async fn remove_member(&self, group: &str, user: &str) -> Result<Group, ControlError> {
        let mut tx = self.writes.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(ControlError::not_found("group", group));
        }
        if !store::member_remove(&mut tx, group, user).await? {
            return Err(ControlError::NotFound {
                what: "member",
                name: format!("{user} in group {group}"),
            });
        }
        let view = self.members_changed(tx, group).await?;
        tracing::info!(group = %group, user = %user, "group member removed");
        Ok(view)
    }

    /// Finishes a change to `group`'s members written in `tx`: commits it,
    /// then republishes the sessions shared with the group and closes the
    /// connections of whoever lost access. Returns the group as stored.
    async fn members_changed(
        &self,
        mut tx: crate::writes::WriteGuard,
        group: &str,
    ) -> Result<Group, ControlError> {
        let view = group_view(&mut tx, group).await?;
        let shared = sessions_shared(&mut tx, &[group.to_string()]).await?;
        let _lock = tx.commit().await?;
        self.groups_changed(
            vec![(group.to_string(), Some(view.members.clone()))],
            shared,
        )
        .await?;
        Ok(view)
    }
}

/// A new user's id: never reused, unlike names.
pub(crate) fn new_user_id() -> Result<String, ControlError> {
    Ok(format!("u-{}", auth::random_hex(8)?))
}

/// The member lists of `groups` as stored now (`None`: no such group).
async fn member_lists(
    c: &mut Conn,
    groups: &[String],
) -> Result<Vec<(String, Option<Vec<String>>)>, ControlError> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let exists = store::group_created(c, g).await?.is_some();
        let members = store::group_members(c, Some(g))
            .await?
            .remove(g)
            .unwrap_or_default();
        out.push((g.clone(), exists.then_some(members)));
    }
    Ok(out)
}

/// Live sessions shared with any of `groups`, as stored now.
pub(super) async fn sessions_shared(
    c: &mut Conn,
    groups: &[String],
) -> Result<Vec<SessionRecord>, ControlError> {
    let mut names = std::collections::BTreeSet::new();
    for g in groups {
        names.extend(store::sessions_shared_with(c, g).await?);
    }
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(s) = store::session_get(c, &n).await? {
            out.push(s);
        }
    }
    Ok(out)
}

async fn group_view(c: &mut Conn, name: &str) -> Result<Group, ControlError> {
    let created = store::group_created(c, name)
        .await?
        .ok_or_else(|| ControlError::not_found("group", name))?;
    let members = store::group_members(c, Some(name))
        .await?
        .remove(name)
        .unwrap_or_default();
    Ok(Group {
        name: name.to_string(),
        members,
        created: rfc3339_millis(created),
    })
}
