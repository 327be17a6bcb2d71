//! Group commit for the ends of jobs: a job's staged writes (its links and follow-up jobs,
//! `staged::JobWrites`), its provisioning-log rows and its new queue state (done, back to
//! pending, dead) are written by one task, many jobs per transaction, instead of several
//! commits per job (each a disk flush on SQLite, and a turn on its lock).
//!
//! Invariants: a job stays `running` until the batch holding its end commits, so nothing else
//! delivers the same resource meanwhile. A job's links and follow-up jobs are written in the
//! same transaction as, and before, its end — whatever the job's result — so a follow-up (a
//! pushed group's update) never runs before the link it depends on is there. If a batch cannot
//! be written, its jobs keep their `running` state until their lease expires and run again —
//! harmless, because delivery is level-triggered and matches before it creates. A job's end
//! and its staged writes are written only while this instance still holds the job's lease
//! (`running` under its owner, rows locked until the commit on PostgreSQL); a job whose lease
//! was lost (it expired and another instance reclaimed the job) has its end and writes dropped
//! — the instance that holds it now decides — and only its log rows, the calls it really made,
//! are kept.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use sea_orm::sea_query::LockType;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, Set,
    TransactionTrait,
};
use tokio::sync::mpsc;

use super::execute;
use super::staged::{JobWrites, LinkRow, LinkWrite};
use crate::store::entity::{app, link, operation};
use crate::store::queue::{self, JobRequest};
use crate::store::{Db, is_postgres, shapes};

/// Job ends written per transaction at most.
const MAX_BATCH: usize = 512;

/// How a job ended, as the queue records it.
#[derive(Debug, Clone)]
pub enum JobEnd {
    Complete,
    Retry {
        run_at_ms: i64,
        error: Option<String>,
        counts: bool,
    },
    Dead {
        error: String,
    },
}

impl JobEnd {
    #[must_use]
    pub fn retry(run_at_ms: i64, error: Option<&str>, counts: bool) -> Self {
        JobEnd::Retry {
            run_at_ms,
            error: error.map(str::to_owned),
            counts,
        }
    }
}

/// One finished job: its end, its staged writes and the provisioning-log rows of the calls it
/// made.
pub struct Finished {
    pub job_id: i64,
    pub end: JobEnd,
    /// Written before the end, whatever it is.
    pub writes: JobWrites,
    pub operations: Vec<operation::ActiveModel>,
    /// Released once the batch is written: the deletion guard counts the deprovision until
    /// its log rows are there.
    pub deprovision: Option<super::guard::DeprovisionSlot>,
    /// Dropped once the batch is written (or given up on): the engine's mark that the job runs
    /// in this process, so that its lease is renewed until its end is stored, not only until
    /// the worker handed it over.
    pub running: Option<Box<dyn Send + Sync>>,
}

/// The finisher as one job's worker sees it: the end it sends carries the job's `running`
/// mark.
pub struct JobFinisher<'a> {
    finisher: &'a Finisher,
    running: std::sync::Mutex<Option<Box<dyn Send + Sync>>>,
}

impl<'a> JobFinisher<'a> {
    #[must_use]
    pub fn new(finisher: &'a Finisher, running: Box<dyn Send + Sync>) -> Self {
        Self {
            finisher,
            running: std::sync::Mutex::new(Some(running)),
        }
    }

    pub fn finish(&self, mut finished: Finished) {
        if let Ok(mut running) = self.running.lock() {
            finished.running = running.take();
        }
        self.finisher.finish(finished);
    }
}

/// The sending side, held by the engine's workers.
#[derive(Clone)]
pub struct Finisher {
    tx: mpsc::UnboundedSender<Finished>,
}

/// What one written batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Jobs whose end and staged writes were written.
    pub written: usize,
    /// Jobs whose lease this instance no longer held: their end and staged writes dropped.
    pub lease_lost: usize,
    /// Jobs whose links would have taken a target account (or group) another link holds:
    /// dead with `conflict: …`, their staged writes dropped (counted in `written` too).
    pub conflicts: usize,
}

impl Finisher {
    /// Starts the writer task for the jobs `owner` (the instance's lease owner) claimed; it
    /// ends once every `Finisher` clone is dropped and the queue is written.
    #[must_use]
    pub fn start(db: Db, owner: String) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(write_loop(db, owner, rx)))
    }

    pub fn finish(&self, finished: Finished) {
        if self.tx.send(finished).is_err() {
            tracing::warn!(
                "The job writer has stopped; the job's lease will expire and it will run again"
            );
        }
    }
}

async fn write_loop(db: Db, owner: String, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match write_batch(&db, &owner, &batch).await {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %e, jobs = batch.len(), "Could not record finished jobs; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), "Could not record finished jobs; their leases will expire and they will run again");
                    break;
                }
            }
        }
        batch.clear();
    }
}

/// Writes one batch of job ends in one transaction: first which of the jobs `owner` still
/// holds (locked on PostgreSQL until the commit), then those jobs' staged writes, every job's
/// log rows, and those jobs' ends.
///
/// A link that would take a target account (or group) another link of the app holds — two
/// instances adopting one account at once, refused by `uq_link_live_target` — fails only its
/// own job: the batch is written again with each job's staged writes under a savepoint of its
/// own, and that job is dead with `conflict: …` (as `execute::adoptable` decides when it sees
/// the other link first) while the others keep their results.
pub async fn write_batch(
    db: &Db,
    owner: &str,
    batch: &[Finished],
) -> Result<BatchOutcome, sea_orm::DbErr> {
    match write_batch_staging(db, owner, batch, Staging::Together).await {
        Err(e) if is_live_target_conflict(&e) => {
            tracing::info!(
                jobs = batch.len(),
                "A finished job's link takes a target another link holds; writing its batch again, job by job"
            );
            write_batch_staging(db, owner, batch, Staging::EachJob).await
        }
        written => written,
    }
}

/// How a batch's staged writes are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Staging {
    /// All jobs' writes in a few multi-row statements.
    Together,
    /// Each job's writes under a savepoint of its own: one job's conflict fails only that job.
    EachJob,
}

async fn write_batch_staging(
    db: &Db,
    owner: &str,
    batch: &[Finished],
    staging: Staging,
) -> Result<BatchOutcome, sea_orm::DbErr> {
    let tx = db.write_tx().await?;
    let ids: Vec<i64> = batch.iter().map(|f| f.job_id).collect();
    let held = queue::held(&*tx, owner, &ids).await?;
    let (kept, lost): (Vec<&Finished>, Vec<&Finished>) =
        batch.iter().partition(|f| held.contains(&f.job_id));
    if !lost.is_empty() {
        let ids: Vec<i64> = lost.iter().map(|f| f.job_id).collect();
        tracing::warn!(
            jobs = lost.len(),
            ?ids,
            "Lost the lease of finished jobs (another instance took them over); their ends and writes are dropped"
        );
    }
    let conflicts = match staging {
        Staging::Together => {
            let writes: Vec<&JobWrites> = kept.iter().map(|f| &f.writes).collect();
            write_staged(&*tx, &writes).await?;
            HashMap::new()
        }
        Staging::EachJob => write_staged_each(&tx, &kept).await?,
    };
    // The calls were made whoever holds the job now: every job's log rows are kept.
    // SQLite allows 32766 bound values per statement; a log row binds 15. Lengths that
    // repeat (`shapes`), so the statement is parsed once; no ids read back.
    // Copied once, chunk by chunk: the batch stays whole for a retry.
    let rows: Vec<&operation::ActiveModel> =
        batch.iter().flat_map(|f| f.operations.iter()).collect();
    for chunk in shapes::chunks(&rows, 512) {
        shapes::insert_rows(&*tx, chunk.iter().map(|r| (*r).clone()).collect()).await?;
    }
    let completed: Vec<i64> = kept
        .iter()
        .filter(|f| matches!(f.end, JobEnd::Complete) && !conflicts.contains_key(&f.job_id))
        .map(|f| f.job_id)
        .collect();
    queue::complete_many(&*tx, owner, &completed).await?;
    for f in &kept {
        if let Some(conflict) = conflicts.get(&f.job_id) {
            queue::dead(&*tx, owner, f.job_id, conflict).await?;
            continue;
        }
        match &f.end {
            JobEnd::Complete => {}
            JobEnd::Retry {
                run_at_ms,
                error,
                counts,
            } => {
                queue::retry(&*tx, owner, f.job_id, *run_at_ms, error.as_deref(), *counts).await?;
            }
            JobEnd::Dead { error } => {
                queue::dead(&*tx, owner, f.job_id, error).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(BatchOutcome {
        written: kept.len(),
        lease_lost: lost.len(),
        conflicts: conflicts.len(),
    })
}

/// Writes each job's staged writes under a savepoint of its own, in batch order (so a later
/// write for a link still supersedes an earlier one). A job whose links take a target another
/// link holds has its writes rolled back; returned with the conflict, its error.
async fn write_staged_each(
    tx: &DatabaseTransaction,
    jobs: &[&Finished],
) -> Result<HashMap<i64, String>, sea_orm::DbErr> {
    let mut conflicts = HashMap::new();
    for f in jobs {
        if let Some(conflict) = write_staged_or_conflict(tx, &f.writes).await? {
            tracing::warn!(job = f.job_id, error = %conflict, "Finished job dead: its link conflicts with another");
            conflicts.insert(f.job_id, conflict);
        }
    }
    Ok(conflicts)
}

/// Whether `err` is `uq_link_live_target` refusing a second live link to one target id (on
/// SQLite the message names the index's columns, on PostgreSQL the index).
fn is_live_target_conflict(err: &sea_orm::DbErr) -> bool {
    match err.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(message)) => {
            message.contains("uq_link_live_target")
                || message.contains("link.app_id, link.resource_kind, link.target_id")
        }
        _ => false,
    }
}

/// Writes one job's staged writes under a savepoint of its own. `Some(conflict)` when one of
/// its links takes a target another link of the app holds (`uq_link_live_target`): the job's
/// writes are rolled back, and the conflict names who holds the target.
pub async fn write_staged_or_conflict(
    tx: &DatabaseTransaction,
    writes: &JobWrites,
) -> Result<Option<String>, sea_orm::DbErr> {
    let savepoint = tx.begin().await?;
    match write_staged(&savepoint, &[writes]).await {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(None)
        }
        Err(e) if is_live_target_conflict(&e) => {
            savepoint.rollback().await?;
            live_target_conflict(tx, writes).await.map(Some)
        }
        Err(e) => Err(e),
    }
}

/// The conflict of a job whose links were refused by `uq_link_live_target`: which of its
/// target ids another identity (or roster group) holds.
async fn live_target_conflict(
    conn: &impl ConnectionTrait,
    writes: &JobWrites,
) -> Result<String, sea_orm::DbErr> {
    for w in writes.links() {
        let Some(target_id) = w
            .row
            .as_ref()
            .filter(|row| row.state != "deleted")
            .and_then(|row| row.target_id.as_deref())
        else {
            continue;
        };
        if let Some(other) =
            execute::linked_to_another(conn, &w.app_id, w.kind, target_id, &w.resource_id).await?
        {
            return Ok(execute::belongs_to_another(w.kind, target_id, &other));
        }
    }
    Ok(
        "conflict: a target account or group this job linked is linked to someone else; \
        roster never adopts what belongs to someone else (resolve it by hand)"
            .to_owned(),
    )
}

/// SQLite allows 32766 bound values per statement; a link row binds 11.
const LINK_ROWS_PER_STATEMENT: usize = 1_024;

/// A link write is an upsert on its (app, kind, resource); the row there keeps its id and
/// `created_at`.
const LINK_UPSERT: shapes::OnConflict<link::Column> = shapes::OnConflict {
    keys: &[
        link::Column::AppId,
        link::Column::ResourceKind,
        link::Column::ResourceId,
    ],
    update: &[
        link::Column::TargetId,
        link::Column::Snapshot,
        link::Column::SnapshotHash,
        link::Column::State,
        link::Column::LastError,
        link::Column::DeleteAfter,
        link::Column::UpdatedAt,
    ],
};

/// Writes jobs' staged links and follow-up jobs, in the caller's transaction: the links as
/// upserts on (app, kind, resource) — the last write per link wins, across jobs too, since
/// PostgreSQL refuses to update one row twice in one statement — then the follow-up jobs
/// (coalesced like any enqueue). Writes for an app deleted meanwhile are dropped: its links and
/// jobs are gone with it, and one such job must not fail everyone's batch.
pub async fn write_staged(
    conn: &impl ConnectionTrait,
    writes: &[&JobWrites],
) -> Result<(), sea_orm::DbErr> {
    let app_ids: BTreeSet<&str> = writes
        .iter()
        .flat_map(|w| {
            w.links()
                .iter()
                .map(|l| l.app_id.as_str())
                .chain(w.jobs().iter().map(|j| j.app_id.as_str()))
        })
        .collect();
    if app_ids.is_empty() {
        return Ok(());
    }
    let mut live = app::Entity::find()
        .select_only()
        .column(app::Column::Id)
        .filter(app::Column::Id.is_in(shapes::padded(app_ids.iter().copied())));
    if is_postgres(conn) {
        // Keeps the apps from being deleted before the commit (their rows' foreign keys).
        live = live.lock(LockType::KeyShare);
    }
    let live: HashSet<String> = live
        .into_tuple::<String>()
        .all(conn)
        .await?
        .into_iter()
        .collect();
    // In key order: concurrent writers on PostgreSQL then lock rows in the same order.
    let mut last: BTreeMap<(&str, &str, &str), &LinkWrite> = BTreeMap::new();
    for w in writes.iter().flat_map(|w| w.links()) {
        if live.contains(&w.app_id) {
            last.insert((&w.app_id, w.kind.as_str(), &w.resource_id), w);
        }
    }
    let upserts: Vec<(&LinkWrite, &LinkRow)> = last
        .values()
        .filter_map(|w| w.row.as_ref().map(|row| (*w, row)))
        .collect();
    for chunk in shapes::chunks(&upserts, LINK_ROWS_PER_STATEMENT) {
        shapes::insert_or_update_rows(
            conn,
            chunk.iter().map(|(w, row)| link_row(w, row)).collect(),
            Some(&LINK_UPSERT),
        )
        .await?;
    }
    for w in last.values().filter(|w| w.row.is_none()) {
        link::Entity::delete_many()
            .filter(link::Column::AppId.eq(w.app_id.as_str()))
            .filter(link::Column::ResourceKind.eq(w.kind.as_str()))
            .filter(link::Column::ResourceId.eq(w.resource_id.as_str()))
            .exec(conn)
            .await?;
    }
    let jobs: Vec<JobRequest> = writes
        .iter()
        .flat_map(|w| w.jobs())
        .filter(|j| live.contains(&j.app_id))
        .cloned()
        .collect();
    queue::enqueue(conn, &jobs).await?;
    Ok(())
}

fn link_row(write: &LinkWrite, row: &LinkRow) -> link::ActiveModel {
    link::ActiveModel {
        app_id: Set(write.app_id.clone()),
        resource_kind: Set(write.kind.as_str().to_owned()),
        resource_id: Set(write.resource_id.clone()),
        target_id: Set(row.target_id.clone()),
        snapshot: Set(row.snapshot.clone()),
        snapshot_hash: Set(row.snapshot_hash.clone()),
        state: Set(row.state.clone()),
        last_error: Set(None),
        delete_after: Set(row.delete_after),
        // Kept by the update: only a new row takes it.
        created_at: Set(row.at),
        updated_at: Set(row.at),
        ..Default::default()
    }
}
