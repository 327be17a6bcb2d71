//! Roster groups: `static` (explicit members, by employee id) and `rule` (membership computed
//! from identity fields, re-evaluated on every identity change and whenever the rule changes).
use std::collections::BTreeSet;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::planner;
use super::{Principal, Roster, ServiceError, ServiceResult, new_id, validate_name};
use crate::delivery::people;
use crate::mapping::{self, GroupRule};
use crate::store::entity::{group, group_member, identity};

/// Members shown in a group's answers and audit rows; the rest are paged
/// (`Roster::group_members`), so no answer or audit row grows with a group.
pub const MEMBERS_SHOWN: usize = 100;

/// A group with its member count and its first [`MEMBERS_SHOWN`] members (employee ids,
/// sorted).
#[derive(Debug, Clone)]
pub struct GroupView {
    pub model: group::Model,
    pub members: Vec<String>,
    pub member_count: u64,
}

impl GroupView {
    fn new(model: group::Model, members: &BTreeSet<String>) -> Self {
        Self {
            model,
            members: members.iter().take(MEMBERS_SHOWN).cloned().collect(),
            member_count: members.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GroupChanges {
    pub name: Option<String>,
    pub members: Option<Vec<String>>,
    pub rule: Option<GroupRule>,
}

fn validate_employee_ids(ids: &[String]) -> ServiceResult<BTreeSet<String>> {
    if ids.len() > 100_000 {
        return Err(ServiceError::invalid("members", "at most 100000 members"));
    }
    let mut set = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        super::ingest::validate_employee_id(&format!("members[{i}]"), id)?;
        set.insert(id.clone());
    }
    Ok(set)
}

pub(crate) fn rule_of(model: &group::Model) -> ServiceResult<Option<GroupRule>> {
    model
        .rule
        .clone()
        .map(|r| {
            serde_json::from_value(r).map_err(|e| {
                ServiceError::Internal(format!(
                    "stored rule of group {} is unreadable: {e}",
                    model.id
                ))
            })
        })
        .transpose()
}

async fn members_of(
    conn: &impl ConnectionTrait,
    group_id: &str,
) -> ServiceResult<BTreeSet<String>> {
    Ok(group_member::Entity::find()
        .filter(group_member::Column::GroupId.eq(group_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.employee_id)
        .collect())
}

/// Who a rule selects right now, over every identity.
async fn evaluate_rule(
    conn: &impl ConnectionTrait,
    rule: &GroupRule,
) -> ServiceResult<BTreeSet<String>> {
    let memberships = people::all_group_names(conn).await?;
    let mut selected = BTreeSet::new();
    for person in identity::Entity::find().all(conn).await? {
        let groups = memberships
            .get(&person.employee_id)
            .cloned()
            .unwrap_or_default();
        let view = people::view_of(&person, groups);
        if mapping::evaluate_group_rule(rule, &view) {
            selected.insert(person.employee_id);
        }
    }
    Ok(selected)
}

/// Makes the stored members equal `wanted`; returns who joined or left.
async fn set_members(
    conn: &impl ConnectionTrait,
    group_id: &str,
    wanted: &BTreeSet<String>,
) -> ServiceResult<Vec<String>> {
    let current = members_of(conn, group_id).await?;
    let gone: Vec<String> = current.difference(wanted).cloned().collect();
    let new: Vec<String> = wanted.difference(&current).cloned().collect();
    for chunk in gone.chunks(500) {
        group_member::Entity::delete_many()
            .filter(group_member::Column::GroupId.eq(group_id))
            .filter(group_member::Column::EmployeeId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
    }
    for chunk in new.chunks(500) {
        group_member::Entity::insert_many(chunk.iter().map(|e| group_member::ActiveModel {
            group_id: Set(group_id.to_owned()),
            employee_id: Set(e.clone()),
        }))
        .exec(conn)
        .await?;
    }
    Ok(gone.into_iter().chain(new).collect())
}

fn validate_rule(rule: &GroupRule) -> ServiceResult<()> {
    mapping::validate_group_rule(rule).map_err(|e| ServiceError::invalid(e.path, e.message))
}

/// A group in an audit row: its count and first members, never the whole list.
fn group_audit(view: &GroupView) -> serde_json::Value {
    json!({"name": view.model.name, "kind": view.model.kind, "rule": view.model.rule,
           "member_count": view.member_count, "members": view.members})
}

/// The first [`MEMBERS_SHOWN`] members of a group, sorted, and how many it has.
async fn shown_members(
    conn: &impl ConnectionTrait,
    group_id: &str,
) -> ServiceResult<(Vec<String>, u64)> {
    let count = group_member::Entity::find()
        .filter(group_member::Column::GroupId.eq(group_id))
        .count(conn)
        .await?;
    let members = page_members(conn, group_id, None, MEMBERS_SHOWN as u64).await?;
    Ok((members, count))
}

async fn page_members(
    conn: &impl ConnectionTrait,
    group_id: &str,
    after: Option<&str>,
    limit: u64,
) -> ServiceResult<Vec<String>> {
    let mut query = group_member::Entity::find()
        .select_only()
        .column(group_member::Column::EmployeeId)
        .filter(group_member::Column::GroupId.eq(group_id))
        .order_by_asc(group_member::Column::EmployeeId);
    if let Some(after) = after {
        query = query.filter(group_member::Column::EmployeeId.gt(after));
    }
    Ok(query.limit(limit).into_tuple().all(conn).await?)
}

impl Roster {
    pub async fn create_group(
        &self,
        principal: &Principal,
        changes: GroupChanges,
    ) -> ServiceResult<GroupView> {
        let name = changes
            .name
            .clone()
            .ok_or_else(|| ServiceError::invalid("name", "is required"))?;
        validate_name("name", &name)?;
        let (kind, rule_json, static_members) = match (&changes.members, &changes.rule) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::invalid(
                    "rule",
                    "a group has either `members` (static) or a `rule`, not both",
                ));
            }
            (None, Some(rule)) => {
                validate_rule(rule)?;
                let raw = serde_json::to_value(rule)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                ("rule", Some(raw), None)
            }
            (members, None) => (
                "static",
                None,
                Some(validate_employee_ids(members.as_deref().unwrap_or(&[]))?),
            ),
        };
        let tx = self.write_tx().await?;
        if group::Entity::find()
            .filter(group::Column::Name.eq(name.as_str()))
            .one(&*tx)
            .await?
            .is_some()
        {
            return Err(ServiceError::Conflict(format!(
                "a group named `{name}` exists already"
            )));
        }
        let now = chrono::Utc::now();
        let id = new_id();
        let model = group::ActiveModel {
            id: Set(id.clone()),
            name: Set(name.clone()),
            kind: Set(kind.into()),
            rule: Set(rule_json),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&*tx)
        .await?;
        let wanted = match (static_members, &changes.rule) {
            (Some(members), _) => members,
            (None, Some(rule)) => evaluate_rule(&*tx, rule).await?,
            (None, None) => BTreeSet::new(),
        };
        let affected = set_members(&*tx, &id, &wanted).await?;
        let view = GroupView::new(model, &wanted);
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "group.create",
                object_type: "group",
                object_id: Some(&id),
                before: None,
                after: Some(group_audit(&view)),
            },
        )
        .await?;
        planner::plan_group_change(&*tx, &name, &affected).await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(view)
    }

    /// Groups by name, a page at a time; `after` is the last name of the previous page.
    pub async fn list_groups(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<GroupView>> {
        let db = self.db();
        let mut query = group::Entity::find().order_by_asc(group::Column::Name);
        if let Some(after) = after {
            query = query.filter(group::Column::Name.gt(after));
        }
        let groups = query.limit(limit).all(db).await?;
        let mut out = Vec::with_capacity(groups.len());
        for model in groups {
            let (members, member_count) = shown_members(db, &model.id).await?;
            out.push(GroupView {
                model,
                members,
                member_count,
            });
        }
        Ok(out)
    }

    pub async fn get_group(&self, id: &str) -> ServiceResult<GroupView> {
        let db = self.db();
        let model = group::Entity::find_by_id(id)
            .one(db)
            .await?
            .ok_or_else(|| ServiceError::not_found("group", id))?;
        let (members, member_count) = shown_members(db, id).await?;
        Ok(GroupView {
            model,
            members,
            member_count,
        })
    }

    /// A group's members (employee ids) in order, a page at a time; `after` is the last
    /// employee id of the previous page.
    pub async fn group_members(
        &self,
        id: &str,
        after: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<String>> {
        let db = self.db();
        if group::Entity::find_by_id(id).one(db).await?.is_none() {
            return Err(ServiceError::not_found("group", id));
        }
        page_members(db, id, after, limit).await
    }

    pub async fn update_group(
        &self,
        principal: &Principal,
        id: &str,
        changes: GroupChanges,
    ) -> ServiceResult<GroupView> {
        if changes.members.is_some() && changes.rule.is_some() {
            return Err(ServiceError::invalid(
                "rule",
                "a group has either `members` (static) or a `rule`, not both",
            ));
        }
        if let Some(rule) = &changes.rule {
            validate_rule(rule)?;
        }
        let static_members = changes
            .members
            .as_deref()
            .map(validate_employee_ids)
            .transpose()?;
        if let Some(name) = &changes.name {
            validate_name("name", name)?;
        }
        let tx = self.write_tx().await?;
        let Some(current) = group::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("group", id));
        };
        let before_members = members_of(&*tx, id).await?;
        let before = GroupView::new(current.clone(), &before_members);
        let mut model: group::ActiveModel = current.clone().into();
        if let Some(name) = &changes.name
            && name != &current.name
        {
            if group::Entity::find()
                .filter(group::Column::Name.eq(name.as_str()))
                .one(&*tx)
                .await?
                .is_some()
            {
                return Err(ServiceError::Conflict(format!(
                    "a group named `{name}` exists already"
                )));
            }
            let referenced = planner::apps_with_settings(&*tx)
                .await?
                .into_iter()
                .any(|(_, s)| {
                    s.scope.groups.contains(&current.name)
                        || s.group_push.contains(&current.name)
                        || s.role_mapping
                            .as_ref()
                            .is_some_and(|r| r.rules.iter().any(|x| x.group == current.name))
                });
            if referenced {
                return Err(ServiceError::Conflict(format!(
                    "apps refer to group `{}` by name; change them first",
                    current.name
                )));
            }
            model.name = Set(name.clone());
        }
        let wanted = if let Some(members) = static_members {
            model.kind = Set("static".into());
            model.rule = Set(None);
            Some(members)
        } else if let Some(rule) = &changes.rule {
            model.kind = Set("rule".into());
            model.rule = Set(Some(
                serde_json::to_value(rule).map_err(|e| ServiceError::Internal(e.to_string()))?,
            ));
            Some(evaluate_rule(&*tx, rule).await?)
        } else {
            None
        };
        model.updated_at = Set(chrono::Utc::now());
        let updated = model.update(&*tx).await?;
        let affected = match &wanted {
            Some(w) => set_members(&*tx, id, w).await?,
            None => Vec::new(),
        };
        let view = GroupView::new(updated, wanted.as_ref().unwrap_or(&before_members));
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "group.update",
                object_type: "group",
                object_id: Some(id),
                before: Some(group_audit(&before)),
                after: Some(group_audit(&view)),
            },
        )
        .await?;
        planner::plan_group_change(&*tx, &view.model.name, &affected).await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(view)
    }

    pub async fn delete_group(&self, principal: &Principal, id: &str) -> ServiceResult<()> {
        let tx = self.write_tx().await?;
        let Some(current) = group::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("group", id));
        };
        let members: Vec<String> = members_of(&*tx, id).await?.into_iter().collect();
        group_member::Entity::delete_many()
            .filter(group_member::Column::GroupId.eq(id))
            .exec(&*tx)
            .await?;
        group::Entity::delete_by_id(id).exec(&*tx).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "group.delete",
                object_type: "group",
                object_id: Some(id),
                before: Some(json!({"name": current.name, "kind": current.kind,
                    "member_count": members.len(), "members": &members[..members.len().min(MEMBERS_SHOWN)]})),
                after: None,
            },
        )
        .await?;
        // Members lose whatever the group gave them in each app.
        planner::plan_group_change(&*tx, &current.name, &members).await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(())
    }
}
