//! `throughput`: SCIM creates/s delivered end to end (event → target) for `n` identities and
//! one unthrottled app, against a raw reqwest loop at the same concurrency (DESIGN §8), at one
//! or several target latencies; also the CPU each spends per create, from the process's own
//! counters.
//!
//! roster runs three times against the same baseline: with an app that looks each joiner up
//! before creating (the default: the target promises nothing about duplicates); in
//! `create_first`, with an app whose quirks say the target answers a duplicate userName with
//! 409 (the dev-target does, as RFC 7644 asks): created first, looked up only on a 409; and in
//! `populated`, looking up first in a target that already holds 1 000 other accounts (an empty
//! target is listed once and that listing answers the look-ups for a minute; a populated one
//! is asked by filter).
//!
//! The dev-target runs in this process, so both CPU figures include its share of serving the
//! creates (the same for both); roster's also includes taking the HR events in.
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::harness::{self, Harness, WORKERS};
use super::{BenchError, Figures, Scenario, per_second, round};
use crate::dev_target::DevTargetArgs;

/// Runs the scenario at each of `latencies_ms` (0 ms when empty), each with its own roster and
/// dev-target. The figures are the first latency's, plus the ratio at each (`ratios`) and every
/// latency's figures (`by_latency`) when there are several.
pub async fn run(n: usize, latencies_ms: &[u64]) -> Result<Figures, BenchError> {
    let latencies = if latencies_ms.is_empty() {
        &[0][..]
    } else {
        latencies_ms
    };
    let mut runs = Vec::with_capacity(latencies.len());
    for &latency_ms in latencies {
        runs.push(run_at(n, latency_ms).await?);
    }
    let mut figures = runs[0].clone();
    if runs.len() > 1 {
        // Each run's ratio (`None`: the default run's; else the named one's) by latency.
        let ratios = |run: Option<&str>| -> Value {
            let by_latency: Map<String, Value> = latencies
                .iter()
                .zip(&runs)
                .map(|(latency, f)| {
                    let ratio = match run {
                        None => f.get("ratio"),
                        Some(key) => f.get(key).and_then(|other| other.get("ratio")),
                    };
                    (latency.to_string(), ratio.cloned().unwrap_or(Value::Null))
                })
                .collect();
            Value::Object(by_latency)
        };
        figures = figures.with("ratios", ratios(None));
        for (key, _, ratios_key) in OTHER_RUNS {
            figures = figures.with(ratios_key, ratios(Some(key)));
        }
        figures = figures.with(
            "by_latency",
            Value::Array(runs.iter().map(Figures::to_value).collect()),
        );
    }
    Ok(figures)
}

async fn run_at(n: usize, latency_ms: u64) -> Result<Figures, BenchError> {
    let args = DevTargetArgs {
        latency_ms,
        ..DevTargetArgs::default()
    };
    // The baseline and the default run on one dev-target (emptied between them), each other
    // run on a fresh roster and dev-target, so that none sees another's accounts.
    let harness = Harness::start(args.clone()).await?;
    let measured = async {
        let raw = measure_raw(&harness, n).await?;
        let figures = measure(&harness, n, &raw, Matching::LookUpFirst).await?;
        Ok::<_, BenchError>((raw, figures))
    }
    .await;
    harness.stop().await;
    let (raw, mut figures) = measured?;
    for (key, matching, _) in OTHER_RUNS {
        let harness = Harness::start(args.clone()).await?;
        let other = measure(&harness, n, &raw, matching).await;
        harness.stop().await;
        figures = figures.with(key, other?.to_value());
    }
    Ok(figures.with("target_latency_ms", latency_ms))
}

/// The figures each repeat of the scenario is summed up by, as paths into its figures.
const REPEATED: [&str; 12] = [
    "ratio",
    "cpu_ratio",
    "roster_cpu_us_per_create",
    "raw_cpu_us_per_create",
    "roster_per_s",
    "raw_per_s",
    "create_first.ratio",
    "create_first.cpu_ratio",
    "create_first.roster_cpu_us_per_create",
    "populated.ratio",
    "populated.cpu_ratio",
    "populated.roster_cpu_us_per_create",
];

/// The first run's figures, plus, when there are several, `repeats`: `{"runs", "median":
/// {path: m}, "each": {path: [v, …]}}` over the [`REPEATED`] figures.
#[must_use]
pub fn with_repeats(mut runs: Vec<Figures>) -> Figures {
    if runs.len() < 2 {
        return runs
            .pop()
            .unwrap_or_else(|| Figures::new(Scenario::Throughput));
    }
    let values: Vec<Value> = runs.iter().map(Figures::to_value).collect();
    let summary = repeats(&values);
    runs.swap_remove(0).with("repeats", summary)
}

/// Each run's value at each of the [`REPEATED`] paths (runs without one are left out) and
/// the median of those values.
fn repeats(runs: &[Value]) -> Value {
    let mut each = Map::new();
    let mut median = Map::new();
    for path in REPEATED {
        let mut found: Vec<f64> = runs
            .iter()
            .filter_map(|run| {
                path.split('.')
                    .try_fold(run, |value, key| value.get(key))
                    .and_then(Value::as_f64)
            })
            .collect();
        each.insert(path.to_owned(), json!(found));
        found.sort_by(f64::total_cmp);
        let middle = found.len() / 2;
        let value = match found.len() {
            0 => Value::Null,
            n if n % 2 == 1 => Value::from(found[middle]),
            _ => Value::from(round((found[middle - 1] + found[middle]) / 2.0, 3)),
        };
        median.insert(path.to_owned(), value);
    }
    json!({"runs": runs.len(), "median": median, "each": each})
}

/// The runs beside the default one (looking up first in an empty target): the key of their
/// figures, how their app matches, and the key of their ratios by latency.
const OTHER_RUNS: [(&str, Matching, &str); 2] = [
    ("create_first", Matching::CreateFirst, "ratios_create_first"),
    (
        "populated",
        Matching::LookUpFirstPopulated,
        "ratios_populated",
    ),
];

/// Accounts of other people in the target before the `populated` run: more than a listing
/// kept to answer look-ups may hold, so that its look-ups go by filter.
const POPULATED_WITH: usize = 1_000;

/// How the bench's app finds a joiner's existing account before it has one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matching {
    /// The target promises nothing about duplicate userNames: each create is preceded by a
    /// matching look-up (merged with others, sent ahead), the default.
    LookUpFirst,
    /// The target answers a duplicate userName with 409, as RFC 7644 asks and the dev-target
    /// does (`quirks.rejects_duplicate_user_names`): created first, looked up only on a 409.
    CreateFirst,
    /// Looked up first, in a target that already holds [`POPULATED_WITH`] other accounts: too
    /// many for one listing to answer the look-ups (an empty target's listing does, for a
    /// minute), so they are asked by filter, merged.
    LookUpFirstPopulated,
}

/// The raw reqwest loop's figures, the baseline of every roster run.
struct RawFigures {
    per_s: f64,
    cpu_us_per_create: Value,
}

async fn measure_raw(harness: &Harness, n: usize) -> Result<RawFigures, BenchError> {
    let cpu_before = super::cpu_time();
    let elapsed = harness::raw_creates(&harness.target.base_url(), n, WORKERS, deadline(n)).await?;
    let cpu_us_per_create = cpu_us_per_create(cpu_before, super::cpu_time(), n);
    harness.target.reset();
    Ok(RawFigures {
        per_s: per_second(n, elapsed),
        cpu_us_per_create,
    })
}

/// Generous: a debug build on a busy machine delivers a few hundred users a second.
fn deadline(n: usize) -> Duration {
    Duration::from_secs(60 + (n as u64) / 20)
}

/// CPU microseconds per create between two readings of the process's counters.
fn cpu_us_per_create(before: Option<Duration>, after: Option<Duration>, n: usize) -> Value {
    match (before, after) {
        (Some(before), Some(after)) => Value::from(round(
            after.saturating_sub(before).as_secs_f64() * 1e6 / n.max(1) as f64,
            1,
        )),
        _ => Value::Null,
    }
}

async fn measure(
    harness: &Harness,
    n: usize,
    raw: &RawFigures,
    matching: Matching,
) -> Result<Figures, BenchError> {
    let load = super::load_average();
    let extra = match matching {
        Matching::LookUpFirst | Matching::LookUpFirstPopulated => json!({}),
        Matching::CreateFirst => json!({"quirks": {"rejects_duplicate_user_names": true}}),
    };
    let seeded = if matching == Matching::LookUpFirstPopulated {
        POPULATED_WITH
    } else {
        0
    };
    for i in 0..seeded {
        harness
            .target
            .insert(
                crate::dev_target::Kind::User,
                json!({"schemas": [crate::scim::schemas::USER],
                       "userName": format!("other-{i}@example.org"), "active": true}),
            )
            .map_err(BenchError::Setup)?;
    }
    harness
        .create_app_with(&harness.target.base_url(), 10_000, 10_000, WORKERS, extra)
        .await?;
    let events: Vec<_> = (0..n).map(|i| harness::joiner("T", i)).collect();
    let roster_cpu_before = super::cpu_time();
    let posting = Instant::now();
    let first_accepted = harness
        .post_batches(&events)
        .await?
        .ok_or_else(|| BenchError::Setup("no events to post".into()))?;
    let ingested = posting.elapsed();
    let done = harness
        .wait_for_users((n + seeded) as u64, deadline(n))
        .await?;
    let roster_cpu = cpu_us_per_create(roster_cpu_before, super::cpu_time(), n);
    let elapsed = done - first_accepted;
    let roster_per_s = per_second(n, elapsed);
    let stats = harness.target.stats();
    let calls: u64 = stats["requests"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    // Correctness beside the speed: every account there once, none POSTed twice.
    let distinct_user_names = harness
        .target
        .users_snapshot()
        .iter()
        .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let cpu_ratio = match (raw.cpu_us_per_create.as_f64(), roster_cpu.as_f64()) {
        (Some(raw), Some(roster)) if roster > 0.0 => Value::from(round(raw / roster, 3)),
        _ => Value::Null,
    };
    Ok(Figures::new(Scenario::Throughput)
        .with("n", n)
        .with("concurrency", WORKERS)
        .with("roster_per_s", roster_per_s)
        .with("raw_per_s", raw.per_s)
        .with("ratio", round(roster_per_s / raw.per_s.max(1e-9), 3))
        .with("roster_seconds", round(elapsed.as_secs_f64(), 2))
        .with("roster_cpu_us_per_create", roster_cpu)
        .with("raw_cpu_us_per_create", raw.cpu_us_per_create.clone())
        .with("cpu_ratio", cpu_ratio)
        .with("batch_ingest_per_s", per_second(n, ingested))
        .with("target_calls", calls)
        .with("seeded_accounts", seeded)
        .with("target_users", stats["users"].clone())
        .with("target_posts", stats["requests"]["POST"].clone())
        .with("distinct_user_names", distinct_user_names)
        .with(
            "target_calls_per_user",
            round(calls as f64 / n.max(1) as f64, 2),
        )
        .with("load_average", load.map_or(Value::Null, Value::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_take_the_median_of_each_figure_and_skip_runs_without_it() {
        let runs = [
            json!({"ratio": 0.2, "cpu_ratio": 0.21, "create_first": {"cpu_ratio": 0.3}}),
            json!({"ratio": 0.4, "cpu_ratio": 0.19, "create_first": {"cpu_ratio": 0.1}}),
            json!({"ratio": 0.3, "cpu_ratio": 0.25}),
        ];
        let summary = repeats(&runs);
        assert_eq!(summary["runs"], 3);
        assert_eq!(
            summary["median"]["ratio"], 0.3,
            "odd count: the middle value"
        );
        assert_eq!(summary["median"]["cpu_ratio"], 0.21);
        assert_eq!(
            summary["each"]["ratio"],
            json!([0.2, 0.4, 0.3]),
            "in run order"
        );
        // Two runs have it: the mean of the two middle values.
        assert_eq!(summary["median"]["create_first.cpu_ratio"], 0.2);
        assert_eq!(summary["each"]["create_first.cpu_ratio"], json!([0.3, 0.1]));
        assert_eq!(summary["median"]["populated.ratio"], Value::Null);
        assert_eq!(summary["each"]["populated.ratio"], json!([]));
    }
}
