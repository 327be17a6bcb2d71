//! The provisioning log, dead letters, app status and provisioning on demand.
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::{Principal, Roster, ServiceError, ServiceResult};
use crate::delivery::execute::{JobError, Operation};
use crate::scim::CallRecord;
use crate::store::entity::{job, operation};
use crate::store::queue::{self, Lane};

#[derive(Debug, Default, Clone)]
pub struct OperationFilter {
    pub app: Option<String>,
    pub identity: Option<String>,
    /// `succeeded` or `failed`.
    pub state: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows older than this id (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: u64,
}

pub struct AppStatus {
    pub state: String,
    pub state_reason: Option<String>,
    /// `operator`, `guard` or `transport`, while paused.
    pub paused_by: Option<String>,
    pub queue: Vec<(Lane, i64)>,
    pub oldest_pending_seconds: Option<f64>,
    pub running: i64,
    pub dead: i64,
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed share of the last 100 SCIM calls.
    pub error_rate: f64,
}

pub struct OnDemand {
    pub operation: Option<Operation>,
    pub error: Option<String>,
    pub calls: Vec<(&'static str, CallRecord)>,
}

impl Roster {
    pub async fn list_operations(
        &self,
        filter: &OperationFilter,
    ) -> ServiceResult<Vec<operation::Model>> {
        let mut q = operation::Entity::find().order_by_desc(operation::Column::Id);
        if let Some(app) = &filter.app {
            q = q.filter(operation::Column::AppId.eq(app.as_str()));
        }
        if let Some(who) = &filter.identity {
            // A roster id or an employee id, the roster id first.
            let id = super::identities::find_identity(self.db(), who)
                .await?
                .map_or_else(|| who.clone(), |p| p.id);
            q = q.filter(operation::Column::ResourceId.eq(id));
        }
        if let Some(state) = &filter.state {
            q = q.filter(operation::Column::Outcome.eq(state.as_str()));
        }
        if let Some(since) = filter.since {
            q = q.filter(operation::Column::CreatedAt.gte(since));
        }
        if let Some(before) = filter.before {
            q = q.filter(operation::Column::Id.lt(before));
        }
        Ok(q.limit(filter.limit).all(self.db()).await?)
    }

    pub async fn list_jobs(
        &self,
        state: Option<&str>,
        app: Option<&str>,
        before: Option<i64>,
        limit: u64,
    ) -> ServiceResult<Vec<job::Model>> {
        let mut q = job::Entity::find().order_by_desc(job::Column::Id);
        if let Some(state) = state {
            q = q.filter(job::Column::State.eq(state));
        }
        if let Some(app) = app {
            q = q.filter(job::Column::AppId.eq(app));
        }
        if let Some(before) = before {
            q = q.filter(job::Column::Id.lt(before));
        }
        Ok(q.limit(limit).all(self.db()).await?)
    }

    /// A dead letter goes back to the queue with a fresh attempt budget.
    pub async fn retry_job(&self, principal: &Principal, id: i64) -> ServiceResult<job::Model> {
        let tx = self.write_tx().await?;
        let Some(current) = job::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("job", id.to_string()));
        };
        if current.state != "dead" {
            return Err(ServiceError::Conflict(format!(
                "job {id} is `{}`; only dead jobs can be retried",
                current.state
            )));
        }
        let pending_sibling = job::Entity::find()
            .filter(job::Column::State.eq("pending"))
            .filter(job::Column::AppId.eq(current.app_id.as_str()))
            .filter(job::Column::ResourceKind.eq(current.resource_kind.as_str()))
            .filter(job::Column::ResourceId.eq(current.resource_id.as_str()))
            .one(&*tx)
            .await?;
        let now = chrono::Utc::now();
        let updated = if let Some(sibling) = pending_sibling {
            // A newer change is queued already and will render the latest state.
            let mut dead: job::ActiveModel = current.clone().into();
            dead.state = sea_orm::Set("done".into());
            dead.last_error = sea_orm::Set(Some(format!("retried as job {}", sibling.id)));
            dead.updated_at = sea_orm::Set(now);
            sea_orm::ActiveModelTrait::update(dead, &*tx).await?;
            sibling
        } else {
            let mut active: job::ActiveModel = current.clone().into();
            active.state = sea_orm::Set("pending".into());
            active.attempts = sea_orm::Set(0);
            active.run_at = sea_orm::Set(queue::now_ms());
            active.updated_at = sea_orm::Set(now);
            sea_orm::ActiveModelTrait::update(active, &*tx).await?
        };
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "job.retry",
                object_type: "job",
                object_id: Some(&id.to_string()),
                before: Some(json!({"state": current.state, "last_error": current.last_error})),
                after: Some(json!({"state": updated.state, "job_id": updated.id})),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(updated)
    }

    pub async fn app_status(&self, id: &str) -> ServiceResult<AppStatus> {
        let view = self.get_app(id).await?;
        let db = self.db();
        let depths = queue::depths(db).await?;
        let mine: Vec<_> = depths.iter().filter(|d| d.app_id == id).collect();
        let queue_depths = Lane::ALL
            .iter()
            .map(|lane| {
                let n = mine
                    .iter()
                    .find(|d| d.lane == lane.as_str())
                    .map_or(0, |d| d.depth);
                (*lane, n)
            })
            .collect();
        let now = queue::now_ms();
        let oldest = mine.iter().filter_map(|d| d.oldest_enqueued_at).min();
        let count = |state: &'static str| {
            job::Entity::find()
                .filter(job::Column::AppId.eq(id))
                .filter(job::Column::State.eq(state))
                .count(db)
        };
        let running = count("running").await? as i64;
        let dead = count("dead").await? as i64;
        let recent = operation::Entity::find()
            .filter(operation::Column::AppId.eq(id))
            .order_by_desc(operation::Column::Id)
            .limit(100)
            .all(db)
            .await?;
        let failed = recent.iter().filter(|o| o.outcome == "failed").count();
        let last_success_at = recent
            .iter()
            .find(|o| o.outcome == "succeeded" && o.method != "GET")
            .map(|o| o.created_at);
        Ok(AppStatus {
            state: view.model.state,
            state_reason: view.model.state_reason,
            paused_by: view.model.paused_by,
            queue: queue_depths,
            oldest_pending_seconds: oldest.map(|t| (now - t).max(0) as f64 / 1000.0),
            running,
            dead,
            last_success_at,
            error_rate: if recent.is_empty() {
                0.0
            } else {
                failed as f64 / recent.len() as f64
            },
        })
    }

    /// Provisions one person to one app now and returns every SCIM call made. Refused (409)
    /// on an app that is not active, while a job for the person runs, or when the deletion
    /// guard holds the deprovision. The job's end, its link writes, its log rows and the audit
    /// row are written in one transaction.
    pub async fn provision_on_demand(
        &self,
        principal: &Principal,
        app_id: &str,
        identity_id: &str,
    ) -> ServiceResult<OnDemand> {
        use crate::delivery::engine::OnDemandRefused as Refused;
        let view = self.get_app(app_id).await?;
        let person = self.get_identity(identity_id).await?;
        let delivered = self
            .delivery()
            .provision_now(&view.model.id, &person.model.id)
            .await
            .map_err(|e| match e {
                Refused::Db(e) => ServiceError::Db(e),
                Refused::Gone(id) => ServiceError::not_found("app", id),
                Refused::Settings(reason) => ServiceError::invalid("app", reason),
                e @ (Refused::NotActive { .. } | Refused::Busy { .. } | Refused::Held(_)) => {
                    ServiceError::Conflict(e.to_string())
                }
            })?;
        let tx = self.write_tx().await?;
        let written = delivered.write(&tx).await?;
        let lease_held = written.held;
        // A store failure inside the delivery is still recorded (the job's end, the calls
        // made, the audit row), then answered as a server error.
        let store_failure = match &delivered.result {
            Err(JobError::Db(e)) => Some(e.to_string()),
            _ => None,
        };
        let (operation, error) = match (&delivered.result, lease_held) {
            (Err(e), _) => (None, Some(e.to_string())),
            // Another instance linked the account this delivery adopted meanwhile.
            (Ok(_), true) if written.conflict.is_some() => (None, written.conflict.clone()),
            (Ok(_), false) => (
                None,
                Some(
                    "this instance lost the delivery's lease (it took too long); its calls \
                     were made but its link was not stored: the next job for the person \
                     matches the account again"
                        .to_owned(),
                ),
            ),
            (Ok(op), true) => (Some(*op), None),
        };
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "app.provision_on_demand",
                object_type: "identity",
                object_id: Some(&person.model.id),
                before: None,
                after: Some(json!({
                    "app_id": app_id,
                    "operation": operation.map(Operation::as_str),
                    "error": error,
                    "calls": delivered.calls.len(),
                })),
            },
        )
        .await?;
        tx.commit().await?;
        if let Some(e) = store_failure {
            return Err(ServiceError::Internal(format!(
                "provision on demand could not read or write the store: {e}"
            )));
        }
        let calls = delivered.calls.clone();
        Ok(OnDemand {
            operation,
            error,
            calls,
        })
    }
}
