//! Who paused an app: `operator` (`POST /apps/{id}/pause`) or `guard` (the deletion guard on
//! HR events). Only a pause by the guard can be ended by an approval of its held deprovisions;
//! any other resume leaves the guard counting. Apps paused before this column existed are
//! classified by the reason the guard writes.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .add_column(ColumnDef::new(App::PausedBy).text().null())
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared(
            "UPDATE app SET paused_by = 'guard' \
             WHERE state = 'paused' AND state_reason LIKE 'deletion guard on HR events%'",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE app SET paused_by = 'operator' WHERE state = 'paused' AND paused_by IS NULL",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .drop_column(App::PausedBy)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum App {
    Table,
    PausedBy,
}
