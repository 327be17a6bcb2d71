//! Which credential key is current, recorded in the database: an instance still running on a
//! key that `roster rotate-key` has replaced must not seal new credentials with it, and must
//! not start on it. One row, `slot = 'current'`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(CredentialKey::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(CredentialKey::Slot)
                        .string_len(16)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(CredentialKey::KeyId).text().not_null())
                .col(
                    ColumnDef::new(CredentialKey::UpdatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(CredentialKey::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum CredentialKey {
    Table,
    Slot,
    KeyId,
    UpdatedAt,
}
