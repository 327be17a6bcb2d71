//! A reconciliation run's IO (DESIGN §6): page through the target's `/Groups` (when the app
//! pushes groups) and `/Users`, classify each group and account with the pure
//! [`GroupClassifier`] and [`Classifier`], store the findings, and in fix mode hand every
//! correction to the delivery queue.
//!
//! Invariants:
//!
//! * **Memory is bounded by the page size** on the target's side: accounts arrive a page at a
//!   time (at most `PAGES_AHEAD` pages rendered ahead and one more fetched), findings are written to
//!   `reconcile_item` by a writer task in batches of [`ITEM_BATCH`] (at most one batch waiting
//!   for it) and dropped. roster's
//!   own identities are held as a compact index (O(identities), about 150 bytes each: id,
//!   scope, link target, matching value; [`Desired`]); the people a page's accounts are
//!   compared with are read from the store, rendered for that page and dropped after it, as
//!   are the `missing` ones at the end, [`IDENTITY_PAGE`] at a time. The findings
//!   of pushed groups (few, one per `group_push` entry) wait until the users were read, which
//!   names the accounts a group lists by id only; target groups roster does not push are
//!   written as they come.
//! * **The run never writes to the target.** Fixes are jobs on lane `reconcile`; the run only
//!   prepares the link so that the level-triggered job (which diffs the rendered user against
//!   the link's last-applied snapshot) sees reality and sends the right call. `writes` in the
//!   report is therefore the number of jobs the run enqueued.
//! * **Links are dropped and accounts adopted only on complete evidence.** A listing that
//!   ended early — fewer distinct accounts than `totalResults`, page 1 answered again, a
//!   `totalResults` that went down, `startIndex` past it — fails the run with the reason before
//!   anyone is called `missing` or anything is adopted or deprovisioned: accounts not seen are
//!   not gone. An account repeated across pages counts once. A linked account the listing did
//!   not show is asked for by `GET /Users/{id}`: found, it is classified as read; only a 404
//!   lets its link go. Adoptions wait until the whole listing was read, because a second
//!   account matching the same person makes both a `conflict`; then each is the person's user
//!   job's, which looks the account up afresh and adopts it with every check a joiner's has.
//! * **Deprovisions wait for the deletion guard**: they are applied only after the whole target
//!   was read (the guard needs the totals), by reading the run's items back page by page; when
//!   held they stay `held` until `approve`.
//! * `roster_drift_corrected_total` is counted when a fix's job is enqueued, not when it
//!   succeeds: the job is an ordinary user job and does not know it came from a run.
//! * One `running` run per app: [`begin`] locks the app row on PostgreSQL (SQLite has one
//!   writer) before it looks for a running run, so two instances cannot both start one.
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    ActionKind, Class, Classifier, Counts, Desired, DesiredGroup, Finding, GroupClassifier,
    GroupCounts, GroupFinding, GuardDecision, IdentityRef, LinkInfo, ReconcileError, Resource,
    RunState, deletion_guard, lists_members, name_members, unnamed_members,
};
use crate::delivery::engine::{AppTarget, Delivery};
use crate::delivery::execute::{
    GROUP_ADOPTED, GROUP_MEMBERS_MAYBE, GROUP_REPLACES, find_link, group_origin, linked_to_another,
    replaced_groups,
};
use crate::scim::{ListQuery, ScimError};
use crate::settings::ReconcileMode;
use crate::store::entity::{app, group, identity, link, reconcile_item, reconcile_run};
use crate::store::queue::{self, GROUP_MEMBERS_UNSURE, JobRequest, Lane, ResourceKind};
use crate::store::{Db, is_postgres};
use crate::telemetry::metrics;

/// Findings written (and fixes prepared) per transaction. Each commit is a sync to disk on
/// SQLite, so larger batches are faster; 5000 findings are a few megabytes.
pub const ITEM_BATCH: usize = 5000;

/// Rows per INSERT statement (12 columns: within SQLite's and PostgreSQL's bind limits).
const INSERT_ROWS: usize = 1000;

/// Pages of the target's users fetched ahead of the one being classified.
const PAGES_AHEAD: usize = 2;

/// Pages whose people are read from the store and rendered at once (each on a connection of
/// its own), ahead of the one being classified.
const RENDERERS: usize = 2;

/// Identities read per query while building the desired state.
const IDENTITY_PAGE: u64 = 1000;

/// A `running` run older than this is taken for one whose process died (a crash or a kill
/// leaves the row behind) and no longer blocks a new run.
const STALE_RUN: chrono::Duration = chrono::Duration::hours(6);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("app `{0}` does not exist")]
    AppNotFound(String),
    #[error("reconcile run `{0}` does not exist")]
    RunNotFound(String),
    /// Another run of the app is running, or the run is not awaiting approval.
    #[error("{0}")]
    Conflict(String),
    /// A scheduled run found the app reconciled recently enough (by another instance).
    #[error("the app was reconciled less than its interval ago")]
    NotDue,
    #[error("the app's settings cannot be used: {0}")]
    Settings(String),
    #[error(transparent)]
    Classify(#[from] ReconcileError),
    #[error("reading the target: {0}")]
    Scim(#[from] ScimError),
    /// The target's listing ended before every account was read: nothing was concluded from
    /// the accounts it did not show.
    #[error(
        "the target's listing of its accounts was incomplete: {0}; no link was dropped, and nobody whose account was not seen was created, adopted or deprovisioned"
    )]
    IncompleteListing(String),
    /// `GET /Users/{id}` (or `/Groups/{id}`) of a linked resource answered something else.
    #[error("GET of linked resource `{0}` answered a resource with another id")]
    WrongAccount(String),
    #[error("the run was interrupted by shutdown")]
    Interrupted,
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl RunState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Failed => "failed",
        }
    }
}

/// How a run ended (the row holds the same).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub state: RunState,
    pub counts: Counts,
    /// The group findings' classes.
    pub groups: GroupCounts,
    pub writes: u64,
    /// Deprovisions the deletion guard held, with its reason.
    pub held: Option<(u64, String)>,
    /// Why some findings were only reported (the listing could not be proven complete);
    /// recorded as the run's `error` although the run completed.
    pub note: Option<String>,
}

/// How far a run has read the target's users, for a progress display: updated as pages
/// arrive, read from another task.
#[derive(Debug, Default)]
pub struct RunProgress {
    read: AtomicU64,
    /// `totalResults` of the latest page; 0 until known.
    total: AtomicU64,
}

impl RunProgress {
    /// `(accounts read, totalResults if known)`.
    #[must_use]
    pub fn get(&self) -> (u64, Option<u64>) {
        let total = self.total.load(Ordering::Relaxed);
        (
            self.read.load(Ordering::Relaxed),
            (total > 0).then_some(total),
        )
    }

    fn page(&self, read: usize, total: Option<u64>) {
        self.read.fetch_add(read as u64, Ordering::Relaxed);
        if let Some(total) = total {
            self.total.store(total, Ordering::Relaxed);
        }
    }
}

/// The instance's reconcile slots (`ROSTER_RECONCILE_CONCURRENCY`): a run holds one from
/// before it reads roster's side until its outcome is decided, so that at most that many runs
/// hold their desired state and read a target at once. A run beyond the cap waits, `running`
/// on its row (which keeps blocking a second run of the app), holding no transaction, lease or
/// memory of its own; shutdown interrupts the wait as it interrupts a run.
#[derive(Debug)]
pub struct RunSlots {
    slots: tokio::sync::Semaphore,
    in_progress: AtomicU64,
    peak: AtomicU64,
}

/// A run's slot, given back when dropped.
struct RunSlot<'a> {
    slots: &'a RunSlots,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        self.slots.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RunSlots {
    /// `concurrency` runs at once (at least one).
    #[must_use]
    pub fn new(concurrency: usize) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(concurrency.max(1)),
            in_progress: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Runs holding a slot now.
    #[must_use]
    pub fn in_progress(&self) -> u64 {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// The most runs that held a slot at once since this process started.
    #[must_use]
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> Option<RunSlot<'_>> {
        let permit = self.slots.try_acquire().ok()?;
        Some(self.taken(permit))
    }

    async fn take(&self) -> RunSlot<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; if it ever did, the run
        // would go ahead without a slot rather than never run.
        let permit = match self.slots.acquire().await {
            Ok(permit) => permit,
            Err(_) => {
                tracing::error!("reconcile slots closed");
                std::future::pending().await
            }
        };
        self.taken(permit)
    }

    fn taken<'a>(&'a self, permit: tokio::sync::SemaphorePermit<'a>) -> RunSlot<'a> {
        let now = self.in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        RunSlot {
            slots: self,
            _permit: permit,
        }
    }
}

/// When a run may start.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// On demand: whenever no other run of the app is running.
    Now,
    /// Scheduled: also only when the app's newest run (or, without runs, the app itself) is at
    /// least this old. Checked under the same lock, so two instances' schedulers that both found
    /// the app due start one run between them, not two in a row.
    IfLastOlderThan(chrono::Duration),
}

/// Inserts a `running` run for the app, refusing (`Conflict`) while another one runs. Call it
/// in a write transaction; the caller commits (with its audit row) and then [`execute`]s.
pub async fn begin(
    tx: &impl ConnectionTrait,
    app_id: &str,
    dry_run: bool,
    mode: ReconcileMode,
    start: Start,
) -> Result<reconcile_run::Model, RunError> {
    let mut find_app = app::Entity::find_by_id(app_id);
    if is_postgres(tx) {
        // Serialises run starts per app across instances: the second waits here, then sees
        // the first one's `running` row.
        find_app = find_app.lock_exclusive();
    }
    let app = find_app
        .one(tx)
        .await?
        .ok_or_else(|| RunError::AppNotFound(app_id.to_owned()))?;
    let now = chrono::Utc::now();
    if let Start::IfLastOlderThan(interval) = start {
        let newest = reconcile_run::Entity::find()
            .filter(reconcile_run::Column::AppId.eq(app.id.as_str()))
            .order_by_desc(reconcile_run::Column::StartedAt)
            .one(tx)
            .await?;
        let last = newest.map_or(app.created_at, |run| run.started_at);
        if now - last < interval {
            return Err(RunError::NotDue);
        }
    }
    let running = reconcile_run::Entity::find()
        .filter(reconcile_run::Column::AppId.eq(app.id.as_str()))
        .filter(reconcile_run::Column::State.eq(RunState::Running.as_str()))
        .all(tx)
        .await?;
    for run in running {
        if now - run.started_at < STALE_RUN {
            return Err(RunError::Conflict(format!(
                "reconcile run {} of this app is still running",
                run.id
            )));
        }
        let mut stale: reconcile_run::ActiveModel = run.into();
        stale.state = Set(RunState::Failed.as_str().to_owned());
        stale.error = Set(Some("abandoned: still running after 6 hours".to_owned()));
        stale.finished_at = Set(Some(now));
        stale.update(tx).await?;
    }
    let mode = match mode {
        ReconcileMode::Report => "report",
        ReconcileMode::Fix => "fix",
    };
    Ok(reconcile_run::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        app_id: Set(app.id),
        state: Set(RunState::Running.as_str().to_owned()),
        dry_run: Set(dry_run),
        mode: Set(mode.to_owned()),
        counts: Set(counts_json(&Counts::default(), &GroupCounts::default())),
        writes: Set(0),
        error: Set(None),
        started_at: Set(now),
        finished_at: Set(None),
        waiting: Set(false),
    }
    .insert(tx)
    .await?)
}

/// Runs a begun run to its end and records the outcome on its row (`failed` with the error
/// when it fails). It first takes one of `slots`, waiting for it if none is free (its row
/// `running` and `waiting` meanwhile); `shutdown` interrupts the wait or the run (the run is
/// then `failed`).
pub async fn execute(
    db: &Db,
    delivery: &Delivery,
    run_id: &str,
    shutdown: &CancellationToken,
    progress: &RunProgress,
    slots: &RunSlots,
) -> Result<RunOutcome, RunError> {
    let run = reconcile_run::Entity::find_by_id(run_id)
        .one(db.conn())
        .await?
        .ok_or_else(|| RunError::RunNotFound(run_id.to_owned()))?;
    let slot = match wait_for_slot(db, &run, shutdown, slots).await {
        Ok(slot) => slot,
        // Given up while it waited: the row says so already.
        Err(err @ RunError::Conflict(_)) => return Err(err),
        Err(err) => {
            let message = err.to_string();
            if let Err(e) = finish(db, run_id, &failed_outcome(), Some(&message)).await {
                tracing::warn!(error = %e, run = run_id, "Could not record a failed reconcile run");
            }
            return Err(err);
        }
    };
    let started = Instant::now();
    let app = app::Entity::find_by_id(run.app_id.as_str())
        .one(db.conn())
        .await?
        .ok_or_else(|| RunError::AppNotFound(run.app_id.clone()))?;
    let result = tokio::select! {
        result = classify_and_fix(db, delivery, &run, &app, progress) => result,
        () = shutdown.cancelled() => Err(RunError::Interrupted),
    };
    drop(slot);
    let m = metrics();
    let app_label = app.name.as_str();
    m.reconcile_duration_seconds
        .with_label_values(&[app_label])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(outcome) => {
            finish(db, run_id, &outcome, outcome.note.as_deref()).await?;
            // The read-back succeeded, whether or not deprovisions wait for approval.
            m.reconcile_last_success_timestamp_seconds
                .with_label_values(&[app_label])
                .set(chrono::Utc::now().timestamp() as f64);
            tracing::info!(
                app = app_label,
                run = run_id,
                state = outcome.state.as_str(),
                writes = outcome.writes,
                "Reconcile run finished"
            );
            Ok(outcome)
        }
        Err(err) => {
            let message = err.to_string();
            if let Err(e) = finish(db, run_id, &failed_outcome(), Some(&message)).await {
                tracing::warn!(error = %e, run = run_id, "Could not record a failed reconcile run");
            }
            tracing::warn!(app = app_label, run = run_id, error = %message, "Reconcile run failed");
            Err(err)
        }
    }
}

/// Takes one of `slots` for the run, marking its row `waiting` meanwhile if none is free.
/// `Conflict` when the run is no longer `running` once it has one: a run that waited past
/// `STALE_RUN` may have been given up (`failed`) by a newer run's start, and must not run
/// beside it.
async fn wait_for_slot<'a>(
    db: &Db,
    run: &reconcile_run::Model,
    shutdown: &CancellationToken,
    slots: &'a RunSlots,
) -> Result<RunSlot<'a>, RunError> {
    let slot = match slots.try_take() {
        Some(slot) => slot,
        None => {
            tracing::info!(run = %run.id, app = %run.app_id, "Reconcile run waits for a free slot (ROSTER_RECONCILE_CONCURRENCY)");
            set_waiting(db, &run.id, true).await?;
            tokio::select! {
                slot = slots.take() => slot,
                () = shutdown.cancelled() => return Err(RunError::Interrupted),
            }
        }
    };
    if set_waiting(db, &run.id, false).await? {
        Ok(slot)
    } else {
        Err(RunError::Conflict(format!(
            "reconcile run {} is no longer running after waiting for a slot; it does not run",
            run.id
        )))
    }
}

/// An error unless run `run_id` is still `running`: a run given up meanwhile (still running
/// after `STALE_RUN`, failed by a newer run's start) fixes and adopts nothing more, the newer
/// run decides now.
async fn still_running(conn: &impl ConnectionTrait, run_id: &str) -> Result<(), DbErr> {
    let state: Option<String> = reconcile_run::Entity::find_by_id(run_id)
        .select_only()
        .column(reconcile_run::Column::State)
        .into_tuple()
        .one(conn)
        .await?;
    if state.as_deref() == Some(RunState::Running.as_str()) {
        return Ok(());
    }
    Err(DbErr::Custom(format!(
        "reconcile run {run_id} was given up while it ran (another run started after {} hours); it fixes nothing more",
        STALE_RUN.num_hours()
    )))
}

/// Sets the `running` run's `waiting` mark; false when the run is no longer `running`.
async fn set_waiting(db: &Db, run_id: &str, waiting: bool) -> Result<bool, DbErr> {
    let tx = db.write_tx().await?;
    let result = reconcile_run::Entity::update_many()
        .col_expr(reconcile_run::Column::Waiting, Expr::value(waiting))
        .filter(reconcile_run::Column::Id.eq(run_id))
        .filter(reconcile_run::Column::State.eq(RunState::Running.as_str()))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    Ok(result.rows_affected == 1)
}

fn failed_outcome() -> RunOutcome {
    RunOutcome {
        state: RunState::Failed,
        counts: Counts::default(),
        groups: GroupCounts::default(),
        writes: 0,
        held: None,
        note: None,
    }
}

/// Approving a held run, in the caller's transaction (beside its audit row), so that it
/// happens once and whole: the run moves from `awaiting_approval` to `completed` by a
/// conditional update (`Conflict` when another approval got there first: that one's
/// transaction holds the row until it commits), then the deprovisions the deletion guard held
/// are prepared and enqueued, and counted in the run's `writes`. Returns the jobs enqueued. A
/// failure anywhere rolls all of it back: the run is still awaiting approval, nothing enqueued.
/// The caller wakes the engine after its commit.
pub async fn approve_held(tx: &impl ConnectionTrait, run_id: &str) -> Result<u64, RunError> {
    let run = reconcile_run::Entity::find_by_id(run_id)
        .one(tx)
        .await?
        .ok_or_else(|| RunError::RunNotFound(run_id.to_owned()))?;
    if run.state != RunState::AwaitingApproval.as_str() {
        return Err(not_awaiting(run_id, &run.state));
    }
    let app = app::Entity::find_by_id(run.app_id.as_str())
        .one(tx)
        .await?
        .ok_or_else(|| RunError::AppNotFound(run.app_id.clone()))?;
    let result = reconcile_run::Entity::update_many()
        .col_expr(
            reconcile_run::Column::State,
            Expr::value(RunState::Completed.as_str()),
        )
        .col_expr(
            reconcile_run::Column::FinishedAt,
            Expr::value(chrono::Utc::now()),
        )
        .filter(reconcile_run::Column::Id.eq(run_id))
        .filter(reconcile_run::Column::State.eq(RunState::AwaitingApproval.as_str()))
        .exec(tx)
        .await?;
    if result.rows_affected != 1 {
        return Err(RunError::Conflict(format!(
            "reconcile run {run_id} was approved already"
        )));
    }
    let mut jobs = 0u64;
    let mut after = 0i64;
    while let Some((last, enqueued)) = deprovision_batch(tx, &app, run_id, after).await? {
        after = last;
        jobs += enqueued;
    }
    reconcile_run::Entity::update_many()
        .col_expr(
            reconcile_run::Column::Writes,
            Expr::col(reconcile_run::Column::Writes).add(to_i64(jobs)),
        )
        .filter(reconcile_run::Column::Id.eq(run_id))
        .exec(tx)
        .await?;
    Ok(jobs)
}

fn not_awaiting(run_id: &str, state: &str) -> RunError {
    RunError::Conflict(format!(
        "reconcile run {run_id} is `{state}`; only a run awaiting approval can be approved"
    ))
}

async fn classify_and_fix(
    db: &Db,
    delivery: &Delivery,
    run: &reconcile_run::Model,
    app: &app::Model,
    progress: &RunProgress,
) -> Result<RunOutcome, RunError> {
    let target = delivery.app_target(app).map_err(RunError::Settings)?;
    let fix = run.mode == "fix" && !run.dry_run;
    let started = Instant::now();
    let desired = load_desired(db.conn(), &app.id, &target).await?;
    let loaded = started.elapsed();
    let mut classifier = Classifier::new(desired);
    let mut group_classifier = load_desired_groups(db.conn(), &app.id, &target).await?;
    let mut batch = Batch::new(db, run, app, fix);
    let page_size = target.client.quirks().page_size;

    // Groups first, so that the accounts a group lists by id alone are named on the way
    // through the users. A target is asked for `/Groups` only when the app pushes groups.
    let mut pushed: Vec<GroupFinding> = Vec::new();
    let mut listing = Listing::default();
    if !group_classifier.is_empty() {
        let mut pages = target.client.groups().list_pages(ListQuery {
            page_size,
            ..ListQuery::default()
        });
        let mut groups = Vec::new().into_iter();
        let mut read = GroupsRead::default();
        loop {
            let group = match groups.next() {
                Some(group) => group,
                None => match pages.next().await {
                    Some(page) => {
                        let page = page?;
                        listing.unproven |= page.unproven;
                        read.page(&page);
                        groups = page.resources.into_iter();
                        continue;
                    }
                    None => break,
                },
            };
            let mut group = group;
            if group_classifier.concerns(&group)
                && let Some(id) = crate::scim::id_of(&group).map(str::to_owned)
            {
                if !target.client.quirks().group_members_readable {
                    known_members(&target.client, &group_classifier, &mut group).await?;
                } else if !lists_members(&group) {
                    // The listing left the members out (some targets do): read what is compared.
                    group = target.client.groups().get(&id).await?;
                }
            }
            let finding = group_classifier.classify_group(&group);
            if finding.group.is_some() {
                pushed.push(finding);
            } else {
                batch.push_group(finding);
                if batch.is_full() {
                    batch.flush().await?;
                }
            }
        }
        // A pushed group's link is dropped only for a group the target confirms gone.
        for id in group_classifier.unseen_links() {
            match target.client.groups().get(&id).await {
                Ok(mut group) if crate::scim::id_of(&group) == Some(id.as_str()) => {
                    if !target.client.quirks().group_members_readable {
                        known_members(&target.client, &group_classifier, &mut group).await?;
                    }
                    pushed.push(group_classifier.classify_group(&group));
                }
                Ok(_) => return Err(RunError::WrongAccount(id)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        pushed.extend(group_classifier.finish());
        for finding in &mut pushed {
            listing.withhold_group(finding);
            read.withhold_group(finding);
        }
    }
    let unnamed = unnamed_members(&pushed);
    let mut names: HashMap<String, String> = HashMap::new();

    // The next page is fetched while this one is classified and written (at most
    // `PAGES_AHEAD` pages wait), so the target's latency and roster's work overlap.
    let mut pages = target.client.users().list_pages(ListQuery {
        page_size,
        ..ListQuery::default()
    });
    // A second task reads and renders the people each page's accounts are compared with
    // (from the index alone, before the page is classified): the target's next page, the
    // store's reads for this one, and classifying and writing the one before all overlap.
    let (fetched, mut to_render) = tokio::sync::mpsc::channel(1);
    let _reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            if fetched.send(page).await.is_err() || failed {
                break;
            }
        }
    }));
    let (ahead, mut arrived) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let index = classifier.desired();
    let reader_db = db.clone();
    let _renderer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        // `RENDERERS` pages read from the store at once, handed on in the listing's order.
        let mut rendered = futures::stream::poll_fn(move |cx| to_render.poll_recv(cx))
            .map(|page: Result<crate::scim::Page, ScimError>| {
                let index = Arc::clone(&index);
                let db = reader_db.clone();
                async move {
                    let page = page?;
                    let wanted = index.to_render(&page.resources);
                    let rendered = read_rendered(db.conn(), &index, &wanted).await?;
                    Ok::<_, RunError>((page, rendered))
                }
            })
            .buffered(RENDERERS);
        while let Some(page) = rendered.next().await {
            let failed = page.is_err();
            if ahead.send(page).await.is_err() || failed {
                break;
            }
        }
    }));
    let mut waited = std::time::Duration::ZERO;
    loop {
        let asked = Instant::now();
        let Some(page) = arrived.recv().await else {
            break;
        };
        waited += asked.elapsed();
        let (page, rendered) = page?;
        progress.page(page.resources.len(), page.total);
        listing.page(page.total, page.wrapped);
        listing.unproven |= page.unproven;
        // Read already: a page boundary that moved, or a target that repeats items.
        let accounts: Vec<Value> = page
            .resources
            .into_iter()
            .filter(|account| listing.first_sight(crate::scim::id_of(account)))
            .collect();
        // The people this page's accounts are compared with, rendered for it alone.
        for (identity, user) in rendered {
            classifier.provide(identity, user);
        }
        for account in accounts {
            if !unnamed.is_empty()
                && let Some(id) = crate::scim::id_of(&account).filter(|id| unnamed.contains(*id))
                && let Some(user_name) = account.get("userName").and_then(Value::as_str)
            {
                names.insert(id.to_owned(), user_name.to_owned());
            }
            let finding = listing.withhold(classifier.classify_account(&account)?);
            batch.push(finding, Some(account));
            if batch.is_full() {
                batch.flush().await?;
                delivery.wake();
            }
        }
        classifier.forget_renderings();
    }
    drop(arrived);
    if let Some(reason) = listing.incomplete() {
        // What was read is recorded; nothing is concluded from what was not.
        batch.close().await?;
        return Err(RunError::IncompleteListing(reason));
    }
    // A link is dropped only for an account the target confirms gone.
    for target_id in classifier.unseen_links() {
        match target.client.users().get(&target_id).await {
            Ok(account) => {
                if crate::scim::id_of(&account) != Some(target_id.as_str()) {
                    return Err(RunError::WrongAccount(target_id));
                }
                if listing.first_sight(Some(&target_id)) {
                    render_for(db.conn(), &mut classifier, std::slice::from_ref(&account)).await?;
                    let finding = listing.withhold(classifier.classify_account(&account)?);
                    classifier.forget_renderings();
                    batch.push(finding, Some(account));
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        if batch.is_full() {
            batch.flush().await?;
        }
    }
    let superseded = classifier.superseded().to_vec();
    let missing = classifier.missing();
    for identities in missing.chunks(IDENTITY_PAGE as usize) {
        render(db.conn(), &mut classifier, identities).await?;
        for identity in identities {
            let finding = listing.withhold(classifier.missing_finding(*identity)?);
            batch.push(finding, None);
            if batch.is_full() {
                batch.flush().await?;
            }
        }
        classifier.forget_renderings();
    }
    drop(missing);
    name_members(&mut pushed, &names);
    for finding in pushed {
        batch.push_group(finding);
        if batch.is_full() {
            batch.flush().await?;
        }
    }
    batch.close().await?;
    for (identity_id, target_id) in &superseded {
        for (class, action) in mark_conflict(db, &run.id, identity_id, target_id).await? {
            batch.counts.reclassify(class, Class::Conflict);
            if action == ActionKind::Deactivate || action == ActionKind::Delete {
                batch.deprovisions = batch.deprovisions.saturating_sub(1);
            }
        }
    }
    if fix {
        batch.jobs += apply_adoptions(db, app, &run.id).await?;
    }

    let m = metrics();
    for class in Class::ALL {
        let n = batch.counts.get(class) + batch.group_counts.get(class);
        if class != Class::InSync && n > 0 {
            m.drift_detected_total
                .with_label_values(&[app.name.as_str(), class.as_str()])
                .inc_by(n);
        }
    }

    tracing::info!(
        app = %app.name,
        run = %run.id,
        load_seconds = loaded.as_secs_f64(),
        waiting_for_target_seconds = waited.as_secs_f64(),
        writing_seconds = batch.writing.as_secs_f64(),
        total_seconds = started.elapsed().as_secs_f64(),
        "Reconcile run classified the target"
    );
    let mut outcome = RunOutcome {
        state: RunState::Completed,
        counts: batch.counts,
        groups: batch.group_counts,
        writes: batch.jobs,
        held: None,
        note: listing.note(),
    };
    if fix && batch.deprovisions > 0 {
        let accounts_read = batch.counts.total() - batch.counts.missing;
        match deletion_guard(
            &target.settings.deletion_guard,
            usize::try_from(batch.deprovisions).unwrap_or(usize::MAX),
            usize::try_from(accounts_read).unwrap_or(usize::MAX),
        ) {
            GuardDecision::Proceed => {
                outcome.writes += apply_deprovisions(db, app, &run.id).await?;
            }
            GuardDecision::Hold { reason } => {
                hold_deprovisions(db, &run.id).await?;
                tracing::warn!(app = %app.name, run = %run.id, reason, "Deletion guard held the run's deprovisions");
                outcome.state = RunState::AwaitingApproval;
                outcome.held = Some((batch.deprovisions, reason));
            }
        }
    }
    delivery.wake();
    Ok(outcome)
}

/// For a target that answers groups without members (`group_members_readable = false`): puts
/// into `group` the members it is known to have, so that the classifier never reads the empty
/// answer as "everyone left" (and the fix never re-adds everyone every run). Each wanted member
/// is asked for with the target's member filter; without one, roster's links are trusted (the
/// wanted members are taken as present). Members added by hand in the target cannot be seen
/// either way, so they are never reported or removed.
async fn known_members(
    client: &crate::scim::ScimClient,
    classifier: &GroupClassifier,
    group: &mut Value,
) -> Result<(), RunError> {
    let (Some(wanted), Some(id)) = (
        classifier.wanted_members(group),
        crate::scim::id_of(group).map(str::to_owned),
    ) else {
        return Ok(());
    };
    let members = match client.groups().members_confirmed(&id, &wanted).await? {
        Some(confirmed) => confirmed,
        None => wanted,
    };
    if let Some(object) = group.as_object_mut() {
        object.retain(|key, _| !key.eq_ignore_ascii_case("members"));
        object.insert(
            "members".to_owned(),
            members
                .into_iter()
                .map(|value| serde_json::json!({ "value": value }))
                .collect(),
        );
    }
    Ok(())
}

/// What a run saw of the target's listing of users: enough to tell a complete listing from one
/// that ended early, which is the only kind roster may conclude "gone" from.
///
/// Memory: one 64-bit hash per account id read (about 16 bytes with the set's overhead), the
/// price of counting distinct accounts; the accounts themselves are not kept.
#[derive(Debug, Default)]
struct Listing {
    ids: HashSet<u64>,
    /// Accounts without an `id`: they cannot repeat-check, so each counts.
    without_id: u64,
    /// Accounts answered again (skipped).
    repeats: u64,
    /// `totalResults` of the latest page that sent one.
    total: Option<u64>,
    /// A page's `totalResults` was below an earlier one's.
    shrank: bool,
    /// The client stopped because the target answered page 1 again or a page started past
    /// `totalResults`, or handed out a cursor it had handed out before.
    wrapped: bool,
    /// Nothing proves the listing complete (a target that pages by index or not at all
    /// answered without `totalResults`, or one whose user listings leave accounts out): findings that conclude
    /// from an absence, or that the deletion guard would weigh against an unknown total, are
    /// only reported ([`Listing::withhold`]).
    unproven: bool,
    /// Findings whose action was withheld because of `unproven`.
    withheld: u64,
}

impl Listing {
    fn page(&mut self, total: Option<u64>, wrapped: bool) {
        self.wrapped |= wrapped;
        if let Some(total) = total {
            self.shrank |= self.total.is_some_and(|before| total < before);
            self.total = Some(total);
        }
    }

    /// On an unproven listing, a finding that would create, adopt (link) or deprovision is
    /// reported with action `none`: who is missing, who else matches a person, and what
    /// fraction of the target a deprovision is, all depend on accounts the listing may not
    /// have shown. Drift of a linked account (a PATCH of what was read) stays.
    fn withhold(&mut self, mut finding: Finding) -> Finding {
        let concludes_from_absence = matches!(
            finding.action.kind(),
            ActionKind::Create
                | ActionKind::Link
                | ActionKind::LinkAndPatch
                | ActionKind::Deactivate
                | ActionKind::Delete
        );
        if self.unproven && concludes_from_absence {
            finding.action = super::Action::None;
            self.withheld += 1;
        }
        finding
    }

    /// [`Listing::withhold`] for a pushed group: on an unproven listing of `/Groups`, a group
    /// not seen is not known to be missing, and one seen by name may have a namesake unseen.
    fn withhold_group(&mut self, finding: &mut GroupFinding) {
        let concludes_from_absence = matches!(
            finding.action,
            ActionKind::Create | ActionKind::Link | ActionKind::LinkAndPatch
        );
        if self.unproven && concludes_from_absence {
            finding.action = ActionKind::None;
            self.withheld += 1;
        }
    }

    /// The run's note when the listing was unproven.
    fn note(&self) -> Option<String> {
        self.unproven.then(|| {
            format!(
                "the target's listing cannot be proven complete (it answered without totalResults, or its quirks say its user listings leave accounts out): {} findings that would create, adopt or deprovision were only reported",
                self.withheld
            )
        })
    }

    /// Whether the account is read for the first time (an account without `id` always is).
    fn first_sight(&mut self, id: Option<&str>) -> bool {
        let Some(id) = id else {
            self.without_id += 1;
            return true;
        };
        // A fixed hasher: the same id gives the same hash for the whole run.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let first = self.ids.insert(hasher.finish());
        if !first {
            self.repeats += 1;
        }
        first
    }

    /// Why the listing may not hold every account of the target; `None` when nothing says so.
    /// Without `totalResults` completeness cannot be checked: then only the confirmation of
    /// each unseen linked account by id protects the links.
    fn incomplete(&self) -> Option<String> {
        let read = self.ids.len() as u64 + self.without_id;
        let mut why = Vec::new();
        if let Some(total) = self.total
            && read < total
        {
            why.push(format!(
                "read {read} distinct accounts of the {total} its totalResults announced"
            ));
        }
        if self.wrapped {
            why.push(
                "the target answered a page already read (does it ignore startIndex, or hand out a cursor again?) or a page past its totalResults"
                    .to_owned(),
            );
        }
        if self.shrank {
            why.push(
                "its totalResults went down while it was read, so accounts may have moved to pages already read"
                    .to_owned(),
            );
        }
        if self.repeats > 0 && !why.is_empty() {
            why.push(format!("{} accounts were answered twice", self.repeats));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Turns the user items of `(identity, account)` into `conflict`s with action none; returns
/// what each was before (for the counts and the deletion guard).
async fn mark_conflict(
    db: &Db,
    run_id: &str,
    identity_id: &str,
    target_id: &str,
) -> Result<Vec<(Class, ActionKind)>, DbErr> {
    let of_pair = || {
        reconcile_item::Entity::find()
            .filter(reconcile_item::Column::RunId.eq(run_id))
            .filter(reconcile_item::Column::Resource.eq(Resource::User.as_str()))
            .filter(reconcile_item::Column::IdentityId.eq(identity_id))
            .filter(reconcile_item::Column::TargetId.eq(target_id))
    };
    let before: Vec<(Class, ActionKind)> = of_pair()
        .all(db.conn())
        .await?
        .into_iter()
        .filter_map(|item| {
            let class = serde_json::from_value(Value::String(item.class)).ok()?;
            let action = serde_json::from_value(Value::String(item.action)).ok()?;
            Some((class, action))
        })
        .collect();
    let tx = db.write_tx().await?;
    reconcile_item::Entity::update_many()
        .col_expr(
            reconcile_item::Column::Class,
            Expr::value(Class::Conflict.as_str()),
        )
        .col_expr(
            reconcile_item::Column::Action,
            Expr::value(ActionKind::None.as_str()),
        )
        .col_expr(
            reconcile_item::Column::Account,
            Expr::value(sea_orm::Value::Json(None)),
        )
        .filter(reconcile_item::Column::RunId.eq(run_id))
        .filter(reconcile_item::Column::Resource.eq(Resource::User.as_str()))
        .filter(reconcile_item::Column::IdentityId.eq(identity_id))
        .filter(reconcile_item::Column::TargetId.eq(target_id))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    Ok(before)
}

/// Whether identity's link may point at `target_id`: it has no account, or that one, and no
/// other person's live link holds `target_id`. An identity linked to another account since
/// the run read the target (a job created or adopted one meanwhile) keeps it: moving the link
/// would hand its account to nobody. An account linked to someone else since (a new hire with
/// a leaver's address adopted it) stays theirs, and the rest of the run still applies.
async fn link_is_free_for(
    tx: &impl ConnectionTrait,
    app: &app::Model,
    identity_id: &str,
    target_id: &str,
) -> Result<bool, DbErr> {
    let current = find_link(tx, &app.id, ResourceKind::User, identity_id).await?;
    let free = current
        .and_then(|row| row.target_id)
        .is_none_or(|linked| linked == target_id);
    if !free {
        tracing::warn!(
            app = %app.name,
            identity = identity_id,
            target_id,
            "Not linking the account a reconcile run found: the person is linked to another account now"
        );
        return Ok(false);
    }
    let other = linked_to_another(tx, &app.id, ResourceKind::User, target_id, identity_id).await?;
    if let Some(other) = &other {
        tracing::warn!(
            app = %app.name,
            identity = identity_id,
            target_id,
            linked_to = %other,
            "Not linking the account a reconcile run found: another person is linked to it now"
        );
    }
    Ok(other.is_none())
}

/// Applies the run's adoptions, once the whole listing was read and no second account turned
/// them into conflicts: each adoptable item's person gets a user job, which adopts the account
/// the way a joiner's does — it asks the target for the person's matching value afresh, and
/// adopts only an account that still holds it, is in a managed domain, is linked to nobody
/// else and is no other person's unsure create — then PATCHes what differs. The run's copy of
/// the account may be minutes old by now (renamed, handed on): it is never linked as it was
/// read. Reads the items back a page at a time. Returns the jobs that will write
/// (`link_and_patch`); a plain `link` writes nothing to the target.
async fn apply_adoptions(db: &Db, app: &app::Model, run_id: &str) -> Result<u64, DbErr> {
    let mut after = 0i64;
    let mut patching = 0u64;
    loop {
        let items = reconcile_item::Entity::find()
            .filter(reconcile_item::Column::RunId.eq(run_id))
            .filter(reconcile_item::Column::Resource.eq(Resource::User.as_str()))
            .filter(reconcile_item::Column::Class.eq(Class::Adoptable.as_str()))
            .filter(
                reconcile_item::Column::Action
                    .is_in([ActionKind::Link.as_str(), ActionKind::LinkAndPatch.as_str()]),
            )
            .filter(reconcile_item::Column::Id.gt(after))
            .order_by_asc(reconcile_item::Column::Id)
            .limit(ITEM_BATCH as u64)
            .all(db.conn())
            .await?;
        let Some(last) = items.last() else {
            break;
        };
        after = last.id;
        let tx = db.write_tx().await?;
        still_running(&*tx, run_id).await?;
        let mut jobs = Vec::new();
        for item in &items {
            let (Some(identity_id), Some(target_id)) =
                (item.identity_id.as_deref(), item.target_id.as_deref())
            else {
                continue;
            };
            if !link_is_free_for(&*tx, app, identity_id, target_id).await? {
                continue;
            }
            jobs.push(user_job(&app.id, identity_id));
            if item.action == ActionKind::LinkAndPatch.as_str() {
                metrics()
                    .drift_corrected_total
                    .with_label_values(&[app.name.as_str(), Class::Adoptable.as_str()])
                    .inc();
                patching += 1;
            }
        }
        queue::enqueue(&*tx, &jobs).await?;
        tx.commit().await?;
    }
    Ok(patching)
}

/// Reads the identities `accounts` are compared with (with their groups) and renders them into
/// `classifier`, for this page of accounts only.
async fn render_for(
    conn: &impl ConnectionTrait,
    classifier: &mut Classifier,
    accounts: &[Value],
) -> Result<(), RunError> {
    let wanted = classifier.to_render(accounts);
    render(conn, classifier, &wanted).await
}

/// Reads `identities` with their group names, as they are now, and hands each to the
/// classifier rendered. One it cannot find stays unrendered: the account compared with it
/// fails the run ([`ReconcileError::NotRendered`]) rather than being guessed.
async fn render(
    conn: &impl ConnectionTrait,
    classifier: &mut Classifier,
    identities: &[IdentityRef],
) -> Result<(), RunError> {
    let desired = classifier.desired();
    for (identity, user) in read_rendered(conn, &desired, identities).await? {
        classifier.provide(identity, user);
    }
    Ok(())
}

/// Reads `identities` with their group names, [`IDENTITY_PAGE`] per query, and renders them
/// by `desired`; one not found is left out.
async fn read_rendered(
    conn: &impl ConnectionTrait,
    desired: &Desired,
    identities: &[IdentityRef],
) -> Result<Vec<(IdentityRef, Value)>, RunError> {
    let mut rendered = Vec::with_capacity(identities.len());
    for identities in identities.chunks(IDENTITY_PAGE as usize) {
        read_rendered_page(conn, desired, identities, &mut rendered).await?;
    }
    Ok(rendered)
}

async fn read_rendered_page(
    conn: &impl ConnectionTrait,
    desired: &Desired,
    identities: &[IdentityRef],
    rendered: &mut Vec<(IdentityRef, Value)>,
) -> Result<(), RunError> {
    if identities.is_empty() {
        return Ok(());
    }
    let wanted: HashMap<String, IdentityRef> = identities
        .iter()
        .map(|identity| (desired.identity_id(*identity).to_owned(), *identity))
        .collect();
    let people = identity::Entity::find()
        .filter(identity::Column::Id.is_in(wanted.keys().map(String::as_str)))
        .all(conn)
        .await?;
    let employee_ids: Vec<String> = people.iter().map(|p| p.employee_id.clone()).collect();
    let mut groups_of = crate::delivery::people::group_names_of(conn, &employee_ids).await?;
    for person in people {
        let Some(identity) = wanted.get(&person.id) else {
            continue;
        };
        let groups = groups_of.remove(&person.employee_id).unwrap_or_default();
        let view = crate::delivery::people::view_of(&person, groups);
        if let Some(user) = desired.render(*identity, &view) {
            rendered.push((*identity, user));
        }
    }
    Ok(())
}

/// roster's side, indexed: every identity (its scope and matching value need its group
/// names) with its link to this app. Read a page at a time: neither the people nor their
/// groups nor the app's links are ever all held at once beside the index being built.
async fn load_desired(
    conn: &impl ConnectionTrait,
    app_id: &str,
    target: &AppTarget,
) -> Result<Desired, RunError> {
    let mut desired = Desired::new(&target.settings, (*target.compiled).clone())?;
    let count = identity::Entity::find().count(conn).await?;
    desired.reserve(usize::try_from(count).unwrap_or(0));
    let mut after: Option<String> = None;
    loop {
        let mut page = identity::Entity::find()
            .order_by_asc(identity::Column::Id)
            .limit(IDENTITY_PAGE);
        if let Some(last) = &after {
            page = page.filter(identity::Column::Id.gt(last.as_str()));
        }
        let people = page.all(conn).await?;
        let Some(last) = people.last() else {
            break;
        };
        after = Some(last.id.clone());
        let employee_ids: Vec<String> = people.iter().map(|p| p.employee_id.clone()).collect();
        let mut groups_of = crate::delivery::people::group_names_of(conn, &employee_ids).await?;
        // The links of this page's people only: the app's links are never all held at once
        // beside the index being built. Only the columns classification needs (a link's
        // snapshot is the size of an account).
        let links: HashMap<String, LinkInfo> = link::Entity::find()
            .select_only()
            .columns([
                link::Column::ResourceId,
                link::Column::TargetId,
                link::Column::State,
            ])
            .filter(link::Column::AppId.eq(app_id))
            .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
            .filter(link::Column::ResourceId.is_in(people.iter().map(|p| p.id.as_str())))
            .into_tuple::<(String, Option<String>, String)>()
            .all(conn)
            .await?
            .into_iter()
            .map(|(resource_id, target_id, state)| (resource_id, LinkInfo { target_id, state }))
            .collect();
        for person in people {
            let groups = groups_of.remove(&person.employee_id).unwrap_or_default();
            let link = links.get(&person.id);
            let view = crate::delivery::people::view_of(&person, groups);
            desired.insert(&view, link);
        }
    }
    Ok(desired)
}

/// roster's side of the groups the app pushes: each `group_push` entry that names a roster
/// group, with its link and the accounts its members have in the app (the same
/// [`member_links`](crate::delivery::execute::member_links) delivery pushes).
async fn load_desired_groups(
    conn: &impl ConnectionTrait,
    app_id: &str,
    target: &AppTarget,
) -> Result<GroupClassifier, RunError> {
    let mut desired = Vec::new();
    let mut names = std::collections::HashSet::new();
    for name in &target.settings.group_push {
        if !names.insert(name.as_str()) {
            continue;
        }
        let Some(row) = group::Entity::find()
            .filter(group::Column::Name.eq(name.as_str()))
            .one(conn)
            .await?
        else {
            continue;
        };
        let link_target_id = find_link(conn, app_id, ResourceKind::Group, name)
            .await?
            .and_then(|l| l.target_id);
        let members = crate::delivery::execute::member_links(conn, app_id, &row.id)
            .await?
            .into_iter()
            .filter_map(|l| {
                let user_name = l
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.get("userName"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Some((l.target_id?, user_name))
            })
            .collect();
        desired.push(DesiredGroup {
            name: name.clone(),
            link_target_id,
            members,
        });
    }
    Ok(GroupClassifier::new(desired))
}

/// A finding waiting to be written: an account's (with the account, when its fix needs it)
/// or a group's.
enum Entry {
    User(Finding, Option<Value>),
    Group(GroupFinding),
}

/// Findings waiting to be written, with the accounts the non-deprovision fixes need. Full
/// batches go to a writer task ([`write_batches`]), so that writing one batch (a commit, a disk
/// sync on SQLite) overlaps reading and classifying the next; at most [`BATCHES_AHEAD`] batches
/// wait for it, which keeps memory bounded.
struct Batch {
    fix: bool,
    pending: Vec<Entry>,
    counts: Counts,
    group_counts: GroupCounts,
    /// Time the writer spent writing findings and preparing fixes.
    writing: std::time::Duration,
    /// Jobs enqueued so far (known once the writer is done).
    jobs: u64,
    /// Findings whose action deactivates or deletes (applied after the guard).
    deprovisions: u64,
    writer: Option<tokio::sync::mpsc::Sender<Vec<Entry>>>,
    written: Option<tokio_util::task::AbortOnDropHandle<Result<(u64, std::time::Duration), DbErr>>>,
}

/// Full batches that may wait for the writer.
const BATCHES_AHEAD: usize = 1;

impl Batch {
    fn new(db: &Db, run: &reconcile_run::Model, app: &app::Model, fix: bool) -> Self {
        let (writer, batches) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
        let written = tokio::spawn(write_batches(
            db.clone(),
            app.clone(),
            run.id.clone(),
            fix,
            batches,
        ));
        Self {
            fix,
            pending: Vec::with_capacity(ITEM_BATCH),
            counts: Counts::default(),
            group_counts: GroupCounts::default(),
            writing: std::time::Duration::ZERO,
            jobs: 0,
            deprovisions: 0,
            writer: Some(writer),
            written: Some(tokio_util::task::AbortOnDropHandle::new(written)),
        }
    }

    fn push(&mut self, finding: Finding, account: Option<Value>) {
        self.counts.add(&finding);
        if finding.action.is_deprovision() {
            self.deprovisions += 1;
        }
        // Only the fixes that rewrite the link's snapshot need the account itself (an
        // adoption is the person's job's, which reads the account afresh).
        let keep = self.fix && finding.action.kind() == ActionKind::Patch;
        self.pending
            .push(Entry::User(finding, if keep { account } else { None }));
    }

    fn push_group(&mut self, finding: GroupFinding) {
        self.group_counts.add(&finding);
        self.pending.push(Entry::Group(finding));
    }

    fn is_full(&self) -> bool {
        self.pending.len() >= ITEM_BATCH
    }

    /// Hands the pending findings to the writer (waiting while it is a batch behind).
    async fn flush(&mut self) -> Result<(), RunError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::replace(&mut self.pending, Vec::with_capacity(ITEM_BATCH));
        let sent = match &self.writer {
            Some(writer) => writer.send(pending).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped: its error says why.
            self.join_writer().await?;
            return Err(RunError::Db(DbErr::Custom(
                "the findings writer stopped".to_owned(),
            )));
        }
        Ok(())
    }

    /// Writes what is pending and waits until every batch is written and committed.
    async fn close(&mut self) -> Result<(), RunError> {
        self.flush().await?;
        self.join_writer().await
    }

    async fn join_writer(&mut self) -> Result<(), RunError> {
        self.writer = None;
        if let Some(written) = self.written.take() {
            let (jobs, writing) = written
                .await
                .map_err(|e| RunError::Db(DbErr::Custom(format!("findings writer: {e}"))))??;
            self.jobs += jobs;
            self.writing += writing;
        }
        Ok(())
    }
}

/// The writer task of a [`Batch`]: each batch in one transaction. Returns the jobs enqueued
/// and the time spent.
async fn write_batches(
    db: Db,
    app: app::Model,
    run_id: String,
    fix: bool,
    mut batches: tokio::sync::mpsc::Receiver<Vec<Entry>>,
) -> Result<(u64, std::time::Duration), DbErr> {
    let mut jobs = 0;
    let mut writing = std::time::Duration::ZERO;
    while let Some(pending) = batches.recv().await {
        let started = Instant::now();
        jobs += write_batch(&db, &app, &run_id, fix, &pending).await?;
        writing += started.elapsed();
    }
    Ok((jobs, writing))
}

/// Writes the items and, in fix mode, prepares the links and enqueues the jobs of the
/// non-deprovision fixes, in one transaction. Returns the jobs enqueued.
async fn write_batch(
    db: &Db,
    app: &app::Model,
    run_id: &str,
    fix: bool,
    pending: &[Entry],
) -> Result<u64, DbErr> {
    let tx = db.write_tx().await?;
    // Bounded statements: a database limits the bind parameters of one statement.
    for chunk in pending.chunks(INSERT_ROWS) {
        let rows = chunk.iter().map(|entry| match entry {
            Entry::User(finding, _) => item_row(run_id, finding),
            Entry::Group(finding) => group_item_row(run_id, finding),
        });
        reconcile_item::Entity::insert_many(rows).exec(&*tx).await?;
    }
    let mut jobs = Vec::new();
    if fix {
        still_running(&*tx, run_id).await?;
        for entry in pending {
            let (job, class) = match entry {
                Entry::User(finding, account) => (
                    prepare_fix(&*tx, app, finding, account.as_ref()).await?,
                    finding.class,
                ),
                Entry::Group(finding) => {
                    (prepare_group_fix(&*tx, app, finding).await?, finding.class)
                }
            };
            if let Some(job) = job {
                metrics()
                    .drift_corrected_total
                    .with_label_values(&[app.name.as_str(), class.as_str()])
                    .inc();
                jobs.push(job);
            }
        }
        queue::enqueue(&*tx, &jobs).await?;
    }
    tx.commit().await?;
    Ok(jobs.len() as u64)
}

fn item_row(run_id: &str, finding: &Finding) -> reconcile_item::ActiveModel {
    reconcile_item::ActiveModel {
        account: Set(None),
        run_id: Set(run_id.to_owned()),
        class: Set(finding.class.as_str().to_owned()),
        target_id: Set(finding.target_id.clone()),
        user_name: Set(finding.user_name.clone()),
        identity_id: Set(finding.identity_id.clone()),
        differences: Set(serde_json::to_value(&finding.differences).unwrap_or(Value::Null)),
        action: Set(finding.action.label().to_owned()),
        held: Set(false),
        resource: Set(Resource::User.as_str().to_owned()),
        display_name: Set(None),
        ..Default::default()
    }
}

fn group_item_row(run_id: &str, finding: &GroupFinding) -> reconcile_item::ActiveModel {
    reconcile_item::ActiveModel {
        run_id: Set(run_id.to_owned()),
        class: Set(finding.class.as_str().to_owned()),
        target_id: Set(finding.target_id.clone()),
        user_name: Set(None),
        identity_id: Set(None),
        differences: Set(serde_json::to_value(finding.differences()).unwrap_or(Value::Null)),
        action: Set(finding.action.as_str().to_owned()),
        held: Set(false),
        resource: Set(Resource::Group.as_str().to_owned()),
        display_name: Set(finding.display_name.clone()),
        account: Set(None),
        ..Default::default()
    }
}

/// The group side of [`prepare_fix`]: the group's link is made to say what the target holds
/// (its id, `displayName` and members as read), so that the level-triggered group job sends
/// the PATCH add/remove (never PUT) and the rename; a missing group's link loses its target id,
/// so that the job creates it again (after looking for one of that name).
async fn prepare_group_fix(
    tx: &impl ConnectionTrait,
    app: &app::Model,
    finding: &GroupFinding,
) -> Result<Option<JobRequest>, DbErr> {
    let Some(name) = finding.group.as_deref() else {
        return Ok(None);
    };
    let job = JobRequest {
        kind: ResourceKind::Group,
        resource_id: name.to_owned(),
        ..user_job(&app.id, "")
    };
    match finding.action {
        ActionKind::Patch | ActionKind::LinkAndPatch | ActionKind::Link => {
            // The snapshot keeps whether roster created the group (an adopted one is never
            // deleted with the roster group) and the replaced groups a rename by
            // create–move–delete still has to delete.
            // What a job lost or failed part-way left unsure of the members is kept too: the
            // next job still removes whoever it may have added.
            let (origin, replaces, unsure) = if finding.action == ActionKind::Patch {
                let link = find_link(tx, &app.id, ResourceKind::Group, name).await?;
                let snapshot = link.as_ref().and_then(|l| l.snapshot.as_ref());
                let unsure: Vec<(&str, Value)> = [GROUP_MEMBERS_UNSURE, GROUP_MEMBERS_MAYBE]
                    .into_iter()
                    .filter_map(|key| Some((key, snapshot?.get(key)?.clone())))
                    .collect();
                (
                    group_origin(snapshot).map(str::to_owned),
                    replaced_groups(snapshot),
                    unsure,
                )
            } else {
                (Some(GROUP_ADOPTED.to_owned()), Vec::new(), Vec::new())
            };
            let mut state = finding.target_state.clone();
            if let Some(object) = state.as_mut().and_then(Value::as_object_mut) {
                object.insert("origin".to_owned(), Value::from(origin));
                if !replaces.is_empty() {
                    object.insert(GROUP_REPLACES.to_owned(), Value::from(replaces));
                }
                for (key, value) in unsure {
                    object.insert(key.to_owned(), value);
                }
            }
            save_link(
                tx,
                app,
                ResourceKind::Group,
                name,
                finding.target_id.as_deref(),
                state.as_ref(),
            )
            .await?;
            Ok((finding.action != ActionKind::Link).then_some(job))
        }
        ActionKind::Create => {
            forget_target(tx, &app.id, ResourceKind::Group, name).await?;
            Ok(Some(job))
        }
        ActionKind::None | ActionKind::Deactivate | ActionKind::Delete => Ok(None),
    }
}

/// The resource is gone from the target: its link keeps no target id or snapshot, so that the
/// next job matches (or looks up by name) and creates it.
async fn forget_target(
    tx: &impl ConnectionTrait,
    app_id: &str,
    kind: ResourceKind,
    resource_id: &str,
) -> Result<(), DbErr> {
    if let Some(row) = find_link(tx, app_id, kind, resource_id).await? {
        let mut active: link::ActiveModel = row.into();
        active.target_id = Set(None);
        active.snapshot = Set(None);
        active.snapshot_hash = Set(None);
        active.state = Set("deleted".to_owned());
        active.delete_after = Set(None);
        active.updated_at = Set(chrono::Utc::now());
        active.update(tx).await?;
    }
    Ok(())
}

fn user_job(app_id: &str, identity_id: &str) -> JobRequest {
    JobRequest {
        app_id: app_id.to_owned(),
        kind: ResourceKind::User,
        resource_id: identity_id.to_owned(),
        lane: Lane::Reconcile,
        run_at_ms: queue::now_ms(),
        hr_event_id: None,
    }
}

/// Makes the link tell the job what the target really holds, and returns the job (if the
/// finding needs one). Deprovisions are not handled here (see [`apply_deprovisions`]).
///
/// The finding was made against the link as the run read it: a link a job moved since (it
/// created, adopted or re-linked the person's account meanwhile) is left as the job left it,
/// and no fix is enqueued — pointing it back at the account the run saw, or dropping it,
/// would hand the person a second account or lose the one the job made.
async fn prepare_fix(
    tx: &impl ConnectionTrait,
    app: &app::Model,
    finding: &Finding,
    account: Option<&Value>,
) -> Result<Option<JobRequest>, DbErr> {
    let Some(identity_id) = finding.identity_id.as_deref() else {
        return Ok(None);
    };
    // The account the run found the link holding: the drifted one it read, or (missing) the
    // one it found gone.
    let read_link = match finding.action.kind() {
        ActionKind::Patch => Some(finding.target_id.as_deref()),
        ActionKind::Create => Some(finding.linked_target.as_deref()),
        _ => None,
    };
    if let Some(read_link) = read_link {
        let current = find_link(tx, &app.id, ResourceKind::User, identity_id).await?;
        let moved = current.is_some_and(|l| l.target_id.as_deref() != read_link);
        if moved {
            tracing::info!(
                app = %app.name,
                identity = identity_id,
                "Not fixing a finding of a reconcile run: the person's link holds another account since the run read it"
            );
            return Ok(None);
        }
    }
    match finding.action.kind() {
        // Linked but changed by hand: the job diffs against the snapshot, so the snapshot
        // becomes the account as it is, and the diff yields the PATCH back.
        ActionKind::Patch => {
            // A linked account always has its id; without one there is nothing to point at,
            // and the link must not lose the id it has.
            let Some(target_id) = finding.target_id.as_deref() else {
                return Ok(None);
            };
            save_link(
                tx,
                app,
                ResourceKind::User,
                identity_id,
                Some(target_id),
                account,
            )
            .await?;
            Ok(Some(user_job(&app.id, identity_id)))
        }
        // Adoptions wait until the whole listing was read ([`apply_adoptions`]).
        ActionKind::Link | ActionKind::LinkAndPatch => Ok(None),
        // Gone from the target: a link without a target id makes the job match, then create.
        // A link that held no account (an unsure create's, `pending`) stays as it is: its job
        // asks the target afresh, which a dropped link would not make it do.
        ActionKind::Create => {
            if finding.linked_target.is_some() {
                forget_target(tx, &app.id, ResourceKind::User, identity_id).await?;
            }
            Ok(Some(user_job(&app.id, identity_id)))
        }
        ActionKind::None | ActionKind::Deactivate | ActionKind::Delete => Ok(None),
    }
}

/// Records `linked` to `target_id`; `snapshot` replaces the last-applied one when given.
async fn save_link(
    tx: &impl ConnectionTrait,
    app: &app::Model,
    kind: ResourceKind,
    resource_id: &str,
    target_id: Option<&str>,
    snapshot: Option<&Value>,
) -> Result<(), DbErr> {
    let now = chrono::Utc::now();
    let hash = snapshot.map(crate::mapping::snapshot_hash);
    match find_link(tx, &app.id, kind, resource_id).await? {
        Some(row) => {
            let mut active: link::ActiveModel = row.into();
            active.target_id = Set(target_id.map(str::to_owned));
            if let Some(snapshot) = snapshot {
                active.snapshot = Set(Some(snapshot.clone()));
                active.snapshot_hash = Set(hash);
            }
            active.state = Set("linked".to_owned());
            active.last_error = Set(None);
            active.updated_at = Set(now);
            active.update(tx).await?;
        }
        None => {
            link::ActiveModel {
                app_id: Set(app.id.clone()),
                resource_kind: Set(kind.as_str().to_owned()),
                resource_id: Set(resource_id.to_owned()),
                target_id: Set(target_id.map(str::to_owned)),
                snapshot: Set(snapshot.cloned()),
                snapshot_hash: Set(hash),
                state: Set("linked".to_owned()),
                last_error: Set(None),
                delete_after: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(tx)
            .await?;
        }
    }
    Ok(())
}

/// Marks the run's deprovisions as held by the deletion guard.
async fn hold_deprovisions(db: &Db, run_id: &str) -> Result<(), DbErr> {
    let tx = db.write_tx().await?;
    reconcile_item::Entity::update_many()
        .col_expr(reconcile_item::Column::Held, Expr::value(true))
        .filter(reconcile_item::Column::RunId.eq(run_id))
        .filter(
            reconcile_item::Column::Action
                .is_in([ActionKind::Deactivate.as_str(), ActionKind::Delete.as_str()]),
        )
        .exec(&*tx)
        .await?;
    tx.commit().await
}

/// Prepares and enqueues the run's deprovisions, reading its items back a page at a time.
/// An orphan's link is set `linked` to the account (a leaver's link says `deactivated`, and
/// the job would otherwise see nothing to do); an unmatched account has no identity and gets
/// an `account` job. Returns the jobs enqueued.
async fn apply_deprovisions(db: &Db, app: &app::Model, run_id: &str) -> Result<u64, DbErr> {
    let mut after = 0i64;
    let mut enqueued = 0u64;
    loop {
        let tx = db.write_tx().await?;
        let Some((last, jobs)) = deprovision_batch(&*tx, app, run_id, after).await? else {
            break;
        };
        tx.commit().await?;
        after = last;
        enqueued += jobs;
    }
    Ok(enqueued)
}

/// One batch of a run's deprovision items after item id `after`, in `tx`: links prepared and
/// jobs enqueued. `None` when no item is left; else the last item's id and the jobs enqueued.
async fn deprovision_batch(
    tx: &impl ConnectionTrait,
    app: &app::Model,
    run_id: &str,
    after: i64,
) -> Result<Option<(i64, u64)>, DbErr> {
    let items = reconcile_item::Entity::find()
        .filter(reconcile_item::Column::RunId.eq(run_id))
        .filter(
            reconcile_item::Column::Action
                .is_in([ActionKind::Deactivate.as_str(), ActionKind::Delete.as_str()]),
        )
        .filter(reconcile_item::Column::Id.gt(after))
        .order_by_asc(reconcile_item::Column::Id)
        .limit(ITEM_BATCH as u64)
        .all(tx)
        .await?;
    let Some(last) = items.last() else {
        return Ok(None);
    };
    let mut jobs = Vec::with_capacity(items.len());
    for item in &items {
        let Some(target_id) = item.target_id.as_deref() else {
            continue;
        };
        let job = match item.identity_id.as_deref() {
            Some(identity_id) => {
                // Decided maybe hours ago (a held run approved later): the person may have
                // another account by now, which must keep its link.
                if !link_is_free_for(tx, app, identity_id, target_id).await? {
                    continue;
                }
                save_link(
                    tx,
                    app,
                    ResourceKind::User,
                    identity_id,
                    Some(target_id),
                    None,
                )
                .await?;
                // Without the snapshot of what roster last wrote, the job reads the account
                // again before it deprovisions (there, the same resource, managed, this
                // person's): a link roster made long ago says nothing of the account now.
                queue::forget_snapshot(tx, &app.id, ResourceKind::User, identity_id).await?;
                user_job(&app.id, identity_id)
            }
            None => JobRequest {
                kind: ResourceKind::Account,
                resource_id: target_id.to_owned(),
                ..user_job(&app.id, "")
            },
        };
        metrics()
            .drift_corrected_total
            .with_label_values(&[app.name.as_str(), item.class.as_str()])
            .inc();
        jobs.push(job);
    }
    queue::enqueue(tx, &jobs).await?;
    Ok(Some((last.id, jobs.len() as u64)))
}

/// What a run read of the target's `/Groups`, for the pushed groups it would link by name:
/// one found by name is adopted only when no other group read has that name (which one is
/// roster's would be a guess, and delivery refuses it as well), and none is adopted or
/// created from a listing that is not whole (`scim::WholeAnswer`: short of its
/// `totalResults`, wrapped, or shrinking under its pages).
#[derive(Debug, Default)]
struct GroupsRead {
    whole: crate::scim::WholeAnswer,
    /// Groups read per lower-cased `displayName`.
    names: HashMap<String, u32>,
}

impl GroupsRead {
    fn page(&mut self, page: &crate::scim::Page) {
        let names = &mut self.names;
        self.whole.page(page, |group| {
            if let Some(name) = group.get("displayName").and_then(Value::as_str) {
                *names.entry(name.to_lowercase()).or_default() += 1;
            }
        });
    }

    fn incomplete(&self) -> bool {
        self.whole.short_by().is_some()
    }

    fn withhold_group(&self, finding: &mut GroupFinding) {
        let by_name = finding.class == Class::Adoptable
            && matches!(finding.action, ActionKind::Link | ActionKind::LinkAndPatch);
        let namesakes = finding
            .renamed_from
            .as_deref()
            .or(finding.display_name.as_deref())
            .map_or(0, |name| {
                self.names.get(&name.to_lowercase()).copied().unwrap_or(0)
            });
        let concludes_from_absence = matches!(
            finding.action,
            ActionKind::Create | ActionKind::Link | ActionKind::LinkAndPatch
        );
        if (by_name && namesakes > 1) || (self.incomplete() && concludes_from_absence) {
            finding.action = ActionKind::None;
        }
    }
}

async fn finish(
    db: &Db,
    run_id: &str,
    outcome: &RunOutcome,
    error: Option<&str>,
) -> Result<(), DbErr> {
    let tx = db.write_tx().await?;
    let mut update = reconcile_run::Entity::update_many()
        .col_expr(
            reconcile_run::Column::State,
            Expr::value(outcome.state.as_str()),
        )
        .col_expr(
            reconcile_run::Column::Writes,
            Expr::value(to_i64(outcome.writes)),
        )
        .col_expr(
            reconcile_run::Column::Error,
            Expr::value(error.map(str::to_owned)),
        )
        .col_expr(
            reconcile_run::Column::FinishedAt,
            Expr::value(chrono::Utc::now()),
        )
        .col_expr(reconcile_run::Column::Waiting, Expr::value(false))
        .filter(reconcile_run::Column::Id.eq(run_id))
        // A run given up meanwhile stays as the newer run's start left it.
        .filter(reconcile_run::Column::State.eq(RunState::Running.as_str()));
    if outcome.state != RunState::Failed {
        update = update.col_expr(
            reconcile_run::Column::Counts,
            Expr::value(counts_json(&outcome.counts, &outcome.groups)),
        );
    }
    update.exec(&*tx).await?;
    tx.commit().await
}

/// The run row's `counts`: the account counts of DESIGN §6 with the group counts under
/// `groups` (one column; readers of the account counts ignore the extra key).
#[must_use]
pub fn counts_json(counts: &Counts, groups: &GroupCounts) -> Value {
    let mut value = serde_json::to_value(counts).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "groups".to_owned(),
            serde_json::to_value(groups).unwrap_or(Value::Null),
        );
    }
    value
}

/// The group counts stored by [`counts_json`] (zero for runs recorded before groups were read).
#[must_use]
pub fn group_counts_of(counts: &Value) -> GroupCounts {
    counts
        .get("groups")
        .and_then(|groups| serde_json::from_value(groups.clone()).ok())
        .unwrap_or_default()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
