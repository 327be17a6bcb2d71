//! `/operations`, `/jobs`, and the app's delivery routes: status and provisioning on demand.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use super::auth::ApiKey;
use super::body::JsonBody;
use super::paging::{next_cursor, page_limit};
use super::problem::ApiError;
use crate::service::operations::OperationFilter;
use crate::service::{Permission, Roster};
use crate::store::entity::{job, operation};

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OperationOut {
    pub id: i64,
    pub app_id: String,
    pub job_id: Option<i64>,
    /// `user` or `group`.
    pub resource_kind: String,
    /// The identity id (users) or group name (groups).
    pub resource_id: String,
    /// create, update, adopt, deactivate, delete, group_update or lookup.
    pub operation: String,
    pub method: String,
    pub path: String,
    pub status: Option<i32>,
    pub duration_ms: i64,
    pub attempt: i32,
    /// `succeeded` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
    pub trace_id: Option<String>,
    pub hr_event_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn operation_out(o: operation::Model) -> OperationOut {
    OperationOut {
        id: o.id,
        app_id: o.app_id,
        job_id: o.job_id,
        resource_kind: o.resource_kind,
        resource_id: o.resource_id,
        operation: o.operation,
        method: o.method,
        path: o.path,
        status: o.status,
        duration_ms: o.duration_ms,
        attempt: o.attempt,
        outcome: o.outcome,
        error: o.error,
        trace_id: o.trace_id,
        hr_event_id: o.hr_event_id,
        created_at: o.created_at,
    }
}

#[derive(Object)]
pub struct OperationPage {
    pub items: Vec<OperationOut>,
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<i64>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct JobOut {
    pub id: i64,
    pub app_id: String,
    pub resource_kind: String,
    pub resource_id: String,
    /// `deprovision`, `normal` or `reconcile`.
    pub lane: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    pub attempts: i32,
    /// Unix milliseconds when the job is due.
    pub run_at: i64,
    pub last_error: Option<String>,
    pub hr_event_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn job_out(j: job::Model) -> JobOut {
    JobOut {
        id: j.id,
        app_id: j.app_id,
        resource_kind: j.resource_kind,
        resource_id: j.resource_id,
        lane: j.lane,
        state: j.state,
        attempts: j.attempts,
        run_at: j.run_at,
        last_error: j.last_error,
        hr_event_id: j.hr_event_id,
        created_at: j.created_at,
        updated_at: j.updated_at,
    }
}

#[derive(Object)]
pub struct JobPage {
    pub items: Vec<JobOut>,
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<i64>,
}

#[derive(Object)]
pub struct LaneDepthOut {
    pub deprovision: i64,
    pub normal: i64,
    pub reconcile: i64,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AppStatusOut {
    /// `active`, `paused` or `quarantined`.
    pub state: String,
    /// Why the app is paused or quarantined.
    pub state_reason: Option<String>,
    /// Who paused it, while `paused`: `operator` (`POST /apps/{id}/pause`) or `guard` (the
    /// deletion guard on HR events holds deprovisions; an `admin` releases them with
    /// `POST /apps/{id}/resume {"approve_deprovisions": true}`).
    pub paused_by: Option<String>,
    /// Pending jobs per lane.
    pub queue: LaneDepthOut,
    pub oldest_pending_seconds: Option<f64>,
    pub running: i64,
    pub dead: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Failed share of the last 100 SCIM calls (0..=1).
    pub error_rate: f64,
}

#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct OnDemandIn {
    /// Roster id or employee id.
    pub identity_id: String,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CallOut {
    pub operation: String,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OnDemandOut {
    /// What was done (create, update, adopt, deactivate, delete, noop), if it succeeded.
    pub operation: Option<String>,
    pub error: Option<String>,
    /// Every SCIM call made, in order.
    pub calls: Vec<CallOut>,
}

pub struct DeliveryApi;

#[OpenApi(tag = "ApiTags::Delivery")]
impl DeliveryApi {
    /// Read the provisioning log
    ///
    /// Scope `read`. One row per SCIM call, newest first.
    #[oai(path = "/operations", method = "get", operation_id = "listOperations")]
    #[allow(clippy::too_many_arguments)]
    async fn operations(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// App id.
        app: Query<Option<String>>,
        /// Roster id or employee id.
        identity: Query<Option<String>>,
        /// `succeeded` or `failed`.
        state: Query<Option<String>>,
        since: Query<Option<DateTime<Utc>>>,
        cursor: Query<Option<i64>>,
        limit: Query<Option<u64>>,
    ) -> Result<Json<OperationPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        if let Some(s) = &state.0
            && !matches!(s.as_str(), "succeeded" | "failed")
        {
            return Err(ApiError::invalid("state: must be succeeded or failed"));
        }
        let limit = page_limit(limit.0, 100, 1000)?;
        let rows = roster
            .list_operations(&OperationFilter {
                app: app.0,
                identity: identity.0,
                state: state.0,
                since: since.0,
                before: cursor.0,
                limit,
            })
            .await?;
        let next_cursor = next_cursor(&rows, limit, |r| r.id);
        Ok(Json(OperationPage {
            items: rows.into_iter().map(operation_out).collect(),
            next_cursor,
        }))
    }

    /// List jobs
    ///
    /// Scope `read`. Newest first; `state=dead` lists the dead letters.
    #[oai(path = "/jobs", method = "get", operation_id = "listJobs")]
    async fn jobs(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// `pending`, `running`, `done` or `dead`.
        state: Query<Option<String>>,
        app: Query<Option<String>>,
        cursor: Query<Option<i64>>,
        limit: Query<Option<u64>>,
    ) -> Result<Json<JobPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        if let Some(s) = &state.0
            && !matches!(s.as_str(), "pending" | "running" | "done" | "dead")
        {
            return Err(ApiError::invalid(
                "state: must be pending, running, done or dead",
            ));
        }
        let limit = page_limit(limit.0, 100, 1000)?;
        let rows = roster
            .list_jobs(state.0.as_deref(), app.0.as_deref(), cursor.0, limit)
            .await?;
        let next_cursor = next_cursor(&rows, limit, |r| r.id);
        Ok(Json(JobPage {
            items: rows.into_iter().map(job_out).collect(),
            next_cursor,
        }))
    }

    /// Retry a dead job
    ///
    /// Scope `apps:write`. Puts the job back in the queue with a fresh attempt budget.
    #[oai(path = "/jobs/:id/retry", method = "post", operation_id = "retryJob")]
    async fn retry(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<i64>,
    ) -> Result<Json<JobOut>, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        Ok(Json(job_out(roster.retry_job(principal, id.0).await?)))
    }

    /// Get an app's delivery health
    ///
    /// Scope `read`. State, queue depth per lane, oldest pending age, last success, error rate,
    /// quarantine reason.
    #[oai(
        path = "/apps/:id/status",
        method = "get",
        operation_id = "getAppStatus"
    )]
    async fn status(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<AppStatusOut>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let s = roster.app_status(&id.0).await?;
        let depth = |lane: &str| {
            s.queue
                .iter()
                .find(|(l, _)| l.as_str() == lane)
                .map_or(0, |(_, n)| *n)
        };
        Ok(Json(AppStatusOut {
            queue: LaneDepthOut {
                deprovision: depth("deprovision"),
                normal: depth("normal"),
                reconcile: depth("reconcile"),
            },
            state: s.state,
            state_reason: s.state_reason,
            paused_by: s.paused_by,
            oldest_pending_seconds: s.oldest_pending_seconds,
            running: s.running,
            dead: s.dead,
            last_success_at: s.last_success_at,
            error_rate: s.error_rate,
        }))
    }

    /// Provision one person now
    ///
    /// Scope `apps:write`. Outside the queue; the answer lists every SCIM call made.
    ///
    /// It follows the queue's rules: 409 when the app is paused or quarantined, or while a job
    /// for this person and app is running (a queued job for them is done by this delivery
    /// instead); a deprovision counts in the deletion guard on HR events, which may hold it
    /// (409, the app is then paused until an admin approves). The link, the provisioning log
    /// and the audit row are stored together before the answer.
    #[oai(
        path = "/apps/:id/provision-on-demand",
        method = "post",
        operation_id = "provisionOnDemand"
    )]
    async fn provision_on_demand(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        body: JsonBody<OnDemandIn>,
    ) -> Result<Json<OnDemandOut>, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let result = roster
            .provision_on_demand(principal, &id.0, &body.0.identity_id)
            .await?;
        Ok(Json(OnDemandOut {
            operation: result.operation.map(|o| o.as_str().to_owned()),
            error: result.error,
            calls: result
                .calls
                .into_iter()
                .map(|(op, c)| CallOut {
                    operation: op.to_owned(),
                    method: c.method,
                    path: c.path,
                    status: c.status,
                    duration_ms: c.duration.as_millis() as u64,
                    error: c.error,
                })
                .collect(),
        }))
    }
}
