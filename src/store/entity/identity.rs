use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "identity")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub employee_id: String,
    pub user_name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub manager_employee_id: Option<String>,
    pub attributes: Json,
    pub status: String,
    pub last_event_at: Option<DateTimeUtc>,
    /// When each field and the status were last set (`occurred_at` of the setting event), by
    /// field name; `None` for identities written before it was kept (see `ingest::times`).
    pub field_times: Option<Json>,
    pub version: i64,
    /// The HR source that last wrote the person (`hr` unless an event or snapshot named one).
    pub source: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
