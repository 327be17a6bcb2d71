//! A reconcile run adopts an account only once the whole listing was read (a second account
//! matching the same person makes both a conflict, whichever came first). Until then the
//! account as read waits on its item, as the snapshot the adoption's link will hold; the run
//! clears it once applied.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .add_column(ColumnDef::new(ReconcileItem::Account).json_binary().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReconcileItem::Table)
                .drop_column(ReconcileItem::Account)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ReconcileItem {
    Table,
    Account,
}
