//! `ferry keys generate|rotate|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry::config::Config;
use ferry::config::signing::SigningBackend;
use ferry::issuer::KeyDir;

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the first signing key in the config's `keys_dir` (`backend = "files"`).
    Generate(Args),
    /// Make a new active key in `keys_dir`; old keys stay published until their tokens
    /// expire (`backend = "files"`; a key manager's keys rotate in the config).
    Rotate(Args),
    /// List the keys Ferry publishes and which one signs, from `keys_dir` or the key
    /// manager (which is asked for each public key).
    #[command(
        after_help = "Examples:\n  ferry keys list --config ferry.toml\n  ferry keys list --config ferry.toml --check   # also sign once with the active key"
    )]
    List(ListArgs),
}

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (its `[signing]` names the directory and algorithm).
    #[arg(long, short)]
    config: PathBuf,
}

/// `ferry keys list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Sign a probe with the active key and verify it against the published key: shows
    /// that Ferry may sign (`kms:Sign`, the PKCS#11 PIN, …), not only read.
    #[arg(long)]
    check: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a key command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let (Command::Generate(Args { config: path }) | Command::Rotate(Args { config: path })) =
        &command
    else {
        let Command::List(args) = command else {
            return Ok(ExitCode::FAILURE);
        };
        return list(&args);
    };
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.signing.backend != SigningBackend::Files {
        anyhow::bail!(
            "[signing] backend = \"{}\" keeps the keys: create the new key in the key manager, add it to `published_keys`, reload, and once every verifier has fetched the JWKS make it `active_key` (see docs/security.md, Keys in a key manager)",
            config.signing.backend.name()
        );
    }
    let keys_dir = config
        .signing
        .keys_dir
        .as_ref()
        .map(|d| config.source.resolve(d))
        .context("the config has no `signing.keys_dir` (ephemeral keys are not stored)")?;
    let algorithm = config.signing.file_algorithm();
    let alg = ferry::verify::parse_algorithm(algorithm).context("unsupported signing.algorithm")?;
    let dir = KeyDir::new(&keys_dir);
    let now = super::system_clock().now();
    // Retired keys stay published for the longest token lifetime plus a margin.
    let retain = config.max_token_lifetime() + std::time::Duration::from_secs(300);
    match command {
        Command::Generate(_) => {
            let kid = dir.generate(alg, now)?;
            println!("generated {algorithm} key {kid} in {}", keys_dir.display());
        }
        Command::Rotate(_) => {
            let (kid, deleted) = dir.rotate(alg, now, retain)?;
            println!(
                "new active {algorithm} key {kid} in {}; previous keys stay published for {}s",
                keys_dir.display(),
                retain.as_secs()
            );
            for d in deleted {
                println!("deleted expired key {d}");
            }
            println!("reload or restart Ferry to sign with the new key");
        }
        Command::List(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = super::system_clock().now();
    let backend = config.signing.backend;
    let ring = if backend == SigningBackend::Files {
        let dir = config
            .signing
            .keys_dir
            .as_ref()
            .map(|d| config.source.resolve(d))
            .context("the config has no `signing.keys_dir` (an ephemeral key is not stored)")?;
        let retain = config.max_token_lifetime() + std::time::Duration::from_secs(300);
        KeyDir::new(&dir).load(now, retain)?
    } else {
        ferry::issuer::managed::open(&config, now).map_err(|e| anyhow::anyhow!("signing: {e}"))?
    };
    let alg = |kid: &str| {
        ring.published
            .iter()
            .find(|j| j.common.key_id.as_deref() == Some(kid))
            .and_then(|j| j.common.key_algorithm)
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    if ring.managed.is_empty() {
        rows.push(serde_json::json!({"kid": ring.active.kid, "algorithm": alg(&ring.active.kid), "state": "active", "created_at": ring.active.created_at}));
        for (kid, retired_at) in &ring.retired {
            rows.push(serde_json::json!({"kid": kid, "algorithm": alg(kid), "state": "retired", "retired_at": retired_at}));
        }
    } else {
        for (i, (kid, key)) in ring.managed.iter().enumerate() {
            rows.push(serde_json::json!({"kid": kid, "algorithm": alg(kid), "state": if i == 0 { "active" } else { "published" }, "key": key}));
        }
    }
    let check = if args.check {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Some(rt.block_on(probe(&ring)))
    } else {
        None
    };
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("backend".into(), backend.name().into());
        out.insert("keys".into(), rows.clone().into());
        if let Some(check) = &check {
            let said = match check {
                Ok(()) => "signed and verified".to_owned(),
                Err(e) => e.clone(),
            };
            out.insert("check".into(), said.into());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("backend: {}", backend.name());
        for row in &rows {
            let get = |k: &str| row.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
            let detail = match row.get("key") {
                Some(key) => key.as_str().unwrap_or_default().to_owned(),
                None => match row.get("retired_at") {
                    Some(at) => format!("retired at {at}"),
                    None => format!(
                        "created at {}",
                        row.get("created_at").cloned().unwrap_or_default()
                    ),
                },
            };
            println!(
                "{:<10} {:<6} {}  {detail}",
                get("state"),
                get("algorithm"),
                get("kid")
            );
        }
        match &check {
            Some(Ok(())) => println!(
                "check: the active key signed a probe and it verifies against its published key"
            ),
            Some(Err(e)) => println!("check: FAILED: {e}"),
            None => {}
        }
    }
    Ok(match check {
        Some(Err(_)) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// Signs a probe with the active key and verifies it against the published JWK.
async fn probe(ring: &ferry::issuer::KeyRing) -> Result<(), String> {
    let key = &ring.active;
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    let claims = serde_json::json!({"probe": "ferry keys list --check"});
    let token = key
        .encode(&header, &claims)
        .await
        .map_err(|e| e.to_string())?;
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&key.public)
        .map_err(|e| format!("published key: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(key.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
        .map(|_| ())
        .map_err(|e| format!("the signature does not verify against the published key: {e}"))
}
