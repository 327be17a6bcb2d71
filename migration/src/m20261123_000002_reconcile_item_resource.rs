//! Reconciliation reads back pushed groups as well as users: an item says which kind of
//! resource it is about (`user` for every item recorded before), and group items carry the
//! group's name.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one change at a time.
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .add_column(
                    ColumnDef::new(ReconcileItem::Resource)
                        .text()
                        .not_null()
                        .default("user"),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .add_column(ColumnDef::new(ReconcileItem::DisplayName).text().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .drop_column(ReconcileItem::DisplayName)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .drop_column(ReconcileItem::Resource)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ReconcileItem {
    Table,
    Resource,
    DisplayName,
}
