//! `ferry explain --config F --target T (--token F | --claims F)`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry::exchange::TargetSelector;
use ferry::exchange::explain::{ExplainInput, explain};
use ferry::verify::UnverifiedToken;

/// Arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["token", "claims"])))]
pub struct Args {
    #[command(flatten)]
    config: super::embedded::ConfigArg,
    /// Target id.
    #[arg(long)]
    target: String,
    /// A file holding the token (its signature is checked; keys may be fetched).
    #[arg(long)]
    token: Option<PathBuf>,
    /// A JSON file of claims (everything but the signature is checked). `iss`, `aud`,
    /// `iat`, `nbf` and `exp` are filled in where it leaves them out.
    #[arg(long)]
    claims: Option<PathBuf>,
    /// The issuer id the claims come from (default: the one their `iss` names, else the
    /// config's only issuer).
    #[arg(long, requires = "claims")]
    issuer: Option<String>,
    /// Requested scopes (space-separated, as in the `scope` parameter).
    #[arg(long, default_value = "")]
    scope: String,
    /// The client address policies see.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: IpAddr,
    /// A PEM client certificate policies see as `context.client_certificate`, as if it
    /// had been presented over mutual TLS and verified (its chain is not checked here).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// An anomaly kind open for the subject, as policy would see it in
    /// `context.anomalies` (repeatable; e.g. `token_reuse_across_clients`).
    #[arg(long = "anomaly", value_name = "KIND")]
    anomalies: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints each stage; exits 0 when the exchange would be allowed, 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve()?;
    let (snapshot, _warnings) = match super::load_snapshot(config.as_path(), false) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let input = match (&args.token, &args.claims) {
        (Some(path), _) => {
            let raw = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            ExplainInput::Token(
                UnverifiedToken::new(&raw)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
        (None, Some(path)) => {
            let raw =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut claims: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&raw)
                    .with_context(|| format!("{}: not a JSON object of claims", path.display()))?;
            super::complete_claims(
                &snapshot,
                args.issuer.as_deref(),
                "--issuer ID",
                &mut claims,
                super::system_clock().now(),
            )?;
            ExplainInput::Claims(claims)
        }
        (None, None) => anyhow::bail!("give --token or --claims"),
    };
    let scopes: Vec<String> = args
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let client_certificate = match &args.client_cert {
        None => None,
        Some(path) => {
            let chain = ferry::tls::read_certificates(path)
                .map_err(|e| anyhow::anyhow!("--client-cert: {e}"))?;
            let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
            Some(
                ferry::tls::ClientCertificate::from_der(leaf)
                    .map_err(|e| anyhow::anyhow!("--client-cert {}: {e}", path.display()))?,
            )
        }
    };
    let anomalies = ferry::anomaly::kind_names(&args.anomalies)
        .map_err(|e| anyhow::anyhow!("--anomaly: {e}"))?;
    let target = TargetSelector::Audience(args.target.clone());
    let request = ferry::exchange::explain::Request {
        target: &target,
        scopes: &scopes,
        source_ip: args.source_ip,
        client_certificate: client_certificate.as_ref(),
        timestamp: super::system_clock().now(),
        anomalies: &anomalies,
    };
    let rt = super::tokio_runtime()?;
    let report = rt.block_on(explain(&snapshot, input, &request));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if !report.signature_checked {
            println!("NOTE: signature not checked (explaining a claims file)");
        }
        for s in &report.stages {
            // Details carry the token's own values (a subject, an issuer): one line each.
            println!(
                "{:<8} {:<7} {}",
                s.stage,
                s.outcome,
                ferry::text::escape_control(&s.detail)
            );
            if !s.data.is_null() && s.outcome == "pass" {
                println!("{:<16} {}", "", s.data);
            }
        }
        println!(
            "=> {} (config revision {})",
            if report.allowed { "ALLOW" } else { "DENY" },
            report.revision
        );
    }
    Ok(if report.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
