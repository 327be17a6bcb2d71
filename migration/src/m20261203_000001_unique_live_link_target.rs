//! One live link per target account: no two identities (or roster groups) of an app may hold
//! the same target `id` in a link that is not `deleted`. Adopting an account that belongs to
//! someone else (a new hire given a leaver's address) is refused by delivery; this index makes
//! the database refuse it too.
//!
//! Existing data may already hold such pairs (adopted before the check existed). The oldest
//! link of each target keeps it; every later one is detached: no target, no snapshot, no
//! scheduled delete, state `error`, with the reason in `last_error`. Its next delivery then
//! finds the account linked to someone else and stops with that conflict, visibly, instead of
//! writing into the account (or deleting it) on the newer identity's behalf.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Written as SQL: a partial unique index and a correlated update read the same on SQLite and
/// PostgreSQL.
const DETACH_LATER_DUPLICATES: &str = "UPDATE link SET \
     last_error = 'conflict: target ' || target_id || ' is also linked to an older link of this app; \
detached by the upgrade to one live link per target account (resolve it by hand)', \
     target_id = NULL, snapshot = NULL, snapshot_hash = NULL, delete_after = NULL, state = 'error' \
     WHERE target_id IS NOT NULL AND state <> 'deleted' AND EXISTS (\
       SELECT 1 FROM link AS older \
       WHERE older.app_id = link.app_id AND older.resource_kind = link.resource_kind \
         AND older.target_id = link.target_id AND older.state <> 'deleted' AND older.id < link.id)";

const CREATE_INDEX: &str = "CREATE UNIQUE INDEX uq_link_live_target \
     ON link (app_id, resource_kind, target_id) \
     WHERE target_id IS NOT NULL AND state <> 'deleted'";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        conn.execute_unprepared(DETACH_LATER_DUPLICATES).await?;
        conn.execute_unprepared(CREATE_INDEX).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX uq_link_live_target")
            .await?;
        Ok(())
    }
}
