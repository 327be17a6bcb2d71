//! Provision on demand (`POST /apps/{id}/provision-on-demand`): one person's delivery to one
//! app now, outside the claim loop, under the engine's rules:
//! - only to an active app (a paused or quarantined app is refused before any call);
//! - never beside another delivery of the same person to the app: it runs as a job of its own,
//!   `running` under this instance's lease (renewed like a worker's), so the claim loop skips
//!   the person meanwhile; a running job refuses it; a due pending job is absorbed (this
//!   delivery does its work), a pending job due later (a scheduled delete) is left as it is;
//! - a deprovision passes the event-path deletion guard, like a deprovision-lane job;
//! - its end, its staged writes (only while its lease is held) and its log rows are written in
//!   the caller's transaction, which also holds its audit row.
use std::sync::Arc;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QuerySelect, Set,
};

use super::{AppRuntime, Delivery, InFlight, operation_rows};
use crate::delivery::execute::{self, AppContext, JobError, Operation};
use crate::delivery::finisher;
use crate::delivery::guard::{self, DeprovisionSlot, EventGuard};
use crate::delivery::inputs::UserInputs;
use crate::delivery::staged::JobWrites;
use crate::scim::CallRecord;
use crate::store::entity::{app, job, operation};
use crate::store::queue::{self, JobRequest, Lane, ResourceKind};

/// Why provision on demand did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("app {name} is {state}{why}; provision on demand delivers only to an active app")]
    NotActive {
        name: String,
        state: String,
        why: String,
    },
    #[error(
        "a delivery of this person to app {app} is running (job {job}); try again once it has ended"
    )]
    Busy { app: String, job: i64 },
    /// The deletion guard holds this deprovision; the app is paused.
    #[error("{0}")]
    Held(String),
    #[error("app {0} was deleted")]
    Gone(String),
    #[error("the app's settings cannot be used: {0}")]
    Settings(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// The on-demand job: this instance runs it, under its lease.
struct Claimed {
    id: i64,
    /// Until when the claim's lease runs (ms).
    lease_until: i64,
    /// The pending job it took over, if it did: given back to the queue if the delivery fails.
    absorbed: Option<job::Model>,
}

/// What `deliver_on_demand` made.
struct Delivered {
    result: Result<Operation, JobError>,
    calls: Vec<(&'static str, CallRecord)>,
    writes: JobWrites,
    slot: Option<DeprovisionSlot>,
}

/// A delivery made on demand, not yet recorded: `write` it in the transaction that holds its
/// audit row.
pub struct OnDemandDelivery {
    pub result: Result<Operation, JobError>,
    pub calls: Vec<(&'static str, CallRecord)>,
    writes: JobWrites,
    rows: Vec<operation::ActiveModel>,
    job: Claimed,
    owner: String,
    delivery: Arc<Delivery>,
    // Held until the log rows are committed (the guard counts this deprovision meanwhile),
    // and the lease renewed until then.
    _slot: Option<DeprovisionSlot>,
    _running: InFlight,
}

impl Delivery {
    /// Runs one user's delivery to one app now (see the module). `Refused` before any SCIM
    /// call, or when the deletion guard holds the deprovision.
    pub async fn provision_now(
        self: &Arc<Self>,
        app_id: &str,
        identity_id: &str,
    ) -> Result<OnDemandDelivery, Refused> {
        let (app, claimed) = self.claim_on_demand(app_id, identity_id).await?;
        // A lost lease needs no watch here: the final transaction writes only under the lease.
        let (running, _lost) = InFlight::new(self.clone(), claimed.id, claimed.lease_until);
        match self.deliver_on_demand(&app, identity_id, claimed.id).await {
            Ok(Delivered {
                result,
                calls,
                writes,
                slot,
            }) => {
                let rows = operation_rows(
                    &app,
                    Some(claimed.id),
                    ResourceKind::User,
                    identity_id,
                    0,
                    None,
                    &calls,
                );
                Ok(OnDemandDelivery {
                    result,
                    calls,
                    writes,
                    rows,
                    job: claimed,
                    owner: self.owner.clone(),
                    delivery: self.clone(),
                    _slot: slot,
                    _running: running,
                })
            }
            Err(refused) => {
                // Nothing was sent: hand the job back.
                let ended = async {
                    let tx = self.db.write_tx().await?;
                    end_job(&*tx, &claimed, &self.owner, Some(&refused.to_string())).await?;
                    tx.commit().await
                };
                if let Err(e) = ended.await {
                    tracing::warn!(error = %e, "Could not end a refused on-demand job; its lease will expire");
                }
                Err(refused)
            }
        }
    }

    /// Takes the person's delivery to the app in one write transaction (see the module).
    async fn claim_on_demand(
        &self,
        app_id: &str,
        identity_id: &str,
    ) -> Result<(app::Model, Claimed), Refused> {
        let tx = self.db.write_tx().await?;
        let app = app::Entity::find_by_id(app_id)
            .one(&*tx)
            .await?
            .ok_or_else(|| Refused::Gone(app_id.to_owned()))?;
        if app.state != "active" {
            let why = app
                .state_reason
                .as_deref()
                .map_or_else(String::new, |r| format!(" ({r})"));
            return Err(Refused::NotActive {
                name: app.name,
                state: app.state,
                why,
            });
        }
        let of_person = || {
            job::Entity::find()
                .filter(job::Column::AppId.eq(app_id))
                .filter(job::Column::ResourceKind.eq(ResourceKind::User.as_str()))
                .filter(job::Column::ResourceId.eq(identity_id))
        };
        if let Some(running) = of_person()
            .filter(job::Column::State.eq("running"))
            .one(&*tx)
            .await?
        {
            return Err(Refused::Busy {
                app: app.name,
                job: running.id,
            });
        }
        // Locked (on PostgreSQL) until the commit, so that a claim elsewhere skips it and an
        // enqueue for the person waits.
        let pending = of_person()
            .filter(job::Column::State.eq("pending"))
            .lock_exclusive()
            .one(&*tx)
            .await?;
        let now = queue::now_ms();
        let claimed = match pending {
            Some(p) if p.run_at <= now => {
                if !take(&*tx, p.id, &self.owner, now).await? {
                    return Err(Refused::Busy {
                        app: app.name,
                        job: p.id,
                    });
                }
                Claimed {
                    id: p.id,
                    lease_until: now + queue::LEASE_MS,
                    absorbed: Some(p),
                }
            }
            // A job due later (a scheduled delete) keeps its date: this delivery is a job of
            // its own beside it (the unique index admits one pending job per person only).
            Some(_) => Claimed {
                id: insert_job(&*tx, app_id, identity_id, "running", &self.owner, now).await?,
                lease_until: now + queue::LEASE_MS,
                absorbed: None,
            },
            // Pending first: the row holds the person's place in the unique index of pending
            // jobs, so an enqueue for them meanwhile waits for this commit, and a claim then
            // sees this job running.
            None => {
                let id = insert_job(&*tx, app_id, identity_id, "pending", &self.owner, now).await?;
                if !take(&*tx, id, &self.owner, now).await? {
                    return Err(Refused::Busy {
                        app: app.name,
                        job: id,
                    });
                }
                Claimed {
                    id,
                    lease_until: now + queue::LEASE_MS,
                    absorbed: None,
                }
            }
        };
        tx.commit().await?;
        Ok((app, claimed))
    }

    /// The delivery itself, as the job `job_id`: the deletion guard first if it may
    /// deprovision, then the calls.
    async fn deliver_on_demand(
        &self,
        app: &app::Model,
        identity_id: &str,
        job_id: i64,
    ) -> Result<Delivered, Refused> {
        let rt: Arc<AppRuntime> = self.runtime(app).map_err(Refused::Settings)?;
        let conn = self.db.conn();
        // Read after the claim committed: after the previous job of the person wrote its link.
        let inputs = UserInputs::load(conn, &app.id, identity_id).await?;
        let slot = if may_deprovision(&rt, &inputs) {
            match guard::check(
                conn,
                &self.deprovisions,
                app,
                &rt.settings.deletion_guard,
                job_id,
                chrono::Utc::now(),
            )
            .await?
            {
                EventGuard::Proceed(slot) => slot,
                EventGuard::Hold(reason) => {
                    self.hold_for_approval(app, &reason).await;
                    return Err(Refused::Held(format!("{reason}; the app is paused")));
                }
            }
        } else {
            None
        };
        let ctx = AppContext {
            conn: self.db.conn(),
            app,
            settings: &rt.settings,
            compiled: &rt.compiled,
            client: &rt.client,
            lookups: &rt.lookups,
            ahead: std::sync::Mutex::default(),
        };
        let now = queue::now_ms();
        let mut writes = JobWrites::default();
        let (result, calls) = execute::with_call_log(None, async {
            let op = execute::deliver_user(&ctx, &inputs, identity_id, now, &mut writes).await?;
            execute::follow_ups(&ctx, &inputs, identity_id, op, now, &mut writes);
            Ok::<_, JobError>(op)
        })
        .await;
        Ok(Delivered {
            result,
            calls,
            writes,
            slot,
        })
    }
}

impl OnDemandDelivery {
    /// Records the delivery in `tx` (the caller's, with its audit row): the job's end, its
    /// staged links and follow-up jobs — only while this instance still holds the job's lease —
    /// and its log rows. `false` when the lease was lost (its writes were dropped).
    pub async fn write(&self, tx: &DatabaseTransaction) -> Result<Written, DbErr> {
        // The links first, under a savepoint, while the job is still ours (the lease is
        // checked below, in this transaction): another instance may have linked the account
        // this delivery adopted since it checked, and the unique index then refuses ours.
        let mut conflict = None;
        if self.job_still_ours(tx).await? {
            conflict = finisher::write_staged_or_conflict(tx, &self.writes).await?;
        }
        let error = match (&self.result, &conflict) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(_), Some(conflict)) => Some(conflict.clone()),
            (Ok(_), None) => None,
        };
        let held = end_job(tx, &self.job, &self.owner, error.as_deref()).await?;
        if !self.rows.is_empty() {
            operation::Entity::insert_many(self.rows.clone())
                .exec(tx)
                .await?;
        }
        Ok(Written { held, conflict })
    }

    /// Whether this instance still holds the delivery's job (locked on PostgreSQL until the
    /// transaction ends, so that no claim elsewhere takes it meanwhile).
    async fn job_still_ours(&self, tx: &DatabaseTransaction) -> Result<bool, DbErr> {
        Ok(job::Entity::find_by_id(self.job.id)
            .filter(job::Column::State.eq("running"))
            .filter(job::Column::LeaseOwner.eq(self.owner.as_str()))
            .lock_exclusive()
            .one(tx)
            .await?
            .is_some())
    }
}

/// What [`OnDemandDelivery::write`] stored.
pub struct Written {
    /// The job was still this instance's: its end and its links are stored.
    pub held: bool,
    /// Its link was refused: another link of the app holds the account it adopted (the job
    /// failed with this).
    pub conflict: Option<String>,
}

impl Drop for OnDemandDelivery {
    fn drop(&mut self) {
        // Its follow-up jobs, or the person's jobs that waited for it.
        self.delivery.jobs_ready.notify_one();
    }
}

/// Whether the delivery may deprovision: the person is out of the app's scope and has an
/// account roster linked (the executor deprovisions only those).
fn may_deprovision(rt: &AppRuntime, inputs: &UserInputs) -> bool {
    let Some(person) = &inputs.person else {
        return false;
    };
    !rt.settings.scope.admits(person) && inputs.link.as_ref().is_some_and(|l| l.state != "deleted")
}

async fn insert_job(
    conn: &impl ConnectionTrait,
    app_id: &str,
    identity_id: &str,
    state: &str,
    owner: &str,
    now: i64,
) -> Result<i64, DbErr> {
    let at = chrono::Utc::now();
    let running = state == "running";
    let row = job::ActiveModel {
        app_id: Set(app_id.to_owned()),
        resource_kind: Set(ResourceKind::User.as_str().to_owned()),
        resource_id: Set(identity_id.to_owned()),
        lane: Set(Lane::Normal.as_str().to_owned()),
        priority: Set(Lane::Normal.priority()),
        run_at: Set(now),
        attempts: Set(i32::from(running)),
        state: Set(state.to_owned()),
        lease_owner: Set(running.then(|| owner.to_owned())),
        lease_until: Set(running.then_some(now + queue::LEASE_MS)),
        enqueued_at: Set(now),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(row.id)
}

/// Pending → running under `owner`'s lease; `false` when it is no longer pending.
async fn take(conn: &impl ConnectionTrait, id: i64, owner: &str, now: i64) -> Result<bool, DbErr> {
    let result = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value("running"))
        .col_expr(job::Column::LeaseOwner, Expr::value(owner))
        .col_expr(job::Column::LeaseUntil, Expr::value(now + queue::LEASE_MS))
        .col_expr(
            job::Column::Attempts,
            Expr::col(job::Column::Attempts).add(1),
        )
        .col_expr(job::Column::UpdatedAt, Expr::value(chrono::Utc::now()))
        .filter(job::Column::Id.eq(id))
        .filter(job::Column::State.eq("pending"))
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Ends the on-demand job while `owner` still holds its lease (`false` otherwise): `done`,
/// with `error` if it failed. A pending job it absorbed goes back to the queue when it failed,
/// coalescing with anything queued for the person since.
async fn end_job(
    conn: &impl ConnectionTrait,
    claimed: &Claimed,
    owner: &str,
    error: Option<&str>,
) -> Result<bool, DbErr> {
    let ended = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value("done"))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(job::Column::LeaseUntil, Expr::value(Option::<i64>::None))
        .col_expr(
            job::Column::LastError,
            Expr::value(error.map(|e| format!("provision on demand: {e}"))),
        )
        .col_expr(job::Column::UpdatedAt, Expr::value(chrono::Utc::now()))
        .filter(job::Column::Id.eq(claimed.id))
        .filter(job::Column::State.eq("running"))
        .filter(job::Column::LeaseOwner.eq(owner))
        .exec(conn)
        .await?;
    let held = ended.rows_affected == 1;
    if held
        && error.is_some()
        && let Some(absorbed) = &claimed.absorbed
    {
        queue::enqueue(
            conn,
            &[JobRequest {
                app_id: absorbed.app_id.clone(),
                kind: ResourceKind::User,
                resource_id: absorbed.resource_id.clone(),
                lane: lane_of(&absorbed.lane),
                run_at_ms: queue::now_ms() + RETRY_AFTER_FAILURE_MS,
                hr_event_id: absorbed.hr_event_id.clone(),
            }],
        )
        .await?;
    }
    Ok(held)
}

/// How long an absorbed job that failed on demand waits before the engine tries it again.
const RETRY_AFTER_FAILURE_MS: i64 = 5_000;

fn lane_of(stored: &str) -> Lane {
    Lane::ALL
        .into_iter()
        .find(|l| l.as_str() == stored)
        .unwrap_or(Lane::Normal)
}
