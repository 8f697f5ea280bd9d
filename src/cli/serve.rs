//! `ferry serve --config F`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use ferry::exchange::{Services, SingleFlight};
use ferry::http::{AppState, app};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::embedded::ConfigArg,
    /// Listen here instead of `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Runs the broker until SIGINT/SIGTERM.
pub fn run(args: Args, log_format: super::LogFormat) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve()?;
    let (mut snapshot, warnings) = match super::load_snapshot(config.as_path(), true) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let telemetry = ferry::telemetry::init(
        log_format.to_lib(),
        "info",
        Some(&snapshot.config.telemetry),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.dev.is_some() {
        tracing::warn!(
            config = %config.path.display(),
            "DEVELOPMENT CONFIG (--dev): it trusts a dev issuer whose private key is public (`ferry dev token` mints its tokens); never use in production"
        );
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if snapshot.issuer.keys().ephemeral {
        tracing::warn!(
            kid = %snapshot.issuer.keys().active.kid,
            "EPHEMERAL SIGNING KEY: tokens Ferry issues become unverifiable when this process exits; never use in production"
        );
    }
    let listen: SocketAddr = match args.listen {
        Some(l) => l,
        None => snapshot
            .config
            .server
            .listen
            .parse()
            .context("server.listen")?,
    };
    let rt = super::tokio_runtime()?;
    let result = rt.block_on(async move {
        snapshot.warm_up().await;
        snapshot.start_refreshers();
        let store = match ferry::store::open(&snapshot.config) {
            Ok(s) => s,
            Err(errs) => {
                eprintln!("{errs}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let revision = snapshot.revision.clone();
        let state = AppState::new(
            snapshot,
            Services {
                store,
                clock: super::system_clock(),
                flights: SingleFlight::default(),
                anomalies: Default::default(),
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot open the audit log: {e}"))?;
        #[cfg(unix)]
        let _hup = ferry::http::reload::spawn_sighup(Arc::clone(&state))
            .context("cannot install the SIGHUP handler")?;
        let reload = state.snapshot.load().config.reload.clone();
        let _watch = reload
            .watch
            .then(|| ferry::http::reload::spawn_watch(Arc::clone(&state), reload.interval.0));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, %revision, "ferry serving");
        let closing = Arc::clone(&state);
        let limits = ferry::http::server::ConnectionLimits::from_config(
            &state.snapshot.load().config.server,
        );
        let mut server =
            ferry::http::server::Server::new(listener, app(Arc::clone(&state)), limits)
                .with_client_address(ferry::http::client_address::ClientAddressPolicy::of(
                    &state.snapshot.load().config.server,
                ));
        let _tls_watch = match ferry::tls::Files::of(&state.snapshot.load().config) {
            None => None,
            Some(files) => {
                let certs = ferry::tls::CertStore::open(files, state.services.clock.now())
                    .map(Arc::new)
                    .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
                server = server.with_tls(
                    ferry::tls::Acceptor::new(Arc::clone(&certs))
                        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
                );
                let _ = state.tls.set(Arc::clone(&certs));
                Some(certs.spawn_watch(reload.interval.0, state.services.clock.clone()))
            }
        };
        let _ = state.connections.set(server.stats());
        server.run(shutdown_signal()).await;
        // The last audit line: a signed shutdown checkpoint (a trail without one was cut,
        // or Ferry did not stop cleanly).
        closing.audit.close();
        tracing::info!("ferry stopped");
        Ok(ExitCode::SUCCESS)
    });
    telemetry.shutdown();
    result
}

pub(super) async fn shutdown_signal() {
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
