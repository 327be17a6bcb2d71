use sea_orm::entity::prelude::*;
use serde::Serialize;

/// One HR population file (see `service::snapshot`).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "hr_snapshot")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub source: String,
    pub as_of: DateTimeUtc,
    /// SHA-256 (hex) of the body as received.
    pub content_hash: String,
    /// `csv`, `ndjson` or `json`.
    pub format: String,
    pub state: String,
    /// `{rows, joiners, movers, leavers, unchanged, invalid}`.
    pub counts: Json,
    /// Changes applied so far (progress).
    pub applied: i64,
    /// The first changes of each kind: `{joiners: [..], movers: [..], leavers: [..]}`.
    pub changes: Json,
    /// Row errors: `[{line, employee_id, reason}]`.
    pub errors: Json,
    /// Why it is held, rejected or failed.
    pub reason: Option<String>,
    pub api_key_id: Option<String>,
    pub approved_by: Option<String>,
    pub lease_owner: Option<String>,
    /// Epoch milliseconds.
    pub lease_until: Option<i64>,
    pub received_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
