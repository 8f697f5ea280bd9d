//! `ferry check --config F`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, short, default_value_os_t = super::default_config())]
    config: PathBuf,
}

/// Validates everything and prints every problem; exit 1 when there is an error.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (runtime, warnings) = match super::load_runtime(&args.config, false) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    // What `ferry serve` reads when it opens the store.
    if runtime.config.store.backend == "redis" {
        let mut errs = ferry::config::ConfigErrors::default();
        let _ = ferry::store::read_encryption_keys(&runtime.config, &mut errs);
        if !errs.is_empty() {
            eprintln!("{errs}");
            return Ok(ExitCode::FAILURE);
        }
    }
    println!(
        "{}: ok: {} issuer(s), {} target(s), {} polic{} (revision {})",
        args.config.display(),
        runtime.config.issuers.len(),
        runtime.targets.len(),
        runtime.policy.len(),
        if runtime.policy.len() == 1 {
            "y"
        } else {
            "ies"
        },
        runtime.revision
    );
    Ok(ExitCode::SUCCESS)
}
