//! `ingest`: HR events/s durably accepted (202) on SQLite, single events over 32 connections
//! (DESIGN §8). No app is registered, so the figure is ingest alone.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::harness::{self, Harness};
use super::{BenchError, Figures, Scenario, per_second};
use crate::dev_target::DevTargetArgs;

const CONNECTIONS: usize = 32;

pub async fn run(n: usize) -> Result<Figures, BenchError> {
    let harness = Arc::new(Harness::start(DevTargetArgs::default()).await?);
    let result = measure(&harness, n).await;
    if let Ok(harness) = Arc::try_unwrap(harness) {
        harness.stop().await;
    }
    result
}

async fn measure(harness: &Arc<Harness>, n: usize) -> Result<Figures, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Duration::from_secs(60 + (n as u64) / 50);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (harness, next) = (harness.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                harness.post_event(&harness::joiner("I", i)).await?;
            }
        });
    }
    harness::join_all(tasks, deadline, "the ingest load").await?;
    let elapsed = start.elapsed();
    // Correctness beside the speed: each accepted event made its one identity.
    let identities = {
        use sea_orm::{EntityTrait as _, PaginatorTrait as _};
        crate::store::entity::identity::Entity::find()
            .count(harness.roster.db())
            .await
            .map_err(|e| BenchError::Setup(format!("counting identities: {e}")))?
    };
    Ok(Figures::new(Scenario::Ingest)
        .with("n", n)
        .with("connections", CONNECTIONS)
        .with("per_s", per_second(n, elapsed))
        .with("identities", identities)
        .with("seconds", super::round(elapsed.as_secs_f64(), 2)))
}
