//! Reconcile runs as use cases (DESIGN §4, §6): start one (API, scheduler, CLI), list them,
//! read a run's report, approve what the deletion guard held. The run itself is
//! `reconcile::run`; this layer adds the audit rows and the mapping to `ServiceError`.
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::audit::{self, AuditEntry};
use super::{Principal, Roster, ServiceError, ServiceResult};
use crate::reconcile::run::{self, RunError, RunOutcome, RunProgress, Start};
use crate::reconcile::{Counts, Report, ReportItem, RunState};
use crate::settings::ReconcileMode;
use crate::store::entity::{reconcile_item, reconcile_run};

/// How often the scheduler looks for apps due a run.
const SCHEDULER_TICK: Duration = Duration::from_secs(60);

/// What `POST /apps/{id}/reconcile` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Classify and report only; nothing is enqueued.
    pub dry_run: bool,
    /// `None`: the app's `reconcile.mode`.
    pub mode: Option<ReconcileMode>,
}

/// A run's report (§6 shape) and what the row holds besides.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub report: Report,
    pub mode: String,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running`, waiting for a free reconcile slot of its instance.
    pub waiting: bool,
    /// Parallel to `report.items`: whether the deletion guard held the item.
    pub held: Vec<bool>,
    /// Items the run recorded, of which `report.items` holds a page.
    pub total_items: u64,
    /// The ids of the item rows read for this page, in order (the paging cursor's keys).
    pub item_ids: Vec<i64>,
}

impl From<RunError> for ServiceError {
    fn from(err: RunError) -> Self {
        match err {
            RunError::AppNotFound(id) => ServiceError::not_found("app", id),
            RunError::RunNotFound(id) => ServiceError::not_found("reconcile run", id),
            RunError::Conflict(message) => ServiceError::Conflict(message),
            RunError::NotDue => ServiceError::Conflict(err_text(&RunError::NotDue)),
            RunError::Db(e) => ServiceError::Db(e),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

fn err_text(err: &RunError) -> String {
    err.to_string()
}

fn parse<T: DeserializeOwned>(raw: &str) -> Option<T> {
    serde_json::from_value(Value::String(raw.to_owned())).ok()
}

impl Roster {
    /// Records a new `running` run (409 while another run of the app is running) with its
    /// audit row. The caller then runs it: [`Roster::spawn_reconcile`] or
    /// [`Roster::run_reconcile`].
    pub async fn begin_reconcile(
        &self,
        principal: Option<&Principal>,
        app_id: &str,
        options: RunOptions,
    ) -> ServiceResult<reconcile_run::Model> {
        self.begin_run(principal, app_id, options, Start::Now).await
    }

    async fn begin_run(
        &self,
        principal: Option<&Principal>,
        app_id: &str,
        options: RunOptions,
        start: Start,
    ) -> ServiceResult<reconcile_run::Model> {
        let app = self.get_app(app_id).await?;
        let mode = options.mode.unwrap_or(app.settings.reconcile.mode);
        // A run in another mode than the app's is weighed as that change of the app would be:
        // a `fix` run that deprovisions the unmatched accounts needs an admin where the app's
        // own runs only report, as switching the app to `fix` does.
        if let Some(principal) = principal
            && !options.dry_run
        {
            let mut as_run = app.settings.clone();
            as_run.reconcile.mode = mode;
            super::apps::check_authority(principal, &app.settings, &as_run)?;
        }
        let tx = self.write_tx().await?;
        let run = run::begin(&*tx, &app.model.id, options.dry_run, mode, start).await?;
        audit::record(
            &*tx,
            principal,
            AuditEntry {
                action: "reconcile.start",
                object_type: "reconcile_run",
                object_id: Some(&run.id),
                before: None,
                after: Some(json!({
                    "app_id": run.app_id, "dry_run": run.dry_run, "mode": run.mode,
                })),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Runs a begun run in the background; shutdown interrupts it (`failed`).
    pub fn spawn_reconcile(&self, run_id: String) {
        let roster = self.clone();
        tokio::spawn(async move {
            // The outcome is on the run's row; failures are logged by the run.
            let _ = roster.run_reconcile(&run_id).await;
        });
    }

    /// Runs a begun run to its end, after waiting for one of the instance's reconcile slots
    /// (`ROSTER_RECONCILE_CONCURRENCY`; the row stays `running` meanwhile).
    pub async fn run_reconcile(&self, run_id: &str) -> ServiceResult<RunOutcome> {
        self.run_reconcile_observed(run_id, &RunProgress::default())
            .await
    }

    /// [`Roster::run_reconcile`], reporting the accounts read to `progress` (a CLI's bar).
    pub async fn run_reconcile_observed(
        &self,
        run_id: &str,
        progress: &RunProgress,
    ) -> ServiceResult<RunOutcome> {
        let delivery = self.delivery();
        Ok(run::execute(
            self.store(),
            &delivery,
            run_id,
            self.shutdown_token(),
            progress,
            self.reconcile_slots(),
        )
        .await?)
    }

    /// Newest first (`started_at`, then id); `after` is the cursor: the id of the last run of
    /// the previous page.
    pub async fn list_reconcile_runs(
        &self,
        app_id: Option<&str>,
        after: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<reconcile_run::Model>> {
        use sea_orm::Condition;
        let mut query = reconcile_run::Entity::find()
            .order_by_desc(reconcile_run::Column::StartedAt)
            .order_by_desc(reconcile_run::Column::Id);
        if let Some(app_id) = app_id {
            query = query.filter(reconcile_run::Column::AppId.eq(app_id));
        }
        if let Some(after) = after {
            let last = reconcile_run::Entity::find_by_id(after)
                .one(self.db())
                .await?
                .ok_or_else(|| ServiceError::invalid("cursor", "no reconcile run has this id"))?;
            // The rest of the listing's order after `last`: older, or as old with a lower id.
            query = query.filter(
                Condition::any()
                    .add(reconcile_run::Column::StartedAt.lt(last.started_at))
                    .add(
                        Condition::all()
                            .add(reconcile_run::Column::StartedAt.eq(last.started_at))
                            .add(reconcile_run::Column::Id.lt(last.id)),
                    ),
            );
        }
        Ok(query.limit(limit).all(self.db()).await?)
    }

    /// The run's report with `limit` items in the order they were found, those after the item
    /// id `after` if given.
    pub async fn reconcile_report(
        &self,
        id: &str,
        after: Option<i64>,
        limit: u64,
    ) -> ServiceResult<RunReport> {
        let run = reconcile_run::Entity::find_by_id(id)
            .one(self.db())
            .await?
            .ok_or_else(|| ServiceError::not_found("reconcile run", id))?;
        let mut query = reconcile_item::Entity::find()
            .filter(reconcile_item::Column::RunId.eq(id))
            .order_by_asc(reconcile_item::Column::Id);
        if let Some(after) = after {
            query = query.filter(reconcile_item::Column::Id.gt(after));
        }
        let items = query.limit(limit).all(self.db()).await?;
        let item_ids = items.iter().map(|item| item.id).collect();
        let total_items = reconcile_item::Entity::find()
            .filter(reconcile_item::Column::RunId.eq(id))
            .count(self.db())
            .await?;
        // `held` stays parallel to the items kept: an unreadable row drops from both.
        let (items, held): (Vec<ReportItem>, Vec<bool>) = items
            .into_iter()
            .filter_map(|item| {
                let held = item.held;
                let item = ReportItem {
                    resource: parse(&item.resource).unwrap_or_default(),
                    display_name: item.display_name,
                    class: parse(&item.class)?,
                    target_id: item.target_id,
                    user_name: item.user_name,
                    identity_id: item.identity_id,
                    differences: serde_json::from_value(item.differences).unwrap_or_default(),
                    action: parse(&item.action)?,
                };
                Some((item, held))
            })
            .unzip();
        let report = Report {
            state: parse(&run.state).unwrap_or(RunState::Failed),
            groups: run::group_counts_of(&run.counts),
            counts: serde_json::from_value::<Counts>(run.counts).unwrap_or_default(),
            writes: u64::try_from(run.writes).unwrap_or(0),
            dry_run: run.dry_run,
            items,
            id: run.id,
            app_id: run.app_id,
        };
        Ok(RunReport {
            report,
            mode: run.mode,
            error: run.error,
            started_at: run.started_at,
            finished_at: run.finished_at,
            waiting: run.waiting,
            held,
            total_items,
            item_ids,
        })
    }

    /// Findings recorded so far by a run (progress of a running run).
    pub async fn reconcile_items_recorded(&self, run_id: &str) -> ServiceResult<u64> {
        Ok(reconcile_item::Entity::find()
            .filter(reconcile_item::Column::RunId.eq(run_id))
            .count(self.db())
            .await?)
    }

    /// The app's reconcile-lane jobs not finished yet (pending or running).
    pub async fn reconcile_jobs_outstanding(&self, app_id: &str) -> ServiceResult<u64> {
        use crate::store::entity::job;
        use crate::store::queue::Lane;
        // One count per state: each reads its own partial index (`uq_job_pending`,
        // `idx_job_running`), not every job the app ever had.
        let mut outstanding = 0;
        for state in ["pending", "running"] {
            outstanding += job::Entity::find()
                .filter(job::Column::AppId.eq(app_id))
                .filter(job::Column::Lane.eq(Lane::Reconcile.as_str()))
                .filter(job::Column::State.eq(state))
                .count(self.db())
                .await?;
        }
        Ok(outstanding)
    }

    /// Applies the deprovisions the deletion guard held; 409 unless the run awaits approval.
    pub async fn approve_reconcile(&self, principal: &Principal, id: &str) -> ServiceResult<u64> {
        // One transaction: the conditional state change, the enqueued jobs and the audit row
        // commit together or not at all, and a second approval at once gets a 409.
        let tx = self.write_tx().await?;
        let jobs = run::approve_held(&*tx, id).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "reconcile.approve",
                object_type: "reconcile_run",
                object_id: Some(id),
                before: Some(json!({"state": "awaiting_approval"})),
                after: Some(json!({"state": "completed", "jobs_enqueued": jobs})),
            },
        )
        .await?;
        tx.commit().await?;
        self.delivery().wake();
        Ok(jobs)
    }
}

/// Starts the scheduler: every minute, a run (in the app's own mode) for each active app whose
/// `reconcile.interval_minutes` is set and whose newest run started at least that long ago
/// (an app's first scheduled run comes one interval after it was registered). Every due run is
/// begun (its row blocks a duplicate at once) and then waits for a reconcile slot
/// (`ROSTER_RECONCILE_CONCURRENCY`), so due runs beyond the cap take their turn. Runs sit in a
/// `JoinSet`; `shutdown` stops the loop and interrupts them, waiting or running.
pub fn start_scheduler(roster: Roster, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCHEDULER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut runs: JoinSet<()> = JoinSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            while runs.try_join_next().is_some() {}
            schedule_due(&roster, &mut runs).await;
        }
        // The runs see the same token and end as `failed` (interrupted).
        while runs.join_next().await.is_some() {}
    })
}

/// One look of the scheduler: begins a run for every app due one and spawns it into `runs`,
/// where it waits for a reconcile slot (also what the multi-app reconcile bench starts).
pub async fn schedule_due(roster: &Roster, runs: &mut JoinSet<()>) {
    let apps = match roster.list_apps().await {
        Ok(apps) => apps,
        Err(e) => {
            tracing::warn!(error = %e, "Scheduler could not list apps");
            return;
        }
    };
    for app in apps {
        let minutes = app.settings.reconcile.interval_minutes;
        if minutes == 0 || app.model.state != "active" {
            continue;
        }
        let start = Start::IfLastOlderThan(chrono::Duration::minutes(i64::from(minutes)));
        match roster
            .begin_run(None, &app.model.id, RunOptions::default(), start)
            .await
        {
            Ok(run) => {
                let roster = roster.clone();
                runs.spawn(async move {
                    // The outcome is on the run's row; failures are logged by the run.
                    let _ = roster.run_reconcile(&run.id).await;
                });
            }
            // Not due, or running already (here or on another instance).
            Err(ServiceError::Conflict(_)) => {}
            Err(e) => {
                tracing::warn!(app = %app.model.name, error = %e, "Could not start a scheduled reconcile run")
            }
        }
    }
}
