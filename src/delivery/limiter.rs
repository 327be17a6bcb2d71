//! Per-app rate limits (DESIGN §5): a governor token bucket per app for calls, a semaphore of
//! `max_concurrency` for jobs in flight, and a pause set by `Retry-After`. Apps never share
//! any of these, so one slow or throttling app does not hold up another.
use std::collections::HashMap;
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
            while let Some(wait) = self.paused_for() {
                tokio::time::sleep(wait).await;
            }
            self.bucket.until_ready().await;
        })
    }
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
