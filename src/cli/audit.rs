//! `ferry audit verify FILE… [--jwks F | --key F]`, `ferry audit report …`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check audit files (oldest first): the hash chain, its start, and with `--jwks` or
    /// `--key` every signed checkpoint; name the first broken line.
    Verify {
        /// Audit files, oldest first (e.g. audit.log.2 audit.log.1 audit.log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Ferry's JWKS document (a saved `/.well-known/jwks.json`) to check checkpoint
        /// signatures with.
        #[arg(long, conflicts_with = "key")]
        jwks: Option<PathBuf>,
        /// Ferry's public signing key (PEM) to check checkpoint signatures with.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Report entitlements nobody uses: permits that allowed nothing, targets nobody
    /// obtained, subjects that stopped using a target, permits broader than their use.
    Report(super::audit_report::Args),
}

/// Runs an audit command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let (files, jwks, key) = match command {
        Command::Verify { files, jwks, key } => (files, jwks, key),
        Command::Report(args) => return super::audit_report::run(args),
    };
    let keys = match (jwks, key) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                ferry::audit::CheckpointKeys::from_jwks(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
        (None, Some(path)) => Some(ferry::audit::CheckpointKeys::Pem(
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        (None, None) => None,
    };
    match ferry::audit::verify_files(&files, keys.as_ref()) {
        Ok(report) => {
            let signed = if keys.is_some() {
                format!("{} signed checkpoint(s) verified", report.checkpoints)
            } else {
                "checkpoint signatures not checked (pass --jwks or --key)".to_owned()
            };
            println!(
                "ok: {} line(s) in {} file(s), chain intact; {signed}",
                report.lines,
                files.len()
            );
            if keys.is_some() && report.unsigned_tail > 0 {
                println!(
                    "note: the last {} line(s) come after the last checkpoint: only the chain covers them",
                    report.unsigned_tail
                );
            }
            if !report.closed {
                println!(
                    "note: the trail does not end with a shutdown or rotation checkpoint: Ferry is still writing it, stopped without shutting down, or lines were cut from its end"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(brk) => {
            eprintln!("{}", ferry::text::escape_control(&brk.to_string()));
            Ok(ExitCode::FAILURE)
        }
    }
}
