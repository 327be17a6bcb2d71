//! An app's TLS settings: a private CA and a client certificate (`tls`, readable JSON), and the
//! client certificate's private key, sealed like the app's credential (`tls_key_ciphertext`
//! with the id of the key that sealed it, `tls_key_id`). All null: the system roots, no client
//! certificate.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .add_column(ColumnDef::new(App::Tls).json().null())
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .add_column(ColumnDef::new(App::TlsKeyCiphertext).text().null())
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(App::Table)
                .add_column(ColumnDef::new(App::TlsKeyId).text().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [App::TlsKeyId, App::TlsKeyCiphertext, App::Tls] {
            m.alter_table(
                Table::alter()
                    .table(App::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum App {
    Table,
    Tls,
    TlsKeyCiphertext,
    TlsKeyId,
}
