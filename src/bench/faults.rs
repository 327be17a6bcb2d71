//! `delivery-faults` (issue 5): a target limited to 20 calls/s that fails 20 % of calls (half
//! 503 + `Retry-After: 1`, half 500); how long until every joiner is delivered, the create rate
//! achieved against the limit, the 429 and 5xx answers, and the dead jobs (should be none).
use std::time::{Duration, Instant};

use super::harness::{self, Harness};
use super::rate_limit::total_calls;
use super::{BenchError, Figures, Scenario, per_second, round};
use crate::dev_target::DevTargetArgs;

const LIMIT: u32 = 20;
const FAIL_RATE: f64 = 0.2;
const BURST: u32 = 5;
const CONCURRENCY: usize = 4;

pub async fn run(n: usize) -> Result<Figures, BenchError> {
    let harness = Harness::start(DevTargetArgs {
        rate_limit: Some(LIMIT),
        fail_rate: FAIL_RATE,
        seed: Some(5),
        ..DevTargetArgs::default()
    })
    .await?;
    let result = measure(&harness, n).await;
    harness.stop().await;
    result
}

async fn measure(harness: &Harness, n: usize) -> Result<Figures, BenchError> {
    let app = harness.create_app(LIMIT, BURST, CONCURRENCY).await?;
    let before = total_calls(&harness.target.stats());
    let events: Vec<_> = (0..n).map(|i| harness::joiner("F", i)).collect();
    let first = harness
        .post_batches(&events)
        .await?
        .ok_or_else(|| BenchError::Setup("no events to post".into()))?;
    // Retries back off exponentially (base 1 s, cap 15 min): allow a long tail.
    let deadline = Duration::from_secs(120 + n as u64);
    let mut last_queue_check = Instant::now();
    let finished = loop {
        let users = harness.target_users();
        if users >= n as u64 {
            break Instant::now();
        }
        if last_queue_check.elapsed() > Duration::from_secs(2) {
            last_queue_check = Instant::now();
            // Every job dead or done, yet users missing: nothing more will arrive.
            if harness.queue_is_empty(&app).await? {
                break Instant::now();
            }
        }
        if first.elapsed() > deadline {
            return Err(BenchError::Timeout {
                what: format!("{n} users on the dev-target (it holds {users})"),
                after: deadline,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = finished - first;
    let stats = harness.target.stats();
    let delivered = usize::try_from(harness.target_users()).unwrap_or(usize::MAX);
    let creates_per_s = per_second(delivered, elapsed);
    Ok(Figures::new(Scenario::DeliveryFaults)
        .with("n", n)
        .with("delivered", delivered)
        // Jobs that ended neither delivered nor dead: lost (should be 0).
        .with("undelivered", n.saturating_sub(delivered))
        .with("limit", LIMIT)
        .with("fail_rate", FAIL_RATE)
        .with("seconds", round(elapsed.as_secs_f64(), 2))
        .with("creates_per_s", creates_per_s)
        .with("ratio", round(creates_per_s / f64::from(LIMIT), 3))
        .with("calls", total_calls(&stats).saturating_sub(before))
        .with("throttled", stats["throttled"].as_u64().unwrap_or(0))
        .with("failed_5xx", stats["failed"].as_u64().unwrap_or(0))
        .with("dead_jobs", harness.app_status(&app).await?["dead"].clone()))
}
