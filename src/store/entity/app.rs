use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "app")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub base_url: String,
    pub auth_type: String,
    pub auth_config: Json,
    #[serde(skip)]
    pub secret_ciphertext: Option<String>,
    pub secret_key_id: Option<String>,
    pub config: Json,
    pub state: String,
    pub state_reason: Option<String>,
    /// Who paused it, while `paused`: `operator` or `guard` (the deletion guard on HR events).
    pub paused_by: Option<String>,
    /// The catalogue connector the app was built from (`name`, `version`, `params`,
    /// `override_vendor_limits`); `None` for an app configured by hand.
    pub connector: Option<Json>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
