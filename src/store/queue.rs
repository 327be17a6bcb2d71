//! The durable job queue's SQL (DESIGN §3, §5). This part: enqueueing with coalescing.
//!
//! Invariant: at most one `pending` job per (app, resource) — the partial unique index
//! `uq_job_pending` — so a burst of changes to one person becomes one delivery that renders
//! the person as they are when it runs.
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbErr};

use super::entity::job;

/// Delivery lanes, highest priority first: leavers overtake every other job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    Deprovision,
    Normal,
    Reconcile,
}

impl Lane {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Deprovision => "deprovision",
            Lane::Normal => "normal",
            Lane::Reconcile => "reconcile",
        }
    }

    #[must_use]
    pub fn priority(self) -> i32 {
        match self {
            Lane::Deprovision => 0,
            Lane::Normal => 1,
            Lane::Reconcile => 2,
        }
    }

    pub const ALL: [Lane; 3] = [Lane::Deprovision, Lane::Normal, Lane::Reconcile];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    User,
    Group,
}

impl ResourceKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::User => "user",
            ResourceKind::Group => "group",
        }
    }
}

/// A request to make one app's copy of one resource match roster.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub app_id: String,
    pub kind: ResourceKind,
    pub resource_id: String,
    pub lane: Lane,
    pub run_at_ms: i64,
    pub hr_event_id: Option<String>,
}

#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Inserts the jobs, coalescing each into the pending job of the same (app, resource): the
/// merged job keeps the higher-priority lane, the earlier `run_at` and the first enqueue time
/// (so event-to-target latency is measured from the first change it carries).
pub async fn enqueue(conn: &impl ConnectionTrait, jobs: &[JobRequest]) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let now_ms = now.timestamp_millis();
    // Bounded statement size: SQLite allows 32766 bound values; 12 per row.
    for chunk in jobs.chunks(500) {
        let mut insert = Query::insert();
        insert.into_table(job::Entity).columns([
            job::Column::AppId,
            job::Column::ResourceKind,
            job::Column::ResourceId,
            job::Column::Lane,
            job::Column::Priority,
            job::Column::RunAt,
            job::Column::Attempts,
            job::Column::State,
            job::Column::HrEventId,
            job::Column::EnqueuedAt,
            job::Column::CreatedAt,
            job::Column::UpdatedAt,
        ]);
        for j in chunk {
            insert.values_panic([
                j.app_id.clone().into(),
                j.kind.as_str().into(),
                j.resource_id.clone().into(),
                j.lane.as_str().into(),
                j.lane.priority().into(),
                j.run_at_ms.into(),
                0i32.into(),
                "pending".into(),
                j.hr_event_id.clone().into(),
                now_ms.into(),
                now.into(),
                now.into(),
            ]);
        }
        insert.on_conflict(
            OnConflict::columns([
                job::Column::AppId,
                job::Column::ResourceKind,
                job::Column::ResourceId,
            ])
            // A literal, not a bound value: SQLite matches the conflict target to the partial
            // index only when the predicate is textually the index's own.
            .target_and_where(Expr::cust("state = 'pending'"))
            .value(
                job::Column::Lane,
                Expr::cust(
                    "CASE WHEN excluded.priority < job.priority THEN excluded.lane ELSE job.lane END",
                ),
            )
            .value(
                job::Column::Priority,
                Expr::cust(
                    "CASE WHEN excluded.priority < job.priority THEN excluded.priority ELSE job.priority END",
                ),
            )
            .value(
                job::Column::RunAt,
                Expr::cust(
                    "CASE WHEN excluded.run_at < job.run_at THEN excluded.run_at ELSE job.run_at END",
                ),
            )
            .value(
                job::Column::HrEventId,
                Expr::cust("COALESCE(excluded.hr_event_id, job.hr_event_id)"),
            )
            .value(job::Column::UpdatedAt, Expr::cust("excluded.updated_at"))
            .to_owned(),
        );
        conn.execute(&insert).await?;
    }
    Ok(())
}
