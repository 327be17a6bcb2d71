//! `throughput`: SCIM creates/s delivered end to end (event → target) for `n` identities and
//! one unthrottled app, against a raw reqwest loop at the same concurrency (DESIGN §8).
use std::time::Duration;

use super::harness::{self, Harness, WORKERS};
use super::{BenchError, Figures, Scenario, per_second, round};
use crate::dev_target::DevTargetArgs;

pub async fn run(n: usize, target_latency_ms: Option<u64>) -> Result<Figures, BenchError> {
    let harness = Harness::start(DevTargetArgs {
        latency_ms: target_latency_ms.unwrap_or(0),
        ..DevTargetArgs::default()
    })
    .await?;
    let result = measure(&harness, n)
        .await
        .map(|f| f.with("target_latency_ms", target_latency_ms.unwrap_or(0)));
    harness.stop().await;
    result
}

/// Generous: a debug build on a busy machine delivers a few hundred users a second.
fn deadline(n: usize) -> Duration {
    Duration::from_secs(60 + (n as u64) / 20)
}

async fn measure(harness: &Harness, n: usize) -> Result<Figures, BenchError> {
    // The baseline first, on the same dev-target, then emptied for roster.
    let raw = harness::raw_creates(&harness.target.base_url(), n, WORKERS, deadline(n)).await?;
    let raw_per_s = per_second(n, raw);
    harness.target.reset();

    harness.create_app(10_000, 10_000, WORKERS).await?;
    let events: Vec<_> = (0..n).map(|i| harness::joiner("T", i)).collect();
    let posting = std::time::Instant::now();
    let first_accepted = harness
        .post_batches(&events)
        .await?
        .ok_or_else(|| BenchError::Setup("no events to post".into()))?;
    let ingested = posting.elapsed();
    let done = harness.wait_for_users(n as u64, deadline(n)).await?;
    let elapsed = done - first_accepted;
    let roster_per_s = per_second(n, elapsed);
    let stats = harness.target.stats();
    let calls: u64 = stats["requests"].as_object().map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    });
    // Correctness beside the speed: every account there once, none POSTed twice.
    let distinct_user_names = harness
        .target
        .users_snapshot()
        .iter()
        .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(Figures::new(Scenario::Throughput)
        .with("n", n)
        .with("concurrency", WORKERS)
        .with("roster_per_s", roster_per_s)
        .with("raw_per_s", raw_per_s)
        .with("ratio", round(roster_per_s / raw_per_s.max(1e-9), 3))
        .with("roster_seconds", round(elapsed.as_secs_f64(), 2))
        .with("batch_ingest_per_s", per_second(n, ingested))
        .with("target_calls", calls)
        .with("target_users", stats["users"].clone())
        .with("target_posts", stats["requests"]["POST"].clone())
        .with("distinct_user_names", distinct_user_names)
        .with(
            "target_calls_per_user",
            round(calls as f64 / n.max(1) as f64, 2),
        ))
}
