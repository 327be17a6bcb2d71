//! An index of the unsure creates: links `pending` without an account, left by a create whose
//! answer was lost. Before an adoption, delivery reads the app's unsure creates of other
//! people (that account may be one of theirs); without this index that read went through
//! every link of the app. Partial: only unsure creates are in it, usually none. Its columns
//! are those the read names, so that SQLite prefers it to `uq_link_app_resource`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // A partial index is portable between SQLite and PostgreSQL only as SQL.
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_link_unsure ON link (app_id, resource_kind, state) \
                 WHERE resource_kind = 'user' AND state = 'pending' AND target_id IS NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_link_unsure")
            .await
            .map(|_| ())
    }
}
