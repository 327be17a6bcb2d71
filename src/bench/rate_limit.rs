//! `rate-limit`: the rate roster achieves against a dev-target enforcing the same limit it is
//! configured with (DESIGN §8: ≥ 95 % of the limit, ≤ 1 % of calls answered 429).
use std::time::Duration;

use serde_json::Value;

use super::harness::{self, Harness, WORKERS};
use super::{BenchError, Figures, Scenario, round};
use crate::dev_target::DevTargetArgs;

pub const LIMIT: u32 = 100;
/// roster's burst. The target's bucket holds `LIMIT` tokens; a small burst on roster's side
/// keeps most of them in reserve to absorb the jitter between the two clocks, where a burst of
/// `LIMIT` drains the target's bucket at once and every late token is a 429.
pub const BURST: u32 = 10;
/// Concurrent calls: as many as the engine has workers, so that only the rate limits bind.
const CONCURRENCY: usize = WORKERS;

pub async fn run(n: usize) -> Result<Figures, BenchError> {
    let harness = Harness::start(DevTargetArgs {
        rate_limit: Some(LIMIT),
        ..DevTargetArgs::default()
    })
    .await?;
    let result = measure(&harness, n).await;
    harness.stop().await;
    result
}

pub fn total_calls(stats: &Value) -> u64 {
    stats["requests"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

async fn measure(harness: &Harness, n: usize) -> Result<Figures, BenchError> {
    harness.create_app(LIMIT, BURST, CONCURRENCY).await?;
    // Calls made while registering the app are not part of the window.
    let before = total_calls(&harness.target.stats());
    let events: Vec<_> = (0..n).map(|i| harness::joiner("R", i)).collect();
    let first = harness
        .post_batches(&events)
        .await?
        .ok_or_else(|| BenchError::Setup("no events to post".into()))?;
    // Each user takes about two calls (lookup, create) at LIMIT/s; allow four times that.
    let deadline = Duration::from_secs(30 + 8 * n as u64 / u64::from(LIMIT));
    let done = harness.wait_for_users(n as u64, deadline).await?;
    let window = (done - first).as_secs_f64();
    let stats = harness.target.stats();
    let calls = total_calls(&stats).saturating_sub(before);
    let throttled = stats["throttled"].as_u64().unwrap_or(0);
    let delivered = calls.saturating_sub(throttled);
    let achieved = delivered as f64 / window.max(1e-9);
    Ok(Figures::new(Scenario::RateLimit)
        .with("limit", LIMIT)
        .with("burst", BURST)
        .with("n", n)
        .with("achieved_per_s", round(achieved, 1))
        .with("ratio", round(achieved / f64::from(LIMIT), 3))
        .with("calls", calls)
        .with("throttled", throttled)
        .with(
            "throttled_ratio",
            round(throttled as f64 / calls.max(1) as f64, 4),
        )
        .with("seconds", round(window, 2)))
}
