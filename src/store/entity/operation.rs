use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "operation")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub app_id: String,
    pub job_id: Option<i64>,
    pub resource_kind: String,
    pub resource_id: String,
    pub operation: String,
    pub method: String,
    pub path: String,
    pub status: Option<i32>,
    pub duration_ms: i64,
    pub attempt: i32,
    pub outcome: String,
    pub error: Option<String>,
    pub trace_id: Option<String>,
    pub hr_event_id: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
