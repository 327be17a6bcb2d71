//! Per-app rate limits (DESIGN §5, §11): a set of token buckets for calls, a semaphore of
//! `max_concurrency` for calls in flight, and a pause set by `Retry-After`. Apps share none of
//! these, so one slow or throttling app does not hold up another — except the apps of one
//! `rate_limit_group`, which share one bucket set and its pause (a vendor whose limits hold for
//! a whole tenant), each keeping its own slots.
//!
//! A bucket set ([`Buckets`]) holds a bucket for the app's `per_second`/`burst` and one per
//! entry of its `rate_limit.windows` (a limit per 30 s, minute or hour, and a limit of reads,
//! writes or DELETEs only). A call takes one token from every bucket that counts its kind
//! ([`CallKind`]), all at once or none: it waits until each has one. In a group, the set holds
//! every limit any of its apps sets (one bucket per distinct limit), so the calls of all of
//! them together stay within each. The buckets are GCRA, as governor's (one token every
//! `window / limit`, `burst` at once), kept here so that several are checked and taken as one.
//!
//! Every SCIM call to an app passes its gate ([`CallGate`]): it takes one of the app's slots and
//! one token, and holds the slot until its answer is read. A call that must wait for a token
//! waits without a slot (a job between two calls, or waiting for its next token, holds none),
//! so the slots are held only by calls under way: a deprovision never waits behind jobs that
//! sit on the app's slots while they wait for tokens of their own.
//!
//! The engine's global worker permits (`ROSTER_WORKERS`) are not held while a call waits for
//! its app: the permit goes back while a call waits for a slot, a token or a `Retry-After`
//! pause (`without_worker`), so one app's backlog or pause never keeps another app's jobs from
//! running.
//!
//! Leavers first (DESIGN §5): a call of a deprovision-lane job gets its app's next slot and
//! next tokens ahead of every waiting call of a normal or reconcile job — of every app of its
//! group, since they take the same tokens. While one waits, the others neither take a slot nor
//! a token (they wait holding nothing), and go on once no such call waits. It still waits for
//! the slot, the tokens and any `Retry-After` pause like every other call: the app's limits
//! hold for leavers too.
//!
//! The buckets and the `Retry-After` pause read one clock, governor's [`DefaultClock`] in
//! production; [`AppLimiter::with_clock`] and [`Buckets::new`] are the places another is put
//! in (tests use
//! governor's `FakeRelativeClock`, so they count tokens at chosen instants instead of timing a
//! machine). Waits for a token sleep on tokio's timer for as long as the bucket says.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::scim::{CallGate, CallKind, CallPass, MAX_RETRY_AFTER};
use crate::settings::{AppSettings, RateLimit, RateOperation};

/// One limit: `limit` calls per `window`, `burst` at once, counting the calls of `kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    limit: u32,
    window: Duration,
    burst: u32,
    /// Bits of [`kind_bit`]: the kinds of call it counts.
    kinds: u8,
}

const EVERY_KIND: u8 = 0b111;

fn kind_bit(kind: CallKind) -> u8 {
    match kind {
        CallKind::Read => 0b001,
        CallKind::Write => 0b010,
        CallKind::Delete => 0b100,
    }
}

impl Limit {
    /// `limit` calls per `window` (at least one of each), `burst` at once, of every kind.
    #[must_use]
    pub fn new(limit: u32, window: Duration, burst: u32) -> Self {
        Self {
            limit: limit.max(1),
            window: window.max(Duration::from_nanos(1)),
            burst: burst.max(1),
            kinds: EVERY_KIND,
        }
    }

    /// The same, counting only calls of `kinds` (none: every call).
    #[must_use]
    pub fn of(mut self, kinds: &[CallKind]) -> Self {
        self.kinds = kinds.iter().fold(0, |bits, k| bits | kind_bit(*k));
        if self.kinds == 0 {
            self.kinds = EVERY_KIND;
        }
        self
    }

    /// Every limit of an app's `rate_limit`: its `per_second` and `burst`, then its windows.
    #[must_use]
    pub fn all_of(rate: &RateLimit) -> Vec<Limit> {
        let mut limits = vec![Limit::new(
            rate.per_second,
            Duration::from_secs(1),
            rate.burst,
        )];
        for w in &rate.windows {
            let kinds: Vec<CallKind> = w
                .operations
                .iter()
                .map(|op| match op {
                    RateOperation::Read => CallKind::Read,
                    RateOperation::Write => CallKind::Write,
                    RateOperation::Delete => CallKind::Delete,
                })
                .collect();
            limits.push(
                Limit::new(
                    w.limit,
                    Duration::from_secs(u64::from(w.window_seconds)),
                    w.burst.unwrap_or(w.limit),
                )
                .of(&kinds),
            );
        }
        limits
    }

    fn counts(&self, kind: CallKind) -> bool {
        self.kinds & kind_bit(kind) != 0
    }
}

/// How much arrival jitter a bucket's pacing allows for: calls leave a token apart, but reach
/// the target a few milliseconds early or late (scheduling, the network, the target's own
/// timers). Once the target's bucket is drained (after a burst, or always with a burst of one)
/// it refuses a call that arrives a moment before its token, so calls sent at exactly the
/// documented rate are answered 429 about as often as one was later than the next.
const ARRIVAL_JITTER: Duration = Duration::from_millis(30);

/// The most pacing slows a bucket: a 33rd of its period, 3 % of its rate (the `rate-limit`
/// row needs 95 %).
const PACING_SHARE: u32 = 33;

/// The period at which a bucket hands out tokens, for a documented one token every `period`:
/// a 33rd longer, at most [`ARRIVAL_JITTER`] longer. Each token's margin adds to the target's
/// slack where its bucket has a tolerance (burst above 1), up to that tolerance; with a burst
/// of 1 each call must make up for the jitter alone, hence the absolute allowance. Pure, so
/// the rule is table-tested.
#[must_use]
pub fn paced_period(period: Duration) -> Duration {
    period + (period / PACING_SHARE).min(ARRIVAL_JITTER)
}

/// Round trips per second a slot makes at most against a fast SaaS target (100 ms each).
const FAST_ROUND_TRIPS: u64 = 10;

/// Whether an app's rate limit, not its target's latency, bounds its calls: its rate is below
/// what its slots would spend against a target answering in 100 ms. Its calls are then
/// scarce: a look-up started ahead waits until it is needed and leaves with the others
/// (`LookupBatcher::look_ahead`), one call for many accounts.
#[must_use]
pub fn calls_are_scarce(per_second: u32, max_concurrency: u32) -> bool {
    u64::from(per_second) < u64::from(max_concurrency.max(1)) * FAST_ROUND_TRIPS
}

/// A GCRA bucket, as governor's: a token every `t` (the limit's period, paced by
/// [`paced_period`]), `tau = t × (burst − 1)` of tolerance; `tat`, the theoretical arrival
/// time of the next call, in nanoseconds since the set's start.
struct Bucket {
    limit: Limit,
    t: u64,
    tau: u64,
    tat: Option<u64>,
}

impl Bucket {
    fn new(limit: Limit) -> Self {
        let per_token = paced_period(limit.window / limit.limit);
        let t = Nanos::from(per_token.max(Duration::from_nanos(1))).as_u64();
        Self {
            limit,
            t,
            tau: t.saturating_mul(u64::from(limit.burst - 1)),
            tat: None,
        }
    }

    /// How long until it has a token, at `now`: zero if it has one now.
    fn wait_at(&self, now: u64) -> u64 {
        let earliest = self.tat.unwrap_or(now).saturating_sub(self.tau);
        earliest.saturating_sub(now)
    }

    fn take_at(&mut self, now: u64) {
        self.tat = Some(self.tat.unwrap_or(now).max(now).saturating_add(self.t));
    }
}

/// The buckets of an app, or of every app of one `rate_limit_group`; with their `Retry-After`
/// pause and the count of leavers' calls waiting for them.
pub struct Buckets<C: Clock = DefaultClock> {
    clock: C,
    start: C::Instant,
    state: Mutex<BucketState>,
    paused_until: Mutex<Option<C::Instant>>,
    /// How many calls of jobs that go first (deprovisions) wait for a slot or a token now.
    first_waiting: watch::Sender<usize>,
}

#[derive(Default)]
struct BucketState {
    /// Each app's limits.
    members: HashMap<String, Vec<Limit>>,
    /// One per distinct limit of the members.
    buckets: Vec<Bucket>,
}

impl<C: Clock> Buckets<C> {
    /// An empty set on `clock`: no limits until an app joins.
    #[must_use]
    pub fn new(clock: C) -> Self {
        Self {
            start: clock.now(),
            clock,
            state: Mutex::new(BucketState::default()),
            paused_until: Mutex::new(None),
            first_waiting: watch::channel(0).0,
        }
    }

    /// Sets `app`'s limits. A bucket whose limit some member still sets keeps its tokens; a
    /// new limit starts with a full bucket; a limit no member sets any more goes.
    pub fn set_member(&self, app: &str, limits: Vec<Limit>) {
        if let Ok(mut state) = self.state.lock() {
            state.members.insert(app.to_owned(), limits);
            state.rebuild();
        }
    }

    /// Takes `app` out; true if no member is left.
    pub fn remove_member(&self, app: &str) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.members.remove(app);
        state.rebuild();
        state.members.is_empty()
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// How long until every bucket that counts `kind` has a token (zero: now); takes none.
    fn wait_now(&self, kind: CallKind) -> Duration {
        let now = self.now();
        let Ok(state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let wait = state
            .buckets
            .iter()
            .filter(|b| b.limit.counts(kind))
            .map(|b| b.wait_at(now))
            .max()
            .unwrap_or(0);
        Duration::from_nanos(wait)
    }

    /// Takes a token of every bucket that counts `kind`, if each has one now; otherwise takes
    /// none and says how long until all will have one.
    fn take(&self, kind: CallKind) -> Result<(), Duration> {
        let now = self.now();
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        let counting = || state.buckets.iter().filter(|b| b.limit.counts(kind));
        let wait = counting().map(|b| b.wait_at(now)).max().unwrap_or(0);
        if wait > 0 {
            return Err(Duration::from_nanos(wait));
        }
        for bucket in state.buckets.iter_mut().filter(|b| b.limit.counts(kind)) {
            bucket.take_at(now);
        }
        Ok(())
    }

    /// Honour a `Retry-After`: no call of any member before `now + wait`.
    /// The wait is capped at [`MAX_RETRY_AFTER`] (a wait from outside must not overflow the
    /// clock's arithmetic).
    pub fn pause_for(&self, wait: Duration) {
        let until = self.clock.now() + Nanos::from(wait.min(MAX_RETRY_AFTER));
        if let Ok(mut paused) = self.paused_until.lock()
            && paused.is_none_or(|p| p < until)
        {
            *paused = Some(until);
        }
    }

    /// How long the set is still paused, if it is.
    #[must_use]
    pub fn paused_for(&self) -> Option<Duration> {
        let paused = self.paused_until.lock().ok()?;
        let now = self.clock.now();
        paused
            .filter(|until| *until > now)
            .map(|until| until.duration_since(now).into())
    }
}

impl BucketState {
    fn rebuild(&mut self) {
        let mut wanted: Vec<Limit> = Vec::new();
        for limit in self.members.values().flatten() {
            if !wanted.contains(limit) {
                wanted.push(*limit);
            }
        }
        let mut kept: Vec<Bucket> = std::mem::take(&mut self.buckets)
            .into_iter()
            .filter(|b| wanted.contains(&b.limit))
            .collect();
        for limit in wanted {
            if !kept.iter().any(|b| b.limit == limit) {
                kept.push(Bucket::new(limit));
            }
        }
        self.buckets = kept;
    }
}

pub struct AppLimiter<C: Clock = DefaultClock> {
    buckets: Arc<Buckets<C>>,
    slots: Arc<Semaphore>,
}

/// Whether a call waits in line or goes ahead of the line for its app's slot and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A deprovision's: served before every call that waits in line.
    First,
    /// Normal and reconcile jobs', reads and shared look-ups: served while no `First` waits.
    InLine,
}

impl Turn {
    /// The turn of a job of `lane` (a job's stored lane name).
    #[must_use]
    pub fn of_lane(lane: &str) -> Self {
        if lane == crate::store::queue::Lane::Deprovision.as_str() {
            Turn::First
        } else {
            Turn::InLine
        }
    }

    /// Whether a call of this turn may take a free slot or token now, with `first_waiting`
    /// calls of the first turn waiting for one.
    #[must_use]
    pub fn may_take(self, first_waiting: usize) -> bool {
        self == Turn::First || first_waiting == 0
    }
}

/// Counts one waiting `First` call while held.
struct FirstWaiting<'a>(&'a watch::Sender<usize>);

impl<'a> FirstWaiting<'a> {
    fn enter(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for FirstWaiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl AppLimiter {
    #[must_use]
    pub fn new(per_second: u32, burst: u32, max_concurrency: u32) -> Self {
        Self::with_clock(per_second, burst, max_concurrency, DefaultClock::default())
    }
}

impl<C: Clock> AppLimiter<C> {
    /// A limiter of its own (one bucket, `per_second` with `burst`) whose bucket and pause
    /// read `clock`.
    #[must_use]
    pub fn with_clock(per_second: u32, burst: u32, max_concurrency: u32, clock: C) -> Self {
        let buckets = Buckets::new(clock);
        buckets.set_member(
            "",
            vec![Limit::new(per_second, Duration::from_secs(1), burst)],
        );
        Self::sharing(Arc::new(buckets), max_concurrency)
    }

    /// A limiter with slots of its own and the tokens and pause of `buckets` (an app's own, or
    /// its group's).
    #[must_use]
    pub fn sharing(buckets: Arc<Buckets<C>>, max_concurrency: u32) -> Self {
        Self {
            buckets,
            slots: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
        }
    }

    /// Takes a call token at once if a call of `turn` may: the app is not paused, no leaver
    /// waits ahead of an `InLine` call, and every bucket counting `kind` has one.
    /// Whether a call of `kind` made now would wait for the app's tokens or a `Retry-After`
    /// pause: its calls are scarce, so look-ups are better asked together, later.
    #[must_use]
    pub fn short_of_tokens(&self, kind: CallKind) -> bool {
        self.paused_for().is_some() || !self.buckets.wait_now(kind).is_zero()
    }

    fn token_now(&self, turn: Turn, kind: CallKind) -> bool {
        self.paused_for().is_none()
            && turn.may_take(*self.buckets.first_waiting.borrow())
            && self.buckets.take(kind).is_ok()
    }

    /// A slot and a token at once, if both are free now, no pause holds the app and no call
    /// of the first turn waits (unless this one is of the first turn).
    fn pass_now(&self, turn: Turn, kind: CallKind) -> Option<OwnedSemaphorePermit> {
        if self.paused_for().is_some() || !turn.may_take(*self.buckets.first_waiting.borrow()) {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        self.token_now(turn, kind).then_some(slot)
    }

    /// Waits for one call's slot and tokens, in `turn`; the slot is to be held until the
    /// call's answer is read. `None` only if the slots were closed (never: the limiter owns
    /// them).
    ///
    /// A `First` call is counted in `first_waiting` (of the bucket set: a leaver goes ahead of
    /// the calls of every app of its group) from the start, takes the next free slot and
    /// holds it while it waits for the next tokens (no other call takes one meanwhile). An
    /// `InLine` call waits holding nothing while a `First` one waits; it takes a slot, and
    /// keeps it only if its tokens are ready too: otherwise it gives the slot back and sleeps
    /// until the buckets' next tokens are due, then tries again. So a slot is never held by a
    /// call of a normal job that waits for a token, and a deprovision waits at most for a call
    /// under way to end and for the next tokens. Among `InLine` calls the order is not kept
    /// (as with governor's own `until_ready`): jobs of one resource never run at once, so it
    /// carries nothing.
    pub async fn pass(&self, turn: Turn, kind: CallKind) -> Option<OwnedSemaphorePermit> {
        let first_waiting = &self.buckets.first_waiting;
        let _counted = (turn == Turn::First).then(|| FirstWaiting::enter(first_waiting));
        let mut first = first_waiting.subscribe();
        'slot: loop {
            self.wait_out_pause().await;
            let slot = if turn == Turn::First {
                self.slots.clone().acquire_owned().await.ok()?
            } else {
                // The sender lives in the bucket set, which outlives this wait: these waits
                // end only on their condition, never on a closed channel.
                let _ = first.wait_for(|n| turn.may_take(*n)).await.map(|_| ());
                let attempt = self.slots.clone().acquire_owned();
                let first_came = async { first.wait_for(|n| !turn.may_take(*n)).await.map(|_| ()) };
                tokio::select! {
                    biased;
                    // Checked before the attempt: a permit the semaphore just assigned goes
                    // back to it, and on to the first call, rather than to this one.
                    _ = first_came => continue 'slot,
                    slot = attempt => slot.ok()?,
                }
            };
            loop {
                if self.paused_for().is_some() {
                    if turn == Turn::First {
                        self.wait_out_pause().await;
                        continue;
                    }
                    continue 'slot;
                }
                if !turn.may_take(*first.borrow()) {
                    continue 'slot;
                }
                match self.buckets.take(kind) {
                    Ok(()) => return Some(slot),
                    Err(due) => {
                        if turn == Turn::InLine {
                            // Not on a slot while waiting for the token.
                            drop(slot);
                            tokio::time::sleep(due).await;
                            continue 'slot;
                        }
                        tokio::time::sleep(due).await;
                    }
                }
            }
        }
    }

    async fn wait_out_pause(&self) {
        while let Some(wait) = self.paused_for() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Honour a `Retry-After`: no call to this app (nor to any app of its group) before
    /// `now + wait`, capped at [`MAX_RETRY_AFTER`].
    pub fn pause_for(&self, wait: Duration) {
        self.buckets.pause_for(wait);
    }

    /// How long the app (its group) is still paused, if it is.
    #[must_use]
    pub fn paused_for(&self) -> Option<Duration> {
        self.buckets.paused_for()
    }
}

impl CallGate for AppLimiter {
    fn wait(&self, kind: CallKind) -> BoxFuture<'_, CallPass> {
        Box::pin(async move {
            let turn = current_turn();
            let slot = match self.pass_now(turn, kind) {
                Some(slot) => Some(slot),
                // The call must wait for this app: the job's worker permit goes back meanwhile.
                None => without_worker(self.pass(turn, kind)).await,
            };
            let pass: CallPass = Box::new(slot);
            pass
        })
    }

    /// A job waiting for another job's call (the client's discovery read, its OAuth token)
    /// waits without its worker: that job needs a worker again once its call has its slot.
    fn aside<'a>(&'a self, wait: BoxFuture<'a, ()>) -> BoxFuture<'a, ()> {
        Box::pin(without_worker(wait))
    }
}

tokio::task_local! {
    /// The global worker permit of the job running in this task, if any.
    static WORKER: RefCell<Worker>;
}

struct Worker {
    pool: Arc<Semaphore>,
    /// The engine's pools, to take a permit again in the job's turn (`None`: from `pool`).
    workers: Option<Workers>,
    permit: Option<OwnedSemaphorePermit>,
    /// The job's turn for its app's slots and tokens.
    turn: Turn,
}

/// Runs a job's `fut` holding `permit` (one of `pool`'s), which `without_worker` may hand back
/// while the job waits for its app; its calls wait for slots and tokens in `turn`.
pub async fn with_worker<F: Future>(
    pool: Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    turn: Turn,
    fut: F,
) -> F::Output {
    let worker = Worker {
        pool,
        workers: None,
        permit: Some(permit),
        turn,
    };
    WORKER.scope(RefCell::new(worker), fut).await
}

/// The engine's workers: the pool every job takes a permit of, and a few permits kept for
/// deprovisions ([`leaver_workers`]), so that a leaver never waits in line for a worker
/// behind the joiners claimed before it.
#[derive(Clone, Debug)]
pub struct Workers {
    shared: Arc<Semaphore>,
    leavers: Arc<Semaphore>,
}

/// Workers kept for deprovisions beside `workers` shared ones: a quarter as many, at least 1.
#[must_use]
pub fn leaver_workers(workers: usize) -> usize {
    (workers / 4).max(1)
}

impl Workers {
    #[must_use]
    pub fn new(workers: usize) -> Self {
        Self {
            shared: Arc::new(Semaphore::new(workers.max(1))),
            leavers: Arc::new(Semaphore::new(leaver_workers(workers))),
        }
    }

    /// A worker permit for a job of `turn`, with its pool: in line from the shared pool; a
    /// deprovision's from whichever pool has one first, its own first.
    pub async fn acquire(&self, turn: Turn) -> Option<(Arc<Semaphore>, OwnedSemaphorePermit)> {
        let take = |pool: &Arc<Semaphore>| {
            let pool = pool.clone();
            async move { pool.clone().acquire_owned().await.ok().map(|p| (pool, p)) }
        };
        match turn {
            Turn::InLine => take(&self.shared).await,
            Turn::First => tokio::select! {
                biased;
                own = take(&self.leavers) => own,
                shared = take(&self.shared) => shared,
            },
        }
    }

    /// Runs a job's `fut` holding `permit` (from `pool`, one of these), as [`with_worker`]
    /// does; a permit handed back while it waits is taken again in its turn.
    pub async fn run<F: Future>(
        &self,
        (pool, permit): (Arc<Semaphore>, OwnedSemaphorePermit),
        turn: Turn,
        fut: F,
    ) -> F::Output {
        with_worker(pool, permit, turn, async move {
            // Takes permits back from these pools, in the job's turn.
            let _ = WORKER.try_with(|w| w.borrow_mut().workers = Some(self.clone()));
            fut.await
        })
        .await
    }
}

/// The turn of the job running in this task; outside a job (a reconciliation's reads, a
/// shared look-up's task), in line.
fn current_turn() -> Turn {
    WORKER.try_with(|w| w.borrow().turn).unwrap_or(Turn::InLine)
}

/// Runs `wait` (a job waiting for its app, not working) without the job's worker permit, and
/// takes a permit again before going on. Outside a job (a reconciliation's reads, a shared
/// look-up's task) it just runs `wait`.
pub async fn without_worker<F: Future>(wait: F) -> F::Output {
    let handed_back = WORKER
        .try_with(|w| {
            let mut w = w.borrow_mut();
            w.permit
                .take()
                .map(|_| (w.pool.clone(), w.workers.clone(), w.turn))
        })
        .ok()
        .flatten();
    let out = wait.await;
    let Some((pool, workers, turn)) = handed_back else {
        return out;
    };
    let again = match workers {
        Some(workers) => workers.acquire(turn).await,
        None => pool.clone().acquire_owned().await.ok().map(|p| (pool, p)),
    };
    if let Some((pool, permit)) = again {
        let _ = WORKER.try_with(|w| {
            let mut w = w.borrow_mut();
            w.pool = pool;
            w.permit = Some(permit);
        });
    }
    out
}

/// Whose buckets an app's calls take: its own, or its group's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SetKey {
    App(String),
    Group(String),
}

impl SetKey {
    fn of(app_id: &str, settings: &AppSettings) -> Self {
        match &settings.rate_limit_group {
            Some(group) => SetKey::Group(group.clone()),
            None => SetKey::App(app_id.to_owned()),
        }
    }
}

/// One limiter per app, rebuilt when the app's settings change (by version); one bucket set
/// per app, or per `rate_limit_group` for the apps of one group.
#[derive(Default)]
pub struct Limiters {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    apps: HashMap<String, (i64, SetKey, Arc<AppLimiter>)>,
    sets: HashMap<SetKey, Arc<Buckets>>,
}

impl Held {
    /// Takes `app_id` out of the set it was in, and forgets the set once no app is in it.
    fn leave(&mut self, app_id: &str, key: &SetKey) {
        if let Some(set) = self.sets.get(key)
            && set.remove_member(app_id)
        {
            self.sets.remove(key);
        }
    }
}

impl Limiters {
    /// The app's limiter. A new version joins its (possibly new) bucket set with its limits
    /// now: the buckets of limits that did not change keep their tokens, and the set's pause
    /// holds on, so an edit (or another app of the group) never resets what was spent.
    pub fn for_app(&self, app_id: &str, version: i64, settings: &AppSettings) -> Arc<AppLimiter> {
        let limits = Limit::all_of(&settings.rate_limit);
        let Ok(mut held) = self.held.lock() else {
            let buckets = Buckets::new(DefaultClock::default());
            buckets.set_member(app_id, limits);
            return Arc::new(AppLimiter::sharing(
                Arc::new(buckets),
                settings.max_concurrency,
            ));
        };
        let key = SetKey::of(app_id, settings);
        if let Some((v, was, limiter)) = held.apps.get(app_id) {
            if *v == version {
                return limiter.clone();
            }
            if *was != key {
                let was = was.clone();
                held.leave(app_id, &was);
            }
        }
        let buckets = held
            .sets
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Buckets::new(DefaultClock::default())))
            .clone();
        buckets.set_member(app_id, limits);
        let limiter = Arc::new(AppLimiter::sharing(buckets, settings.max_concurrency));
        held.apps
            .insert(app_id.to_owned(), (version, key, limiter.clone()));
        limiter
    }

    /// Forgets the limiters of these apps (deleted ones), and each bucket set no app is left
    /// in; a group's set stays, without their limits, for the apps still in it.
    pub fn forget(&self, app_ids: &HashSet<&str>) {
        if let Ok(mut held) = self.held.lock() {
            for id in app_ids {
                if let Some((_, key, _)) = held.apps.remove(*id) {
                    held.leave(id, &key);
                }
            }
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.held.lock().map_or(0, |held| held.apps.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bucket sets are held (one per app, one per group), for tests.
    #[doc(hidden)]
    #[must_use]
    pub fn bucket_sets(&self) -> usize {
        self.held.lock().map_or(0, |held| held.sets.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use governor::clock::FakeRelativeClock;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A limiter on a clock that moves only when the test moves it.
    fn on_fake_clock(
        per_second: u32,
        burst: u32,
    ) -> (AppLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            AppLimiter::with_clock(per_second, burst, 1, clock.clone()),
            clock,
        )
    }

    /// How many tokens a job in line takes at once, now.
    fn tokens_now(limiter: &AppLimiter<FakeRelativeClock>) -> usize {
        let mut taken = 0;
        while limiter.token_now(Turn::InLine, CallKind::Read) {
            taken += 1;
            assert!(taken <= 1000, "the bucket never runs dry");
        }
        taken
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let (limiter, clock) = on_fake_clock(20, 5);
        assert_eq!(tokens_now(&limiter), 5, "the burst at once");
        // 20 a second: the next token 50 ms after the burst (paced: a 33rd more), not a
        // moment before.
        let period = paced_period(Duration::from_millis(50));
        clock.advance(period - Duration::from_nanos(1));
        assert_eq!(tokens_now(&limiter), 0);
        clock.advance(Duration::from_nanos(1));
        assert_eq!(tokens_now(&limiter), 1);
        // Then one every period.
        for _ in 0..9 {
            clock.advance(period);
            assert_eq!(tokens_now(&limiter), 1);
        }
        // An idle app's bucket fills up to the burst, never beyond it.
        clock.advance(Duration::from_secs(60));
        assert_eq!(tokens_now(&limiter), 5);
    }

    #[test]
    fn buckets_are_paced_a_little_under_the_documented_rate() {
        let ms = Duration::from_millis;
        let table = [
            // 1 call/s (a vendor's documented limit): 30 ms of room for jitter, not 3 %.
            (ms(1000), ms(1030)),
            (ms(60_000), ms(60_030)),
            // 10/s: 3 %.
            (ms(100), ms(100) + ms(100) / 33),
            // 100/s (the rate-limit row).
            (ms(10), ms(10) + ms(10) / 33),
            // A window of 180 a minute.
            (ms(60_000) / 180, ms(60_000) / 180 + ms(60_000) / 180 / 33),
        ];
        for (period, paced) in table {
            assert_eq!(paced_period(period), paced, "{period:?}");
            let rate = period.as_secs_f64() / paced.as_secs_f64();
            assert!((0.97..1.0).contains(&rate), "{period:?}: {rate}");
        }
    }

    #[test]
    fn an_apps_calls_are_scarce_where_its_rate_not_its_latency_bounds_them() {
        // (per_second, max_concurrency) → scarce
        let table = [
            ((1, 1), true),
            ((5, 2), true),
            ((10, 4), true),
            ((39, 4), true),
            ((40, 4), false),
            ((10_000, 32), false),
            ((100, 0), false),
        ];
        for ((per_second, concurrency), scarce) in table {
            assert_eq!(
                calls_are_scarce(per_second, concurrency),
                scarce,
                "{per_second}/s, {concurrency} at once"
            );
        }
    }

    #[test]
    fn at_one_call_a_second_and_burst_one_tokens_come_30_ms_apart_from_the_rate() {
        let (limiter, clock) = on_fake_clock(1, 1);
        assert!(!limiter.short_of_tokens(CallKind::Read));
        assert_eq!(tokens_now(&limiter), 1);
        assert!(
            limiter.short_of_tokens(CallKind::Read),
            "its token is taken"
        );
        clock.advance(Duration::from_millis(1029));
        assert_eq!(tokens_now(&limiter), 0, "not at exactly the vendor's rate");
        clock.advance(Duration::from_millis(1));
        assert_eq!(tokens_now(&limiter), 1);
    }

    #[test]
    fn a_pause_holds_tokens_back_until_it_ends_and_never_shortens() {
        let (limiter, clock) = on_fake_clock(1000, 1000);
        limiter.pause_for(Duration::from_millis(300));
        // A shorter Retry-After later does not cut the longer pause short.
        limiter.pause_for(Duration::from_millis(100));
        assert_eq!(limiter.paused_for(), Some(Duration::from_millis(300)));
        assert_eq!(tokens_now(&limiter), 0, "paused: no token");
        clock.advance(Duration::from_millis(299));
        assert_eq!(limiter.paused_for(), Some(Duration::from_millis(1)));
        assert!(
            !limiter.token_now(Turn::First, CallKind::Read),
            "a leaver waits it out too"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.paused_for(), None);
        assert!(limiter.token_now(Turn::InLine, CallKind::Read));
        // A longer one later extends it.
        limiter.pause_for(Duration::from_secs(2));
        assert_eq!(limiter.paused_for(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_huge_pause_is_capped_instead_of_overflowing() {
        let (limiter, _clock) = on_fake_clock(1, 1);
        limiter.pause_for(Duration::MAX);
        assert_eq!(limiter.paused_for(), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn a_waiting_leaver_takes_the_next_token_and_the_line_does_not() {
        let (limiter, clock) = on_fake_clock(10, 1);
        let period = paced_period(Duration::from_millis(100));
        assert_eq!(tokens_now(&limiter), 1);
        clock.advance(period);
        let leaver = FirstWaiting::enter(&limiter.buckets.first_waiting);
        assert!(
            !limiter.token_now(Turn::InLine, CallKind::Read),
            "in line while a leaver waits"
        );
        assert!(
            limiter.token_now(Turn::First, CallKind::Read),
            "the leaver's token"
        );
        drop(leaver);
        // The leaver took the one token there was; the line takes the next one.
        assert_eq!(tokens_now(&limiter), 0);
        clock.advance(period);
        assert_eq!(tokens_now(&limiter), 1);
    }

    #[tokio::test]
    async fn a_job_waiting_out_a_pause_gives_its_worker_back_meanwhile() {
        let workers = Arc::new(Semaphore::new(1));
        let paused = Arc::new(AppLimiter::new(1000, 1000, 1));
        paused.pause_for(Duration::from_millis(400));
        let permit = workers.clone().acquire_owned().await.expect("permit");
        let waiting = tokio::spawn({
            let (workers, paused) = (workers.clone(), paused.clone());
            async move {
                with_worker(workers.clone(), permit, Turn::InLine, async {
                    paused.wait(CallKind::Write).await;
                    // Working again: the worker is taken back.
                    workers.available_permits()
                })
                .await
            }
        });
        // Another app's job gets the only worker while the first one waits.
        let other =
            tokio::time::timeout(Duration::from_millis(200), workers.clone().acquire_owned())
                .await
                .expect("the worker is free while the job waits")
                .expect("permit");
        drop(other);
        let free_while_working = waiting.await.expect("the job ends");
        assert_eq!(free_while_working, 0);
        assert_eq!(workers.available_permits(), 1, "given back at the end");
    }

    /// What two jobs of one app share, made by the first that needs it.
    #[derive(Clone, Copy)]
    enum SharedCall {
        /// The client's discovery read (`/ServiceProviderConfig`).
        Discovery,
        /// Its OAuth token request.
        Token,
    }

    /// A token endpoint on 127.0.0.1 (port 0) that hands out one token; its URL.
    async fn token_endpoint() -> String {
        use poem::listener::{Acceptor, Listener};
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind");
        let addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|a| a.as_socket_addr().copied())
            .expect("address");
        let endpoint = poem::endpoint::make(|_req: poem::Request| async {
            poem::Response::builder()
                .content_type("application/json")
                .body(r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#)
        });
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(endpoint));
        format!("http://{addr}/token")
    }

    /// Two jobs on one worker need what the first asks for (`shared`) while a call under way
    /// holds the app's only slot; checks that both end and the worker is free again, and
    /// returns the GETs the target answered.
    async fn two_jobs_wait_for_one_call(shared: SharedCall) -> serde_json::Value {
        use crate::net_guard::TargetPolicy;
        use crate::scim::{Auth, ScimClient, TargetConfig};

        let target = crate::dev_target::spawn(crate::dev_target::DevTargetArgs::default())
            .await
            .expect("dev-target");
        let auth = match shared {
            SharedCall::Discovery => Auth::None,
            SharedCall::Token => Auth::OAuth2ClientCredentials {
                token_url: token_endpoint().await.parse().expect("url"),
                client_id: "roster".into(),
                client_secret: secrecy::SecretString::from("secret"),
                scope: None,
            },
        };
        let limiter = Arc::new(AppLimiter::new(1000, 1000, 1));
        let mut config = TargetConfig::new(
            target.base_url().parse().expect("url"),
            auth,
            TargetPolicy::AllowPrivate,
        );
        let gate: Arc<dyn CallGate> = limiter.clone();
        config.gate = Some(gate);
        let client = ScimClient::new(config).expect("client");
        let workers = Arc::new(Semaphore::new(1));
        let job = move |client: ScimClient| async move {
            match shared {
                SharedCall::Discovery => drop(client.capabilities().await),
                // Any call needs the token first; the account need not exist.
                SharedCall::Token => drop(client.users().get("nobody").await),
            }
        };

        // A call under way holds the app's only slot.
        let under_way = limiter.wait(CallKind::Write).await;
        // The first job makes the shared call, which waits for the slot without its worker.
        let permit = workers.clone().acquire_owned().await.expect("permit");
        let first = tokio::spawn(with_worker(
            workers.clone(),
            permit,
            Turn::InLine,
            job(client.clone()),
        ));
        let lent = tokio::time::timeout(Duration::from_secs(5), workers.clone().acquire_owned())
            .await
            .expect("the first job waits for its slot without its worker")
            .expect("permit");
        // The second job, on the only worker, waits for the first one's call.
        let second = tokio::spawn(with_worker(
            workers.clone(),
            lent,
            Turn::InLine,
            job(client.clone()),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The slot frees: the first job's call goes, and its job needs a worker again.
        drop(under_way);
        tokio::time::timeout(Duration::from_secs(5), async {
            first.await.expect("the first job ends");
            second.await.expect("the second job ends");
        })
        .await
        .expect("both jobs end: neither holds the worker while it waits for the other");
        assert_eq!(workers.available_permits(), 1);
        target.stats()["requests"]["GET"].clone()
    }

    /// The engine stalled for good in a chaos soak: jobs holding every worker waited for the
    /// client's discovery read, whose job had got its slot and waited for a worker. A job
    /// waiting for another job's call now waits without its worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_waiting_for_another_jobs_discovery_read_lends_its_worker() {
        let gets = two_jobs_wait_for_one_call(SharedCall::Discovery).await;
        assert_eq!(gets, 1, "one discovery read served both jobs");
    }

    /// The same with an OAuth token: one request for it, made by the first job, while the
    /// second waits without its worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_waiting_for_another_jobs_token_request_lends_its_worker() {
        let gets = two_jobs_wait_for_one_call(SharedCall::Token).await;
        assert_eq!(
            gets, 2,
            "each job read its account, once the token was there"
        );
    }

    #[tokio::test]
    async fn a_pause_holds_calls_back() {
        let limiter = AppLimiter::new(1000, 1000, 1);
        limiter.pause_for(Duration::from_millis(300));
        assert!(limiter.paused_for().is_some());
        let started = Instant::now();
        limiter.wait(CallKind::Write).await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(limiter.paused_for().is_none());
    }

    #[test]
    fn only_deprovisions_go_first_and_the_others_wait_for_them() {
        assert_eq!(Turn::of_lane("deprovision"), Turn::First);
        assert_eq!(Turn::of_lane("normal"), Turn::InLine);
        assert_eq!(Turn::of_lane("reconcile"), Turn::InLine);
        assert!(Turn::First.may_take(0));
        assert!(Turn::First.may_take(3));
        assert!(Turn::InLine.may_take(0));
        assert!(!Turn::InLine.may_take(1));
    }

    /// Runs `f` as a job of `turn` (its calls wait for tokens in that turn).
    async fn as_job<F: Future>(turn: Turn, f: F) -> F::Output {
        let workers = Arc::new(Semaphore::new(1));
        let permit = workers.clone().acquire_owned().await.expect("permit");
        with_worker(workers, permit, turn, f).await
    }

    #[tokio::test]
    async fn a_deprovision_gets_the_next_slot_ahead_of_the_calls_waiting_in_line() {
        let limiter = Arc::new(AppLimiter::new(1000, 1000, 1));
        // A call under way holds the only slot.
        let under_way = limiter
            .pass(Turn::InLine, CallKind::Write)
            .await
            .expect("slot");
        let (order, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, turn) in [
            ("in line 1", Turn::InLine),
            ("in line 2", Turn::InLine),
            ("leaver", Turn::First),
        ] {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let slot = limiter.pass(turn, CallKind::Write).await.expect("slot");
                let _ = order.send(name);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(slot);
            }));
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(under_way);
        for task in waiting {
            task.await.expect("a waiter ends");
        }
        drop(order);
        let mut got = Vec::new();
        while let Some(name) = ends.recv().await {
            got.push(name);
        }
        // The others stepped aside for it and then all got theirs (in either order: jobs of
        // one resource never run at once, so their order among themselves carries nothing).
        assert_eq!(got[0], "leaver", "{got:?}");
        assert_eq!(got.len(), 3);
    }

    /// Issue 24, at 1 call/s: a job's call waiting for its token holds none of the app's
    /// slots, so a leaver finds one free although as many calls wait as there are slots; and
    /// it gets the next token. Before, each waiting job sat on its slot and the leaver waited
    /// for one of them to make its call first.
    #[tokio::test]
    async fn a_call_waiting_for_its_token_holds_no_slot() {
        let limiter = Arc::new(AppLimiter::new(1, 1, 2));
        // The burst is spent: the next token is a second away.
        drop(limiter.pass(Turn::InLine, CallKind::Write).await);
        let (order, mut granted) = tokio::sync::mpsc::unbounded_channel();
        let mut in_line = Vec::new();
        for name in ["in line 1", "in line 2"] {
            let (limiter, order) = (limiter.clone(), order.clone());
            in_line.push(tokio::spawn(as_job(Turn::InLine, async move {
                let pass = limiter.wait(CallKind::Write).await;
                let _ = order.send(name);
                drop(pass);
            })));
        }
        // Both are waiting for a token (a second away), and hold no slot meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limiter.slots.available_permits(), 2);
        assert_eq!(
            granted.try_recv().ok(),
            None,
            "no token for anyone before the next is due"
        );
        let leaver = {
            let (limiter, order) = (limiter.clone(), order.clone());
            tokio::spawn(as_job(Turn::First, async move {
                let pass = limiter.wait(CallKind::Write).await;
                let _ = order.send("leaver");
                drop(pass);
            }))
        };
        // The leaver holds a slot while it waits for its token, the others none.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limiter.slots.available_permits(), 1);
        leaver.await.expect("the leaver's call");
        for task in in_line {
            task.await.expect("a call in line");
        }
        drop(order);
        let mut got = Vec::new();
        while let Some(name) = granted.recv().await {
            got.push(name);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], "leaver", "{got:?}");
    }

    /// Issue 24, the 1 call/s bench in small: an app at 1 call/s and 2 calls at once, two
    /// workers going through a backlog of jobs of two calls each (a look-up, then a create). A
    /// leaver that comes just after a call was let through makes the very next call; no call
    /// is under way at once with more than one other, and the calls are a token apart.
    #[tokio::test]
    async fn at_one_call_a_second_a_leaver_makes_the_next_call_behind_a_backlog() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let limiter = Arc::new(AppLimiter::new(1, 1, 2));
        let under_way = Arc::new(AtomicUsize::new(0));
        let most_under_way = Arc::new(AtomicUsize::new(0));
        let (calls, mut made) = tokio::sync::mpsc::unbounded_channel::<(&str, Instant)>();
        // One call: through the gate, 10 ms at the target, counted while under way.
        let call = {
            let (limiter, under_way, most) =
                (limiter.clone(), under_way.clone(), most_under_way.clone());
            move |who: &'static str, calls: tokio::sync::mpsc::UnboundedSender<_>| {
                let (limiter, under_way, most) = (limiter.clone(), under_way.clone(), most.clone());
                async move {
                    let pass = limiter.wait(CallKind::Write).await;
                    let now = under_way.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = calls.send((who, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    under_way.fetch_sub(1, Ordering::SeqCst);
                    drop(pass);
                }
            }
        };
        let stop = CancellationToken::new();
        let mut backlog = Vec::new();
        for worker in ["backlog a", "backlog b"] {
            let (call, calls, stop) = (call.clone(), calls.clone(), stop.clone());
            backlog.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    // A joiner's job: a look-up, then a create.
                    as_job(Turn::InLine, async {
                        call(worker, calls.clone()).await;
                        call(worker, calls.clone()).await;
                    })
                    .await;
                }
            }));
        }
        // The backlog under way: three calls made, the last one just now.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(made.recv().await.expect("a backlog call"));
        }
        let leaver = tokio::spawn(as_job(Turn::First, call("leaver", calls.clone())));
        // Two more calls after it came: the first is the leaver's.
        let mut after = Vec::new();
        while after.len() < 2 {
            after.push(made.recv().await.expect("a call"));
        }
        leaver.await.expect("the leaver's call");
        stop.cancel();
        for task in backlog {
            task.abort();
        }
        let names: Vec<&str> = after.iter().map(|(who, _)| *who).collect();
        assert_eq!(
            names[0], "leaver",
            "the calls after the leaver came: {names:?}"
        );
        assert_eq!(names.iter().filter(|n| **n == "leaver").count(), 1);
        assert!(
            most_under_way.load(Ordering::SeqCst) <= 2,
            "more calls under way at once than the app's 2"
        );
        // A token a second, burst 1: consecutive calls are (nearly) a second apart.
        let times: Vec<Instant> = seen.iter().chain(&after).map(|(_, t)| *t).collect();
        for pair in times.windows(2) {
            let apart = pair[1] - pair[0];
            assert!(
                apart >= Duration::from_millis(900),
                "two calls {apart:?} apart"
            );
        }
    }

    #[tokio::test]
    async fn a_deprovision_gets_the_next_token_ahead_of_the_calls_waiting_in_line() {
        // One token at once, then one every 200 ms.
        let limiter = Arc::new(AppLimiter::new(5, 1, 4));
        limiter.wait(CallKind::Write).await;
        let (order, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, turn) in [
            ("in line 1", Turn::InLine),
            ("in line 2", Turn::InLine),
            ("leaver", Turn::First),
        ] {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiting.push(tokio::spawn(as_job(turn, async move {
                limiter.wait(CallKind::Write).await;
                let _ = order.send(name);
            })));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in waiting {
            task.await.expect("a waiter ends");
        }
        drop(order);
        let mut got = Vec::new();
        while let Some(name) = ends.recv().await {
            got.push(name);
        }
        assert_eq!(got[0], "leaver", "{got:?}");
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn a_deprovision_still_waits_out_a_pause_and_the_rate() {
        let limiter = AppLimiter::new(5, 1, 1);
        limiter.pause_for(Duration::from_millis(300));
        let started = Instant::now();
        as_job(Turn::First, limiter.wait(CallKind::Write)).await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        // The burst is spent: the next token is one interval (200 ms) away, first or not.
        let started = Instant::now();
        as_job(Turn::First, limiter.wait(CallKind::Write)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    /// An app's rate limit with `windows`, as its settings would say it.
    fn rate(per_second: u32, burst: u32, windows: serde_json::Value) -> RateLimit {
        serde_json::from_value(serde_json::json!({
            "per_second": per_second, "burst": burst, "windows": windows
        }))
        .expect("a rate limit")
    }

    /// A bucket set on a fake clock with one member, `app`, limited by `rate`.
    fn set_on_fake_clock(rate: &RateLimit) -> (Arc<Buckets<FakeRelativeClock>>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let buckets = Arc::new(Buckets::new(clock.clone()));
        buckets.set_member("app", Limit::all_of(rate));
        (buckets, clock)
    }

    /// How many calls of `kind` in line get their tokens at once, now.
    fn calls_now(limiter: &AppLimiter<FakeRelativeClock>, kind: CallKind) -> usize {
        let mut taken = 0;
        while limiter.token_now(Turn::InLine, kind) {
            taken += 1;
            assert!(taken <= 1000, "the buckets never run dry");
        }
        taken
    }

    #[test]
    fn a_window_gives_its_burst_then_one_token_every_window_over_its_limit() {
        // Slack-like: 30 a minute, and 100 a second, which does not bind here.
        let (buckets, clock) = set_on_fake_clock(&rate(
            100,
            100,
            serde_json::json!([{"limit": 30, "window_seconds": 60}]),
        ));
        let limiter = AppLimiter::sharing(buckets, 1);
        assert_eq!(
            calls_now(&limiter, CallKind::Read),
            30,
            "the window's burst"
        );
        // One token every 2 s (paced: 30 ms more), not a moment before.
        let period = paced_period(Duration::from_secs(2));
        clock.advance(period - Duration::from_millis(1));
        assert_eq!(calls_now(&limiter, CallKind::Read), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(calls_now(&limiter, CallKind::Read), 1);
        clock.advance(period);
        assert_eq!(calls_now(&limiter, CallKind::Write), 1);
        // An idle window refills up to its burst, never beyond.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(calls_now(&limiter, CallKind::Delete), 30);
        // A burst below the limit: 5 at once, then still 2 s apart.
        let (buckets, clock) = set_on_fake_clock(&rate(
            100,
            100,
            serde_json::json!([{"limit": 30, "window_seconds": 60, "burst": 5}]),
        ));
        let limiter = AppLimiter::sharing(buckets, 1);
        assert_eq!(calls_now(&limiter, CallKind::Read), 5);
        clock.advance(period);
        assert_eq!(calls_now(&limiter, CallKind::Read), 1);
    }

    #[test]
    fn every_limit_must_have_a_token_and_a_refused_call_takes_none() {
        // 10 a second one at a time, and a window of one write per 10 s.
        let (buckets, clock) = set_on_fake_clock(&rate(
            10,
            1,
            serde_json::json!([{"limit": 1, "window_seconds": 10, "operations": ["write"]}]),
        ));
        let limiter = AppLimiter::sharing(buckets, 1);
        assert_eq!(calls_now(&limiter, CallKind::Write), 1);
        let (second, window) = (
            paced_period(Duration::from_millis(100)),
            paced_period(Duration::from_secs(10)),
        );
        clock.advance(second);
        // The per-second bucket has a token again, the write window not: no write, and the
        // refused writes left the per-second token where it was, for a read.
        assert_eq!(calls_now(&limiter, CallKind::Write), 0);
        assert_eq!(calls_now(&limiter, CallKind::Write), 0);
        assert_eq!(calls_now(&limiter, CallKind::Read), 1);
        // A write waits for the later of the two: the window's next token, 10 s (paced) after
        // the first.
        assert_eq!(limiter.buckets.take(CallKind::Write), Err(window - second));
        clock.advance(window - second);
        assert_eq!(calls_now(&limiter, CallKind::Write), 1);
    }

    #[test]
    fn each_operation_takes_the_tokens_of_the_limits_that_count_it() {
        // Reads 2 a minute, DELETEs 1, and writes with DELETEs 3 together.
        let (buckets, _clock) = set_on_fake_clock(&rate(
            1000,
            1000,
            serde_json::json!([
                {"limit": 2, "window_seconds": 60, "operations": ["read"]},
                {"limit": 1, "window_seconds": 60, "operations": ["delete"]},
                {"limit": 3, "window_seconds": 60, "operations": ["write", "delete"]},
            ]),
        ));
        let limiter = AppLimiter::sharing(buckets, 1);
        assert_eq!(calls_now(&limiter, CallKind::Read), 2);
        assert_eq!(calls_now(&limiter, CallKind::Delete), 1);
        // The DELETE spent one of the three writes.
        assert_eq!(calls_now(&limiter, CallKind::Write), 2);
        assert_eq!(calls_now(&limiter, CallKind::Read), 0);
        assert_eq!(calls_now(&limiter, CallKind::Delete), 0);
    }

    #[test]
    fn the_apps_of_a_group_share_its_tokens_its_pause_and_its_leavers_turn() {
        let (buckets, clock) = set_on_fake_clock(&rate(
            100,
            100,
            serde_json::json!([{"limit": 6, "window_seconds": 60}]),
        ));
        buckets.set_member(
            "other",
            Limit::all_of(&rate(
                100,
                100,
                serde_json::json!([{"limit": 6, "window_seconds": 60}]),
            )),
        );
        let (a, b) = (
            AppLimiter::sharing(buckets.clone(), 1),
            AppLimiter::sharing(buckets.clone(), 1),
        );
        // One bucket for the limit both set: six calls between them, not six each.
        assert!(a.token_now(Turn::InLine, CallKind::Write));
        assert_eq!(calls_now(&b, CallKind::Read), 5);
        assert_eq!(calls_now(&a, CallKind::Read), 0);
        // A limit only one of them sets holds for both: three a minute from now on.
        buckets.set_member(
            "other",
            Limit::all_of(&rate(
                100,
                100,
                serde_json::json!([{"limit": 3, "window_seconds": 60}]),
            )),
        );
        let period = paced_period(Duration::from_secs(10));
        clock.advance(period * 6);
        assert_eq!(
            calls_now(&a, CallKind::Read) + calls_now(&b, CallKind::Read),
            3
        );
        // The other app leaves: its three a minute go, and the six a minute keep their state
        // (three left, and one more 10 s later), not a full bucket.
        assert!(!buckets.remove_member("other"));
        clock.advance(period);
        assert_eq!(calls_now(&a, CallKind::Read), 4);
        // A Retry-After that one app got pauses both.
        clock.advance(Duration::from_secs(60));
        a.pause_for(Duration::from_secs(5));
        assert_eq!(b.paused_for(), Some(Duration::from_secs(5)));
        assert_eq!(calls_now(&b, CallKind::Read), 0);
        clock.advance(Duration::from_secs(5));
        // A leaver of one app waiting: the other's calls in line step aside for it.
        let leaver = FirstWaiting::enter(&a.buckets.first_waiting);
        assert!(!b.token_now(Turn::InLine, CallKind::Write));
        assert!(a.token_now(Turn::First, CallKind::Write));
        drop(leaver);
        assert!(b.token_now(Turn::InLine, CallKind::Write));
    }

    /// Settings of an app in `group` (if any) with `rate`.
    fn settings_with(rate: RateLimit, group: Option<&str>) -> AppSettings {
        let mut settings: AppSettings = serde_json::from_value(serde_json::json!({
            "rate_limit": rate, "max_concurrency": 2, "timeout_ms": 1000, "max_attempts": 3,
            "matching": {"target_attribute": "userName"}, "scope": {}, "mappings": [],
            "group_push": [], "deprovision": {}, "reconcile": {}, "deletion_guard": {},
            "quirks": {},
        }))
        .expect("settings");
        settings.rate_limit_group = group.map(str::to_owned);
        settings
    }

    /// How many calls an app's limiter lets through at once (on the real clock: its limits
    /// here refill once an hour, so nothing comes back while the test counts).
    fn calls_now_real(limiter: &AppLimiter) -> usize {
        let mut taken = 0;
        while limiter.token_now(Turn::InLine, CallKind::Write) {
            taken += 1;
            assert!(taken <= 1000, "the buckets never run dry");
        }
        taken
    }

    #[test]
    fn limiters_share_one_bucket_set_per_group_across_edits_and_deletes() {
        let hourly = |n: u32| {
            rate(
                1000,
                1000,
                serde_json::json!([{"limit": n, "window_seconds": 3600}]),
            )
        };
        let limiters = Limiters::default();
        let a = limiters.for_app("a", 1, &settings_with(hourly(4), Some("tenant")));
        let b = limiters.for_app("b", 1, &settings_with(hourly(4), Some("tenant")));
        let alone = limiters.for_app("c", 1, &settings_with(hourly(4), None));
        assert_eq!((limiters.len(), limiters.bucket_sets()), (3, 2));
        assert_eq!(calls_now_real(&a), 4);
        assert_eq!(calls_now_real(&b), 0, "the group's four are spent");
        assert_eq!(
            calls_now_real(&alone),
            4,
            "an app outside the group has its own"
        );
        // An edit of one app (a new version, the same limits) keeps what the group spent.
        let a = limiters.for_app("a", 2, &settings_with(hourly(4), Some("tenant")));
        assert_eq!(calls_now_real(&a) + calls_now_real(&b), 0);
        // Deleting one app leaves the group's set to the other, spent as it was.
        limiters.forget(&HashSet::from(["a"]));
        assert_eq!((limiters.len(), limiters.bucket_sets()), (2, 2));
        assert_eq!(calls_now_real(&b), 0);
        // An app leaving the group gets buckets of its own; the last one out ends the set.
        let b = limiters.for_app("b", 2, &settings_with(hourly(4), None));
        assert_eq!((limiters.len(), limiters.bucket_sets()), (2, 2));
        assert_eq!(calls_now_real(&b), 4);
        limiters.forget(&HashSet::from(["b", "c"]));
        assert_eq!((limiters.len(), limiters.bucket_sets()), (0, 0));
    }
}
