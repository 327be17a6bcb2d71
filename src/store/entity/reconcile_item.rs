use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "reconcile_item")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub run_id: String,
    pub class: String,
    pub target_id: Option<String>,
    pub user_name: Option<String>,
    pub identity_id: Option<String>,
    pub differences: Json,
    pub action: String,
    pub held: bool,
    /// `user` or `group`.
    pub resource: String,
    /// Group items: the group's name.
    pub display_name: Option<String>,
    /// An adoption's account as read, waiting until the run has read the whole listing (then
    /// linked as the link's snapshot, and cleared).
    pub account: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
