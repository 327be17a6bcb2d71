//! Per-app rate limits (DESIGN §5): a governor token bucket per app for calls, a semaphore of
//! `max_concurrency` for jobs in flight, and a pause set by `Retry-After`. Apps never share
//! any of these, so one slow or throttling app does not hold up another.
//!
//! The engine's global worker permits (`ROSTER_WORKERS`) are not held while a job waits for
//! its app: a job takes its app's slot before its permit, and gives the permit back while a
//! call waits for a token or a `Retry-After` pause (`with_worker`), so one app's backlog or
//! pause never keeps another app's jobs from running.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scim::{CallGate, MAX_RETRY_AFTER};
use crate::settings::AppSettings;

pub struct AppLimiter {
    bucket: DefaultDirectRateLimiter,
    slots: Arc<Semaphore>,
    paused_until: Mutex<Option<Instant>>,
}

impl AppLimiter {
    #[must_use]
    pub fn new(per_second: u32, burst: u32, max_concurrency: u32) -> Self {
        let per_second = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            bucket: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            slots: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
            paused_until: Mutex::new(None),
        }
    }

    /// A slot for one job in flight; held for the job's whole run.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Honour a `Retry-After`: no call to this app before `now + wait`.
    /// The wait is capped at [`MAX_RETRY_AFTER`] (`Instant` addition panics on overflow).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_RETRY_AFTER);
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
        paused.and_then(|until| until.checked_duration_since(Instant::now()))
    }
}

impl CallGate for AppLimiter {
    fn wait(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.paused_for().is_none() && self.bucket.check().is_ok() {
                return;
            }
            // The call must wait for this app: the job's worker permit goes back meanwhile.
            without_worker(async {
                while let Some(wait) = self.paused_for() {
                    tokio::time::sleep(wait).await;
                }
                self.bucket.until_ready().await;
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
}

/// Runs a job's `fut` holding `permit` (one of `pool`'s), which `without_worker` may hand back
/// while the job waits for its app.
pub async fn with_worker<F: Future>(
    pool: Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    fut: F,
) -> F::Output {
    WORKER
        .scope(
            RefCell::new(Worker {
                pool,
                permit: Some(permit),
            }),
            fut,
        )
        .await
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
    use super::*;

    #[tokio::test]
    async fn the_bucket_allows_the_burst_then_the_rate() {
        let limiter = AppLimiter::new(20, 5, 1);
        let started = Instant::now();
        for _ in 0..15 {
            limiter.wait().await;
        }
        // 5 at once, then 10 more at 20/s: about 0.5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn a_huge_pause_is_capped_instead_of_overflowing() {
        let limiter = AppLimiter::new(1, 1, 1);
        limiter.pause_for(Duration::MAX);
        let left = limiter.paused_for().expect("paused");
        assert!(left <= MAX_RETRY_AFTER, "{left:?}");
        assert!(left > MAX_RETRY_AFTER - Duration::from_secs(60), "{left:?}");
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
                with_worker(workers.clone(), permit, async {
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
}
