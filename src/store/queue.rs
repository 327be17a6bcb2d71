//! The durable job queue's SQL (DESIGN §3, §5). This part: enqueueing with coalescing.
//!
//! Invariant: at most one `pending` job per (app, resource) — the partial unique index
//! `uq_job_pending` — so a burst of changes to one person becomes one delivery that renders
//! the person as they are when it runs.
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbErr, TransactionSession, TransactionTrait};

use super::entity::{identity, job, link};

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
    /// A target account that belongs to no identity (an `unmatched` one that reconciliation
    /// deprovisions); `resource_id` is the target's id.
    Account,
}

impl ResourceKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::User => "user",
            ResourceKind::Group => "group",
            ResourceKind::Account => "account",
        }
    }

    /// The stored `resource_kind`; anything unknown is a user, as before `account` existed.
    #[must_use]
    pub fn parse(raw: &str) -> Self {
        match raw {
            "group" => ResourceKind::Group,
            "account" => ResourceKind::Account,
            _ => ResourceKind::User,
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
/// merged job keeps the higher-priority lane, the earlier `run_at` and the earlier enqueue time
/// (so event-to-target latency is measured from the first change it carries). A job's enqueue
/// time is when it is wanted: now, or its `run_at` if that is later (a scheduled delete). Requests for the
/// same resource within `jobs` are merged first, by the same rules (PostgreSQL refuses to
/// update one row twice in one statement), and written in key order.
pub async fn enqueue(conn: &impl ConnectionTrait, jobs: &[JobRequest]) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    let jobs = coalesce(jobs);
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
                // A job scheduled for later (a delete `delete_after_days` out) is wanted from
                // its date on: it is no stall before then, and the latency of a change that
                // coalesces into it is measured from that change, not from the schedule.
                now_ms.max(j.run_at_ms).into(),
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
            .value(
                job::Column::EnqueuedAt,
                Expr::cust(
                    "CASE WHEN excluded.enqueued_at < job.enqueued_at THEN excluded.enqueued_at ELSE job.enqueued_at END",
                ),
            )
            .value(job::Column::UpdatedAt, Expr::cust("excluded.updated_at"))
            .to_owned(),
        );
        conn.execute(&insert).await?;
    }
    Ok(())
}

/// One request per (app, resource), merged as the upsert in `enqueue` merges a request into a
/// pending job: higher-priority lane, earlier `run_at`, the later HR event if it names one.
fn coalesce(jobs: &[JobRequest]) -> Vec<JobRequest> {
    let mut merged: std::collections::BTreeMap<(&str, &str, &str), JobRequest> =
        std::collections::BTreeMap::new();
    for j in jobs {
        let key = (j.app_id.as_str(), j.kind.as_str(), j.resource_id.as_str());
        match merged.get_mut(&key) {
            None => {
                merged.insert(key, j.clone());
            }
            Some(m) => {
                if j.lane.priority() < m.lane.priority() {
                    m.lane = j.lane;
                }
                m.run_at_ms = m.run_at_ms.min(j.run_at_ms);
                if j.hr_event_id.is_some() {
                    m.hr_event_id.clone_from(&j.hr_event_id);
                }
            }
        }
    }
    merged.into_values().collect()
}

/// How long a claim holds a job before another instance may take it over.
pub const LEASE_MS: i64 = 30_000;

fn stmt(conn: &impl ConnectionTrait, sql: &str, values: Vec<sea_orm::Value>) -> sea_orm::Statement {
    let backend = conn.get_database_backend();
    if backend == sea_orm::DbBackend::Postgres {
        return sea_orm::Statement::from_sql_and_values(backend, sql, values);
    }
    // Written with PostgreSQL's numbered `$n`; SQLite's `?` binds in order of appearance, so
    // the values are rearranged to follow the numbers as they appear in the text.
    let (sql, ordered) = positional(sql, &values);
    sea_orm::Statement::from_sql_and_values(backend, sql, ordered)
}

/// `$n` placeholders → `?`, with the values in the order the placeholders appear.
fn positional(sql: &str, values: &[sea_orm::Value]) -> (String, Vec<sea_orm::Value>) {
    let mut out = String::with_capacity(sql.len());
    let mut ordered = Vec::with_capacity(values.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            if let Some(v) = n.checked_sub(1).and_then(|i| values.get(i)) {
                ordered.push(v.clone());
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    (out, ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(resource_id: &str, lane: Lane, run_at_ms: i64, event: Option<&str>) -> JobRequest {
        JobRequest {
            app_id: "a".into(),
            kind: ResourceKind::Group,
            resource_id: resource_id.into(),
            lane,
            run_at_ms,
            hr_event_id: event.map(str::to_owned),
        }
    }

    #[test]
    fn requests_for_one_resource_merge_like_the_upsert() {
        let merged = coalesce(&[
            request("g2", Lane::Normal, 50, Some("e1")),
            request("g1", Lane::Normal, 10, None),
            request("g2", Lane::Deprovision, 70, None),
            request("g2", Lane::Reconcile, 20, Some("e2")),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].resource_id, "g1");
        let g2 = &merged[1];
        assert_eq!(g2.lane, Lane::Deprovision);
        assert_eq!(g2.run_at_ms, 20);
        assert_eq!(g2.hr_event_id.as_deref(), Some("e2"));
    }

    #[test]
    fn numbered_placeholders_bind_by_number_on_sqlite() {
        let values: Vec<sea_orm::Value> = vec![1i64.into(), "two".into(), 3i64.into()];
        let (sql, ordered) = positional("SET a = $2 WHERE b = $1 AND c = $3 AND d = $1", &values);
        assert_eq!(sql, "SET a = ? WHERE b = ? AND c = ? AND d = ?");
        let want: Vec<sea_orm::Value> = vec!["two".into(), 1i64.into(), 3i64.into(), 1i64.into()];
        assert_eq!(ordered, want);
    }
}

/// Claims up to `limit` due jobs for `owner`, highest lane first, skipping apps that are not
/// active and resources that already have a running job (so one account never sees two
/// deliveries at once). On PostgreSQL rows locked by another instance's claim are skipped.
pub async fn claim(
    conn: &impl ConnectionTrait,
    owner: &str,
    now_ms: i64,
    limit: u64,
) -> Result<Vec<job::Model>, DbErr> {
    use sea_orm::FromQueryResult;
    let lock = if super::is_postgres(conn) {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE job SET state = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3 \
         WHERE id IN (SELECT j.id FROM job j \
             WHERE j.state = 'pending' AND j.run_at <= $4 \
               AND j.app_id IN (SELECT a.id FROM app a WHERE a.state = 'active') \
               AND NOT EXISTS (SELECT 1 FROM job r WHERE r.state = 'running' AND r.app_id = j.app_id \
                               AND r.resource_kind = j.resource_kind AND r.resource_id = j.resource_id) \
             ORDER BY j.priority, j.run_at, j.id LIMIT $5 {lock}) \
         RETURNING *"
    );
    let values = vec![
        owner.into(),
        (now_ms + LEASE_MS).into(),
        chrono::Utc::now().into(),
        now_ms.into(),
        (limit as i64).into(),
    ];
    let mut jobs = job::Model::find_by_statement(stmt(conn, &sql, values))
        .all(conn)
        .await?;
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// These jobs are done.
pub async fn complete_many(conn: &impl ConnectionTrait, ids: &[i64]) -> Result<(), DbErr> {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    for chunk in ids.chunks(1_000) {
        job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value("done"))
            .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(job::Column::LeaseUntil, Expr::value(Option::<i64>::None))
            .col_expr(job::Column::LastError, Expr::value(Option::<String>::None))
            .col_expr(job::Column::UpdatedAt, Expr::value(chrono::Utc::now()))
            .filter(job::Column::Id.is_in(chunk.iter().copied()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Back to `pending` at `run_at_ms`. If a newer pending job for the same resource was queued
/// meanwhile, this one is superseded (the newer one renders the latest state anyway) and is
/// closed instead. The partial unique index decides, so a concurrent enqueue cannot slip in
/// between a check and the update.
pub async fn retry(
    conn: &(impl ConnectionTrait + TransactionTrait),
    id: i64,
    run_at_ms: i64,
    error: Option<&str>,
    count_attempt: bool,
) -> Result<(), DbErr> {
    let attempts = if count_attempt {
        "attempts"
    } else {
        "attempts - 1"
    };
    let sql = format!(
        "UPDATE job SET state = 'pending', run_at = $1, lease_owner = NULL, lease_until = NULL, \
         attempts = {attempts}, last_error = $2, updated_at = $3 WHERE id = $4"
    );
    let values = vec![
        run_at_ms.into(),
        error.map(str::to_owned).into(),
        chrono::Utc::now().into(),
        id.into(),
    ];
    back_to_pending(conn, id, stmt(conn, &sql, values)).await
}

/// Runs `update` (which makes job `id` pending); on a unique violation — a newer pending job
/// exists for the same resource — closes job `id` as superseded. The update runs under a
/// savepoint (a transaction of its own on a plain connection): on PostgreSQL a failed
/// statement would otherwise abort the surrounding transaction.
async fn back_to_pending(
    conn: &(impl ConnectionTrait + TransactionTrait),
    id: i64,
    update: sea_orm::Statement,
) -> Result<(), DbErr> {
    let attempt = conn.begin().await?;
    let result = attempt.execute_raw(update).await;
    match result {
        Ok(_) => attempt.commit().await,
        Err(e) if super::is_unique_violation(&e) => {
            attempt.rollback().await?;
            let sql = "UPDATE job SET state = 'done', lease_owner = NULL, lease_until = NULL, \
                       last_error = 'superseded by a newer change', updated_at = $1 WHERE id = $2";
            conn.execute_raw(stmt(conn, sql, vec![chrono::Utc::now().into(), id.into()]))
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A dead letter: kept with its reason until someone retries it through the API.
pub async fn dead(conn: &impl ConnectionTrait, id: i64, error: &str) -> Result<(), DbErr> {
    let sql = "UPDATE job SET state = 'dead', lease_owner = NULL, lease_until = NULL, last_error = $1, updated_at = $2 WHERE id = $3";
    conn.execute_raw(stmt(
        conn,
        sql,
        vec![error.into(), chrono::Utc::now().into(), id.into()],
    ))
    .await?;
    Ok(())
}

/// Extends the leases of `owner`'s jobs in `ids` — those its workers are running now. A job of
/// `owner`'s that is not among them (its worker ended but could not record the outcome) keeps
/// its lease until it expires and is reclaimed.
pub async fn renew(
    conn: &impl ConnectionTrait,
    owner: &str,
    ids: &[i64],
    now_ms: i64,
) -> Result<u64, DbErr> {
    if ids.is_empty() {
        return Ok(0);
    }
    // Integers, so listing them in the text is safe.
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE job SET lease_until = $1 WHERE state = 'running' AND lease_owner = $2 AND id IN ({list})"
    );
    Ok(conn
        .execute_raw(stmt(
            conn,
            &sql,
            vec![(now_ms + LEASE_MS).into(), owner.into()],
        ))
        .await?
        .rows_affected())
}

/// Returns running jobs whose lease expired (their instance died) — or all of `owner`'s, at
/// shutdown — to `pending`. A job superseded by a newer pending one is closed instead.
pub async fn release(
    conn: &(impl ConnectionTrait + TransactionTrait),
    owner: Option<&str>,
    now_ms: i64,
) -> Result<u64, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let mut q = job::Entity::find().filter(job::Column::State.eq("running"));
    q = match owner {
        Some(o) => q.filter(job::Column::LeaseOwner.eq(o)),
        None => q.filter(job::Column::LeaseUntil.lt(now_ms)),
    };
    let stuck = q.all(conn).await?;
    let mut released = 0;
    for j in stuck {
        // Only if it is still the same lease: another instance may have just finished it.
        let sql = "UPDATE job SET state = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1 \
                   WHERE id = $2 AND state = 'running' AND lease_owner = $3";
        let values = vec![
            chrono::Utc::now().into(),
            j.id.into(),
            j.lease_owner.clone().into(),
        ];
        back_to_pending(conn, j.id, stmt(conn, sql, values)).await?;
        // It may have been mid-write when its instance died: what the target holds is unknown.
        if ResourceKind::parse(&j.resource_kind) == ResourceKind::User {
            forget_snapshot(conn, &j.app_id, ResourceKind::User, &j.resource_id).await?;
            if could_have_created(conn, &j).await? {
                mark_create_unsure(conn, &j.app_id, &j.resource_id).await?;
            }
        }
        released += 1;
    }
    Ok(released)
}

/// How long before a job's claim a change to its person may still have been unread by it: the
/// identity's `updated_at` is taken before its transaction commits.
const CHANGE_COMMIT_MARGIN_MS: i64 = 30_000;

/// Whether a released user job may have sent a create. Only a job that read an active person
/// can (delivery creates for people in scope, and scope requires `active`). A job whose person
/// is gone, or was already inactive well before the job was claimed (its `updated_at`, set
/// by the claim), never created: marking it unsure would make a later delivery look the
/// person up and adopt, then deprovision, an account roster never made.
async fn could_have_created(conn: &impl ConnectionTrait, j: &job::Model) -> Result<bool, DbErr> {
    use sea_orm::EntityTrait;
    let Some(person) = identity::Entity::find_by_id(j.resource_id.as_str())
        .one(conn)
        .await?
    else {
        return Ok(false);
    };
    let changed_ms = person.updated_at.timestamp_millis();
    Ok(person.status == "active"
        || changed_ms + CHANGE_COMMIT_MARGIN_MS > j.updated_at.timestamp_millis())
}

/// A user job that died may have created an account it never recorded: a link without an
/// account (or no link) becomes `pending`, so the next delivery looks for the account before it
/// creates one or, if the person is out of scope by then, deprovisions it.
async fn mark_create_unsure(
    conn: &impl ConnectionTrait,
    app_id: &str,
    resource_id: &str,
) -> Result<(), DbErr> {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
    let sql = "UPDATE link SET state = 'pending', updated_at = $1 \
               WHERE app_id = $2 AND resource_kind = 'user' AND resource_id = $3 AND target_id IS NULL";
    let values = vec![chrono::Utc::now().into(), app_id.into(), resource_id.into()];
    if conn
        .execute_raw(stmt(conn, sql, values))
        .await?
        .rows_affected()
        > 0
    {
        return Ok(());
    }
    let exists = link::Entity::find()
        .filter(link::Column::AppId.eq(app_id))
        .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
        .filter(link::Column::ResourceId.eq(resource_id))
        .one(conn)
        .await?
        .is_some();
    if !exists {
        let now = chrono::Utc::now();
        link::ActiveModel {
            app_id: Set(app_id.to_owned()),
            resource_kind: Set(ResourceKind::User.as_str().to_owned()),
            resource_id: Set(resource_id.to_owned()),
            state: Set("pending".to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// Marks the link's snapshot (the state last applied to the target) as unknown, after a write
/// whose outcome roster cannot know; the next delivery then sends the whole desired state.
pub async fn forget_snapshot(
    conn: &impl ConnectionTrait,
    app_id: &str,
    kind: ResourceKind,
    resource_id: &str,
) -> Result<(), DbErr> {
    let sql = "UPDATE link SET snapshot = NULL, snapshot_hash = NULL, updated_at = $1 \
               WHERE app_id = $2 AND resource_kind = $3 AND resource_id = $4 AND target_id IS NOT NULL";
    let values = vec![
        chrono::Utc::now().into(),
        app_id.into(),
        kind.as_str().into(),
        resource_id.into(),
    ];
    conn.execute_raw(stmt(conn, sql, values)).await?;
    Ok(())
}

/// How many jobs of `app_id` wait in `lane`.
pub async fn pending_in_lane(
    conn: &impl ConnectionTrait,
    app_id: &str,
    lane: Lane,
) -> Result<u64, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    job::Entity::find()
        .filter(job::Column::AppId.eq(app_id))
        .filter(job::Column::State.eq("pending"))
        .filter(job::Column::Lane.eq(lane.as_str()))
        .count(conn)
        .await
}

/// Pending jobs per (app, lane) and the oldest pending age per app, for the queue gauges and
/// the app status. A job scheduled for later is enqueued at its date (see [`enqueue`]), so
/// until then its age is negative and, clamped at zero by the readers, no stall.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct LaneDepth {
    pub app_id: String,
    pub lane: String,
    pub depth: i64,
    pub oldest_enqueued_at: Option<i64>,
}

pub async fn depths(conn: &impl ConnectionTrait) -> Result<Vec<LaneDepth>, DbErr> {
    use sea_orm::FromQueryResult;
    let sql = "SELECT app_id, lane, COUNT(*) AS depth, MIN(enqueued_at) AS oldest_enqueued_at \
               FROM job WHERE state = 'pending' GROUP BY app_id, lane";
    LaneDepth::find_by_statement(stmt(conn, sql, vec![]))
        .all(conn)
        .await
}
