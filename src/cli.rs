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
    /// API + workers + scheduler; migrates the database on start.
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Print the OpenAPI 3 JSON (openapi/openapi.json must equal it).
    Openapi,
    /// In-memory SCIM 2.0 server for demos, tests and benchmarks.
    DevTarget(crate::dev_target::DevTargetArgs),
    /// Run a performance scenario of DESIGN §8 in-process and print its figures as JSON.
    Bench {
        scenario: crate::bench::Scenario,
        /// Print only the JSON line (no summary on stderr).
        #[arg(long)]
        json: bool,
        /// Scale the scenario's main count (identities, events or samples), e.g. for CI.
        #[arg(long)]
        size: Option<usize>,
    },
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
    let _telemetry = crate::telemetry::init("roster");
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
            Command::Openapi => Ok(()),
            Command::DevTarget(args) => crate::dev_target::run(args).await.context("dev-target"),
            Command::Bench {
                scenario,
                json,
                size,
            } => bench(scenario, json, size).await,
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

async fn bench(
    scenario: crate::bench::Scenario,
    json: bool,
    size: Option<usize>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let figures = crate::bench::run(scenario, crate::bench::Options { size }).await?;
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
    server.handle.await.context("server task")??;
    if let Some(engine) = engine {
        engine.await.context("delivery engine")?;
    }
    tracing::info!("Stopped");
    Ok(())
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
