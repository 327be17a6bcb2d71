//! `/identities` (read-only: HR events write them) and `/groups`.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::ApiTags;
use super::apps::Deleted;
use super::auth::ApiKey;
use super::body::JsonBody;
use super::paging::{next_cursor, page_limit};
use super::problem::ApiError;
use crate::mapping::GroupRule;
use crate::service::groups::{GroupChanges, GroupView};
use crate::service::identities::IdentityDetail;
use crate::service::{Permission, Roster};
use crate::store::entity::identity;

#[derive(Object)]
pub struct LinkOut {
    pub app_id: String,
    pub app_name: String,
    #[oai(skip_serializing_if_is_none)]
    pub target_id: Option<String>,
    /// `pending`, `linked`, `deactivated`, `deleted` or `error`.
    pub state: String,
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct IdentityOut {
    pub id: String,
    pub employee_id: String,
    pub user_name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub manager_employee_id: Option<String>,
    pub attributes: Value,
    /// `active`, `suspended` or `terminated`.
    pub status: String,
    pub last_event_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only in single-identity answers: group names.
    #[oai(skip_serializing_if_is_none)]
    pub groups: Option<Vec<String>>,
    /// Only in single-identity answers: the account in each app.
    #[oai(skip_serializing_if_is_none)]
    pub links: Option<Vec<LinkOut>>,
}

fn identity_out(m: identity::Model) -> IdentityOut {
    IdentityOut {
        id: m.id,
        employee_id: m.employee_id,
        user_name: m.user_name,
        email: m.email,
        given_name: m.given_name,
        family_name: m.family_name,
        display_name: m.display_name,
        department: m.department,
        title: m.title,
        manager_employee_id: m.manager_employee_id,
        attributes: m.attributes,
        status: m.status,
        last_event_at: m.last_event_at,
        version: m.version,
        created_at: m.created_at,
        updated_at: m.updated_at,
        groups: None,
        links: None,
    }
}

#[derive(Object)]
pub struct IdentityPage {
    pub items: Vec<IdentityOut>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Object)]
pub struct GroupPage {
    pub items: Vec<GroupOut>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Object)]
pub struct MemberPage {
    /// Employee ids, sorted.
    pub items: Vec<String>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
    /// Static members (employee ids). Give `members` or `rule`, not both.
    pub members: Option<Vec<String>>,
    /// A rule: `{"attribute": "department", "op": "eq", "value": "Sales"}`, or `and`/`or`/`not`
    /// of rules: `{"and": [rule, rule]}`, or the same as text: `department eq "Sales" and
    /// title sw "VP"`. Ops: eq, ne, co, sw, ew, pr, in.
    pub rule: Option<Value>,
}

#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default, deserialize_with = "super::body::present")]
    pub name: Option<String>,
    /// Replaces the members (and makes the group static).
    #[serde(default, deserialize_with = "super::body::present")]
    pub members: Option<Vec<String>>,
    /// Replaces the rule (and makes the group a rule group).
    #[serde(default, deserialize_with = "super::body::present_json")]
    pub rule: Option<Value>,
}

#[derive(Object)]
pub struct GroupOut {
    pub id: String,
    pub name: String,
    /// `static` or `rule`.
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub rule: Option<Value>,
    /// Employee ids of the first 100 members, sorted (all of them when `member_count` is at
    /// most 100); every member is listed, a page at a time, at `/groups/{id}/members`.
    pub members: Vec<String>,
    /// How many members the group has.
    pub member_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<GroupView> for GroupOut {
    fn from(v: GroupView) -> Self {
        Self {
            id: v.model.id,
            name: v.model.name,
            kind: v.model.kind,
            rule: v.model.rule,
            members: v.members,
            member_count: v.member_count,
            created_at: v.model.created_at,
            updated_at: v.model.updated_at,
        }
    }
}

/// A rule in its text or JSON form; both are held to the same depth and width before a rule
/// is built from them.
fn parse_rule(raw: Option<Value>) -> Result<Option<GroupRule>, ApiError> {
    raw.map(|v| {
        let parsed = match &v {
            Value::String(text) => crate::mapping::parse_group_rule(text),
            _ => crate::mapping::group_rule_from_json(&v),
        };
        parsed.map_err(|e| {
            ApiError::new(
                poem::http::StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
                e.to_string(),
            )
        })
    })
    .transpose()
}

#[derive(ApiResponse)]
pub enum GroupCreated {
    #[oai(status = 201)]
    Created(Json<GroupOut>),
}

pub struct DirectoryApi;

#[OpenApi(tag = "ApiTags::Directory")]
impl DirectoryApi {
    /// List identities
    ///
    /// Scope `read`. Oldest first.
    #[oai(path = "/identities", method = "get", operation_id = "listIdentities")]
    async fn list_identities(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// `active`, `suspended` or `terminated`.
        status: Query<Option<String>>,
        cursor: Query<Option<String>>,
        /// 1..=1000, default 100.
        limit: Query<Option<u64>>,
    ) -> Result<Json<IdentityPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 100, 1000)?;
        if let Some(s) = &status.0
            && !matches!(s.as_str(), "active" | "suspended" | "terminated")
        {
            return Err(ApiError::invalid(
                "status: must be active, suspended or terminated",
            ));
        }
        let rows = roster
            .list_identities(cursor.0.as_deref(), status.0.as_deref(), limit)
            .await?;
        let next_cursor = next_cursor(&rows, limit, |r| r.id.clone());
        Ok(Json(IdentityPage {
            items: rows.into_iter().map(identity_out).collect(),
            next_cursor,
        }))
    }

    /// Get an identity
    ///
    /// Scope `read`. By roster id or employee id, with its groups and its account in each app.
    #[oai(path = "/identities/:id", method = "get", operation_id = "getIdentity")]
    async fn get_identity(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<IdentityOut>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let IdentityDetail {
            model,
            groups,
            links,
        } = roster.get_identity(&id.0).await?;
        let mut out = identity_out(model);
        out.groups = Some(groups);
        out.links = Some(
            links
                .into_iter()
                .map(|(app, l)| LinkOut {
                    app_id: app.id,
                    app_name: app.name,
                    target_id: l.target_id,
                    state: l.state,
                    last_error: l.last_error,
                    updated_at: l.updated_at,
                })
                .collect(),
        );
        Ok(Json(out))
    }

    /// List groups
    ///
    /// Scope `read`. By name, each with its member count and first 100 members.
    #[oai(path = "/groups", method = "get", operation_id = "listGroups")]
    async fn list_groups(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// 1..=200, default 50.
        limit: Query<Option<u64>>,
    ) -> Result<Json<GroupPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 50, 200)?;
        let groups = roster.list_groups(cursor.0.as_deref(), limit).await?;
        let next_cursor = next_cursor(&groups, limit, |g| g.model.name.clone());
        Ok(Json(GroupPage {
            items: groups.into_iter().map(GroupOut::from).collect(),
            next_cursor,
        }))
    }

    /// List a group's members
    ///
    /// Scope `read`. By employee id, a page at a time.
    #[oai(
        path = "/groups/:id/members",
        method = "get",
        operation_id = "listGroupMembers"
    )]
    async fn group_members(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// 1..=1000, default 100.
        limit: Query<Option<u64>>,
    ) -> Result<Json<MemberPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 100, 1000)?;
        let items = roster
            .group_members(&id.0, cursor.0.as_deref(), limit)
            .await?;
        let next_cursor = next_cursor(&items, limit, Clone::clone);
        Ok(Json(MemberPage { items, next_cursor }))
    }

    /// Get a group
    ///
    /// Scope `read`.
    #[oai(path = "/groups/:id", method = "get", operation_id = "getGroup")]
    async fn get_group(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<GroupOut>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        Ok(Json(roster.get_group(&id.0).await?.into()))
    }

    /// Create a group
    ///
    /// Scope `apps:write`. A static group lists its members; a rule group computes them from
    /// identity fields.
    #[oai(path = "/groups", method = "post", operation_id = "createGroup")]
    async fn create_group(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        body: JsonBody<GroupCreate>,
    ) -> Result<GroupCreated, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let b = body.0;
        let changes = GroupChanges {
            name: Some(b.name),
            members: b.members,
            rule: parse_rule(b.rule)?,
        };
        Ok(GroupCreated::Created(Json(
            roster.create_group(principal, changes).await?.into(),
        )))
    }

    /// Change a group
    ///
    /// Scope `apps:write`. Rename it, or replace its members or its rule.
    #[oai(path = "/groups/:id", method = "patch", operation_id = "updateGroup")]
    async fn update_group(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        body: JsonBody<GroupPatch>,
    ) -> Result<Json<GroupOut>, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let b = body.0;
        let changes = GroupChanges {
            name: b.name,
            members: b.members,
            rule: parse_rule(b.rule)?,
        };
        Ok(Json(
            roster.update_group(principal, &id.0, changes).await?.into(),
        ))
    }

    /// Delete a group
    ///
    /// Scope `apps:write`. In the apps that push it, only target groups roster created are deleted,
    /// never one it adopted.
    #[oai(path = "/groups/:id", method = "delete", operation_id = "deleteGroup")]
    async fn delete_group(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Deleted, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        roster.delete_group(principal, &id.0).await?;
        Ok(Deleted::NoContent)
    }
}
