//! HR event ordering per field: an identity remembers when each of its fields (and its status)
//! was last set, by the `occurred_at` of the event that set it, so an older event still fills
//! the fields no newer event set. `NULL` for identities written before: every field then counts
//! as set at `last_event_at`. An `hr_event` keeps a hash of its canonical payload, so a repeated
//! `event_id` with another payload is told apart from a true duplicate without reading payloads
//! (`NULL` for events stored before: their payload is hashed when needed).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one change at a time.
        m.alter_table(
            Table::alter()
                .table(Identity::Table)
                .add_column(ColumnDef::new(Identity::FieldTimes).json_binary().null())
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(HrEvent::Table)
                .add_column(ColumnDef::new(HrEvent::PayloadHash).text().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(HrEvent::Table)
                .drop_column(HrEvent::PayloadHash)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Identity::Table)
                .drop_column(Identity::FieldTimes)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Identity {
    Table,
    FieldTimes,
}

#[derive(DeriveIden)]
enum HrEvent {
    Table,
    PayloadHash,
}
