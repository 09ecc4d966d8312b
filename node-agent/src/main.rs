//! `edgefleet-agent`: see `edgefleet-agent --help`. Exit code 2 means a configuration error.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::Targets;

use edgefleet_agent::config::{Args, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edgefleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // `level` or `target=level` directives, comma-separated (e.g. `info,edgefleet_agent=debug`):
    // `Targets` reads them without the regex engine `EnvFilter` links, which devices need not carry.
    let filter = match std::env::var("EDGEFLEET_AGENT_LOG") {
        Ok(directives) => match directives.parse::<Targets>() {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("edgefleet-agent: EDGEFLEET_AGENT_LOG {directives:?}: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => Targets::new().with_default(tracing::Level::INFO),
    };
    let json = std::env::var("EDGEFLEET_AGENT_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Logs go to stderr (stdout carries only the listen address line), colored on a terminal
    // unless NO_COLOR says otherwise.
    let ansi = edgefleet_protocol::terminal::use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let workers = config.inference_threads.clamp(1, 2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(config.inference_threads + 8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgefleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgefleet_agent::agent::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            eprintln!("edgefleet-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}
