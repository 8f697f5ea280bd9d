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
    let (snapshot, warnings) = match super::load_snapshot(&args.config, false) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    // What `ferry serve` reads when it opens the store.
    if snapshot.config.store.backend == ferry::config::StoreBackend::Redis {
        let mut errs = ferry::config::ConfigErrors::default();
        let _ = ferry::store::read_encryption_keys(&snapshot.config, &mut errs);
        if !errs.is_empty() {
            eprintln!("{errs}");
            return Ok(ExitCode::FAILURE);
        }
    }
    println!(
        "{}: ok: {} issuer(s), {} target(s), {} polic{} (revision {})",
        args.config.display(),
        snapshot.config.issuers.len(),
        snapshot.targets.len(),
        snapshot.policy.len(),
        if snapshot.policy.len() == 1 {
            "y"
        } else {
            "ies"
        },
        snapshot.revision
    );
    Ok(ExitCode::SUCCESS)
}
