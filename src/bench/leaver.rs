//! `leaver-latency`: leaver event POSTed → user `active=false` on the target, p50/p99, idle and
//! while a background stream of joiner/mover events arrives at 1000/s (DESIGN §8).
//!
//! Each sample posts one leaver and polls the target user over HTTP every 2 ms, so the figure
//! includes the event's ingest, the claim, the SCIM PATCH and at most 2 ms of polling.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{self, Harness, TARGET_TOKEN, WORKERS};
use super::{BenchError, Figures, Scenario, per_second, percentile_ms};
use crate::dev_target::DevTargetArgs;

/// Background events per second in the loaded phase.
const STREAM_PER_S: usize = 1000;
/// Existing users the stream's movers edit.
const MOVER_POOL: usize = 100;
const SAMPLE_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(samples: usize) -> Result<Figures, BenchError> {
    let harness = Arc::new(Harness::start(DevTargetArgs::default()).await?);
    let result = measure(&harness, samples.max(1)).await;
    if let Ok(harness) = Arc::try_unwrap(harness) {
        harness.stop().await;
    }
    result
}

/// Leavers posted one at a time behind a throttled app's backlog.
const THROTTLED_SAMPLES: usize = 30;

/// `leaver-latency --throttled`: the app takes `per_second` calls/s, 2 at a time; `joiners`
/// joiners are queued, then [`THROTTLED_SAMPLES`] people who already have accounts leave one
/// after another. Reports the leavers' p50/p99 and whether the backlog then completed with
/// every account exactly once.
pub async fn run_throttled(joiners: usize, per_second: u32) -> Result<Figures, BenchError> {
    let harness = Arc::new(Harness::start(DevTargetArgs::default()).await?);
    let result = measure_throttled(&harness, joiners, per_second.max(1)).await;
    if let Ok(harness) = Arc::try_unwrap(harness) {
        harness.stop().await;
    }
    result
}

async fn measure_throttled(
    harness: &Arc<Harness>,
    joiners: usize,
    per_second: u32,
) -> Result<Figures, BenchError> {
    let app = harness.create_app(per_second, per_second, 2).await?;
    // The leavers-to-be have their accounts first.
    let leavers: Vec<_> = (0..THROTTLED_SAMPLES)
        .map(|i| harness::joiner("L", i))
        .collect();
    harness.post_batches(&leavers).await?;
    let slow = |calls: usize| Duration::from_secs(60 + 3 * calls as u64 / u64::from(per_second));
    harness
        .wait_for_users(THROTTLED_SAMPLES as u64, slow(THROTTLED_SAMPLES))
        .await?;
    let ids = user_ids(harness);
    let poller = harness::client()?;

    let backlog: Vec<_> = (0..joiners).map(|i| harness::joiner("B", i)).collect();
    let queued = Instant::now();
    harness.post_batches(&backlog).await?;
    // The backlog is under way before the first leaver.
    harness
        .wait_for_users(THROTTLED_SAMPLES as u64 + 2, slow(4))
        .await?;
    let mut latencies = Vec::with_capacity(THROTTLED_SAMPLES);
    let mut behind = Vec::with_capacity(THROTTLED_SAMPLES);
    for i in 0..THROTTLED_SAMPLES {
        behind.push((harness.target_users() as usize).saturating_sub(THROTTLED_SAMPLES));
        let (total, _) = sample(harness, &poller, &ids, i).await?;
        latencies.push(total);
    }
    let backlog_left = joiners.saturating_sub(*behind.last().unwrap_or(&0));
    let expected = THROTTLED_SAMPLES + joiners;
    let mut completed = harness
        .wait_for_users(expected as u64, slow(2 * joiners))
        .await
        .is_ok();
    // The last jobs' ends are written just after their calls.
    let drained_by = Instant::now() + Duration::from_secs(30);
    while completed && !harness.queue_is_empty(&app).await.unwrap_or(false) {
        if Instant::now() > drained_by {
            completed = false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog_s = queued.elapsed().as_secs_f64();
    let users = harness.target.users_snapshot();
    let names: std::collections::HashSet<&str> = users
        .iter()
        .filter_map(|u| u["userName"].as_str())
        .collect();
    let exactly_once = users.len() == expected && names.len() == expected;
    latencies.sort();
    Ok(Figures::new(Scenario::LeaverLatency)
        .with("throttled_per_s", per_second)
        .with("max_concurrency", 2)
        .with("backlog_joiners", joiners)
        .with("samples", THROTTLED_SAMPLES)
        .with("leaver_p50_ms", percentile_ms(&latencies, 0.5))
        .with("leaver_p99_ms", percentile_ms(&latencies, 0.99))
        .with("backlog_left_at_last_leaver", backlog_left)
        .with("backlog_completed", completed)
        .with("every_account_exactly_once", exactly_once)
        .with("backlog_s", (backlog_s * 10.0).round() / 10.0))
}

/// The dev-target's users: userName → id.
fn user_ids(harness: &Harness) -> HashMap<String, String> {
    harness
        .target
        .users_snapshot()
        .iter()
        .filter_map(|u| {
            Some((
                u["userName"].as_str()?.to_owned(),
                u["id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

async fn measure(harness: &Arc<Harness>, samples: usize) -> Result<Figures, BenchError> {
    harness.create_app(10_000, 10_000, WORKERS).await?;
    let base = 2 * samples + MOVER_POOL;
    let events: Vec<_> = (0..base).map(|i| harness::joiner("L", i)).collect();
    harness.post_batches(&events).await?;
    harness
        .wait_for_users(base as u64, Duration::from_secs(60 + base as u64 / 20))
        .await?;
    let ids = user_ids(harness);
    let poller = harness::client()?;

    let (mut idle, mut idle_posts) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        let (total, post) = sample(harness, &poller, &ids, i).await?;
        idle.push(total);
        idle_posts.push(post);
    }

    let stream = Stream::start(harness.clone(), 2 * samples);
    // Let the stream reach its rate and the queue its steady state first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut loaded, mut loaded_posts) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let mut failure = None;
    for i in samples..2 * samples {
        match sample(harness, &poller, &ids, i).await {
            Ok((total, post)) => {
                loaded.push(total);
                loaded_posts.push(post);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let streamed = stream.stop().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let stream_result = streamed?;

    for v in [&mut idle, &mut idle_posts, &mut loaded, &mut loaded_posts] {
        v.sort();
    }
    Ok(Figures::new(Scenario::LeaverLatency)
        .with("idle_p50_ms", percentile_ms(&idle, 0.5))
        .with("idle_p99_ms", percentile_ms(&idle, 0.99))
        .with("loaded_p50_ms", percentile_ms(&loaded, 0.5))
        .with("loaded_p99_ms", percentile_ms(&loaded, 0.99))
        .with("samples", samples)
        // The leaver's own POST (ingest, 202) within the figures above.
        .with("idle_post_p50_ms", percentile_ms(&idle_posts, 0.5))
        .with("loaded_post_p50_ms", percentile_ms(&loaded_posts, 0.5))
        .with("loaded_post_p99_ms", percentile_ms(&loaded_posts, 0.99))
        .with("stream_target_per_s", STREAM_PER_S)
        .with("stream_accepted_per_s", stream_result.per_s)
        .with("stream_behind", stream_result.behind))
}

/// Posts the leaver of user `L{i}` and returns how long until the target shows it inactive,
/// and how long the POST itself took.
async fn sample(
    harness: &Harness,
    poller: &reqwest::Client,
    ids: &HashMap<String, String>,
    i: usize,
) -> Result<(Duration, Duration), BenchError> {
    let user_name = format!("l{i}");
    let id = ids.get(&user_name).ok_or_else(|| BenchError::Unexpected {
        what: "leaver-latency".into(),
        detail: format!("{user_name} is not on the target"),
    })?;
    let url = format!("{}/Users/{id}", harness.target.base_url());
    let start = Instant::now();
    harness
        .post_event(&harness::leaver(&format!("L{i}")))
        .await?;
    let post = start.elapsed();
    loop {
        let user: Value = poller
            .get(&url)
            .bearer_auth(TARGET_TOKEN)
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: format!("GET {url}"),
                source,
            })?
            .json()
            .await
            .map_err(|source| BenchError::Http {
                what: format!("GET {url}"),
                source,
            })?;
        if user["active"] == Value::Bool(false) {
            return Ok((start.elapsed(), post));
        }
        if start.elapsed() > SAMPLE_DEADLINE {
            return Err(BenchError::Timeout {
                what: format!("{user_name} to be deactivated"),
                after: SAMPLE_DEADLINE,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Joiners of new people and movers of [`MOVER_POOL`] existing ones, alternating, posted
/// singly at [`STREAM_PER_S`] with at most 64 in flight; ticks that find no free slot count
/// as `behind`.
struct Stream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<StreamResult, BenchError>>,
}

struct StreamResult {
    per_s: f64,
    behind: usize,
}

impl Stream {
    /// `movers_from`: the first of the [`MOVER_POOL`] users `L{i}` the movers edit.
    fn start(harness: Arc<Harness>, movers_from: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(stream(harness, movers_from, stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) -> Result<StreamResult, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(BenchError::Unexpected {
                what: "the background stream".into(),
                detail: e.to_string(),
            }),
            Err(_) => Err(BenchError::Timeout {
                what: "the background stream to stop".into(),
                after: Duration::from_secs(60),
            }),
        }
    }
}

async fn stream(
    harness: Arc<Harness>,
    movers_from: usize,
    stop: Arc<AtomicBool>,
) -> Result<StreamResult, BenchError> {
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = STREAM_PER_S / 100;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut n, mut behind) = (0usize, 0usize);
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
        for _ in 0..per_tick {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                behind += 1;
                continue;
            };
            let event = if n.is_multiple_of(2) {
                harness::joiner("S", n)
            } else {
                harness::mover(&format!("L{}", movers_from + (n / 2) % MOVER_POOL), n)
            };
            n += 1;
            let (harness, accepted) = (harness.clone(), accepted.clone());
            tasks.spawn(async move {
                let _permit = permit;
                harness.post_event(&event).await?;
                accepted.fetch_add(1, Ordering::Relaxed);
                Ok::<(), BenchError>(())
            });
        }
    }
    let elapsed = start.elapsed();
    harness::join_all(tasks, Duration::from_secs(45), "the background stream").await?;
    Ok(StreamResult {
        per_s: per_second(accepted.load(Ordering::Relaxed), elapsed),
        behind,
    })
}
