//! The job indexes leave finished jobs out. A job's row is written three times (queued,
//! claimed, done), and each write updates every index whose columns or condition change:
//! `idx_job_claim (state, priority, run_at)` and `idx_job_app_state (app_id, state)` held every
//! job ever run and moved each job's entries at its claim and again at its end. Now:
//!
//! - `idx_job_claim (priority, run_at) WHERE state = 'pending'`: the queue's head, all the
//!   claim reads; a job leaves it at its claim and is never in it again unless retried;
//! - `idx_job_app (app_id)`: an app's jobs (listings, and the cascade when an app is
//!   deleted); written once per job, untouched by its changes of state;
//! - `idx_job_dead (app_id) WHERE state = 'dead'`: the dead letters per app, for the status
//!   and the listings.
//!
//! With `uq_job_pending` and `idx_job_running` (partial, by resource), a claim moves a job
//! between three small indexes and its end takes it out of one; the finished jobs, nearly all
//! of the table, sit only in `idx_job_app`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Partial indexes are portable between SQLite and PostgreSQL only as SQL.
        let conn = m.get_connection();
        for sql in [
            "DROP INDEX IF EXISTS idx_job_claim",
            "DROP INDEX IF EXISTS idx_job_app_state",
            "CREATE INDEX IF NOT EXISTS idx_job_claim ON job (priority, run_at) \
             WHERE state = 'pending'",
            "CREATE INDEX IF NOT EXISTS idx_job_app ON job (app_id)",
            "CREATE INDEX IF NOT EXISTS idx_job_dead ON job (app_id) WHERE state = 'dead'",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        for sql in [
            "DROP INDEX IF EXISTS idx_job_dead",
            "DROP INDEX IF EXISTS idx_job_app",
            "DROP INDEX IF EXISTS idx_job_claim",
            "CREATE INDEX IF NOT EXISTS idx_job_claim ON job (state, priority, run_at)",
            "CREATE INDEX IF NOT EXISTS idx_job_app_state ON job (app_id, state)",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
