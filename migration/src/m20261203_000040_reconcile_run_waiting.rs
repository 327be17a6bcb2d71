//! A `running` reconcile run that waits for a free slot of its instance
//! (`ROSTER_RECONCILE_CONCURRENCY`) says so: `waiting` is true from when it found every slot
//! taken until it gets one. Runs recorded before this column never waited.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReconcileRun::Table)
                .add_column(
                    ColumnDef::new(ReconcileRun::Waiting)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReconcileRun::Table)
                .drop_column(ReconcileRun::Waiting)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ReconcileRun {
    Table,
    Waiting,
}
