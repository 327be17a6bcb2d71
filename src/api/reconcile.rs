//! Reconcile runs: start one, list them, read a report, approve held deprovisions (DESIGN §4, §6).
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::ApiTags;
use super::auth::ApiKey;
use super::body::JsonBody;
use super::paging::{next_cursor, page_limit};
use super::problem::ApiError;
use crate::reconcile::{Counts, GroupCounts};
use crate::service::reconcile::{RunOptions, RunReport};
use crate::service::{Permission, Roster};
use crate::settings::ReconcileMode;
use crate::store::entity::reconcile_run;

/// Items returned by `GET /reconcile-runs/{id}` unless `limit` says otherwise.
const DEFAULT_ITEMS: u64 = 1000;
const MAX_ITEMS: u64 = 10_000;

#[derive(Object, serde::Deserialize, Default)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ReconcileIn {
    /// Classify and report only: nothing is written to the target.
    #[oai(default)]
    #[serde(default)]
    pub dry_run: bool,
    /// `report` or `fix`; default: the app's `reconcile.mode`.
    pub mode: Option<ReconcileMode>,
}

#[derive(Object)]
pub struct RunStarted {
    /// The run's id, for `GET /reconcile-runs/{id}`.
    pub id: String,
}

#[derive(ApiResponse)]
pub enum StartAnswer {
    /// The run is recorded and proceeds in the background.
    #[oai(status = 202)]
    Accepted(Json<RunStarted>),
}

#[derive(Object)]
pub struct CountsOut {
    pub in_sync: u64,
    pub drifted: u64,
    pub missing: u64,
    pub orphan: u64,
    pub unmatched: u64,
    pub unmanaged: u64,
    pub adoptable: u64,
    /// Accounts that match a person but are not tied to them: the person is linked to another
    /// account, another account matches them too, or the account has no `id`. Never changed;
    /// decide by hand which account is the person's.
    pub conflict: u64,
}

impl From<Counts> for CountsOut {
    fn from(c: Counts) -> Self {
        Self {
            in_sync: c.in_sync,
            drifted: c.drifted,
            missing: c.missing,
            orphan: c.orphan,
            unmatched: c.unmatched,
            unmanaged: c.unmanaged,
            adoptable: c.adoptable,
            conflict: c.conflict,
        }
    }
}

/// Classes of the pushed and target groups (groups are never orphan or unmatched).
#[derive(Object)]
pub struct GroupCountsOut {
    pub in_sync: u64,
    pub drifted: u64,
    pub missing: u64,
    pub unmanaged: u64,
    pub adoptable: u64,
}

impl From<GroupCounts> for GroupCountsOut {
    fn from(c: GroupCounts) -> Self {
        Self {
            in_sync: c.in_sync,
            drifted: c.drifted,
            missing: c.missing,
            unmanaged: c.unmanaged,
            adoptable: c.adoptable,
        }
    }
}

#[derive(Object)]
pub struct DifferenceOut {
    /// A mapped SCIM path; for groups `displayName` or `members`.
    pub path: String,
    /// roster's value (`null`: absent). For a group's `members`: the members roster wants
    /// that the target group lacks, each `{"value": target id, "display": userName}`.
    pub roster: Value,
    /// The target's value (`null`: absent). For a group's `members`: the members the target
    /// group has that roster does not want.
    pub target: Value,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ItemOut {
    /// `user` (an account, or a person without one) or `group`.
    pub resource: String,
    /// in_sync, drifted, missing, orphan, unmatched, unmanaged, adoptable or conflict
    /// (matches a person who is linked to another account, or whom another account matches
    /// too, or has no `id`: never changed; decide by hand which account is theirs).
    pub class: String,
    pub target_id: Option<String>,
    pub user_name: Option<String>,
    pub identity_id: Option<String>,
    pub differences: Vec<DifferenceOut>,
    /// none, patch, create, deactivate, delete, link or link_and_patch.
    pub action: String,
    /// Held by the deletion guard (applied when the run is approved).
    pub held: bool,
    /// Groups: roster's group name (the target's `displayName` for unmanaged groups).
    #[oai(skip_serializing_if_is_none)]
    pub display_name: Option<String>,
}

/// A run's report: `{id, app_id, state, dry_run, counts, writes, items}`, plus the run's mode,
/// times and error.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct RunOut {
    pub id: String,
    pub app_id: String,
    /// running, completed, awaiting_approval or failed.
    pub state: String,
    pub dry_run: bool,
    /// report or fix.
    pub mode: String,
    /// Accounts by class.
    pub counts: CountsOut,
    /// Groups by class: the groups the app pushes and the target's other groups.
    pub groups: GroupCountsOut,
    /// Jobs the run enqueued on lane `reconcile` (each becomes at most one SCIM write, none
    /// when the target already matches by the time it runs).
    pub writes: u64,
    /// Why the run failed: e.g. the target's listing ended before every account was read
    /// (then no link was dropped and nothing was created or deprovisioned for people whose
    /// account was not seen). On a completed run: why some findings were only reported (a
    /// target that does not page answered without `totalResults`, so its listing could not be
    /// proven complete and nothing was created, adopted or deprovisioned).
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run is `running` but waits for its turn: its instance already runs as many
    /// reconciliations as `ROSTER_RECONCILE_CONCURRENCY` allows. It reads the target once one
    /// of them ends, and meanwhile still blocks a second run of the app.
    pub waiting: bool,
    /// A page of the run's items, in the order found: the first `limit`, or those after
    /// `cursor` (absent in listings).
    #[oai(skip_serializing_if_is_none)]
    pub items: Option<Vec<ItemOut>>,
    /// How many items the run recorded (absent in listings).
    #[oai(skip_serializing_if_is_none)]
    pub total_items: Option<u64>,
    /// Pass as `cursor` to read the next items; absent on the last page and in listings.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<i64>,
}

#[derive(Object)]
pub struct RunList {
    pub items: Vec<RunOut>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Object)]
pub struct ApproveOut {
    pub id: String,
    /// Deprovisioning jobs enqueued.
    pub jobs_enqueued: u64,
}

fn run_summary(run: reconcile_run::Model) -> RunOut {
    RunOut {
        groups: crate::reconcile::run::group_counts_of(&run.counts).into(),
        counts: serde_json::from_value::<Counts>(run.counts)
            .unwrap_or_default()
            .into(),
        writes: u64::try_from(run.writes).unwrap_or(0),
        id: run.id,
        app_id: run.app_id,
        state: run.state,
        dry_run: run.dry_run,
        mode: run.mode,
        error: run.error,
        started_at: run.started_at,
        finished_at: run.finished_at,
        waiting: run.waiting,
        items: None,
        total_items: None,
        next_cursor: None,
    }
}

fn run_report(run: RunReport, limit: u64) -> RunOut {
    let next_cursor = next_cursor(&run.item_ids, limit, |id| *id);
    let report = run.report;
    let items = report
        .items
        .into_iter()
        .zip(run.held)
        .map(|(item, held)| ItemOut {
            resource: item.resource.as_str().to_owned(),
            display_name: item.display_name,
            class: item.class.as_str().to_owned(),
            target_id: item.target_id,
            user_name: item.user_name,
            identity_id: item.identity_id,
            differences: item
                .differences
                .into_iter()
                .map(|d| DifferenceOut {
                    path: d.path,
                    roster: d.roster,
                    target: d.target,
                })
                .collect(),
            action: item.action.as_str().to_owned(),
            held,
        })
        .collect();
    RunOut {
        id: report.id,
        app_id: report.app_id,
        state: report.state.as_str().to_owned(),
        dry_run: report.dry_run,
        mode: run.mode,
        counts: report.counts.into(),
        groups: report.groups.into(),
        writes: report.writes,
        error: run.error,
        started_at: run.started_at,
        finished_at: run.finished_at,
        waiting: run.waiting,
        items: Some(items),
        total_items: Some(run.total_items),
        next_cursor,
    }
}

pub struct ReconcileApi;

#[OpenApi(tag = "ApiTags::Reconcile")]
impl ReconcileApi {
    /// Start a reconciliation run
    ///
    /// Scope `apps:write`. 202 with the run id; the run proceeds in the background. 409 while
    /// another run of the app is running.
    #[oai(
        path = "/apps/:id/reconcile",
        method = "post",
        operation_id = "startReconcileRun"
    )]
    async fn start(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        body: JsonBody<ReconcileIn>,
    ) -> Result<StartAnswer, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let run = roster
            .begin_reconcile(
                Some(principal),
                &id.0,
                RunOptions {
                    dry_run: body.0.dry_run,
                    mode: body.0.mode,
                },
            )
            .await?;
        roster.spawn_reconcile(run.id.clone());
        Ok(StartAnswer::Accepted(Json(RunStarted { id: run.id })))
    }

    /// List reconciliation runs
    ///
    /// Scope `read`. Newest first, without items, a page at a time.
    #[oai(
        path = "/reconcile-runs",
        method = "get",
        operation_id = "listReconcileRuns"
    )]
    async fn list(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// App id.
        app: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Runs per page (1..=1000, default 100).
        limit: Query<Option<u64>>,
    ) -> Result<Json<RunList>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 100, 1000)?;
        let runs = roster
            .list_reconcile_runs(app.0.as_deref(), cursor.0.as_deref(), limit)
            .await?;
        let next_cursor = next_cursor(&runs, limit, |r| r.id.clone());
        Ok(Json(RunList {
            items: runs.into_iter().map(run_summary).collect(),
            next_cursor,
        }))
    }

    /// Get a run's report
    ///
    /// Scope `read`. With a page of its items: `limit` items in the order they were found (default
    /// 1000, at most 10000), the first ones or those after `cursor`; `total_items` says how many
    /// there are.
    #[oai(
        path = "/reconcile-runs/:id",
        method = "get",
        operation_id = "getReconcileRun"
    )]
    async fn get(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        /// `next_cursor` of the previous page: the items after it.
        cursor: Query<Option<i64>>,
        limit: Query<Option<u64>>,
    ) -> Result<Json<RunOut>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, DEFAULT_ITEMS, MAX_ITEMS)?;
        Ok(Json(run_report(
            roster.reconcile_report(&id.0, cursor.0, limit).await?,
            limit,
        )))
    }

    /// Approve a run's held deprovisions
    ///
    /// Scope `admin`. Applies the deprovisions the deletion guard held; 409 unless the run is
    /// `awaiting_approval`.
    #[oai(
        path = "/reconcile-runs/:id/approve",
        method = "post",
        operation_id = "approveReconcileRun"
    )]
    async fn approve(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<ApproveOut>, ApiError> {
        let principal = auth.require(Permission::Admin)?;
        let jobs = roster.approve_reconcile(principal, &id.0).await?;
        Ok(Json(ApproveOut {
            id: id.0,
            jobs_enqueued: jobs,
        }))
    }
}
