//! The audit trail: append-only, one row per write through the API. There is no update or
//! delete path for audit rows anywhere in roster.
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;

use super::{Principal, Roster, ServiceResult};
use crate::store::entity::audit;

pub struct AuditEntry<'a> {
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

pub async fn record(
    conn: &impl ConnectionTrait,
    principal: Option<&Principal>,
    entry: AuditEntry<'_>,
) -> ServiceResult<()> {
    audit::ActiveModel {
        api_key_id: Set(principal.map(|p| p.key_id.clone())),
        action: Set(entry.action.to_owned()),
        object_type: Set(entry.object_type.to_owned()),
        object_id: Set(entry.object_id.map(str::to_owned)),
        before: Set(entry.before),
        after: Set(entry.after),
        created_at: Set(chrono::Utc::now()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

impl Roster {
    /// Newest first; `before` is the cursor (an audit id) for the next page.
    pub async fn list_audit(
        &self,
        before: Option<i64>,
        limit: u64,
    ) -> ServiceResult<Vec<audit::Model>> {
        use sea_orm::ColumnTrait;
        let mut q = audit::Entity::find().order_by_desc(audit::Column::Id);
        if let Some(before) = before {
            q = q.filter(audit::Column::Id.lt(before));
        }
        Ok(q.limit(limit).all(self.db()).await?)
    }
}
