//! The catalogue connector an app was built from: `{"name", "version", "params",
//! "override_vendor_limits"}`, or NULL for an app configured by hand (every app made before
//! the catalogue existed). Kept apart from `config` so that a newer connector version can be
//! compared with what the app was built from, without ever changing the app by itself.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .add_column(ColumnDef::new(App::Connector).json_binary().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .drop_column(App::Connector)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum App {
    Table,
    Connector,
}
