//! Commands and exit codes; the only home of `anyhow`.
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::startup;

#[derive(Parser, Debug)]
#[command(
    name = "roster",
    version,
    about = "Identity provisioning orchestrator (SCIM 2.0 client)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// API + workers + scheduler; migrates the database on start. The only command that manages
    /// the bootstrap admin key: ROSTER_ADMIN_TOKEN (32 to 512 characters) creates or rotates it;
    /// unsetting the variable does not revoke it (see revoke-bootstrap-key).
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Re-encrypt app credentials with ROSTER_SECRET_KEY (the old key in
    /// ROSTER_SECRET_KEY_PREVIOUS), then exit. Instances still running on the old key then
    /// refuse to seal new credentials until restarted with the new one.
    RotateKey,
    /// Revoke the bootstrap admin key that ROSTER_ADMIN_TOKEN set (audited), then exit. Unset
    /// ROSTER_ADMIN_TOKEN first, everywhere: `serve` would create the key again.
    RevokeBootstrapKey,
    /// Print the OpenAPI 3 JSON (openapi/openapi.json must equal it).
    Openapi,
    /// In-memory SCIM 2.0 server for demos, tests and benchmarks.
    DevTarget(crate::dev_target::DevTargetArgs),
    /// Run a performance scenario (throughput, leaver latency, rate limit, ingest, reconcile…)
    /// in-process on loopback and print its figures as JSON.
    Bench {
        scenario: crate::bench::Scenario,
        /// Print only the JSON line (no summary on stderr).
        #[arg(long)]
        json: bool,
        /// Scale the scenario's main count (identities, events or samples), e.g. for CI.
        #[arg(long)]
        size: Option<usize>,
        /// `throughput` only: the dev-target answers each call this many ms late, as a SaaS
        /// app across the internet would. Several, comma-separated (`20,100`): the scenario
        /// runs at each and prints the ratio at each.
        #[arg(long, value_delimiter = ',')]
        target_latency_ms: Vec<u64>,
        /// `leaver-latency` only: the app is limited to this many calls/s (5 if no value is
        /// given) and the leavers are posted behind a backlog of `--size` joiners (2000).
        #[arg(long, num_args = 0..=1, default_missing_value = "5")]
        throttled: Option<u32>,
        /// `reconcile` only: this many apps of `--size` accounts each (default 20000), all
        /// due at once, run as the scheduler runs them (at most `ROSTER_RECONCILE_CONCURRENCY`
        /// at a time).
        #[arg(long)]
        apps: Option<usize>,
        /// `throughput` only: run the whole scenario this many times, each with a fresh roster,
        /// dev-target and raw loop, and add `repeats`: each run's ratios and CPU figures and
        /// their medians. On a shared machine one run's CPU figures move by ±15 %.
        #[arg(long)]
        repeat: Option<usize>,
    },
    /// See roster work in one command: dev-target + roster in this process, joiners, a mover,
    /// a leaver, drift and a ghost account, reconciled.
    Demo,
    /// One reconciliation run of an app; prints its report.
    Reconcile(ReconcileArgs),
    /// Send an HR population file (CSV, NDJSON or a JSON array) to a running roster
    /// (ROSTER_URL, ROSTER_API_KEY), wait until it is applied, and print the diff. Exits
    /// non-zero with the reason when the snapshot is rejected or held by the leaver guard.
    HrSnapshot(HrSnapshotArgs),
}

#[derive(clap::Args, Debug)]
struct HrSnapshotArgs {
    /// The file: `.csv` (text/csv), `.ndjson` or `.jsonl` (one employee a line), `.json` (an
    /// array of employees).
    file: std::path::PathBuf,
    /// The HR system the file comes from (default `hr`): only its people become leavers by
    /// being absent.
    #[arg(long)]
    source: Option<String>,
    /// When the export was taken (RFC 3339; default now).
    #[arg(long)]
    as_of: Option<String>,
    /// Show the diff; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the snapshot as one JSON document instead of lines.
    #[arg(long)]
    json: bool,
    /// Where roster listens.
    #[arg(long, env = "ROSTER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(clap::Args, Debug)]
struct ReconcileArgs {
    /// The app's id.
    #[arg(long)]
    app: String,
    /// Classify and report only: nothing is written to the target.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON (id, app_id, state, dry_run, counts, writes, items) instead of
    /// a summary.
    #[arg(long)]
    json: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        use std::io::Write;
        // A closed pipe (`roster openapi | head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{}", crate::api::spec_json());
        return ExitCode::SUCCESS;
    }
    // Declared before `runtime`, so it drops after it: the last batch of spans is flushed.
    let _telemetry = match cli.command {
        Command::Demo => crate::telemetry::init_with("roster", "warn"),
        _ => crate::telemetry::init("roster"),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roster: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve().await,
            Command::Migrate => migrate().await,
            Command::RotateKey => rotate_key().await,
            Command::RevokeBootstrapKey => revoke_bootstrap_key().await,
            Command::Openapi => Ok(()),
            Command::DevTarget(args) => crate::dev_target::run(args).await.context("dev-target"),
            Command::Demo => crate::demo::run().await.context("demo"),
            Command::Reconcile(args) => reconcile(args).await,
            Command::HrSnapshot(args) => hr_snapshot(args).await,
            Command::Bench {
                scenario,
                json,
                size,
                target_latency_ms,
                throttled,
                apps,
                repeat,
            } => {
                let options = crate::bench::Options {
                    size,
                    target_latency_ms,
                    throttled,
                    apps,
                    repeat,
                    reconcile_concurrency: Some(
                        crate::config::Config::from_env()
                            .context("configuration")?
                            .reconcile_concurrency,
                    ),
                    // The dev-target of `reconcile` runs as a process of its own: this one.
                    dev_target_exe: std::env::current_exe().ok(),
                };
                bench(scenario, json, options).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<crate::bench::BenchError>()
                .is_some_and(crate::bench::BenchError::is_not_available) =>
        {
            eprintln!("roster: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("roster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `roster hr-snapshot`: streams the file up (a byte bar on a terminal), then follows the
/// snapshot until it settles (an applied / total bar while it applies).
async fn hr_snapshot(args: HrSnapshotArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;

    use futures::StreamExt;

    let key = std::env::var("ROSTER_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .context("ROSTER_API_KEY is not set: the API key to send the snapshot with")?;
    let content_type = match args.file.extension().and_then(|e| e.to_str()) {
        Some("ndjson" | "jsonl") => "application/x-ndjson",
        Some("json") => "application/json",
        _ => "text/csv",
    };
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let interactive =
        !args.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let bar = interactive.then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(size),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("sending");
        bar
    });
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let (Some(bar), Ok(chunk)) = (&counter, chunk) {
            bar.inc(chunk.len() as u64);
        }
    });
    let base = args.url.trim_end_matches('/').to_owned();
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(source) = &args.source {
        query.push(("source", source.clone()));
    }
    if let Some(as_of) = &args.as_of {
        query.push(("as_of", as_of.clone()));
    }
    if args.dry_run {
        query.push(("dry_run", "true".into()));
    }
    // reqwest is built without a default TLS provider: roster installs its one (ring).
    crate::scim::install_crypto_provider();
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{base}/api/v1/hr/snapshots"))
        .bearer_auth(&key)
        .header("content-type", content_type)
        .query(&query)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("sending the snapshot to {base}"))?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        anyhow::bail!(
            "the snapshot was refused ({status}): {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    let mut snapshot = body;
    let id = snapshot["id"].as_str().unwrap_or_default().to_owned();
    if let Some(bar) = &bar {
        bar.set_position(0);
        bar.set_length(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} changes")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    let busy = |s: &serde_json::Value| {
        matches!(
            s["state"].as_str(),
            Some("received" | "diffing" | "applying")
        )
    };
    while !args.dry_run && busy(&snapshot) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let answer = http
            .get(format!("{base}/api/v1/hr/snapshots/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .context("following the snapshot")?;
        if !answer.status().is_success() {
            anyhow::bail!("following the snapshot: {}", answer.status());
        }
        snapshot = answer.json().await.context("reading the snapshot")?;
        if let Some(bar) = &bar {
            bar.set_message(snapshot["state"].as_str().unwrap_or_default().to_owned());
            bar.set_length(snapshot["progress"]["total"].as_u64().unwrap_or(0));
            bar.set_position(snapshot["progress"]["applied"].as_u64().unwrap_or(0));
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let state = snapshot["state"].as_str().unwrap_or_default().to_owned();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        let c = &snapshot["counts"];
        println!(
            "snapshot {id}{}: {state}",
            if args.dry_run { " (dry run)" } else { "" }
        );
        println!(
            "rows {}, joiners {}, movers {}, leavers {}, unchanged {}, invalid {}",
            c["rows"], c["joiners"], c["movers"], c["leavers"], c["unchanged"], c["invalid"]
        );
        for kind in ["joiners", "movers", "leavers"] {
            let ids: Vec<&str> = snapshot["changes"][kind]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            if !ids.is_empty() {
                println!("{kind}: {}", ids.join(", "));
            }
        }
    }
    match state.as_str() {
        "applied" => Ok(()),
        other => anyhow::bail!(
            "the snapshot is {other}: {}",
            snapshot["reason"]
                .as_str()
                .unwrap_or("see GET /api/v1/hr/snapshots/{id}")
        ),
    }
}

async fn bench(
    scenario: crate::bench::Scenario,
    json: bool,
    options: crate::bench::Options,
) -> anyhow::Result<()> {
    use std::io::Write;
    let figures = crate::bench::run(scenario, options).await?;
    writeln!(std::io::stdout(), "{}", figures.to_line()).context("writing the figures")?;
    if !json {
        eprintln!("{}", figures.summary());
    }
    Ok(())
}

async fn migrate() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let db = crate::store::connect(&config.database_url, 1).await?;
    crate::store::migrate(&db).await?;
    eprintln!("roster: migrations applied");
    Ok(())
}

async fn rotate_key() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // `open`, not `build`: only `serve` manages the bootstrap admin key.
    let roster = startup::open(config).await.context("starting roster")?;
    let rotated = roster.rotate_credentials().await?;
    println!(
        "roster: re-encrypted {rotated} app credential(s) with key {}",
        roster.secrets().key_id()
    );
    Ok(())
}

async fn revoke_bootstrap_key() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    if config.admin_token.is_some() {
        anyhow::bail!(
            "ROSTER_ADMIN_TOKEN is set: `roster serve` would create the bootstrap key again at its \
             next start; unset it (for every instance) and run this command again"
        );
    }
    let roster = startup::open(config).await.context("starting roster")?;
    if roster.revoke_bootstrap_key().await? {
        println!("roster: revoked the bootstrap admin key");
    } else {
        println!("roster: there is no bootstrap admin key");
    }
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let listen = config.listen.clone();
    let (roster, generated) = startup::build(config).await.context("starting roster")?;
    if let Some(token) = generated {
        // Printed once, on stdout and not through the logger, so that it never reaches a log
        // pipeline: there is no other way to learn it.
        println!("roster: created the first admin API key (shown once, store it now):");
        println!("{}", token.expose_secret());
    }
    let server = startup::serve(roster, &listen).await?;
    tracing::info!(addr = %server.addr, "roster listening; API at /api/v1, docs at /docs");
    let stop = server.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutting down");
        stop.cancel();
    });
    let engine = server.engine;
    let scheduler = server.scheduler;
    server.handle.await.context("server task")??;
    if let Some(engine) = engine {
        engine.await.context("delivery engine")?;
    }
    if let Some(scheduler) = scheduler {
        scheduler.await.context("reconcile scheduler")?;
    }
    tracing::info!("Stopped");
    Ok(())
}

/// Items the CLI prints at most (the API pages the same report with `?limit=`).
const CLI_MAX_ITEMS: u64 = 100_000;

/// `roster reconcile`: one run in this process, in the app's own mode. In fix mode the run
/// only enqueues jobs (lane `reconcile`); this command then runs the delivery engine itself until
/// those jobs are done, so that the fixes are applied when it returns (a `roster serve` on the
/// same database would deliver them as well; leases keep the two from sending a job twice).
async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use std::sync::Arc;

    use crate::reconcile::run::RunProgress;
    use crate::service::reconcile::RunOptions;

    let config = Config::from_env()?;
    // `open`, not `build`: only `serve` manages the bootstrap admin key.
    let roster = startup::open(config).await.context("starting roster")?;
    let run = roster
        .begin_reconcile(
            None,
            &args.app,
            RunOptions {
                dry_run: args.dry_run,
                mode: None,
            },
        )
        .await
        .context("starting the run")?;

    // A progress bar only for a person at a terminal: never with --json, and never when
    // either stream is redirected (stdout then carries output for a program, and stderr a log).
    let progress = Arc::new(RunProgress::default());
    let interactive =
        !args.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let bar = interactive.then(|| show_progress(progress.clone()));
    let outcome = roster.run_reconcile_observed(&run.id, &progress).await;
    if let Some((task, bar)) = bar {
        task.abort();
        bar.finish_and_clear();
    }

    if let Ok(done) = &outcome
        && done.writes > 0
    {
        deliver_reconcile_jobs(&roster, &run.app_id).await?;
    }

    let report = roster
        .reconcile_report(&run.id, None, CLI_MAX_ITEMS)
        .await
        .context("reading the report")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.report)?);
    } else {
        print_summary(&report);
    }
    match outcome {
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(e).context("the reconcile run failed")),
    }
}

/// An `indicatif` bar on stderr, fed from the run's progress every 100 ms: a spinner with the
/// accounts read until the target sends `totalResults`, then read / total and the time left.
fn show_progress(
    progress: std::sync::Arc<crate::reconcile::run::RunProgress>,
) -> (tokio::task::JoinHandle<()>, indicatif::ProgressBar) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} reconciling: {pos} accounts read")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let counted = ProgressStyle::with_template(
        "{spinner} reconciling [{bar:30}] {pos}/{len} accounts read, {eta} left",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let (read, total) = progress.get();
            if let Some(total) = total
                && shown.length() != Some(total)
            {
                shown.set_length(total);
                shown.set_style(counted.clone());
            }
            shown.set_position(read);
            shown.tick();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    (task, bar)
}

/// Runs the delivery engine until the app has no pending or running reconcile-lane job.
async fn deliver_reconcile_jobs(
    roster: &crate::service::Roster,
    app_id: &str,
) -> anyhow::Result<()> {
    use crate::delivery::engine::{self, EngineConfig};

    let stop = tokio_util::sync::CancellationToken::new();
    let config = EngineConfig {
        workers: roster.config().workers,
        probe_interval: roster.config().quarantine_probe,
        ..EngineConfig::default()
    };
    let engine = engine::start(roster.delivery(), config, stop.clone());
    eprintln!("roster: delivering the run's fixes");
    let result = loop {
        match roster.reconcile_jobs_outstanding(app_id).await {
            Ok(0) => break Ok(()),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Err(e) => break Err(anyhow::anyhow!(e).context("watching the queue")),
        }
    };
    stop.cancel();
    engine.await.context("delivery engine")?;
    result
}

fn print_summary(report: &crate::service::reconcile::RunReport) {
    use crate::reconcile::Class;

    let r = &report.report;
    println!(
        "run {} of app {}: {}{}",
        r.id,
        r.app_id,
        r.state.as_str(),
        if r.dry_run { " (dry run)" } else { "" }
    );
    for class in Class::ALL {
        println!("  {:<10} {}", class.as_str(), r.counts.get(class));
    }
    println!("  jobs enqueued (writes): {}", r.writes);
    let held = report.held.iter().filter(|h| **h).count();
    if held > 0 {
        println!(
            "  {held} deprovisions held by the deletion guard: approve with POST /api/v1/reconcile-runs/{}/approve",
            r.id
        );
    }
    if let Some(error) = &report.error {
        println!("  error: {error}");
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
