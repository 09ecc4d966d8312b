use std::process::ExitCode;

use clap::Parser;
use edgefleet_controller::cli::{Cli, Command, LogFormat};
#[cfg(feature = "standalone")]
use edgefleet_controller::standalone;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws a live table; keep library chatter off the terminal unless RUST_LOG asks.
    let default_filter = match &cli.command {
        // (the controller's own disconnect at the end reads as a lost connection)
        #[cfg(feature = "standalone")]
        // (and llama.cpp's quantizer warns of every tensor it keeps at a higher precision)
        Command::Demo(_) => {
            "warn,rumqttd=off,edgefleet_controller::mqtt=error,llama-cpp-2=error,llama_cpp_2=error"
        }
        // rumqttd logs every closed client connection (and the readiness probe) as an error
        #[cfg(feature = "standalone")]
        Command::Up(_) => "info,rumqttd=warn,rumqttd::server::broker=off",
        Command::Run(_) | Command::Ingest(_) => "info",
        _ => "warn",
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("edgefleet: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => edgefleet_controller::run::kubernetes(*args).await,
            Command::Ingest(args) => edgefleet_controller::ingest_worker::run(*args).await,
            Command::Crds => {
                print!("{}", edgefleet_crds::crd_yaml()?);
                Ok(())
            }
            #[cfg(feature = "standalone")]
            Command::Up(args) => standalone::up(*args).await,
            #[cfg(feature = "standalone")]
            Command::Demo(args) => standalone::demo::run(*args).await,
            #[cfg(feature = "standalone")]
            Command::Apply(args) => standalone::client::apply(args).await,
            #[cfg(feature = "standalone")]
            Command::Get(args) => standalone::client::get(args).await,
            #[cfg(feature = "standalone")]
            Command::Describe(args) => standalone::client::describe(args).await,
            #[cfg(feature = "standalone")]
            Command::Delete(args) => standalone::client::delete(args).await,
            // CPU-bound model rewriting and measurement: off the async workers.
            #[cfg(feature = "compress")]
            Command::Compress(args) => {
                tokio::task::spawn_blocking(move || edgefleet_compress::run(*args))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result)
            }
        }
    });
    // Exit even if a task is stuck in a blocking call (a resolver, a dead peer): the graceful
    // part of shutdown has already had its bounded time.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edgefleet: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour only on a terminal and without NO_COLOR: logs piped to files stay plain text.
    let ansi = edgefleet_protocol::terminal::use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
