//! `ferry revoke --config F (--subject S | --issuer I --sub X | --jti J | --target T)`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (its `[store]` must be shared: redis).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// A canonical subject (as the mapping produces it).
    #[arg(long)]
    subject: Option<String>,
    /// An issuer id (with `--sub`).
    #[arg(long, requires = "sub")]
    issuer: Option<String>,
    /// A token `sub` at that issuer.
    #[arg(long, requires = "issuer")]
    sub: Option<String>,
    /// A token id: a subject token's or a Ferry-issued token's `jti`.
    #[arg(long)]
    jti: Option<String>,
    /// A target id.
    #[arg(long)]
    target: Option<String>,
    /// Why (recorded with the revocation).
    #[arg(long)]
    reason: Option<String>,
}

/// Records a revocation in the shared store; every replica refuses on its next request.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snapshot, _) = match super::load_snapshot(&args.config, false) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if snapshot.config.store.backend != ferry::config::StoreBackend::Redis {
        anyhow::bail!(
            "the memory store lives inside the server process; revoke there with `POST /admin/revocations`, or configure the redis store"
        );
    }
    let target = ferry::http::admin::revocation_target(
        args.subject,
        args.issuer,
        args.sub,
        args.jti,
        args.target,
    )
    .map_err(|_| {
        anyhow::anyhow!("give exactly one of: --subject; --issuer and --sub; --jti; --target")
    })?;
    let store = ferry::store::open(&snapshot.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let revocation = snapshot.revocation(target, args.reason, super::system_clock().now());
    let rt = super::tokio_runtime()?;
    let purged = rt
        .block_on(store.revoke(&revocation))
        .context("could not record the revocation (is Redis reachable?)")?;
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({"revocation": revocation, "purged": purged}))?
    );
    Ok(ExitCode::SUCCESS)
}
