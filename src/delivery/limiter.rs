//! Per-app rate limits (DESIGN §5): a governor token bucket per app for calls, a semaphore of
//! `max_concurrency` for jobs in flight, and a pause set by `Retry-After`. Apps never share
//! any of these, so one slow or throttling app does not hold up another.
//!
//! The engine's global worker permits (`ROSTER_WORKERS`) are not held while a job waits for
//! its app: a job takes its app's slot before its permit, and gives the permit back while a
//! call waits for a token or a `Retry-After` pause (`with_worker`), so one app's backlog or
//! pause never keeps another app's jobs from running.
//!
//! Leavers first (DESIGN §5): a job of the deprovision lane gets its app's next slot and next
//! token ahead of every waiting normal or reconcile job. While one waits, the others step out
//! of the slot queue and the token race, and come back once no such job waits. It still waits
//! for the slot, the token and any `Retry-After` pause like every other job: the app's limits
//! hold for leavers too.
//!
//! The bucket and the `Retry-After` pause read one clock, governor's [`DefaultClock`] in
//! production; [`AppLimiter::with_clock`] is the one place another is put in (tests use
//! governor's `FakeRelativeClock`, so they count tokens at chosen instants instead of timing a
//! machine).
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::scim::{CallGate, MAX_RETRY_AFTER};
use crate::settings::AppSettings;

pub struct AppLimiter<C: Clock = DefaultClock> {
    bucket: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    slots: Arc<Semaphore>,
    paused_until: Mutex<Option<C::Instant>>,
    /// How many jobs that go first (deprovisions) wait for a slot now.
    first_for_slot: watch::Sender<usize>,
    /// How many calls of jobs that go first wait for a token now. Counted apart from the
    /// slot: a job in flight waiting for a token must not stand aside for a leaver waiting
    /// for that job's slot.
    first_for_token: watch::Sender<usize>,
}

/// Whether a job waits in line or goes ahead of the line for its app's slot and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A deprovision: served before every job that waits in line.
    First,
    /// Normal and reconcile jobs, reads and shared look-ups: served while no `First` waits.
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

    /// Whether a job of this turn may take a free slot or token now, with `first_waiting` jobs
    /// of the first turn waiting for one.
    #[must_use]
    pub fn may_take(self, first_waiting: usize) -> bool {
        self == Turn::First || first_waiting == 0
    }
}

/// Counts one waiting `First` job while held.
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

    /// The app's next call token, for a job of `turn`.
    async fn token(&self, turn: Turn) {
        Self::in_turn(&self.first_for_token, turn, || self.bucket.until_ready()).await;
    }
}

impl<C: Clock + Clone> AppLimiter<C> {
    /// A limiter whose bucket and pause read `clock`.
    #[must_use]
    pub fn with_clock(per_second: u32, burst: u32, max_concurrency: u32, clock: C) -> Self {
        let per_second = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            slots: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
            paused_until: Mutex::new(None),
            first_for_slot: watch::channel(0).0,
            first_for_token: watch::channel(0).0,
        }
    }

    /// A slot for one job in flight; held for the job's whole run.
    pub async fn slot(&self, turn: Turn) -> Option<OwnedSemaphorePermit> {
        Self::in_turn(&self.first_for_slot, turn, || {
            self.slots.clone().acquire_owned()
        })
        .await
        .ok()
    }

    /// Takes a call token at once if a job of `turn` may: the app is not paused, no leaver
    /// waits ahead of an `InLine` job, and the bucket has one.
    fn token_now(&self, turn: Turn) -> bool {
        self.paused_for().is_none()
            && turn.may_take(*self.first_for_token.borrow())
            && self.bucket.check().is_ok()
    }

    /// Runs `wait` (a wait for a slot or a token) in `turn`: a `First` job waits counted in
    /// `first_waiting`, so the others stand aside; an `InLine` one waits only while no `First`
    /// job does, and drops its wait (leaving the semaphore's queue, handing on a permit
    /// already assigned to it) as soon as one comes. Among `InLine` jobs that stood aside the
    /// order is not kept: jobs of one resource never run at once, so it carries nothing.
    async fn in_turn<T, F: Future<Output = T>>(
        first_waiting: &watch::Sender<usize>,
        turn: Turn,
        mut wait: impl FnMut() -> F,
    ) -> T {
        if turn == Turn::First {
            let _counted = FirstWaiting::enter(first_waiting);
            return wait().await;
        }
        let mut first = first_waiting.subscribe();
        loop {
            // The sender lives in the limiter, which outlives this wait: these waits end only
            // on their condition, never on a closed channel.
            let _ = first.wait_for(|n| turn.may_take(*n)).await.map(|_| ());
            let attempt = wait();
            let first_came = async { first.wait_for(|n| !turn.may_take(*n)).await.map(|_| ()) };
            tokio::select! {
                biased;
                // Checked before the attempt: a permit the semaphore just assigned goes back
                // to it, and on to the first job, rather than to this one.
                _ = first_came => {}
                out = attempt => return out,
            }
        }
    }

    /// Honour a `Retry-After`: no call to this app before `now + wait`.
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

    /// How long the app is still paused, if it is.
    #[must_use]
    pub fn paused_for(&self) -> Option<Duration> {
        let paused = self.paused_until.lock().ok()?;
        let now = self.clock.now();
        paused
            .filter(|until| *until > now)
            .map(|until| until.duration_since(now).into())
    }
}

impl CallGate for AppLimiter {
    fn wait(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let turn = current_turn();
            if self.token_now(turn) {
                return;
            }
            // The call must wait for this app: the job's worker permit goes back meanwhile.
            without_worker(async {
                while let Some(wait) = self.paused_for() {
                    tokio::time::sleep(wait).await;
                }
                self.token(turn).await;
            })
            .await;
        })
    }
}

tokio::task_local! {
    /// The global worker permit of the job running in this task, if any.
    static WORKER: RefCell<Worker>;
}

struct Worker {
    pool: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// The job's turn for its app's tokens.
    turn: Turn,
}

/// Runs a job's `fut` holding `permit` (one of `pool`'s), which `without_worker` may hand back
/// while the job waits for its app; its calls wait for tokens in `turn`.
pub async fn with_worker<F: Future>(
    pool: Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    turn: Turn,
    fut: F,
) -> F::Output {
    WORKER
        .scope(
            RefCell::new(Worker {
                pool,
                permit: Some(permit),
                turn,
            }),
            fut,
        )
        .await
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
    let pool = WORKER
        .try_with(|w| {
            let mut w = w.borrow_mut();
            w.permit.take().map(|_| w.pool.clone())
        })
        .ok()
        .flatten();
    let out = wait.await;
    if let Some(pool) = pool
        && let Ok(permit) = pool.acquire_owned().await
    {
        let _ = WORKER.try_with(|w| w.borrow_mut().permit = Some(permit));
    }
    out
}

/// One limiter per app, rebuilt when the app's settings change (by version).
#[derive(Default)]
pub struct Limiters {
    apps: Mutex<HashMap<String, (i64, Arc<AppLimiter>)>>,
}

impl Limiters {
    pub fn for_app(&self, app_id: &str, version: i64, settings: &AppSettings) -> Arc<AppLimiter> {
        let Ok(mut apps) = self.apps.lock() else {
            return Arc::new(AppLimiter::new(
                settings.rate_limit.per_second,
                settings.rate_limit.burst,
                settings.max_concurrency,
            ));
        };
        if let Some((v, limiter)) = apps.get(app_id)
            && *v == version
        {
            return limiter.clone();
        }
        let limiter = Arc::new(AppLimiter::new(
            settings.rate_limit.per_second,
            settings.rate_limit.burst,
            settings.max_concurrency,
        ));
        apps.insert(app_id.to_owned(), (version, limiter.clone()));
        limiter
    }

    /// Forgets the limiters of these apps (deleted ones).
    pub fn forget(&self, app_ids: &HashSet<&str>) {
        if let Ok(mut apps) = self.apps.lock() {
            apps.retain(|id, _| !app_ids.contains(id.as_str()));
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.apps.lock().map_or(0, |apps| apps.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use governor::clock::FakeRelativeClock;

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
        while limiter.token_now(Turn::InLine) {
            taken += 1;
            assert!(taken <= 1000, "the bucket never runs dry");
        }
        taken
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let (limiter, clock) = on_fake_clock(20, 5);
        assert_eq!(tokens_now(&limiter), 5, "the burst at once");
        // 20 a second: the next token 50 ms after the burst, not a moment before.
        clock.advance(Duration::from_millis(49));
        assert_eq!(tokens_now(&limiter), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(tokens_now(&limiter), 1);
        // Then one every 50 ms: 15 tokens in the first half second.
        for _ in 0..9 {
            clock.advance(Duration::from_millis(50));
            assert_eq!(tokens_now(&limiter), 1);
        }
        // An idle app's bucket fills up to the burst, never beyond it.
        clock.advance(Duration::from_secs(60));
        assert_eq!(tokens_now(&limiter), 5);
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
        assert!(!limiter.token_now(Turn::First), "a leaver waits it out too");
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.paused_for(), None);
        assert!(limiter.token_now(Turn::InLine));
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
        assert_eq!(tokens_now(&limiter), 1);
        clock.advance(Duration::from_millis(100));
        let leaver = FirstWaiting::enter(&limiter.first_for_token);
        assert!(
            !limiter.token_now(Turn::InLine),
            "in line while a leaver waits"
        );
        assert!(limiter.token_now(Turn::First), "the leaver's token");
        drop(leaver);
        // The leaver took the one token there was; the line takes the next one.
        assert_eq!(tokens_now(&limiter), 0);
        clock.advance(Duration::from_millis(100));
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
                    paused.wait().await;
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

    #[tokio::test]
    async fn a_pause_holds_calls_back() {
        let limiter = AppLimiter::new(1000, 1000, 1);
        limiter.pause_for(Duration::from_millis(300));
        assert!(limiter.paused_for().is_some());
        let started = Instant::now();
        limiter.wait().await;
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

    /// Queues two jobs in line and then a leaver, 20 ms apart and in that order, each waiting
    /// for `through` of its turn; then runs `release` and returns the order they got through.
    async fn order_through<Fut>(
        through: impl Fn(Turn) -> Fut,
        release: impl FnOnce(),
    ) -> Vec<&'static str>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (order, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, turn) in [
            ("in line 1", Turn::InLine),
            ("in line 2", Turn::InLine),
            ("leaver", Turn::First),
        ] {
            let (through, order) = (through(turn), order.clone());
            waiting.push(tokio::spawn(as_job(turn, async move {
                through.await;
                let _ = order.send(name);
            })));
            // On the test's single thread, each waiter is queued before the next is spawned.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        release();
        for task in waiting {
            task.await.expect("a waiter ends");
        }
        drop(order);
        let mut got = Vec::new();
        while let Some(name) = ends.recv().await {
            got.push(name);
        }
        got
    }

    #[tokio::test]
    async fn a_deprovision_gets_the_next_slot_ahead_of_the_jobs_waiting_in_line() {
        let limiter = Arc::new(AppLimiter::new(1000, 1000, 1));
        let held = limiter.slot(Turn::InLine).await.expect("slot");
        let got = order_through(
            |turn| {
                let limiter = limiter.clone();
                async move {
                    let _slot = limiter.slot(turn).await.expect("slot");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            move || drop(held),
        )
        .await;
        // The others stepped aside for it and then all got theirs (in either order: jobs of
        // one resource never run at once, so their order among themselves carries nothing).
        assert_eq!(got.first(), Some(&"leaver"), "{got:?}");
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn a_deprovision_gets_the_next_token_ahead_of_the_calls_waiting_in_line() {
        // One token at once, then one every 500 ms: the three are queued (20 ms apart) long
        // before the next token.
        let limiter = Arc::new(AppLimiter::new(2, 1, 4));
        limiter.wait().await;
        let got = order_through(
            |_| {
                let limiter = limiter.clone();
                async move { limiter.wait().await }
            },
            || {},
        )
        .await;
        assert_eq!(got.first(), Some(&"leaver"), "{got:?}");
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn a_deprovision_still_waits_out_a_pause_and_the_rate() {
        let limiter = AppLimiter::new(5, 1, 1);
        limiter.pause_for(Duration::from_millis(300));
        let started = Instant::now();
        as_job(Turn::First, limiter.wait()).await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        // The burst is spent: the next token is one interval (200 ms) away, first or not.
        let started = Instant::now();
        as_job(Turn::First, limiter.wait()).await;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }
}
