//! The delivery engine: claims due jobs, runs them within each app's limits, and records what
//! happened (DESIGN §5).
//!
//! Invariants:
//! - At-least-once: a job leaves `running` only through `complete`, `retry`, `dead` or lease
//!   expiry; a crash anywhere leaves it to be reclaimed, and the level-triggered executor makes
//!   the repeat harmless (it matches before it creates).
//! - One app's trouble stays with that app: limits, pauses and quarantine are per app.
//! - Shutdown stops claiming, lets running jobs finish for up to `drain`, then hands the rest
//!   back to the queue.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::execute::{self, AppContext, JobError, Operation};
use super::finisher::{Finished, Finisher, JobEnd, JobFinisher};
use super::guard;
use super::inputs::{ClaimedBatch, UserInputs};
use super::limiter::{AppLimiter, Limiters};
use super::lookups::LookupBatcher;
use super::policy::{self, Decision};
use super::staged::JobWrites;
use super::target;
use crate::crypto::SecretBox;
use crate::mapping::CompiledMappings;
use crate::net_guard::TargetPolicy;
use crate::scim::{CallObserver, CallRecord, ConnectionReport, ScimClient};
use crate::settings::{self, AppSettings};
use crate::store::Db;
use crate::store::entity::{app, job, operation};
use crate::store::queue::{self, Lane, ResourceKind};
use crate::telemetry::metrics;

mod on_demand;
pub use on_demand::{OnDemandDelivery, Refused as OnDemandRefused};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Jobs in flight per instance (`ROSTER_WORKERS`).
    pub workers: usize,
    /// How often to look for due jobs when nobody rings.
    pub poll: Duration,
    /// How long a quarantined app waits between probes.
    pub probe_interval: Duration,
    /// How long shutdown waits for running jobs.
    pub drain: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 32,
            poll: Duration::from_millis(200),
            probe_interval: Duration::from_secs(300),
            drain: Duration::from_secs(25),
        }
    }
}

/// Calls needed before the failure ratio can quarantine an app, so that a couple of early
/// errors do not.
const MIN_CALLS_FOR_RATIO: usize = 20;
const WINDOW: usize = 100;

struct AppRuntime {
    version: i64,
    settings: Arc<AppSettings>,
    compiled: Arc<CompiledMappings>,
    client: ScimClient,
    limiter: Arc<AppLimiter>,
    lookups: Arc<LookupBatcher>,
}

/// What reconciliation reads an app through: the same client and limiter deliveries use.
#[derive(Clone)]
pub struct AppTarget {
    pub settings: Arc<AppSettings>,
    pub compiled: Arc<CompiledMappings>,
    pub client: ScimClient,
}

/// What the engine and the on-demand path share.
pub struct Delivery {
    db: Db,
    secrets: SecretBox,
    policy: TargetPolicy,
    owner: String,
    limiters: Limiters,
    runtimes: Mutex<HashMap<String, Arc<AppRuntime>>>,
    /// The last calls' outcomes per app (true = failed), for the quarantine ratio.
    windows: Mutex<HashMap<String, VecDeque<bool>>>,
    /// Jobs this process's workers are running: the only leases it renews.
    in_flight: Mutex<HashSet<i64>>,
    /// Deprovisions running now, per app, for the event-path deletion guard.
    deprovisions: Arc<guard::InFlightDeprovisions>,
    jobs_ready: Arc<Notify>,
}

/// Marks a job as running in this process for as long as its worker lives (aborted included).
/// A job whose outcome could not be written (the database was down) is then no longer renewed:
/// its lease expires and it is reclaimed, instead of staying `running` — and blocking that
/// person's later changes — for as long as this instance lives.
struct InFlight {
    delivery: Arc<Delivery>,
    id: i64,
}

impl InFlight {
    fn new(delivery: Arc<Delivery>, id: i64) -> Self {
        if let Ok(mut set) = delivery.in_flight.lock() {
            set.insert(id);
        }
        Self { delivery, id }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.delivery.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

fn observer_for(app_name: String) -> CallObserver {
    Arc::new(move |record: &CallRecord| {
        let m = metrics();
        let status = record
            .status
            .map_or_else(|| "error".to_owned(), |s| s.to_string());
        m.scim_requests_total
            .with_label_values(&[app_name.as_str(), record.method.as_str(), status.as_str()])
            .inc();
        m.scim_request_duration_seconds
            .with_label_values(&[app_name.as_str(), record.method.as_str()])
            .observe(record.duration.as_secs_f64());
        if matches!(record.status, Some(429 | 503)) {
            m.throttled_total
                .with_label_values(&[app_name.as_str()])
                .inc();
        }
        // The observer runs inside the call's `scim_call` span: tag it with what it served, so
        // an exported call names its app, operation and HR event (DESIGN §7).
        let mut tags = vec![("app", app_name.clone())];
        if let Some(call) = execute::record_call(record) {
            tags.push(("operation", call.operation.to_owned()));
            if let Some(event) = call.hr_event_id {
                tags.push(("hr_event_id", event));
            }
        }
        crate::telemetry::tag_current_span(tags);
    })
}

/// Whether a call counts against the app's health: errors that say the target or our settings
/// are broken. Throttling is not failure, and neither are the answers the executor expects
/// (404 on a look-up or DELETE, 409 before adopting).
fn call_failed(record: &CallRecord) -> bool {
    match record.status {
        None => true,
        Some(429 | 404 | 409) => false,
        Some(s) => s >= 400,
    }
}

impl Delivery {
    #[must_use]
    pub fn new(db: Db, secrets: SecretBox, policy: TargetPolicy, jobs_ready: Arc<Notify>) -> Self {
        Self {
            db,
            secrets,
            policy,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            limiters: Limiters::default(),
            runtimes: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            deprovisions: Arc::default(),
            jobs_ready,
        }
    }

    fn runtime(&self, app: &app::Model) -> Result<Arc<AppRuntime>, String> {
        if let Ok(map) = self.runtimes.lock()
            && let Some(rt) = map.get(&app.id)
            && rt.version == app.version
        {
            return Ok(rt.clone());
        }
        let settings = settings::settings_of(app).map_err(|e| e.to_string())?;
        let compiled = settings::compile_mappings(&settings).map_err(|e| e.to_string())?;
        let limiter = self.limiters.for_app(&app.id, app.version, &settings);
        let gate: Arc<dyn crate::scim::CallGate> = limiter.clone();
        let client = target::client_for(
            app,
            &settings,
            &self.secrets,
            self.policy,
            Some(observer_for(app.name.clone())),
            Some(gate),
        )
        .map_err(|e| e.to_string())?;
        let rt = Arc::new(AppRuntime {
            version: app.version,
            settings: Arc::new(settings),
            compiled: Arc::new(compiled),
            client,
            limiter,
            lookups: Arc::default(),
        });
        if let Ok(mut map) = self.runtimes.lock() {
            map.insert(app.id.clone(), rt.clone());
        }
        Ok(rt)
    }

    /// The app's SCIM client (with its rate limiter, so a reconciliation's reads share the
    /// app's budget with deliveries), settings and compiled mappings.
    pub fn app_target(&self, app: &app::Model) -> Result<AppTarget, String> {
        let rt = self.runtime(app)?;
        Ok(AppTarget {
            settings: rt.settings.clone(),
            compiled: rt.compiled.clone(),
            client: rt.client.clone(),
        })
    }

    /// Wakes the engine: jobs were committed outside its own loop.
    pub fn wake(&self) {
        self.jobs_ready.notify_one();
    }

    /// Checks a quarantined app; on success it is active again.
    async fn probe(&self, app: &app::Model) -> ConnectionReport {
        let report = match self.runtime(app) {
            Ok(rt) => rt.client.test_connection().await,
            Err(reason) => ConnectionReport {
                reachable: false,
                auth_ok: false,
                capabilities: None,
                reason: Some(reason),
            },
        };
        let conn = self.db.conn();
        let healthy = report.reachable && report.auth_ok && report.reason.is_none();
        let mut active: app::ActiveModel = app.clone().into();
        if healthy {
            active.state = Set("active".into());
            active.state_reason = Set(None);
            if let Ok(mut w) = self.windows.lock() {
                w.remove(&app.id);
            }
            metrics()
                .app_quarantined
                .with_label_values(&[app.name.as_str()])
                .set(0);
            tracing::info!(app = %app.name, "Quarantine lifted after a successful probe");
        }
        // Touching updated_at schedules the next probe one interval later.
        active.updated_at = Set(chrono::Utc::now());
        let _turn = self.db.write_turn().await;
        if let Err(e) = active.update(conn).await {
            tracing::warn!(error = %e, "Could not record a probe");
        }
        if healthy {
            self.jobs_ready.notify_one();
        }
        report
    }

    /// Moves an active app to `state` with `reason`; `true` when this call did it (the app was
    /// still active). Used by the deletion guard (`paused`) and quarantine.
    async fn leave_active(&self, app: &app::Model, state: &str, reason: &str) -> bool {
        let conn = self.db.conn();
        let _turn = self.db.write_turn().await;
        let result = app::Entity::update_many()
            .col_expr(app::Column::State, sea_orm::sea_query::Expr::value(state))
            .col_expr(
                app::Column::StateReason,
                sea_orm::sea_query::Expr::value(reason),
            )
            .col_expr(
                app::Column::UpdatedAt,
                sea_orm::sea_query::Expr::value(chrono::Utc::now()),
            )
            // Only the guard pauses here; only a pause by the guard can be approved away.
            .col_expr(
                app::Column::PausedBy,
                sea_orm::sea_query::Expr::value(
                    (state == "paused").then_some(guard::PAUSED_BY_GUARD),
                ),
            )
            .filter(app::Column::Id.eq(app.id.as_str()))
            .filter(app::Column::State.eq("active"))
            .exec(conn)
            .await;
        match result {
            Ok(r) => r.rows_affected > 0,
            Err(e) => {
                tracing::warn!(error = %e, app = %app.name, state, "Could not change an app's state");
                false
            }
        }
    }

    /// Pauses an active app whose deprovisions the event-path deletion guard holds; its jobs
    /// wait until an operator resumes it.
    async fn hold_for_approval(&self, app: &app::Model, reason: &str) {
        if self.leave_active(app, "paused", reason).await {
            tracing::error!(app = %app.name, reason, "Deprovisions held for approval; app paused");
        }
    }

    async fn quarantine(&self, app: &app::Model, reason: &str) {
        if self.leave_active(app, "quarantined", reason).await {
            metrics()
                .app_quarantined
                .with_label_values(&[app.name.as_str()])
                .set(1);
            tracing::error!(app = %app.name, reason, "App quarantined");
        }
    }

    /// Adds the job's calls to the app's window; `Some(reason)` when the app must be
    /// quarantined for its failure ratio.
    fn record_health(&self, app_id: &str, calls: &[(&'static str, CallRecord)]) -> Option<String> {
        let mut windows = self.windows.lock().ok()?;
        let window = windows.entry(app_id.to_owned()).or_default();
        for (_, call) in calls {
            window.push_back(call_failed(call));
            if window.len() > WINDOW {
                window.pop_front();
            }
        }
        let failed = window.iter().filter(|f| **f).count();
        if window.len() >= MIN_CALLS_FOR_RATIO && failed * 2 > window.len() {
            let reason = format!("{failed} of the last {} calls failed", window.len());
            window.clear();
            return Some(reason);
        }
        None
    }

    /// Runs one claimed job with the inputs read for its batch (`None`: the batch read
    /// failed, and the job reads its own).
    async fn run_job(
        &self,
        job: job::Model,
        batch: Option<&ClaimedBatch>,
        finisher: &JobFinisher<'_>,
    ) {
        let conn = self.db.conn();
        let now = queue::now_ms();
        let app = match batch {
            Some(batch) => Ok(batch.app(&job.app_id).cloned()),
            None => app::Entity::find_by_id(job.app_id.as_str()).one(conn).await,
        };
        let app = match app {
            Ok(Some(app)) => app,
            Ok(None) => {
                finisher.finish(ended(job.id, JobEnd::Complete));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not load the job's app; retrying");
                finisher.finish(ended(
                    job.id,
                    JobEnd::retry(now + 5_000, Some("database unavailable"), false),
                ));
                return;
            }
        };
        if app.state != "active" {
            finisher.finish(ended(job.id, JobEnd::retry(now + 5_000, None, false)));
            return;
        }
        let rt = match self.runtime(&app) {
            Ok(rt) => rt,
            Err(reason) => {
                finisher.finish(ended(
                    job.id,
                    JobEnd::Dead {
                        error: reason.clone(),
                    },
                ));
                tracing::error!(app = %app.name, reason, "App settings cannot be used");
                return;
            }
        };
        let Some(_slot) = rt.limiter.slot().await else {
            return;
        };
        if let Some(wait) = rt.limiter.paused_for()
            && wait > Duration::from_secs(2)
        {
            // Don't hold a worker through a long Retry-After: hand the job back.
            let until = now + wait.as_millis() as i64;
            finisher.finish(ended(
                job.id,
                JobEnd::retry(until, Some("target asked to wait"), false),
            ));
            return;
        }
        let kind = ResourceKind::parse(&job.resource_kind);
        // The deletion guard on the event path: weighed before each deprovision-lane job.
        let deprovision = if kind == ResourceKind::User && job.lane == Lane::Deprovision.as_str() {
            match guard::check(
                conn,
                &self.deprovisions,
                &app,
                &rt.settings.deletion_guard,
                chrono::Utc::now(),
            )
            .await
            {
                Ok(guard::EventGuard::Proceed(slot)) => slot,
                Ok(guard::EventGuard::Hold(reason)) => {
                    self.hold_for_approval(&app, &reason).await;
                    finisher.finish(ended(job.id, JobEnd::retry(now, None, false)));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Could not weigh the deletion guard; retrying");
                    finisher.finish(ended(
                        job.id,
                        JobEnd::retry(now + 5_000, Some("database unavailable"), false),
                    ));
                    return;
                }
            }
        } else {
            None
        };
        let ctx = AppContext {
            app: &app,
            settings: &rt.settings,
            compiled: &rt.compiled,
            client: &rt.client,
            lookups: &rt.lookups,
        };
        let span = tracing::info_span!(
            "job",
            app = %app.name,
            job_id = job.id,
            resource = kind.as_str(),
            hr_event_id = job.hr_event_id.as_deref().unwrap_or(""),
            operation = tracing::field::Empty,
        );
        // The job's links and follow-up jobs, written by the finisher with its end, whatever
        // the result.
        let mut writes = JobWrites::default();
        let (result, calls) = {
            let writes = &mut writes;
            execute::with_call_log(
                job.hr_event_id.as_deref(),
                async {
                    let id = job.resource_id.as_str();
                    let op = match kind {
                        ResourceKind::User => {
                            let inputs = match batch.and_then(|b| b.user(&app.id, id)) {
                                Some(inputs) => inputs,
                                None => UserInputs::load(conn, &app.id, id).await?,
                            };
                            let op = execute::deliver_user(&ctx, &inputs, id, now, writes).await?;
                            execute::follow_ups(&ctx, &inputs, id, op, now, writes);
                            op
                        }
                        ResourceKind::Group => {
                            execute::deliver_group(conn, &ctx, id, writes).await?
                        }
                        ResourceKind::Account => execute::deprovision_account(&ctx, id).await?,
                    };
                    Ok::<_, JobError>(op)
                }
                .instrument(span.clone()),
            )
            .await
        };
        match &result {
            Ok(op) => span.record("operation", op.as_str()),
            Err(JobError::Scim { operation, .. }) => span.record("operation", *operation),
            Err(_) => &span,
        };
        // Inside the job's span, so that the log rows carry its trace id.
        let operations = span.in_scope(|| {
            operation_rows(
                &app,
                Some(job.id),
                kind,
                &job.resource_id,
                job.attempts,
                job.hr_event_id.as_deref(),
                &calls,
            )
        });
        let ratio_reason = self.record_health(&app.id, &calls);
        let m = metrics();
        let app_label = app.name.as_str();
        match result {
            Ok(op) => {
                if op != Operation::Noop {
                    m.sync_operations_total
                        .with_label_values(&[app_label, op.as_str(), "succeeded"])
                        .inc();
                    if job.hr_event_id.is_some() {
                        let seconds = (queue::now_ms() - job.enqueued_at).max(0) as f64 / 1000.0;
                        m.event_to_target_seconds
                            .with_label_values(&[app_label, op.as_str()])
                            .observe(seconds);
                    }
                }
                finisher.finish(Finished {
                    job_id: job.id,
                    end: JobEnd::Complete,
                    writes,
                    operations,
                    deprovision,
                    running: None,
                });
            }
            Err(err) => {
                let (operation, class, status, retry_after) = match &err {
                    JobError::Scim { operation, source } => (
                        *operation,
                        source.class(),
                        source.status(),
                        source.retry_after(),
                    ),
                    JobError::Unprocessable(_) => {
                        ("unknown", crate::scim::ErrorClass::Permanent, None, None)
                    }
                    JobError::Db(_) => ("unknown", crate::scim::ErrorClass::Transient, None, None),
                };
                if let Some(wait) = retry_after
                    && matches!(status, Some(429 | 503))
                {
                    rt.limiter.pause_for(wait);
                }
                let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
                let jitter: f64 = rand::thread_rng().r#gen();
                let decision = policy::decide(
                    class,
                    status,
                    attempts,
                    rt.settings.max_attempts,
                    retry_after,
                    jitter,
                );
                let message = err.to_string();
                let id = job.id;
                let end = match decision {
                    Decision::Retry { after, counts } => {
                        m.sync_operations_total
                            .with_label_values(&[app_label, operation, "retried"])
                            .inc();
                        tracing::debug!(app = app_label, job = id, error = %message, "Retrying");
                        let at = queue::now_ms() + after.as_millis() as i64;
                        JobEnd::retry(at, Some(&message), counts)
                    }
                    Decision::DeadLetter => {
                        m.sync_operations_total
                            .with_label_values(&[app_label, operation, "dead"])
                            .inc();
                        tracing::warn!(app = app_label, job = id, error = %message, "Job dead-lettered");
                        JobEnd::Dead { error: message }
                    }
                    Decision::Quarantine => {
                        m.sync_operations_total
                            .with_label_values(&[app_label, operation, "failed"])
                            .inc();
                        self.quarantine(&app, &format!("credentials refused: {message}"))
                            .await;
                        JobEnd::retry(queue::now_ms() + 1_000, Some(&message), false)
                    }
                };
                finisher.finish(Finished {
                    job_id: id,
                    end,
                    writes,
                    operations,
                    deprovision,
                    running: None,
                });
            }
        }
        if let Some(reason) = ratio_reason {
            self.quarantine(&app, &reason).await;
        }
    }
}

fn ended(job_id: i64, end: JobEnd) -> Finished {
    Finished {
        job_id,
        end,
        writes: JobWrites::default(),
        operations: Vec::new(),
        deprovision: None,
        running: None,
    }
}

/// One provisioning-log row per SCIM call the job made (call inside the job's span: rows carry
/// its trace id).
fn operation_rows(
    app: &app::Model,
    job_id: Option<i64>,
    kind: ResourceKind,
    resource_id: &str,
    attempt: i32,
    hr_event_id: Option<&str>,
    calls: &[(&'static str, CallRecord)],
) -> Vec<operation::ActiveModel> {
    let now = chrono::Utc::now();
    let trace_id = crate::telemetry::trace_id();
    calls
        .iter()
        .map(|(op, call)| {
            let ok = call.error.is_none();
            operation::ActiveModel {
                app_id: Set(app.id.clone()),
                job_id: Set(job_id),
                resource_kind: Set(kind.as_str().to_owned()),
                resource_id: Set(resource_id.to_owned()),
                operation: Set((*op).to_owned()),
                method: Set(call.method.clone()),
                path: Set(call.path.clone()),
                status: Set(call.status.map(i32::from)),
                duration_ms: Set(call.duration.as_millis() as i64),
                attempt: Set(attempt),
                outcome: Set(if ok { "succeeded" } else { "failed" }.to_owned()),
                error: Set(call.error.clone()),
                trace_id: Set(trace_id.clone()),
                hr_event_id: Set(hr_event_id.map(str::to_owned)),
                created_at: Set(now),
                ..Default::default()
            }
        })
        .collect()
}

/// Starts the engine; it runs until `shutdown` is cancelled, then drains.
pub fn start(
    delivery: Arc<Delivery>,
    config: EngineConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(delivery, config, shutdown).await })
}

async fn run(delivery: Arc<Delivery>, config: EngineConfig, shutdown: CancellationToken) {
    if !crate::store::is_postgres(delivery.db.conn()) {
        // SQLite has one instance: jobs still `running` were left by a crash of this one, so
        // they can go back to the queue now instead of after their lease.
        let _turn = delivery.db.write_turn().await;
        match queue::release(delivery.db.conn(), None, i64::MAX).await {
            Ok(n) if n > 0 => tracing::info!(
                jobs = n,
                "Recovered jobs left running by a previous process"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Could not recover jobs left running"),
        }
    }
    let workers = Arc::new(Semaphore::new(config.workers.max(1)));
    let (finisher, finisher_task) = Finisher::start(delivery.db.clone());
    let mut tasks: JoinSet<()> = JoinSet::new();
    let housekeeping = tokio::spawn(housekeeping(
        delivery.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    loop {
        while tasks.try_join_next().is_some() {}
        if shutdown.is_cancelled() {
            break;
        }
        let free = workers.available_permits();
        if free == 0 {
            tokio::select! {
                _ = tasks.join_next() => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        let claimed = {
            let _turn = delivery.db.write_turn().await;
            queue::claim(
                delivery.db.conn(),
                &delivery.owner,
                queue::now_ms(),
                free as u64,
            )
            .await
        };
        let jobs = match claimed {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "Could not claim jobs");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
        };
        if jobs.is_empty() {
            tokio::select! {
                () = delivery.jobs_ready.notified() => {}
                () = tokio::time::sleep(config.poll) => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        let batch = match ClaimedBatch::load(delivery.db.conn(), &jobs).await {
            Ok(batch) => Some(Arc::new(batch)),
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the claimed jobs' inputs; each job reads its own");
                None
            }
        };
        for job in jobs {
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let (d, f, b) = (delivery.clone(), finisher.clone(), batch.clone());
            let running = InFlight::new(delivery.clone(), job.id);
            tasks.spawn(async move {
                let _permit: OwnedSemaphorePermit = permit;
                // The in-flight mark travels with the job's end to the finisher, so that the
                // lease is renewed until the end is written.
                let f = JobFinisher::new(&f, Box::new(running));
                d.run_job(job, b.as_deref(), &f).await;
            });
        }
    }
    // Drain: running jobs may finish; the rest go back to the queue.
    let drained = tokio::time::timeout(config.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        tracing::warn!("Drain timed out; handing unfinished jobs back to the queue");
    }
    // The ends of finished jobs are written before the rest is handed back.
    drop(finisher);
    if let Err(e) = finisher_task.await {
        tracing::warn!(error = %e, "The job writer failed at shutdown");
    }
    let _turn = delivery.db.write_turn().await;
    match queue::release(delivery.db.conn(), Some(&delivery.owner), queue::now_ms()).await {
        Ok(n) if n > 0 => tracing::info!(jobs = n, "Released jobs at shutdown"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Could not release jobs at shutdown; their leases will expire")
        }
    }
    drop(_turn);
    housekeeping.abort();
}

/// Leases, reclaiming, queue gauges and quarantine probes.
async fn housekeeping(delivery: Arc<Delivery>, config: EngineConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2).min(config.probe_interval));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        n += 1;
        let conn = delivery.db.conn();
        let now = queue::now_ms();
        {
            let _turn = delivery.db.write_turn().await;
            let running: Vec<i64> = delivery
                .in_flight
                .lock()
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default();
            if let Err(e) = queue::renew(conn, &delivery.owner, &running, now).await {
                tracing::warn!(error = %e, "Could not renew leases");
            }
            match queue::release(conn, None, now).await {
                Ok(k) if k > 0 => {
                    tracing::info!(jobs = k, "Reclaimed jobs whose lease expired");
                    delivery.jobs_ready.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Could not reclaim expired leases"),
            }
        }
        if n.is_multiple_of(2) {
            update_gauges(conn).await;
        }
        probe_due(&delivery, config.probe_interval).await;
    }
}

async fn update_gauges(conn: &impl ConnectionTrait) {
    let Ok(apps) = app::Entity::find().all(conn).await else {
        return;
    };
    let Ok(depths) = queue::depths(conn).await else {
        return;
    };
    let m = metrics();
    let now = queue::now_ms();
    for a in &apps {
        let mut oldest: Option<i64> = None;
        for lane in queue::Lane::ALL {
            let d = depths
                .iter()
                .find(|d| d.app_id == a.id && d.lane == lane.as_str());
            m.queue_depth
                .with_label_values(&[a.name.as_str(), lane.as_str()])
                .set(d.map_or(0, |d| d.depth));
            if let Some(t) = d.and_then(|d| d.oldest_enqueued_at) {
                oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
            }
        }
        let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        m.queue_oldest_pending_seconds
            .with_label_values(&[a.name.as_str()])
            .set(age);
        m.app_quarantined
            .with_label_values(&[a.name.as_str()])
            .set(i64::from(a.state == "quarantined"));
    }
}

async fn probe_due(delivery: &Delivery, interval: Duration) {
    let Ok(quarantined) = app::Entity::find()
        .filter(app::Column::State.eq("quarantined"))
        .all(delivery.db.conn())
        .await
    else {
        return;
    };
    let now = chrono::Utc::now();
    for a in quarantined {
        let due = a.updated_at
            + chrono::Duration::from_std(interval).unwrap_or_else(|_| chrono::Duration::minutes(5));
        if due <= now {
            let report = delivery.probe(&a).await;
            tracing::info!(app = %a.name, reachable = report.reachable, auth_ok = report.auth_ok, "Probed a quarantined app");
        }
    }
}
