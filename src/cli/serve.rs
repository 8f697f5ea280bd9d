//! `ferry serve --config F`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use ferry::exchange::{Services, SingleFlight};
use ferry::http::{AppState, app};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, short, default_value_os_t = super::default_config())]
    config: PathBuf,
    /// Listen here instead of `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Runs the broker until SIGINT/SIGTERM.
pub fn run(args: Args, log_format: super::LogFormat) -> anyhow::Result<ExitCode> {
    let (mut runtime, warnings) = match super::load_runtime(&args.config, true) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let telemetry =
        ferry::telemetry::init(log_format.to_lib(), "info", Some(&runtime.config.telemetry))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if runtime.issuer.keys().ephemeral {
        tracing::warn!(
            kid = %runtime.issuer.keys().active.kid,
            "EPHEMERAL SIGNING KEY: tokens Ferry issues become unverifiable when this process exits; never use in production"
        );
    }
    let listen: SocketAddr = match args.listen {
        Some(l) => l,
        None => runtime
            .config
            .server
            .listen
            .parse()
            .context("server.listen")?,
    };
    let rt = super::tokio_runtime()?;
    let result = rt.block_on(async move {
        runtime.warm_up().await;
        runtime.start_refreshers();
        let store = match ferry::store::open(&runtime.config) {
            Ok(s) => s,
            Err(errs) => {
                eprintln!("{errs}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let revision = runtime.revision.clone();
        let state = AppState::new(
            runtime,
            Services {
                store,
                clock: super::system_clock(),
                flights: SingleFlight::default(),
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot open the audit log: {e}"))?;
        #[cfg(unix)]
        let _hup = ferry::http::reload::spawn_sighup(Arc::clone(&state))
            .context("cannot install the SIGHUP handler")?;
        let reload = state.runtime.load().config.reload.clone();
        let _watch = reload
            .watch
            .then(|| ferry::http::reload::spawn_watch(Arc::clone(&state), reload.interval.0));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, %revision, "ferry serving");
        let closing = Arc::clone(&state);
        let limits =
            ferry::http::server::ConnectionLimits::from_config(&state.runtime.load().config.server);
        ferry::http::server::Server::new(listener, app(state), limits)
            .run(shutdown_signal())
            .await;
        // The last audit line: a signed shutdown checkpoint (a trail without one was cut,
        // or Ferry did not stop cleanly).
        closing.audit.close();
        tracing::info!("ferry stopped");
        Ok(ExitCode::SUCCESS)
    });
    telemetry.shutdown();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
