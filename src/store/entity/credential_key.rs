use sea_orm::entity::prelude::*;
use serde::Serialize;

/// The credential key that seals new app credentials: one row, `slot = 'current'`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "credential_key")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub slot: String,
    /// `SecretBox::key_id` of the current key (a fingerprint, not the key).
    pub key_id: String,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
