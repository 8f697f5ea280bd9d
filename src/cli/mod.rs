//! Subcommands, one file each.

mod agent;
mod audit;
mod audit_report;
mod check;
mod dev;
mod embedded;
mod exchange;
mod explain;
mod impact;
mod keys;
mod revoke;
mod serve;
mod test_cases;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ferry::clock::{SharedClock, SystemClock};
use ferry::config::Config;
use ferry::snapshot::{BuildOptions, Snapshot};

/// `ferry --version`: the version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_COMMIT"), ")");

/// Ferry: exchange workload OIDC tokens for short-lived credentials.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version = VERSION,
    about,
    after_help = "Try it: `ferry serve --dev` (a development config built in), then in another shell\n`ferry dev token --claim sub=alice --claim groups='[\"deployers\"]'`.\n\nLogs: `--log-format` (or FERRY_LOG_FORMAT) goes before the command; the level is RUST_LOG.\nColour only on a terminal, and not with NO_COLOR set."
)]
pub struct Cli {
    /// Log format (before the command: `ferry --log-format json serve …`).
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, env = "FERRY_LOG_FORMAT")]
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
    #[command(
        after_help = "Examples:\n  ferry serve --dev\n  ferry --log-format json serve --config /etc/ferry/ferry.toml\n\nExit codes: 0 stopped cleanly (SIGINT/SIGTERM); 1 the config, a key or the listener failed."
    )]
    Serve(serve::Args),
    /// Validate a config (CEL, Cedar, files) and lint risky rules; exit 1 on errors.
    #[command(
        after_help = "Example:\n  ferry check --config config/ferry.example.toml\n\nExit codes: 0 valid (warnings are printed, and allowed); 1 errors, printed as `file: entry: problem`."
    )]
    Check(check::Args),
    /// Show each stage's outcome for a token or claims file, issuing nothing.
    #[command(
        after_help = "Example:\n  ferry explain --config config/ferry.example.toml --target internal-api \\\n    --claims config/examples/github-claims.json --scope read --source-ip 10.1.2.3\n\nExit codes: 0 the exchange would be allowed; 1 denied, or the input could not be read."
    )]
    Explain(explain::Args),
    /// Run trust-mapping test cases (condition, mapping, target, policy); exit 1 on any
    /// failure.
    #[command(
        after_help = "Examples:\n  ferry test --config config/ferry.example.toml\n  ferry test --config ferry.toml tests/*.ferry-test.toml --junit ferry-test.xml\n  ferry test --config ferry.toml --init tests/ferry.ferry-test.toml\n\nExit codes: 0 every case passed; 1 a case failed, or a file could not be read."
    )]
    Test(test_cases::Args),
    /// Replay recorded decisions (`[audit] record_identity`) against an old and a new
    /// config and report every one that changes; exit 2 on a change `--fail-on` names.
    #[command(
        after_help = "Example:\n  ferry impact --from base/ferry.toml --to ferry.toml --audit audit.log.1 audit.log \\\n    --fail-on allow-to-deny,deny-to-allow\n\nExit codes: 0 no change of a `--fail-on` kind; 2 such a change; 1 a config or file could not be read."
    )]
    Impact(impact::Args),
    /// Exchange a token file for a target's credentials (a client of a running Ferry).
    #[command(
        after_help = "Examples:\n  ferry exchange --url https://ferry.example.com --target aws-deploy \\\n    --token-source github-actions --audience https://ferry.example.com --format env\n  ferry exchange --url http://127.0.0.1:8080 --target internal-api --token-file token.jwt\n\nExit codes: 0 credentials printed; 1 refused (the error and its description on stderr), or unreachable."
    )]
    Exchange(exchange::Args),
    /// Serve the cloud SDKs' credential endpoints (AWS container credentials, GCP
    /// metadata, Azure managed identity) from Ferry, next to a workload.
    #[command(
        after_help = "Examples:\n  ferry agent --config agent.toml --check\n  eval \"$(ferry agent --config agent.toml --print-env)\"; ferry agent --config agent.toml\n\nExit codes: 0 stopped cleanly, or --check/--print-env succeeded; 1 the config is invalid or the listener failed."
    )]
    Agent(agent::Args),
    /// Manage Ferry's signing keys.
    #[command(
        subcommand,
        after_help = "Example:\n  ferry keys generate --config /etc/ferry/ferry.toml\n\nExit codes: 0 done; 1 the config or the key directory could not be used."
    )]
    Keys(keys::Command),
    /// Revoke a subject, an issuer's sub, a token id or a target on every replica.
    #[command(
        after_help = "Example:\n  ferry revoke --config /etc/ferry/ferry.toml --subject 'github:repo:acme/app:ref:refs/heads/main' \\\n    --reason 'leaked runner'\n\nExit codes: 0 recorded in the shared store; 1 the store is not shared (redis) or could not be reached."
    )]
    Revoke(revoke::Args),
    /// Verify the audit trail; report unused entitlements from it.
    #[command(
        subcommand,
        after_help = "Examples:\n  ferry audit verify --jwks jwks.json audit.log.1 audit.log\n  ferry audit report --config ferry.toml --since 30d audit.log\n\nExit codes: verify 0 intact, 1 a line altered, removed or reordered; report 0, 1 unreadable input."
    )]
    Audit(audit::Command),
    /// Development helpers (never for production).
    #[command(
        subcommand,
        after_help = "Example:\n  ferry dev token --claim sub=alice --claim groups='[\"deployers\"]' > \"$dir/token\"\n\nExit codes: 0 token printed; 1 a bad claim or key."
    )]
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
        previous_managed: None,
        metrics: Default::default(),
    };
    Snapshot::build(config, &options).map_err(|errs| {
        eprintln!("{errs}");
        ExitCode::FAILURE
    })
}

/// Claims to explain or test, completed where they leave it out: `iss` and `aud` from the
/// issuer (`issuer`, else the one whose URL `iss` names, else the config's only one;
/// `hint` says how to name it) and a current lifetime (`iat`, `nbf`, `exp` in 5 minutes).
pub fn complete_claims(
    snap: &Snapshot,
    issuer: Option<&str>,
    hint: &str,
    claims: &mut serde_json::Map<String, serde_json::Value>,
    now: i64,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let issuers = &snap.config.issuers;
    let named_by_iss = claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .and_then(|iss| issuers.iter().find(|i| i.issuer == iss));
    let chosen = match (issuer, named_by_iss) {
        (Some(id), _) => issuers
            .iter()
            .find(|i| i.id == id)
            .with_context(|| format!("no issuer `{id}` in the config"))?,
        (None, Some(i)) => i,
        (None, None) => match issuers.as_slice() {
            [only] => only,
            _ => anyhow::bail!("the config has several issuers: name one ({hint})"),
        },
    };
    claims
        .entry("iss")
        .or_insert_with(|| chosen.issuer.clone().into());
    if let Some(aud) = chosen.audiences.first() {
        claims.entry("aud").or_insert_with(|| aud.clone().into());
    }
    claims.entry("iat").or_insert_with(|| now.into());
    claims.entry("nbf").or_insert_with(|| now.into());
    claims.entry("exp").or_insert_with(|| (now + 300).into());
    Ok(())
}

/// A multi-threaded tokio runtime for commands that need one.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
