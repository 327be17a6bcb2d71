//! `/api-keys` and `/audit`.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::ApiTags;
use super::apps::Deleted;
use super::auth::ApiKey;
use super::body::JsonBody;
use super::paging::{next_cursor, page_limit};
use super::problem::ApiError;
use crate::service::keys::scope_names;
use crate::service::{Permission, Roster};
use crate::store::entity::api_key;

#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    pub name: String,
    /// Any of `admin`, `apps:write`, `events:write`, `read`.
    pub scopes: Vec<String>,
}

#[derive(Object)]
pub struct KeyOut {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// When the key last authenticated a request, to the minute (absent: never).
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<DateTime<Utc>>,
}

fn key_out(m: &api_key::Model) -> KeyOut {
    KeyOut {
        id: m.id.clone(),
        name: m.name.clone(),
        scopes: scope_names(m),
        created_at: m.created_at,
        last_used_at: m.last_used_at,
    }
}

#[derive(Object)]
pub struct KeyCreated {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The key: shown this once, stored only as a hash.
    pub token: String,
}

#[derive(ApiResponse)]
pub enum KeyCreatedResponse {
    #[oai(status = 201)]
    Created(Json<KeyCreated>),
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AuditOut {
    pub id: i64,
    /// The API key that made the change.
    pub api_key_id: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Object)]
pub struct AuditPage {
    pub items: Vec<AuditOut>,
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<i64>,
}

pub struct AdminApi;

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create an API key
    ///
    /// Scope `admin`. The token is in this answer only.
    #[oai(path = "/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create_key(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        body: JsonBody<KeyCreate>,
    ) -> Result<KeyCreatedResponse, ApiError> {
        let principal = auth.require(Permission::Admin)?;
        let created = roster
            .create_key(principal, &body.0.name, &body.0.scopes)
            .await?;
        let k = key_out(&created.key);
        Ok(KeyCreatedResponse::Created(Json(KeyCreated {
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            created_at: k.created_at,
            token: created.token.expose_secret().to_owned(),
        })))
    }

    /// List API keys
    ///
    /// Scope `admin`. Without their secrets.
    #[oai(path = "/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list_keys(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
    ) -> Result<Json<Vec<KeyOut>>, ApiError> {
        auth.require(Permission::Admin)?;
        Ok(Json(
            roster.list_keys().await?.iter().map(key_out).collect(),
        ))
    }

    /// Revoke an API key
    ///
    /// Scope `admin`.
    #[oai(
        path = "/api-keys/:id",
        method = "delete",
        operation_id = "revokeApiKey"
    )]
    async fn delete_key(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Deleted, ApiError> {
        let principal = auth.require(Permission::Admin)?;
        roster.delete_key(principal, &id.0).await?;
        Ok(Deleted::NoContent)
    }

    /// Read the audit trail
    ///
    /// Scope `read`. Newest first. Append-only: there is no route to change it.
    #[oai(path = "/audit", method = "get", operation_id = "listAuditEntries")]
    async fn audit(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        cursor: Query<Option<i64>>,
        /// 1..=1000, default 100.
        limit: Query<Option<u64>>,
    ) -> Result<Json<AuditPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 100, 1000)?;
        let rows = roster.list_audit(cursor.0, limit).await?;
        let next_cursor = next_cursor(&rows, limit, |r| r.id);
        Ok(Json(AuditPage {
            items: rows
                .into_iter()
                .map(|r| AuditOut {
                    id: r.id,
                    api_key_id: r.api_key_id,
                    action: r.action,
                    object_type: r.object_type,
                    object_id: r.object_id,
                    before: r.before,
                    after: r.after,
                    created_at: r.created_at,
                })
                .collect(),
            next_cursor,
        }))
    }
}
