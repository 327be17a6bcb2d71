//! The durable job queue's SQL (DESIGN §3, §5). This part: enqueueing with coalescing.
//!
//! Invariant: at most one `pending` job per (app, resource) — the partial unique index
//! `uq_job_pending` — so a burst of changes to one person becomes one delivery that renders
//! the person as they are when it runs.
use sea_orm::{ConnectionTrait, DbErr, TransactionSession, TransactionTrait};

use super::entity::{identity, job, link};
use super::shapes;

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
    let backend = conn.get_database_backend();
    // Bounded statement size: SQLite allows 32766 bound values; 12 per row. Lengths that
    // repeat (`shapes`), so the statement is parsed once. Its text is written here and the
    // rows' values moved into it (a query builder would copy every value into a tree first).
    for chunk in shapes::into_chunks(jobs, 512) {
        let rows = chunk.len();
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(rows * 12);
        for j in chunk {
            // A job scheduled for later (a delete `delete_after_days` out) is wanted from its
            // date on: it is no stall before then, and the latency of a change that coalesces
            // into it is measured from that change, not from the schedule.
            let wanted_at = now_ms.max(j.run_at_ms);
            values.extend([
                j.app_id.into(),
                j.kind.as_str().into(),
                j.resource_id.into(),
                j.lane.as_str().into(),
                j.lane.priority().into(),
                j.run_at_ms.into(),
                0i32.into(),
                "pending".into(),
                j.hr_event_id.into(),
                wanted_at.into(),
                now.into(),
                now.into(),
            ]);
        }
        // The conflict target's predicate is a literal, not a bound value: SQLite matches it
        // to the partial index only when it is textually the index's own. A request of a
        // higher lane (a leaver's deprovision into a change failing and waiting to retry)
        // starts a fresh attempt budget: one transient error must not dead-letter it.
        let sql = format!(
            "INSERT INTO job (app_id, resource_kind, resource_id, lane, priority, run_at, \
             attempts, state, hr_event_id, enqueued_at, created_at, updated_at) VALUES {} \
             ON CONFLICT (app_id, resource_kind, resource_id) WHERE state = 'pending' DO UPDATE SET \
             lane = CASE WHEN excluded.priority < job.priority THEN excluded.lane ELSE job.lane END, \
             priority = CASE WHEN excluded.priority < job.priority THEN excluded.priority ELSE job.priority END, \
             attempts = CASE WHEN excluded.priority < job.priority THEN 0 ELSE job.attempts END, \
             run_at = CASE WHEN excluded.run_at < job.run_at THEN excluded.run_at ELSE job.run_at END, \
             hr_event_id = COALESCE(excluded.hr_event_id, job.hr_event_id), \
             enqueued_at = CASE WHEN excluded.enqueued_at < job.enqueued_at THEN excluded.enqueued_at ELSE job.enqueued_at END, \
             updated_at = excluded.updated_at",
            shapes::value_tuples(backend, rows, 12)
        );
        conn.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend, sql, values,
        ))
        .await?;
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

/// How many more jobs a claim may take per app: the room left in each app's claim window
/// (DESIGN §5: the engine claims for an app only what that app can start soon). Apps not
/// listed get `default_room`; apps with no room left are skipped.
#[derive(Debug, Clone, Default)]
pub struct ClaimRooms {
    pub rooms: Vec<(String, u64)>,
    pub default_room: u64,
    /// The room for deprovision-lane jobs of these apps, in place of `rooms`: a leaver is
    /// claimed at once even while the app's window is full of other jobs (it then gets the
    /// app's next slot ahead of them), yet a wave of leavers is bounded too.
    pub first_rooms: Vec<(String, u64)>,
    /// Deprovision-lane jobs only (in `first_rooms`): what the engine claims while the
    /// process's claims are all taken, so that a leaver never waits for a joiner to end.
    pub leavers_only: bool,
}

impl ClaimRooms {
    /// No per-app limit: up to the claim's `limit` from any app.
    #[must_use]
    pub fn unlimited() -> Self {
        Self {
            rooms: Vec::new(),
            default_room: u64::from(u32::MAX),
            first_rooms: Vec::new(),
            leavers_only: false,
        }
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
    claim_within(conn, owner, now_ms, limit, &ClaimRooms::unlimited()).await
}

/// [`claim`], taking from each app at most the room `rooms` gives it: one app's backlog never
/// fills the claim, and an app with no room is not asked for at all. The candidates are the
/// first `limit` due jobs of the apps with room (locked, on PostgreSQL, as they are read),
/// then each app's first ones up to its room.
pub async fn claim_within(
    conn: &impl ConnectionTrait,
    owner: &str,
    now_ms: i64,
    limit: u64,
    rooms: &ClaimRooms,
) -> Result<Vec<job::Model>, DbErr> {
    use sea_orm::FromQueryResult;
    // SQLite, without statistics, would rather walk the app's jobs (`idx_job_app`, every job
    // it ever had) for `j.app_id IN (…)` and sort them than read the queue's head in order.
    let (lock, head) = if super::is_postgres(conn) {
        ("FOR UPDATE SKIP LOCKED", "")
    } else {
        ("", " INDEXED BY idx_job_claim")
    };
    let mut values: Vec<sea_orm::Value> = vec![
        owner.into(),
        (now_ms + LEASE_MS).into(),
        chrono::Utc::now().into(),
        now_ms.into(),
        (limit as i64).into(),
    ];
    let mut placeholder = |v: sea_orm::Value| {
        values.push(v);
        format!("${}", values.len())
    };
    let full: Vec<String> = rooms
        .rooms
        .iter()
        .filter(|(_, room)| *room == 0)
        .map(|(app, _)| placeholder(app.clone().into()))
        .collect();
    let first = Lane::Deprovision.priority();
    let skip_full = if full.is_empty() {
        String::new()
    } else {
        // A full app's deprovisions may still have room of their own.
        format!(
            "AND (j.app_id NOT IN ({}) OR j.priority = {first}) ",
            full.join(", ")
        )
    };
    // A literal: the queue's head index (`priority`, `run_at`) then reads the leavers alone.
    let skip_full = if rooms.leavers_only {
        format!("{skip_full}AND j.priority = {first} ")
    } else {
        skip_full
    };
    let mut cases = String::new();
    for (app, room) in rooms.rooms.iter().filter(|(_, room)| *room > 0) {
        let app = placeholder(app.clone().into());
        let room = placeholder((*room as i64).into());
        cases.push_str(&format!(" WHEN {app} THEN {room}"));
    }
    let default_room = placeholder((rooms.default_room as i64).into());
    let cap = if cases.is_empty() {
        default_room
    } else {
        format!("CASE c.app_id{cases} ELSE {default_room} END")
    };
    let mut first_cases = String::new();
    for (app, room) in &rooms.first_rooms {
        let app = placeholder(app.clone().into());
        let room = placeholder((*room as i64).into());
        first_cases.push_str(&format!(" WHEN {app} THEN {room}"));
    }
    let cap = if first_cases.is_empty() {
        cap
    } else {
        format!(
            "CASE WHEN c.priority = {first} THEN (CASE c.app_id{first_cases} ELSE {cap} END) ELSE {cap} END"
        )
    };
    // `LIMIT CAST($5 AS INTEGER)`, not `LIMIT $5`: SQLite (3.49 on) plans a bare bound LIMIT
    // by its value, so the claim, a long statement run several times a second, would be
    // compiled anew at every run instead of coming from the connection's statement cache.
    let sql = format!(
        "UPDATE job SET state = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3 \
         WHERE id IN (SELECT ranked.id FROM (\
             SELECT c.id, ROW_NUMBER() OVER (PARTITION BY c.app_id ORDER BY c.priority, c.run_at, c.id) AS rn, \
                    {cap} AS room \
             FROM (SELECT j.id, j.app_id, j.priority, j.run_at FROM job j{head} \
                 WHERE j.state = 'pending' AND j.run_at <= $4 \
                   AND j.app_id IN (SELECT a.id FROM app a WHERE a.state = 'active') {skip_full}\
                   AND NOT EXISTS (SELECT 1 FROM job r WHERE r.state = 'running' AND r.app_id = j.app_id \
                                   AND r.resource_kind = j.resource_kind AND r.resource_id = j.resource_id) \
                 ORDER BY j.priority, j.run_at, j.id LIMIT CAST($5 AS INTEGER) {lock}) c\
           ) ranked WHERE ranked.rn <= ranked.room) \
         RETURNING *"
    );
    let mut jobs = job::Model::find_by_statement(stmt(conn, &sql, values))
        .all(conn)
        .await?;
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// The lease a job's end must still hold to be written: the job is `running` under `owner`
/// and, when reclaiming, its lease ran out before `expired_before`. An end, or a release,
/// under any other lease changes nothing (DESIGN §5: a job's end counts only while its lease
/// is held).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub expired_before: Option<i64>,
}

impl<'a> Lease<'a> {
    /// The lease `owner` holds now.
    #[must_use]
    pub fn held_by(owner: &'a str) -> Self {
        Self {
            owner,
            expired_before: None,
        }
    }

    /// `" AND …"` with the lease's conditions, its values numbered from `$first`.
    fn condition(&self, first: usize) -> (String, Vec<sea_orm::Value>) {
        let mut sql = format!(" AND state = 'running' AND lease_owner = ${first}");
        let mut values: Vec<sea_orm::Value> = vec![self.owner.into()];
        if let Some(before) = self.expired_before {
            sql.push_str(&format!(" AND lease_until < ${}", first + 1));
            values.push(before.into());
        }
        (sql, values)
    }
}

/// Of `ids`, those still `running` under `owner`'s lease. On PostgreSQL their rows stay locked
/// until the caller's transaction ends, so no other instance can reclaim them before the ends
/// written in that transaction commit (a reclaim then finds them no longer running).
pub async fn held(
    conn: &impl ConnectionTrait,
    owner: &str,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, DbErr> {
    use sea_orm::FromQueryResult;
    #[derive(FromQueryResult)]
    struct Id {
        id: i64,
    }
    let lock = if super::is_postgres(conn) {
        " FOR UPDATE"
    } else {
        ""
    };
    let mut held = std::collections::HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut values: Vec<sea_orm::Value> = vec![owner.into()];
        let list = bind_ids(&mut values, chunk);
        // In id order: concurrent lockers (renewals) take the rows in the same order.
        let sql = format!(
            "SELECT id FROM job WHERE id IN ({list}) AND state = 'running' AND lease_owner = $1 \
             ORDER BY id{lock}"
        );
        for row in Id::find_by_statement(stmt(conn, &sql, values))
            .all(conn)
            .await?
        {
            held.insert(row.id);
        }
    }
    Ok(held)
}

/// Job ids per `IN (…)` list, padded to a power of two (`shapes`).
const IDS_PER_STATEMENT: usize = 512;

/// Binds `ids`, padded (`shapes`), after `values`; the text of their `IN (…)` list.
fn bind_ids(values: &mut Vec<sea_orm::Value>, ids: &[i64]) -> String {
    let ids = shapes::padded(ids.iter().copied());
    let list = shapes::placeholders(values.len() + 1, ids.len());
    values.extend(ids.into_iter().map(sea_orm::Value::from));
    list
}

/// These jobs are done, those of them still held under `owner`'s lease.
pub async fn complete_many(
    conn: &impl ConnectionTrait,
    owner: &str,
    ids: &[i64],
) -> Result<u64, DbErr> {
    let (lease, mut values) = Lease::held_by(owner).condition(1);
    values.push(chrono::Utc::now().into());
    let mut done = 0;
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut values = values.clone();
        let list = bind_ids(&mut values, chunk);
        let sql = format!(
            "UPDATE job SET state = 'done', lease_owner = NULL, lease_until = NULL, last_error = NULL, \
             updated_at = $2 WHERE id IN ({list}){lease}"
        );
        done += conn
            .execute_raw(stmt(conn, &sql, values))
            .await?
            .rows_affected();
    }
    Ok(done)
}

/// Back to `pending` at `run_at_ms`, if still held under `owner`'s lease. If a newer pending
/// job for the same resource was queued meanwhile, this one is superseded (the newer one
/// renders the latest state anyway) and is closed instead. The partial unique index decides,
/// so a concurrent enqueue cannot slip in between a check and the update. `true` when the job
/// was still held.
pub async fn retry(
    conn: &(impl ConnectionTrait + TransactionTrait),
    owner: &str,
    id: i64,
    run_at_ms: i64,
    error: Option<&str>,
    count_attempt: bool,
) -> Result<bool, DbErr> {
    let attempts = if count_attempt {
        "attempts"
    } else {
        "attempts - 1"
    };
    let lease = Lease::held_by(owner);
    let (held, lease_values) = lease.condition(5);
    let sql = format!(
        "UPDATE job SET state = 'pending', run_at = $1, lease_owner = NULL, lease_until = NULL, \
         attempts = {attempts}, last_error = $2, updated_at = $3 WHERE id = $4{held}"
    );
    let mut values = vec![
        run_at_ms.into(),
        error.map(str::to_owned).into(),
        chrono::Utc::now().into(),
        id.into(),
    ];
    values.extend(lease_values);
    back_to_pending(conn, id, stmt(conn, &sql, values), lease).await
}

/// Runs `update` (which makes job `id` pending while `lease` holds it); on a unique violation
/// — a newer pending job exists for the same resource — closes job `id` as superseded, under
/// the same lease, and hands its priority on: the pending job takes the higher lane of the
/// two, the HR event if it has none, and the earlier enqueue time, as coalescing would have
/// merged them (a leaver's deprovision is never demoted to the lane of whatever replaced it).
/// The update runs under a savepoint (a transaction of its own on a plain connection): on
/// PostgreSQL a failed statement would otherwise abort the surrounding transaction. `true`
/// when the lease still held the job.
async fn back_to_pending(
    conn: &(impl ConnectionTrait + TransactionTrait),
    id: i64,
    update: sea_orm::Statement,
    lease: Lease<'_>,
) -> Result<bool, DbErr> {
    use sea_orm::EntityTrait;
    let attempt = conn.begin().await?;
    let result = attempt.execute_raw(update).await;
    match result {
        Ok(r) => {
            attempt.commit().await?;
            Ok(r.rows_affected() > 0)
        }
        Err(e) if super::is_unique_violation(&e) => {
            attempt.rollback().await?;
            let Some(old) = job::Entity::find_by_id(id).one(conn).await? else {
                return Ok(false);
            };
            let (held, lease_values) = lease.condition(3);
            let sql = format!(
                "UPDATE job SET state = 'done', lease_owner = NULL, lease_until = NULL, \
                 last_error = 'superseded by a newer change', updated_at = $1 WHERE id = $2{held}"
            );
            let mut values = vec![chrono::Utc::now().into(), id.into()];
            values.extend(lease_values);
            if conn
                .execute_raw(stmt(conn, &sql, values))
                .await?
                .rows_affected()
                == 0
            {
                return Ok(false);
            }
            let sql = "UPDATE job SET \
                 lane = CASE WHEN $1 < priority THEN $2 ELSE lane END, \
                 priority = CASE WHEN $1 < priority THEN $1 ELSE priority END, \
                 hr_event_id = COALESCE(hr_event_id, $3), \
                 enqueued_at = CASE WHEN $4 < enqueued_at THEN $4 ELSE enqueued_at END, \
                 updated_at = $5 \
                 WHERE app_id = $6 AND resource_kind = $7 AND resource_id = $8 AND state = 'pending'";
            let values = vec![
                old.priority.into(),
                old.lane.clone().into(),
                old.hr_event_id.clone().into(),
                old.enqueued_at.into(),
                chrono::Utc::now().into(),
                old.app_id.clone().into(),
                old.resource_kind.clone().into(),
                old.resource_id.clone().into(),
            ];
            conn.execute_raw(stmt(conn, sql, values)).await?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// A dead letter, if still held under `owner`'s lease: kept with its reason until someone
/// retries it through the API. `true` when the job was still held.
pub async fn dead(
    conn: &impl ConnectionTrait,
    owner: &str,
    id: i64,
    error: &str,
) -> Result<bool, DbErr> {
    let (held, lease_values) = Lease::held_by(owner).condition(4);
    let sql = format!(
        "UPDATE job SET state = 'dead', lease_owner = NULL, lease_until = NULL, last_error = $1, \
         updated_at = $2 WHERE id = $3{held}"
    );
    let mut values = vec![error.into(), chrono::Utc::now().into(), id.into()];
    values.extend(lease_values);
    Ok(conn
        .execute_raw(stmt(conn, &sql, values))
        .await?
        .rows_affected()
        > 0)
}

/// Extends the leases of `owner`'s jobs in `ids` — those its workers are running now — and
/// returns those it extended. A job of `ids` missing from the answer is no longer this
/// instance's (its lease expired and another instance reclaimed it, or it ended): its worker
/// should stop. A job of `owner`'s that is not among `ids` (its worker ended but could not
/// record the outcome) keeps its lease until it expires and is reclaimed.
pub async fn renew(
    conn: &impl ConnectionTrait,
    owner: &str,
    ids: &[i64],
    now_ms: i64,
) -> Result<std::collections::HashSet<i64>, DbErr> {
    use sea_orm::FromQueryResult;
    #[derive(FromQueryResult)]
    struct Id {
        id: i64,
    }
    let mut renewed = std::collections::HashSet::with_capacity(ids.len());
    let lock = if super::is_postgres(conn) {
        " FOR UPDATE"
    } else {
        ""
    };
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut values: Vec<sea_orm::Value> = vec![(now_ms + LEASE_MS).into(), owner.into()];
        let list = bind_ids(&mut values, chunk);
        // Rows locked in id order, as the finisher locks them, so the two cannot deadlock.
        let sql = format!(
            "UPDATE job SET lease_until = $1 WHERE id IN (SELECT id FROM job \
             WHERE state = 'running' AND lease_owner = $2 AND id IN ({list}) ORDER BY id{lock}) \
             RETURNING id"
        );
        for row in Id::find_by_statement(stmt(conn, &sql, values))
            .all(conn)
            .await?
        {
            renewed.insert(row.id);
        }
    }
    Ok(renewed)
}

/// Returns running jobs whose lease expired before `now_ms` (their instance died) — or all of
/// `owner`'s, at shutdown — to `pending`. A job superseded by a newer pending one is closed
/// instead. Each update re-checks the lease it read (owner and expiry), so a lease renewed or
/// a job finished in between is left alone.
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
        let Some(held_by) = j.lease_owner.as_deref() else {
            continue;
        };
        let lease = Lease {
            owner: held_by,
            expired_before: owner.is_none().then_some(now_ms),
        };
        let (held, lease_values) = lease.condition(3);
        let sql = format!(
            "UPDATE job SET state = 'pending', lease_owner = NULL, lease_until = NULL, \
             updated_at = $1 WHERE id = $2{held}"
        );
        let mut values = vec![chrono::Utc::now().into(), j.id.into()];
        values.extend(lease_values);
        // One transaction: the job leaves `running` only together with what its death leaves
        // unknown. Committed apart, a claim in between (another instance's, or the next job of
        // the resource, which waits only for this one to stop running) would read the link
        // before the mark: a leaver's job then finds no account to deprovision while the one
        // the dead job created stays active.
        let tx = conn.begin().await?;
        if !back_to_pending(&tx, j.id, stmt(conn, &sql, values), lease).await? {
            tx.rollback().await?;
            continue;
        }
        // It may have been mid-write when its instance died: what the target holds is unknown.
        match ResourceKind::parse(&j.resource_kind) {
            ResourceKind::User => {
                forget_snapshot(&tx, &j.app_id, ResourceKind::User, &j.resource_id).await?;
                if could_have_created(&tx, &j).await? {
                    mark_create_unsure(&tx, &j.app_id, &j.resource_id).await?;
                }
            }
            ResourceKind::Group => {
                mark_group_members_unsure(&tx, &j.app_id, &j.resource_id).await?;
            }
            ResourceKind::Account => {}
        }
        tx.commit().await?;
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

/// The key a pushed group's link snapshot sets to `true` when a job of the group died while it
/// may have been sending member changes: the members the snapshot lists are then not all the
/// target may hold (an add applied but unanswered is not among them), and the group's next job
/// reads the target's members, or takes every account the app links as a possible member,
/// before it decides what to remove.
pub const GROUP_MEMBERS_UNSURE: &str = "members_unsure";

/// Marks the link of pushed group `group_name` in `app_id` [`GROUP_MEMBERS_UNSURE`] (a group
/// without a link, or without a target group, has no members to be unsure of).
pub async fn mark_group_members_unsure(
    conn: &impl ConnectionTrait,
    app_id: &str,
    group_name: &str,
) -> Result<(), DbErr> {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
    let found = link::Entity::find()
        .filter(link::Column::AppId.eq(app_id))
        .filter(link::Column::ResourceKind.eq(ResourceKind::Group.as_str()))
        .filter(link::Column::ResourceId.eq(group_name))
        .one(conn)
        .await?;
    let Some(found) = found.filter(|l| l.target_id.is_some()) else {
        return Ok(());
    };
    let mut snapshot = found
        .snapshot
        .clone()
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    snapshot[GROUP_MEMBERS_UNSURE] = serde_json::Value::Bool(true);
    let mut row = found.into_active_model();
    row.snapshot = Set(Some(snapshot));
    row.updated_at = Set(chrono::Utc::now());
    row.update(conn).await?;
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
