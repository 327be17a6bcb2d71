//! The deletion guard on the event path (DESIGN §9): a burst of deprovisions caused by HR events
//! — an HR export gone wrong that terminates half the company — must not wipe an app. With
//! `deletion_guard.on_events`, before a deprovision-lane job runs, the deprovisions the app saw
//! within `window_minutes` (plus those in flight in this process, plus this one) are weighed
//! with the same limits as a reconcile run (`reconcile::guard::deletion_guard`). Above them the
//! app is paused by the guard (`app.paused_by = 'guard'`) with the reason; its jobs stay queued.
//! Only an explicit approval — `POST /apps/{id}/resume {"approve_deprovisions": true}` by an
//! `admin` key, while the guard holds the app — releases the deprovisions waiting at that
//! moment (its audit row, `APPROVAL_ACTION`, is what this guard reads). Any other resume leaves
//! the count as it was, so the waiting deprovisions pause the app again at the limit.
//!
//! Within one process the check and the taking of its slot are one step per app (an async
//! lock per app), so concurrent workers never all read the same count.
//!
//! Each deprovision counts once: while its slot is held it counts as in flight and its own log
//! rows (by job id) are left out of the log's count, so the moment between the finisher's commit
//! of those rows and the release of the slot cannot count it twice (it did: a whole finisher
//! batch of deprovisions was counted twice, and the guard held below its limit).
//!
//! Limits: counts come from the provisioning log plus this process's deprovisions not yet
//! logged, so several instances on one PostgreSQL may together let a few more through than the
//! limit (per instance, at most the deprovisions it claimed for the app: about twice the app's
//! claim window, `engine::claim_window`).
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};

use crate::reconcile::{GuardDecision, deletion_guard};
use crate::settings::DeletionGuard;
use crate::store::entity::{app, audit, link, operation};

/// The audit action of an admin's approval of the deprovisions the guard held (a resume with
/// `approve_deprovisions`); its `after.deprovisions_released` is what the guard lets through.
/// A plain resume is audited as `app.resume` and approves nothing.
pub const APPROVAL_ACTION: &str = "app.deprovisions_approved";

/// `app.paused_by` of an app the guard paused (an operator's pause is `operator`).
pub const PAUSED_BY_GUARD: &str = "guard";

/// Deprovisions this process is running, per app: the ids of their jobs, until their log rows
/// are committed.
#[derive(Default)]
pub struct InFlightDeprovisions {
    per_app: Mutex<HashMap<String, Vec<i64>>>,
    /// One check at a time per app: the count it reads includes every slot taken before it.
    checks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one in-flight deprovision, the job `job_id`'s, until dropped: by the finisher, once
/// the job's log rows (which the guard counts) are committed.
pub struct DeprovisionSlot {
    owner: Arc<InFlightDeprovisions>,
    app_id: String,
    job_id: i64,
}

impl Drop for DeprovisionSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.owner.per_app.lock()
            && let Some(jobs) = map.get_mut(&self.app_id)
        {
            if let Some(at) = jobs.iter().position(|j| *j == self.job_id) {
                jobs.swap_remove(at);
            }
            if jobs.is_empty() {
                map.remove(&self.app_id);
            }
        }
    }
}

impl InFlightDeprovisions {
    /// The jobs of `app_id`'s deprovisions in flight (a job id once per slot).
    fn jobs(&self, app_id: &str) -> Vec<i64> {
        self.per_app.lock().map_or_else(
            |_| Vec::new(),
            |m| m.get(app_id).cloned().unwrap_or_default(),
        )
    }

    /// Forgets the deleted apps `gone`: their counts and check locks. A slot still held for
    /// one of them finds nothing to release when dropped.
    pub fn forget(&self, gone: &HashSet<&str>) {
        if let Ok(mut map) = self.per_app.lock() {
            map.retain(|id, _| !gone.contains(id.as_str()));
        }
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.retain(|id, _| !gone.contains(id.as_str()));
    }

    /// How many apps this keeps state for (a count or a check lock), for tests.
    #[must_use]
    pub fn apps_held(&self) -> usize {
        let mut apps: HashSet<String> = self
            .per_app
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        apps.extend(
            self.checks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned(),
        );
        apps.len()
    }

    fn check_lock(&self, app_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A map poisoned by a panic elsewhere is still a valid map of locks.
        let mut map = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(app_id.to_owned()).or_default().clone()
    }

    fn take(self: &Arc<Self>, app_id: &str, job_id: i64) -> DeprovisionSlot {
        if let Ok(mut map) = self.per_app.lock() {
            map.entry(app_id.to_owned()).or_default().push(job_id);
        }
        DeprovisionSlot {
            owner: self.clone(),
            app_id: app_id.to_owned(),
            job_id,
        }
    }
}

/// What the guard says about one more deprovision in `app`.
pub enum EventGuard {
    /// Go ahead; the slot counts this deprovision until its log rows are written.
    Proceed(Option<DeprovisionSlot>),
    /// Pause the app for this reason.
    Hold(String),
}

/// Weighs one more deprovision in `app`, the job `job_id`'s, and on `Proceed` takes its slot.
pub async fn check(
    conn: &impl ConnectionTrait,
    in_flight: &Arc<InFlightDeprovisions>,
    app: &app::Model,
    guard: &DeletionGuard,
    job_id: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<EventGuard, sea_orm::DbErr> {
    if !guard.on_events {
        return Ok(EventGuard::Proceed(None));
    }
    // Held until this check's slot is taken: a concurrent check of the same app waits, then
    // counts this one among the in-flight deprovisions.
    let lock = in_flight.check_lock(&app.id);
    let _one_at_a_time = lock.lock().await;
    // Read before the log: a deprovision leaves this list only after its log rows are
    // committed, so reading in this order never misses one. Those rows may be committed by the
    // time the log is read: the log's count leaves out the rows of the jobs listed here, so
    // each deprovision counts once, as in flight.
    let unlogged = in_flight.jobs(&app.id);
    let window_start = now - chrono::Duration::minutes(i64::from(guard.window_minutes));
    // The last approval: deprovisions before it do not count, and it lets through the ones
    // that were waiting when it was given.
    let approval = audit::Entity::find()
        .filter(audit::Column::Action.eq(APPROVAL_ACTION))
        .filter(audit::Column::ObjectType.eq("app"))
        .filter(audit::Column::ObjectId.eq(app.id.as_str()))
        .filter(audit::Column::CreatedAt.gte(window_start))
        .order_by_desc(audit::Column::Id)
        .one(conn)
        .await?;
    let (since, released) = match &approval {
        Some(row) => (
            row.created_at.max(window_start),
            row.after
                .as_ref()
                .and_then(|a| a.get("deprovisions_released"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        ),
        None => (window_start, 0),
    };
    let mut logged = operation::Entity::find()
        .filter(operation::Column::AppId.eq(app.id.as_str()))
        .filter(operation::Column::Operation.is_in(["deactivate", "delete"]))
        .filter(operation::Column::Method.is_in(["PATCH", "DELETE"]))
        .filter(operation::Column::Outcome.eq("succeeded"))
        .filter(operation::Column::CreatedAt.gte(since));
    if !unlogged.is_empty() {
        logged = logged.filter(
            Condition::any()
                .add(operation::Column::JobId.is_null())
                .add(operation::Column::JobId.is_not_in(unlogged.iter().copied())),
        );
    }
    let done = logged.count(conn).await?;
    let accounts = link::Entity::find()
        .filter(link::Column::AppId.eq(app.id.as_str()))
        .filter(link::Column::ResourceKind.eq("user"))
        .filter(link::Column::State.is_in(["linked", "deactivated"]))
        .count(conn)
        .await?;
    let counted = usize::try_from(done).unwrap_or(usize::MAX) + unlogged.len() + 1;
    let counted = counted.saturating_sub(usize::try_from(released).unwrap_or(usize::MAX));
    match deletion_guard(
        guard,
        counted,
        usize::try_from(accounts).unwrap_or(usize::MAX),
    ) {
        GuardDecision::Proceed => Ok(EventGuard::Proceed(Some(in_flight.take(&app.id, job_id)))),
        GuardDecision::Hold { reason } => Ok(EventGuard::Hold(format!(
            "deletion guard on HR events: {} within {} minutes; an admin approves with \
             POST /apps/{{id}}/resume {{\"approve_deprovisions\": true}}",
            reason.replace("the run would deprovision", "deprovisioning"),
            guard.window_minutes
        ))),
    }
}
