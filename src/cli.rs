//! Commands and exit codes; the only home of `anyhow`.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "roster", version, about = "Identity provisioning orchestrator (SCIM 2.0 client)")]
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
    /// Print the OpenAPI 3 JSON.
    Openapi,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = cli.command;
    ExitCode::SUCCESS
}
