//! `roster bench SCENARIO`: the performance figures of DESIGN §8, measured in-process on
//! loopback against a dev-target, each printed as one JSON line.
//!
//! Every scenario starts its own dev-target and its own roster (fresh SQLite file in a temp
//! directory), drives roster over HTTP with keep-alive connections, waits for the target to
//! hold the expected state with a deadline, and tears everything down.
use std::time::Duration;

use serde_json::Value;

mod faults;
mod harness;
mod ingest;
mod leaver;
mod rate_limit;
mod reconcile;
mod reconcile_apps;
mod saas;
mod snapshot;
mod throughput;

/// The scenarios of DESIGN §8 (names fixed), plus issue 5's `delivery-faults`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Throughput,
    LeaverLatency,
    RateLimit,
    Ingest,
    DeliveryFaults,
    Reconcile,
    Saas,
    HrSnapshot,
}

impl Scenario {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::LeaverLatency => "leaver-latency",
            Self::RateLimit => "rate-limit",
            Self::Ingest => "ingest",
            Self::DeliveryFaults => "delivery-faults",
            Self::Reconcile => "reconcile",
            Self::Saas => "saas",
            Self::HrSnapshot => "hr-snapshot",
        }
    }
}

/// What a run may change from the full-size defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The scenario's main count (identities, events or samples); `None` is DESIGN's size.
    pub size: Option<usize>,
    /// `throughput` only: the dev-target answers every call this many milliseconds late, as a
    /// SaaS app across the internet would (both loops then wait on the network, not the CPU).
    /// Several: the scenario runs at each, and prints the ratio at each. Empty: 0 ms.
    pub target_latency_ms: Vec<u64>,
    /// `reconcile` only: roster's executable, to run the dev-target as `EXE dev-target` in a
    /// process of its own (so that the peak RSS printed is roster's alone); `None`: in this
    /// process.
    pub dev_target_exe: Option<std::path::PathBuf>,
    /// `leaver-latency` only: the app's calls per second; the leavers then wait behind a
    /// backlog of `size` joiners in that throttled app.
    pub throttled: Option<u32>,
    /// `reconcile` only: this many apps of `size` accounts each (default 20 000), all due at
    /// once and started by the scheduler's path; `None` or 1: the one-app scenario.
    pub apps: Option<usize>,
    /// `reconcile --apps` only: roster's `ROSTER_RECONCILE_CONCURRENCY` (default 2).
    pub reconcile_concurrency: Option<usize>,
    /// `throughput` only: the whole scenario this many times, each with a fresh roster,
    /// dev-target and raw loop; the figures are the first run's plus `repeats`, each run's
    /// ratios and CPU figures and their medians. `None` or 1: one run.
    pub repeat: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the `{scenario}` scenario is not available yet: {reason}")]
    NotAvailable {
        scenario: &'static str,
        reason: &'static str,
    },
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {source}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
    #[error("timed out after {} s waiting for {what}", .after.as_secs())]
    Timeout { what: String, after: Duration },
}

impl BenchError {
    /// The scenario exists by name but cannot run in this build (exit code 2).
    #[must_use]
    pub fn is_not_available(&self) -> bool {
        matches!(self, Self::NotAvailable { .. })
    }
}

/// A scenario's figures, in the order they are printed.
#[derive(Debug, Clone, Default)]
pub struct Figures(Vec<(&'static str, Value)>);

impl Figures {
    #[must_use]
    pub fn new(scenario: Scenario) -> Self {
        Self(vec![("scenario", Value::from(scenario.name()))])
    }

    #[must_use]
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((key, value.into()));
        self
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// One JSON object on one line, keys in insertion order.
    #[must_use]
    pub fn to_line(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    #[must_use]
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    /// `scenario: k=v, k=v` for people.
    #[must_use]
    pub fn summary(&self) -> String {
        let rest: Vec<String> = self
            .0
            .iter()
            .skip(1)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let name = self.get("scenario").and_then(Value::as_str).unwrap_or("?");
        format!("bench {name}: {}", rest.join(", "))
    }
}

/// Runs one scenario to the end and returns its figures, with the process's peak RSS and the
/// build profile appended.
pub async fn run(scenario: Scenario, options: Options) -> Result<Figures, BenchError> {
    crate::startup::install_crypto_provider();
    let figures = match scenario {
        Scenario::Throughput => {
            let size = options.size.unwrap_or(20_000);
            let mut runs = Vec::new();
            for _ in 0..options.repeat.unwrap_or(1).max(1) {
                runs.push(throughput::run(size, &options.target_latency_ms).await?);
            }
            throughput::with_repeats(runs)
        }
        Scenario::LeaverLatency => match options.throttled {
            Some(per_second) => {
                leaver::run_throttled(options.size.unwrap_or(2_000), per_second).await?
            }
            None => leaver::run(options.size.unwrap_or(200)).await?,
        },
        Scenario::RateLimit => rate_limit::run(options.size.unwrap_or(2_000)).await?,
        Scenario::Ingest => ingest::run(options.size.unwrap_or(20_000)).await?,
        Scenario::DeliveryFaults => faults::run(options.size.unwrap_or(500)).await?,
        Scenario::Reconcile if options.apps.is_some_and(|apps| apps > 1) => {
            reconcile_apps::run(
                options.size.unwrap_or(20_000),
                options.apps.unwrap_or(1),
                options.reconcile_concurrency.unwrap_or(2),
                options.dev_target_exe.as_deref(),
            )
            .await?
        }
        Scenario::Reconcile => {
            reconcile::run(
                options.size.unwrap_or(100_000),
                options.dev_target_exe.as_deref(),
            )
            .await?
        }
        Scenario::Saas => saas::run(options.size.unwrap_or(100)).await?,
        Scenario::HrSnapshot => snapshot::run(options.size.unwrap_or(100_000)).await?,
    };
    let peak = peak_rss_mb();
    let mut figures = figures.with("peak_rss_mb", peak.map_or(Value::Null, Value::from));
    // The reconcile scenario holds its target in this process; its share is measured apart.
    if let (Some(peak), Some(target)) = (peak, figures.get("dev_target_mb").and_then(Value::as_f64))
    {
        figures = figures.with("roster_peak_rss_mb", round(peak - target, 1));
    }
    Ok(figures.with("profile", profile()))
}

/// `debug` or `release`: figures from a debug build are not comparable with the targets.
#[must_use]
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The process's peak resident set (VmHWM), in MB; where the dev-target runs in this process
/// (every scenario but `reconcile` from the command line), this is an upper bound for roster
/// alone.
#[must_use]
pub fn peak_rss_mb() -> Option<f64> {
    status_kb("VmHWM:").map(|kb| round(kb / 1024.0, 1))
}

/// The CPU time (user and system) this process has used so far, from its own counters
/// (`getrusage`); `None` where they cannot be read.
#[must_use]
pub fn cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        let micros = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0)
        };
        Some(Duration::from_micros(
            micros(usage.user_time()) + micros(usage.system_time()),
        ))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The machine's load average over the last minute (`/proc/loadavg`): the figures of a run on
/// a busy machine are read with it.
#[must_use]
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process's resident set now (VmRSS), in MB.
#[must_use]
pub fn current_rss_mb() -> Option<f64> {
    status_kb("VmRSS:").map(|kb| round(kb / 1024.0, 1))
}

/// Resets the peak resident set (VmHWM) to the current one (Linux: `5` to
/// `/proc/self/clear_refs`), so that [`peak_rss_mb`] measures from here. Elsewhere, or when
/// refused, the peak stays the process's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_kb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `value` rounded to `digits` decimals, for printing.
#[must_use]
pub fn round(value: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (value * f).round() / f
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
#[must_use]
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    round(sorted[rank - 1].as_secs_f64() * 1000.0, 1)
}

/// `count` per second over `elapsed`.
#[must_use]
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    round(count / elapsed.as_secs_f64().max(1e-9), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&samples[..1], 0.99), 1.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn figures_print_in_order_on_one_line() {
        let f = Figures::new(Scenario::Ingest)
            .with("n", 3)
            .with("per_s", 1.5);
        assert_eq!(f.to_line(), r#"{"scenario":"ingest","n":3,"per_s":1.5}"#);
        assert_eq!(f.to_value()["n"], 3);
        assert_eq!(f.summary(), "bench ingest: n=3, per_s=1.5");
    }

    #[test]
    fn cpu_time_grows_with_work() {
        if cfg!(unix) {
            let before = cpu_time().expect("getrusage");
            let mut x = 0u64;
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            assert!(cpu_time().expect("getrusage") > before, "{x}");
        }
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
