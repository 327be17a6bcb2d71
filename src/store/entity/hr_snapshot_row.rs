use sea_orm::entity::prelude::*;
use serde::Serialize;

/// One person of an HR snapshot; kept until the snapshot is applied or cancelled.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "hr_snapshot_row")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub snapshot_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub employee_id: String,
    /// Line (CSV, NDJSON) or element number (JSON array); `None` for a leaver absent from it.
    pub line: Option<i64>,
    /// The employee as the file carries it (the `employee` shape of events).
    pub record: Option<Json>,
    /// `joiner`, `mover` or `leaver` once diffed; `None` for unchanged.
    pub kind: Option<String>,
    pub applied: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
