use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "hr_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub event_id: String,
    pub event_type: String,
    pub employee_id: String,
    pub occurred_at: DateTimeUtc,
    pub payload: Json,
    /// SHA-256 of the canonical payload; `None` for events stored before it was kept.
    pub payload_hash: Option<String>,
    pub result: String,
    pub detail: Option<String>,
    pub api_key_id: Option<String>,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
