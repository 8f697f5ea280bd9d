//! `ferry agent --config agent.toml`: serves the cloud SDKs' credential endpoints from
//! Ferry (see [`ferry::agent`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry::agent::{Agent, AgentConfig, LocalSecret};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the config (and that its CA and client certificate files load), then
    /// exit: 0 when it is good, 1 with every problem otherwise.
    #[arg(long, conflicts_with = "print_env")]
    check: bool,
    /// Print the `export` lines that point every SDK at this agent (creating the local
    /// secret if needed), then exit: `eval "$(ferry agent -c agent.toml --print-env)"`.
    #[arg(long)]
    print_env: bool,
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.check {
        if let Err(e) = config.client() {
            eprintln!("{}: {e:#}", args.config.display());
            return Ok(ExitCode::FAILURE);
        }
        println!("{}: ok", args.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.print_env {
        let secret = config
            .secret_file
            .as_deref()
            .map(LocalSecret::load_or_create)
            .transpose()?;
        print!("{}", environment(&config, secret.as_ref()));
        return Ok(ExitCode::SUCCESS);
    }
    let rt = super::tokio_runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen {}", config.listen))?;
        let listen = listener.local_addr().context("listen")?;
        let agent = Agent::start(config)?;
        tracing::info!(%listen, endpoints = %endpoints(&agent.config), "ferry agent listening");
        ferry::agent::serve(listener, agent, super::serve::shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("ferry agent stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// What the agent serves, for its start-up line.
fn endpoints(config: &AgentConfig) -> String {
    let mut out: Vec<String> = config.aws.keys().map(|p| format!("aws {p}")).collect();
    if config.gcp.is_some() {
        out.push("gcp metadata".into());
    }
    if let Some(a) = &config.azure {
        out.push(format!("azure {} and imds", a.path));
    }
    out.join(", ")
}

/// The environment variables each SDK reads, as `export` lines.
fn environment(config: &AgentConfig, secret: Option<&LocalSecret>) -> String {
    let base = format!("http://{}", config.listen);
    let mut vars: Vec<(&str, String)> = Vec::new();
    if let Some(path) = config.aws.keys().next() {
        vars.push((
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{base}{path}"),
        ));
        if let Some(f) = &config.secret_file {
            vars.push((
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                std::path::absolute(f)
                    .unwrap_or_else(|_| f.clone())
                    .display()
                    .to_string(),
            ));
        }
    }
    if config.gcp.is_some() {
        vars.push(("GCE_METADATA_HOST", config.listen.to_string()));
        vars.push(("GCE_METADATA_IP", config.listen.to_string()));
    }
    if let Some(a) = &config.azure {
        vars.push(("IDENTITY_ENDPOINT", format!("{base}{}", a.path)));
        if let Some(s) = secret {
            vars.push(("IDENTITY_HEADER", s.expose().to_owned()));
        }
        vars.push(("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.clone()));
    }
    vars.iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', r"'\''")))
        .collect()
}
