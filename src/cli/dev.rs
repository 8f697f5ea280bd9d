//! `ferry dev token`: mint a token from the dev issuer, whose key is built into the binary
//! (and ships in `config/dev/`). That key is public; the dev issuer must never be trusted
//! outside development.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value};

/// Development commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a token signed by the dev issuer (its key is built in; `ferry serve --dev`
    /// trusts it).
    Token(TokenArgs),
}

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// A claim, `name=value`; the value is parsed as JSON when it is JSON, else a string.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// Sign with this RSA private key (PEM) instead of the built-in dev issuer's.
    #[arg(long)]
    key: Option<PathBuf>,
    /// `iss`.
    #[arg(long, default_value = "https://dev-issuer.ferry.invalid")]
    issuer: String,
    /// `aud`.
    #[arg(long, default_value = "ferry")]
    audience: String,
    /// Lifetime.
    #[arg(long, default_value = "10m")]
    ttl: humantime::Duration,
    /// `kid` in the header.
    #[arg(long, default_value = "dev-1")]
    kid: String,
}

/// Runs a dev command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Token(args) = command;
    let pem = match &args.key {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => super::embedded::DEV_ISSUER_KEY.as_bytes().to_vec(),
    };
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&pem).context("the key is not an RSA PEM key")?;
    let now = super::system_clock().now();
    let ttl = i64::try_from(args.ttl.as_secs()).unwrap_or(600);
    let mut claims = Map::new();
    claims.insert("iss".into(), args.issuer.into());
    claims.insert("aud".into(), args.audience.into());
    claims.insert("sub".into(), "dev-workload".into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl).into());
    claims.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .with_context(|| format!("`{claim}` is not NAME=VALUE"))?;
        let value = serde_json::from_str::<Value>(value)
            .unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(name.to_owned(), value);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(args.kid);
    header.typ = Some("JWT".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).context("signing failed")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
