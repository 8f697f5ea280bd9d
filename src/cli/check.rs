//! `ferry check --config F`.

use std::process::ExitCode;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::embedded::ConfigArg,
}

/// Validates everything and prints every problem; exit 1 when there is an error.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve()?;
    let (snapshot, warnings) = match super::load_snapshot(config.as_path(), false) {
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
        config.name(),
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
