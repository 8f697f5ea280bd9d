//! `ferry keys generate|rotate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry::config::Config;
use ferry::issuer::KeyDir;

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the first signing key in the config's `keys_dir`.
    Generate(Args),
    /// Make a new active key; old keys stay published until their tokens expire.
    Rotate(Args),
}

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (its `[signing]` names the directory and algorithm).
    #[arg(long, short)]
    config: PathBuf,
}

/// Runs a key command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let (Command::Generate(args) | Command::Rotate(args)) = &command;
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys_dir = config
        .signing
        .keys_dir
        .as_ref()
        .map(|d| config.source.resolve(d))
        .context("the config has no `signing.keys_dir` (ephemeral keys are not stored)")?;
    let alg = ferry::verify::parse_algorithm(&config.signing.algorithm)
        .context("unsupported signing.algorithm")?;
    let dir = KeyDir::new(&keys_dir);
    let now = super::system_clock().now();
    // Retired keys stay published for the longest token lifetime plus a margin.
    let retain = config.max_token_lifetime() + std::time::Duration::from_secs(300);
    match command {
        Command::Generate(_) => {
            let kid = dir.generate(alg, now)?;
            println!(
                "generated {} key {kid} in {}",
                config.signing.algorithm,
                keys_dir.display()
            );
        }
        Command::Rotate(_) => {
            let (kid, deleted) = dir.rotate(alg, now, retain)?;
            println!(
                "new active {} key {kid} in {}; previous keys stay published for {}s",
                config.signing.algorithm,
                keys_dir.display(),
                retain.as_secs()
            );
            for d in deleted {
                println!("deleted expired key {d}");
            }
            println!("reload or restart Ferry to sign with the new key");
        }
    }
    Ok(ExitCode::SUCCESS)
}
