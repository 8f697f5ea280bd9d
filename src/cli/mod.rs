//! Subcommands, one file each.

mod agent;
mod audit;
mod audit_report;
mod check;
mod dev;
mod exchange;
mod explain;
mod impact;
mod keys;
mod revoke;
mod serve;
mod test_cases;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ferry::clock::{SharedClock, SystemClock};
use ferry::config::Config;
use ferry::snapshot::{BuildOptions, Snapshot};

/// Ferry: exchange workload OIDC tokens for short-lived credentials.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "FERRY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written (level from `RUST_LOG`, default `info`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::Args),
    /// Validate a config (CEL, Cedar, files) and lint risky rules; exit 1 on errors.
    Check(check::Args),
    /// Show each stage's outcome for a token or claims file, issuing nothing.
    Explain(explain::Args),
    /// Run trust-mapping test cases (condition, mapping, target, policy); exit 1 on any
    /// failure.
    Test(test_cases::Args),
    /// Replay recorded decisions (`[audit] record_identity`) against an old and a new
    /// config and report every one that changes; exit 2 on a change `--fail-on` names.
    Impact(impact::Args),
    /// Exchange a token file for a target's credentials (a client of a running Ferry).
    Exchange(exchange::Args),
    /// Serve the cloud SDKs' credential endpoints (AWS container credentials, GCP
    /// metadata, Azure managed identity) from Ferry, next to a workload.
    Agent(agent::Args),
    /// Manage Ferry's signing keys.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Revoke a subject, an issuer's sub, a token id or a target on every replica.
    Revoke(revoke::Args),
    /// Verify the audit trail; report unused entitlements from it.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Development helpers (never for production).
    #[command(subcommand)]
    Dev(dev::Command),
}

impl LogFormat {
    /// The library's format.
    pub fn to_lib(self) -> ferry::telemetry::LogFormat {
        match self {
            LogFormat::Json => ferry::telemetry::LogFormat::Json,
            LogFormat::Pretty => ferry::telemetry::LogFormat::Pretty,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `serve` sets up logging itself, once its config (`[telemetry]`) is read.
    let _telemetry = match &cli.command {
        Command::Serve(_) => None,
        _ => ferry::telemetry::init(cli.log_format.to_lib(), "info", None).ok(),
    };
    match cli.command {
        Command::Serve(a) => serve::run(a, cli.log_format),
        Command::Check(a) => check::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Test(a) => test_cases::run(a),
        Command::Impact(a) => impact::run(a),
        Command::Exchange(a) => exchange::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Keys(c) => keys::run(c),
        Command::Audit(c) => audit::run(c),
        Command::Revoke(a) => revoke::run(a),
        Command::Dev(c) => dev::run(c),
    }
}

/// The system clock, shared.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// Loads and compiles a config, printing every problem as `file: entry: problem`.
pub fn load_snapshot(
    path: &Path,
    require_keys: bool,
) -> Result<(Snapshot, Vec<ferry::config::Problem>), ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Err(ExitCode::FAILURE);
        }
    };
    let options = BuildOptions {
        clock: system_clock(),
        require_keys,
        previous_ephemeral: None,
    };
    Snapshot::build(config, &options).map_err(|errs| {
        eprintln!("{errs}");
        ExitCode::FAILURE
    })
}

/// `--config`, defaulting to `config/dev.toml`.
pub fn default_config() -> PathBuf {
    PathBuf::from("config/dev.toml")
}

/// A multi-threaded tokio runtime for commands that need one.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
