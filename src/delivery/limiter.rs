//! Per-app rate limits (DESIGN §5): a governor token bucket per app for calls, a semaphore of
//! `max_concurrency` for calls in flight, and a pause set by `Retry-After`. Apps never share
//! any of these, so one slow or throttling app does not hold up another.
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
//! next token ahead of every waiting call of a normal or reconcile job. While one waits, the
//! others neither take a slot nor a token (they wait holding nothing), and go on once no such
//! call waits. It still waits for the slot, the token and any `Retry-After` pause like every
//! other call: the app's limits hold for leavers too.
//!
//! The bucket and the `Retry-After` pause read one clock, governor's [`DefaultClock`] in
//! production; [`AppLimiter::with_clock`] is the one place another is put in (tests use
//! governor's `FakeRelativeClock`, so they count tokens at chosen instants instead of timing a
//! machine). Waits for a token sleep on tokio's timer for as long as the bucket says.
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

use crate::scim::{CallGate, CallPass, MAX_RETRY_AFTER};
use crate::settings::AppSettings;

pub struct AppLimiter<C: Clock = DefaultClock> {
    bucket: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    slots: Arc<Semaphore>,
    paused_until: Mutex<Option<C::Instant>>,
    /// How many calls of jobs that go first (deprovisions) wait for a slot or a token now.
    first_waiting: watch::Sender<usize>,
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
            first_waiting: watch::channel(0).0,
        }
    }

    /// Takes a call token at once if a call of `turn` may: the app is not paused, no leaver
    /// waits ahead of an `InLine` call, and the bucket has one.
    fn token_now(&self, turn: Turn) -> bool {
        self.paused_for().is_none()
            && turn.may_take(*self.first_waiting.borrow())
            && self.bucket.check().is_ok()
    }

    /// A slot and a token at once, if both are free now, no pause holds the app and no call
    /// of the first turn waits (unless this one is of the first turn).
    fn pass_now(&self, turn: Turn) -> Option<OwnedSemaphorePermit> {
        if self.paused_for().is_some() || !turn.may_take(*self.first_waiting.borrow()) {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        self.token_now(turn).then_some(slot)
    }

    /// Waits for one call's slot and token, in `turn`; the slot is to be held until the
    /// call's answer is read. `None` only if the slots were closed (never: the limiter owns
    /// them).
    ///
    /// A `First` call is counted in `first_waiting` from the start, takes the next free slot
    /// and holds it while it waits for the next token (no other call takes one meanwhile). An
    /// `InLine` call waits holding nothing while a `First` one waits; it takes a slot, and
    /// keeps it only if a token is ready too: otherwise it gives the slot back and sleeps until
    /// the bucket's next token is due, then tries again. So a slot is never held by a call of
    /// a normal job that waits for a token, and a deprovision waits at most for a call under
    /// way to end and for the next token. Among `InLine` calls the order is not kept (as with
    /// governor's own `until_ready`): jobs of one resource never run at once, so it carries
    /// nothing.
    pub async fn pass(&self, turn: Turn) -> Option<OwnedSemaphorePermit> {
        let _counted = (turn == Turn::First).then(|| FirstWaiting::enter(&self.first_waiting));
        let mut first = self.first_waiting.subscribe();
        'slot: loop {
            self.wait_out_pause().await;
            let slot = if turn == Turn::First {
                self.slots.clone().acquire_owned().await.ok()?
            } else {
                // The sender lives in the limiter, which outlives this wait: these waits end
                // only on their condition, never on a closed channel.
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
                match self.bucket.check() {
                    Ok(()) => return Some(slot),
                    Err(not_until) => {
                        let due = not_until.wait_time_from(self.clock.now());
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
    fn wait(&self) -> BoxFuture<'_, CallPass> {
        Box::pin(async move {
            let turn = current_turn();
            let slot = match self.pass_now(turn) {
                Some(slot) => Some(slot),
                // The call must wait for this app: the job's worker permit goes back meanwhile.
                None => without_worker(self.pass(turn)).await,
            };
            let pass: CallPass = Box::new(slot);
            pass
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
        let leaver = FirstWaiting::enter(&limiter.first_waiting);
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

    #[tokio::test]
    async fn a_deprovision_gets_the_next_slot_ahead_of_the_calls_waiting_in_line() {
        let limiter = Arc::new(AppLimiter::new(1000, 1000, 1));
        // A call under way holds the only slot.
        let under_way = limiter.pass(Turn::InLine).await.expect("slot");
        let (order, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, turn) in [
            ("in line 1", Turn::InLine),
            ("in line 2", Turn::InLine),
            ("leaver", Turn::First),
        ] {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let slot = limiter.pass(turn).await.expect("slot");
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
        drop(limiter.pass(Turn::InLine).await);
        let (order, mut granted) = tokio::sync::mpsc::unbounded_channel();
        let mut in_line = Vec::new();
        for name in ["in line 1", "in line 2"] {
            let (limiter, order) = (limiter.clone(), order.clone());
            in_line.push(tokio::spawn(as_job(Turn::InLine, async move {
                let pass = limiter.wait().await;
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
                let pass = limiter.wait().await;
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
                    let pass = limiter.wait().await;
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
        limiter.wait().await;
        let (order, mut ends) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, turn) in [
            ("in line 1", Turn::InLine),
            ("in line 2", Turn::InLine),
            ("leaver", Turn::First),
        ] {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiting.push(tokio::spawn(as_job(turn, async move {
                limiter.wait().await;
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
