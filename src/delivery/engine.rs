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
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::execute::{self, AppContext, JobError, Operation};
use super::finisher::{Finished, Finisher, JobEnd, JobFinisher};
use super::guard;
use super::inputs::{ClaimedBatch, UserInputs};
use super::limiter::{self, AppLimiter, Limiters};
use super::lookups::{LOOK_AHEAD_ROOM, LookupBatcher};
use super::policy::{self, Decision};
use super::staged::JobWrites;
use super::target;
use crate::crypto::SecretBox;
use crate::mapping::CompiledMappings;
use crate::net_guard::TransportPolicy;
use crate::scim::{CallObserver, CallRecord, ConnectionReport, Quirks, ScimClient};
use crate::settings::{self, AppSettings};
use crate::store::Db;
use crate::store::entity::{app, job, operation};
use crate::store::queue::{self, ClaimRooms, Lane, ResourceKind};
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

/// The claim window of an app whose settings this process has not read yet (the default
/// `max_concurrency` of 4, twice).
const DEFAULT_CLAIM_WINDOW: u64 = 8;

/// How many of an app's jobs this process holds claimed at most: its concurrency, plus twice as
/// many again (up to its rate per second) ready to call as soon as a slot and a token are free,
/// their matching look-ups started at their claim: a job waits for its call about as long as
/// two target round trips, which is what its look-up takes when it waits for a merged batch, so
/// its answer is there when it runs. Plus its [`look_ahead_room`]. More would only wait inside
/// the process, in front of jobs claimed later (a leaver's has room of its own).
fn claim_window(settings: &AppSettings, quirks: &Quirks, bound: usize) -> u64 {
    let concurrency = u64::from(settings.max_concurrency.max(1));
    concurrency
        + ahead_of_slots(settings.rate_limit.per_second, settings.max_concurrency)
        + look_ahead_room(settings, quirks, bound)
}

/// Jobs claimed ahead of the app's slots, by its rate: twice its concurrency, at most its rate
/// per second.
fn ahead_of_slots(per_second: u32, max_concurrency: u32) -> u64 {
    let concurrency = u64::from(max_concurrency.max(1));
    (2 * concurrency).min(u64::from(per_second.max(1)))
}

/// More jobs claimed ahead where an app looks joiners up before creating them
/// ([`room_to_look_ahead`]).
fn look_ahead_room(settings: &AppSettings, quirks: &Quirks, bound: usize) -> u64 {
    room_to_look_ahead(
        settings.rate_limit.per_second,
        settings.max_concurrency,
        !quirks.creates_before_looking(&settings.matching.target_attribute),
        bound,
    )
}

/// More jobs claimed ahead of an app's slots where it `looks_up_first` (its target does not
/// promise to refuse a duplicate), so that the look-ups of jobs claimed together leave as one
/// call (`LookupBatcher::look_ahead`) while its slots stay busy with the jobs already
/// answered:
/// - where its calls are scarce (`limiter::calls_are_scarce`), up to [`LOOK_AHEAD_ROOM`] wait
///   claimed in all, their look-ups waiting until the first is needed: a slow app spends
///   about one call per account, not two;
/// - where they are plenty, a full batch's worth ([`LOOK_AHEAD_ROOM`]) more, waiting while
///   their look-up gathers and is answered: each look-up then answers a full batch, one slot
///   for that many accounts, instead of taking slots from the creates for a few each.
///
/// At most a quarter of what the process claims (`bound`), so that one app's backlog never
/// takes the room of another app's jobs. Pure, so table-tested.
fn room_to_look_ahead(
    per_second: u32,
    max_concurrency: u32,
    looks_up_first: bool,
    bound: usize,
) -> u64 {
    if !looks_up_first {
        return 0;
    }
    let room = if limiter::calls_are_scarce(per_second, max_concurrency) {
        LOOK_AHEAD_ROOM.saturating_sub(ahead_of_slots(per_second, max_concurrency))
    } else {
        LOOK_AHEAD_ROOM
    };
    room.min(u64::try_from(bound / 4).unwrap_or(u64::MAX))
}

/// Jobs claimed in this process at most, in workers: those running, and twice as many waiting
/// claimed ahead of a worker (see [`claim_window`]).
const CLAIMED_PER_WORKER: usize = 3;

/// The last calls' outcomes per app (true = failed), for the quarantine ratio. Each SCIM call
/// made for a job counts once, when it is made (by the app's call observer): a merged look-up
/// that served 25 jobs is one call, however many jobs' logs show it.
#[derive(Default)]
struct Health {
    apps: Mutex<HashMap<String, AppHealth>>,
}

#[derive(Default)]
struct AppHealth {
    calls: VecDeque<bool>,
    /// Why the app must be quarantined, once the ratio tripped; taken by the next job's end.
    tripped: Option<String>,
}

impl Health {
    fn record(&self, app_id: &str, failed: bool) {
        let Ok(mut apps) = self.apps.lock() else {
            return;
        };
        let health = apps.entry(app_id.to_owned()).or_default();
        health.calls.push_back(failed);
        if health.calls.len() > WINDOW {
            health.calls.pop_front();
        }
        let failed = health.calls.iter().filter(|f| **f).count();
        if health.calls.len() >= MIN_CALLS_FOR_RATIO && failed * 2 > health.calls.len() {
            health.tripped = Some(format!(
                "{failed} of the last {} calls failed",
                health.calls.len()
            ));
            health.calls.clear();
        }
    }

    /// `Some(reason)` once, when the app must be quarantined for its failure ratio.
    fn take_tripped(&self, app_id: &str) -> Option<String> {
        self.apps
            .lock()
            .ok()?
            .get_mut(app_id)
            .and_then(|h| h.tripped.take())
    }

    fn forget(&self, app_id: &str) {
        if let Ok(mut apps) = self.apps.lock() {
            apps.remove(app_id);
        }
    }
}

/// What a claimed job brings to its run, prepared before it waits for its slot.
struct Prepared {
    /// A user job's inputs, as read with its claimed batch (`None`: the job reads its own).
    inputs: Option<UserInputs>,
    /// Its matching look-up, started at its claim.
    ahead: Option<execute::LookAhead>,
    /// The job's span, from its claim: a look-up started ahead is made in it.
    span: tracing::Span,
}

struct AppRuntime {
    version: i64,
    name: String,
    /// When it was built: an app created after the app list was read is not taken for deleted.
    built_at: std::time::Instant,
    settings: Arc<AppSettings>,
    compiled: Arc<CompiledMappings>,
    client: ScimClient,
    limiter: Arc<AppLimiter>,
    lookups: Arc<LookupBatcher>,
}

impl AppRuntime {
    /// A job's view of the app, with the look-up started at its claim, if any.
    fn context<'a>(
        &'a self,
        conn: &'a sea_orm::DatabaseConnection,
        app: &'a app::Model,
        ahead: Option<execute::LookAhead>,
    ) -> AppContext<'a> {
        AppContext {
            conn,
            app,
            settings: &self.settings,
            compiled: &self.compiled,
            client: &self.client,
            lookups: &self.lookups,
            ahead: std::sync::Mutex::new(ahead),
        }
    }
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
    policy: TransportPolicy,
    owner: String,
    limiters: Limiters,
    runtimes: Mutex<HashMap<String, Arc<AppRuntime>>>,
    health: Arc<Health>,
    /// Jobs this process's workers are running: the only leases it renews. Each job's token is
    /// cancelled when its lease is found lost, or may lapse unrenewed, and its worker stops.
    in_flight: Mutex<HashMap<i64, HeldLease>>,
    /// Jobs claimed and not yet ended per app, against its claim window.
    claims: Arc<Mutex<HashMap<String, u64>>>,
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
    /// Marks the job, whose lease runs until `lease_until` (ms); the token is cancelled if its
    /// lease is lost.
    fn new(delivery: Arc<Delivery>, id: i64, lease_until: i64) -> (Self, CancellationToken) {
        let lost = CancellationToken::new();
        if let Ok(mut set) = delivery.in_flight.lock() {
            set.insert(
                id,
                HeldLease {
                    lost: lost.clone(),
                    until: lease_until,
                },
            );
        }
        (Self { delivery, id }, lost)
    }
}

/// A running job's lease as this process last wrote it.
struct HeldLease {
    /// Cancelled when the lease is lost, or may lapse: the job's worker stops.
    lost: CancellationToken,
    /// Until when the lease is known to be this process's (ms).
    until: i64,
}

/// How long before a lease's end a job whose lease could not be renewed is stopped: two
/// renewal ticks and some clock difference between instances. Past its end another instance
/// may take the job, and two workers would act on one account.
const LEASE_MARGIN_MS: i64 = 10_000;

/// Whether a job whose lease could not be renewed must stop now: its lease, known to run
/// until `until`, may have lapsed by the next renewal.
fn lease_may_lapse(until: i64, now: i64) -> bool {
    until - now <= LEASE_MARGIN_MS
}

/// One claimed job in its app's claim window, until its worker ends.
struct Claimed {
    claims: Arc<Mutex<HashMap<String, u64>>>,
    app_id: String,
}

impl Claimed {
    fn new(claims: Arc<Mutex<HashMap<String, u64>>>, app_id: &str) -> Self {
        if let Ok(mut map) = claims.lock() {
            *map.entry(app_id.to_owned()).or_default() += 1;
        }
        Self {
            claims,
            app_id: app_id.to_owned(),
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Ok(mut map) = self.claims.lock()
            && let Some(n) = map.get_mut(&self.app_id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.app_id);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.delivery.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

fn observer_for(app_name: String, app_id: String, health: Arc<Health>) -> CallObserver {
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
            // A call made for a job (a reconciliation's reads and probes are not) counts
            // towards the app's health, once.
            health.record(&app_id, call_failed(record));
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
    pub fn new(
        db: Db,
        secrets: SecretBox,
        policy: TransportPolicy,
        jobs_ready: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            secrets,
            policy,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            limiters: Limiters::default(),
            runtimes: Mutex::new(HashMap::new()),
            health: Arc::default(),
            in_flight: Mutex::new(HashMap::new()),
            claims: Arc::default(),
            deprovisions: Arc::default(),
            jobs_ready,
        }
    }

    fn runtime(&self, app: &app::Model) -> Result<Arc<AppRuntime>, String> {
        let previous = match self.runtimes.lock() {
            Ok(map) => match map.get(&app.id) {
                Some(rt) if rt.version == app.version => return Ok(rt.clone()),
                Some(rt) => Some(rt.lookups.clone()),
                None => None,
            },
            Err(_) => None,
        };
        let settings = settings::settings_of(app).map_err(|e| e.to_string())?;
        let compiled = settings::compile_mappings(&settings).map_err(|e| e.to_string())?;
        let limiter = self.limiters.for_app(&app.id, app.version, &settings);
        let gate: Arc<dyn crate::scim::CallGate> = limiter.clone();
        let client = target::client_for(
            app,
            &settings,
            &self.secrets,
            self.policy,
            Some(observer_for(
                app.name.clone(),
                app.id.clone(),
                self.health.clone(),
            )),
            Some(gate),
        )
        .map_err(|e| e.to_string())?;
        let max_concurrency = settings.max_concurrency;
        let rt = Arc::new(AppRuntime {
            version: app.version,
            name: app.name.clone(),
            built_at: std::time::Instant::now(),
            settings: Arc::new(settings),
            compiled: Arc::new(compiled),
            client,
            limiter,
            lookups: Arc::new(match &previous {
                Some(previous) => LookupBatcher::succeeding(previous, max_concurrency),
                None => LookupBatcher::new(max_concurrency),
            }),
        });
        // Jobs claimed together build at once: the first one stored is everyone's, so that
        // they share one client (one discovery read, one OAuth token), one limiter's slots and
        // one look-up batcher (its matching turns and adoption claims hold across those jobs).
        let Ok(mut map) = self.runtimes.lock() else {
            return Ok(rt);
        };
        match map.get(&app.id) {
            Some(stored) if stored.version == app.version => Ok(stored.clone()),
            // This job read the app before a change another job has already seen.
            Some(stored) if stored.version > app.version => Ok(rt),
            _ => {
                map.insert(app.id.clone(), rt.clone());
                Ok(rt)
            }
        }
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

    /// Renews the leases of the jobs this process runs; the worker of a job whose lease is
    /// no longer this instance's (it expired and another instance took the job) is stopped.
    async fn renew(&self, now: i64) {
        let running: Vec<i64> = self
            .in_flight
            .lock()
            .map(|set| set.keys().copied().collect())
            .unwrap_or_default();
        let renewal = queue::renew(self.db.conn(), &self.owner, &running, now).await;
        let Ok(mut set) = self.in_flight.lock() else {
            return;
        };
        match renewal {
            Ok(renewed) => {
                // A job that ended meanwhile is gone from the set, or its worker already
                // stopped: cancelling its token does nothing.
                for id in &running {
                    let Some(lease) = set.get_mut(id) else {
                        continue;
                    };
                    if renewed.contains(id) {
                        lease.until = now + queue::LEASE_MS;
                    } else {
                        lease.lost.cancel();
                    }
                }
            }
            Err(e) => {
                let mut stopped = 0;
                for lease in set.values() {
                    if lease_may_lapse(lease.until, now) && !lease.lost.is_cancelled() {
                        lease.lost.cancel();
                        stopped += 1;
                    }
                }
                tracing::warn!(error = %e, stopped, "Could not renew leases; jobs whose lease may lapse are stopped");
            }
        }
    }

    /// The look-ahead rooms of the apps ([`look_ahead_room`]), all together: claimed on top of
    /// what the workers bound (`bound`), up to as much again.
    fn look_ahead_rooms(&self, bound: usize) -> usize {
        let rooms: u64 = self.runtimes.lock().map_or(0, |map| {
            map.values()
                .map(|rt| look_ahead_room(&rt.settings, rt.client.quirks(), bound))
                .sum()
        });
        usize::try_from(rooms).unwrap_or(usize::MAX).min(bound)
    }

    /// Jobs claimed in this process and not ended, all apps together.
    fn claimed_total(&self) -> usize {
        self.claims.lock().map_or(0, |m| {
            usize::try_from(m.values().sum::<u64>()).unwrap_or(usize::MAX)
        })
    }

    /// The room left in each app's claim window.
    fn claim_rooms(&self, bound: usize) -> ClaimRooms {
        let windows: HashMap<String, u64> = self
            .runtimes
            .lock()
            .map(|map| {
                map.iter()
                    .map(|(id, rt)| {
                        let window = claim_window(&rt.settings, rt.client.quirks(), bound);
                        (id.clone(), window)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let claims = self.claims.lock().map(|m| m.clone()).unwrap_or_default();
        let mut rooms: Vec<(String, u64)> = windows
            .iter()
            .map(|(id, window)| {
                let taken = claims.get(id).copied().unwrap_or(0);
                (id.clone(), window.saturating_sub(taken))
            })
            .collect();
        for (id, taken) in &claims {
            if !windows.contains_key(id) {
                rooms.push((id.clone(), DEFAULT_CLAIM_WINDOW.saturating_sub(*taken)));
            }
        }
        // Leavers have a window of their own on top: claimed at once, even into a full
        // window, up to twice the window in all.
        let first_rooms = windows
            .iter()
            .map(|(id, window)| {
                let taken = claims.get(id).copied().unwrap_or(0);
                (id.clone(), (2 * window).saturating_sub(taken))
            })
            .collect();
        ClaimRooms {
            rooms,
            default_room: DEFAULT_CLAIM_WINDOW,
            first_rooms,
            leavers_only: false,
        }
    }

    /// Forgets what this process keeps per app (runtime, limiter, merged look-ups, health, the
    /// deletion guard's counts and locks, the app's gauges) for apps not in `live`, the apps read at `read_at`: deleted ones.
    fn forget_deleted_apps(&self, live: &HashSet<String>, read_at: std::time::Instant) {
        let gone: Vec<(String, String)> = self
            .runtimes
            .lock()
            .map(|mut map| {
                let gone = map
                    .iter()
                    .filter(|(id, rt)| !live.contains(*id) && rt.built_at < read_at)
                    .map(|(id, rt)| (id.clone(), rt.name.clone()))
                    .collect::<Vec<_>>();
                for (id, _) in &gone {
                    map.remove(id);
                }
                gone
            })
            .unwrap_or_default();
        let ids: HashSet<&str> = gone.iter().map(|(id, _)| id.as_str()).collect();
        self.limiters.forget(&ids);
        self.deprovisions.forget(&ids);
        if let Ok(mut apps) = self.health.apps.lock() {
            apps.retain(|id, _| !ids.contains(id.as_str()));
        }
        let m = metrics();
        for (_, name) in &gone {
            let _ = m.app_quarantined.remove_label_values(&[name.as_str()]);
            let _ = m
                .queue_oldest_pending_seconds
                .remove_label_values(&[name.as_str()]);
            for lane in Lane::ALL {
                let _ = m
                    .queue_depth
                    .remove_label_values(&[name.as_str(), lane.as_str()]);
            }
        }
        if !gone.is_empty() {
            tracing::debug!(apps = gone.len(), "Forgot deleted apps");
        }
    }

    /// How many apps this process keeps runtime state for (runtimes, limiters, health
    /// windows, deletion-guard state), for tests.
    #[doc(hidden)]
    #[must_use]
    pub fn apps_held(&self) -> (usize, usize, usize, usize) {
        (
            self.runtimes.lock().map_or(0, |m| m.len()),
            self.limiters.len(),
            self.health.apps.lock().map_or(0, |m| m.len()),
            self.deprovisions.apps_held(),
        )
    }

    /// Wakes the engine: jobs were committed outside its own loop.
    pub fn wake(&self) {
        self.jobs_ready.notify_one();
    }

    /// Checks a quarantined app; on success it is active again — if it is still quarantined
    /// then: an operator's pause (or anything else) meanwhile is never undone by a probe.
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
        let healthy = report.reachable && report.auth_ok && report.reason.is_none();
        let mut update = app::Entity::update_many()
            // Touching updated_at schedules the next probe one interval later.
            .col_expr(
                app::Column::UpdatedAt,
                sea_orm::sea_query::Expr::value(chrono::Utc::now()),
            )
            .filter(app::Column::Id.eq(app.id.as_str()))
            .filter(app::Column::State.eq("quarantined"));
        if healthy {
            update = update
                .col_expr(
                    app::Column::State,
                    sea_orm::sea_query::Expr::value("active"),
                )
                .col_expr(
                    app::Column::StateReason,
                    sea_orm::sea_query::Expr::value(Option::<String>::None),
                );
        }
        let result = {
            let _turn = self.db.write_turn().await;
            update.exec(self.db.conn()).await
        };
        match result {
            Ok(r) if healthy && r.rows_affected > 0 => {
                self.health.forget(&app.id);
                metrics()
                    .app_quarantined
                    .with_label_values(&[app.name.as_str()])
                    .set(0);
                tracing::info!(app = %app.name, "Quarantine lifted after a successful probe");
                self.jobs_ready.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Could not record a probe"),
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

    /// Runs one claimed job with the inputs read for its batch (`None`: the batch read
    /// failed, and the job reads its own).
    ///
    /// The job holds one of the engine's `workers` while it works; each of its calls waits for
    /// the app's slot, token and pause without it (`limiter::without_worker`), and holds the
    /// slot only while the call is under way.
    async fn run_job(
        &self,
        job: job::Model,
        batch: Option<&ClaimedBatch>,
        finisher: &JobFinisher<'_>,
        workers: &limiter::Workers,
    ) {
        let conn = self.db.conn();
        let now = queue::now_ms();
        let app = match batch {
            Some(batch) => Ok(batch.app(&job.app_id).cloned()),
            None => app::Entity::find_by_id(job.app_id.as_str())
                .one(conn)
                .await
                .map(|app| app.map(Arc::new)),
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
        let kind = ResourceKind::parse(&job.resource_kind);
        let span = tracing::info_span!(
            "job",
            app = %app.name,
            job_id = job.id,
            resource = kind.as_str(),
            hr_event_id = job.hr_event_id.as_deref().unwrap_or(""),
            operation = tracing::field::Empty,
        );
        let inputs = match kind {
            ResourceKind::User => batch.and_then(|b| b.user(&app.id, &job.resource_id)),
            _ => None,
        };
        // The job's matching look-up leaves now, while the job waits for its turn, merged with
        // those of the jobs claimed with it: the job finds the answer there instead of
        // waiting for it with its slot (a round trip to the target, and the wait for a batch).
        let ahead = inputs.as_ref().and_then(|inputs| {
            execute::look_ahead(
                &rt.context(conn, &app, None),
                inputs,
                job.hr_event_id.as_deref(),
                span.clone(),
                limiter::calls_are_scarce(
                    rt.settings.rate_limit.per_second,
                    rt.settings.max_concurrency,
                ) || rt.limiter.short_of_tokens(crate::scim::CallKind::Read),
            )
        });
        let prepared = Prepared {
            inputs,
            ahead,
            span,
        };
        // A deprovision's calls take the app's next slots and tokens ahead of the calls
        // waiting in line.
        let turn = limiter::Turn::of_lane(&job.lane);
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
        // A deprovision takes a worker kept for leavers if one is free: never in line behind
        // the joiners claimed before it.
        let Some(permit) = workers.acquire(turn).await else {
            return;
        };
        // Boxed: a delivery's state is large, and unboxed it would be copied whole into
        // every job's task when it is spawned, before it even waits (a profile found those
        // copies at 2-3 % of roster's CPU).
        workers
            .run(
                permit,
                turn,
                Box::pin(self.deliver(job, app, &rt, prepared, finisher)),
            )
            .await;
    }

    /// Runs a job that holds a worker.
    async fn deliver(
        &self,
        job: job::Model,
        app: Arc<app::Model>,
        rt: &AppRuntime,
        prepared: Prepared,
        finisher: &JobFinisher<'_>,
    ) {
        let Prepared {
            inputs,
            ahead,
            span,
        } = prepared;
        let conn = self.db.conn();
        // Read again: the job may have waited for a worker.
        let now = queue::now_ms();
        let kind = ResourceKind::parse(&job.resource_kind);
        // The deletion guard on the event path: weighed before each deprovision-lane job.
        let deprovision = if kind == ResourceKind::User && job.lane == Lane::Deprovision.as_str() {
            match guard::check(
                conn,
                &self.deprovisions,
                &app,
                &rt.settings.deletion_guard,
                job.id,
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
        let ctx = rt.context(conn, &app, ahead);
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
                            let inputs = match inputs {
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
                        ResourceKind::Account => {
                            execute::deprovision_account(conn, &ctx, id).await?
                        }
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
        // Before the end is handed over: once it is written, the worker may be stopped.
        if let Some(reason) = self.health.take_tripped(&app.id) {
            self.quarantine(&app, &reason).await;
        }
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
    let workers = limiter::Workers::new(config.workers);
    let (finisher, finisher_task) = Finisher::start(delivery.db.clone(), delivery.owner.clone());
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Leases are renewed until the very end, through the drain; probes stop at shutdown, and
    // run in a task of their own: a probe waiting out a Retry-After must not hold up renewals.
    let leases_stop = CancellationToken::new();
    let leases = tokio::spawn(leases(
        delivery.clone(),
        shutdown.clone(),
        leases_stop.clone(),
    ));
    let probes = tokio::spawn(probes(
        delivery.clone(),
        config.probe_interval,
        shutdown.clone(),
    ));
    loop {
        while tasks.try_join_next().is_some() {}
        if shutdown.is_cancelled() {
            break;
        }
        // Jobs waiting for their app hold no worker. What is claimed is bounded by the
        // workers (a few times over: jobs wait claimed ahead of a worker, their look-ups
        // leaving meanwhile), and each app's claim window bounds what waits for it.
        let bound = CLAIMED_PER_WORKER * config.workers.max(1);
        let free =
            (bound + delivery.look_ahead_rooms(bound)).saturating_sub(delivery.claimed_total());
        // Every claim taken: leavers are still claimed, into their apps' rooms for leavers,
        // and take the workers kept for them.
        let (free, rooms) = if free == 0 {
            let rooms = ClaimRooms {
                leavers_only: true,
                ..delivery.claim_rooms(bound)
            };
            (limiter::leaver_workers(config.workers), rooms)
        } else {
            (free, delivery.claim_rooms(bound))
        };
        let claimed = {
            let _turn = delivery.db.write_turn().await;
            queue::claim_within(
                delivery.db.conn(),
                &delivery.owner,
                queue::now_ms(),
                free as u64,
                &rooms,
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
            // A job ending frees room in its app's window: claim again then too.
            tokio::select! {
                () = delivery.jobs_ready.notified() => {}
                () = tokio::time::sleep(config.poll) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
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
            let (d, f, b, w) = (
                delivery.clone(),
                finisher.clone(),
                batch.clone(),
                workers.clone(),
            );
            let lease_until = job.lease_until.unwrap_or_else(queue::now_ms);
            let (running, lost) = InFlight::new(delivery.clone(), job.id, lease_until);
            let claimed = Claimed::new(delivery.claims.clone(), &job.app_id);
            tasks.spawn(async move {
                let _claimed = claimed;
                let id = job.id;
                // The in-flight mark travels with the job's end to the finisher, so that the
                // lease is renewed until the end is written.
                let f = JobFinisher::new(&f, Box::new(running));
                tokio::select! {
                    () = d.run_job(job, b.as_deref(), &f, &w) => {}
                    () = lost.cancelled() => {
                        // Another instance holds the job now: stop acting on it. Whatever
                        // this worker already did is harmless (delivery is level-triggered,
                        // and its end, if any, is dropped by the finisher).
                        tracing::warn!(job = id, "Lost the job's lease; its worker stops");
                    }
                }
            });
        }
    }
    probes.abort();
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
    leases_stop.cancel();
    let _ = leases.await;
    let _turn = delivery.db.write_turn().await;
    match queue::release(delivery.db.conn(), Some(&delivery.owner), queue::now_ms()).await {
        Ok(n) if n > 0 => tracing::info!(jobs = n, "Released jobs at shutdown"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Could not release jobs at shutdown; their leases will expire")
        }
    }
}

/// Lease renewal (until `stop`, so through the drain), reclaiming expired leases, queue gauges
/// and forgetting deleted apps (until `shutdown`).
async fn leases(delivery: Arc<Delivery>, shutdown: CancellationToken, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        n += 1;
        let conn = delivery.db.conn();
        let now = queue::now_ms();
        {
            let _turn = delivery.db.write_turn().await;
            delivery.renew(now).await;
            if !shutdown.is_cancelled() {
                match queue::release(conn, None, now).await {
                    Ok(k) if k > 0 => {
                        tracing::info!(jobs = k, "Reclaimed jobs whose lease expired");
                        delivery.jobs_ready.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Could not reclaim expired leases"),
                }
            }
        }
        if n.is_multiple_of(2) && !shutdown.is_cancelled() {
            let read_at = std::time::Instant::now();
            if let Some(apps) = update_gauges(conn).await {
                let live: HashSet<String> = apps.into_iter().map(|a| a.id).collect();
                delivery.forget_deleted_apps(&live, read_at);
            }
        }
    }
}

/// Probes quarantined apps when due, until `shutdown`.
async fn probes(delivery: Arc<Delivery>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2).min(interval));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        probe_due(&delivery, interval).await;
    }
}

/// Sets the queue gauges; returns the apps it read.
async fn update_gauges(conn: &impl ConnectionTrait) -> Option<Vec<app::Model>> {
    let apps = app::Entity::find().all(conn).await.ok()?;
    let Ok(depths) = queue::depths(conn).await else {
        return Some(apps);
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
    Some(apps)
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
        // A target that asked to wait is probed once the wait is over, not through it.
        let paused = delivery
            .runtimes
            .lock()
            .ok()
            .and_then(|map| map.get(&a.id).map(|rt| rt.limiter.paused_for().is_some()))
            .unwrap_or(false);
        if due <= now && !paused {
            let report = delivery.probe(&a).await;
            tracing::info!(app = %a.name, reachable = report.reachable, auth_ok = report.auth_ok, "Probed a quarantined app");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_that_could_not_be_renewed_stops_its_job_before_it_may_lapse() {
        let now = 1_000_000;
        // (the lease's end, relative to now) → the job stops
        let table = [
            (queue::LEASE_MS, false),
            (LEASE_MARGIN_MS + 1, false),
            (LEASE_MARGIN_MS, true),
            (1, true),
            (0, true),
            (-5_000, true),
        ];
        for (until, stops) in table {
            assert_eq!(lease_may_lapse(now + until, now), stops, "{until}");
        }
    }

    /// The database is unreachable for renewals: a job whose lease ends within the margin is
    /// stopped (another instance may take it once it lapses); one renewed lately runs on.
    #[tokio::test]
    async fn a_failed_renewal_stops_the_jobs_whose_lease_may_lapse() {
        // No queue table: every renewal fails.
        let conn = sea_orm::Database::connect("sqlite::memory:")
            .await
            .expect("an empty database");
        let key = crate::crypto::SecretBox::generate_base64();
        let delivery = Arc::new(Delivery::new(
            crate::store::Db::new(conn),
            crate::crypto::SecretBox::from_base64(&key.into()).expect("a key"),
            crate::net_guard::TransportPolicy {
                targets: crate::net_guard::TargetPolicy::AllowPrivate,
                plain_http: crate::net_guard::PlainHttp::Allowed,
            },
            Arc::default(),
        ));
        let now = queue::now_ms();
        let (_soon, lapsing) = InFlight::new(delivery.clone(), 1, now + 5_000);
        let (_later, held) = InFlight::new(delivery.clone(), 2, now + queue::LEASE_MS);
        delivery.renew(now).await;
        assert!(lapsing.is_cancelled(), "stopped before its lease may lapse");
        assert!(!held.is_cancelled(), "its lease runs for a while yet");
    }

    #[test]
    fn an_app_that_looks_joiners_up_first_gets_room_for_a_batch_of_look_ups_ahead() {
        // (per_second, max_concurrency, looks up first, the process's bound) → room
        let table = [
            // Calls plenty (its latency bounds them): a full batch more, within a quarter of
            // the process's claims.
            ((10_000, 32, true, 400), 25),
            ((10_000, 32, true, 96), 24),
            ((10_000, 32, false, 400), 0),
            // Calls scarce (its rate bounds them): up to a batch claimed ahead in all.
            ((10, 4, true, 400), 17),
            ((2, 4, true, 400), 23),
            ((100, 20, true, 400), 0),
            ((10, 4, false, 400), 0),
            ((2, 4, true, 8), 2),
        ];
        for ((per_second, concurrency, looks_up_first, bound), room) in table {
            assert_eq!(
                room_to_look_ahead(per_second, concurrency, looks_up_first, bound),
                room,
                "{per_second}/s, {concurrency} at once, looks up first: {looks_up_first}, \
                 bound {bound}"
            );
        }
    }
}
