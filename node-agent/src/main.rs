//! `edgefleet-agent`: see `edgefleet-agent --help`. Exit code 2 means a configuration error.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

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
    let filter =
        EnvFilter::try_from_env("EDGEFLEET_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("EDGEFLEET_AGENT_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Logs go to stderr (stdout carries only the listen address line), colored on a terminal
    // unless NO_COLOR says otherwise.
    let ansi = edgefleet_protocol::terminal::use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
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
