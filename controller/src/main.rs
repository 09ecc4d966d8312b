use std::process::ExitCode;

use clap::Parser;
use edgefleet_controller::cli::{Cli, Command, LogFormat};
use edgefleet_controller::standalone;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws a live table; keep library chatter off the terminal unless RUST_LOG asks.
    let default_filter = match &cli.command {
        Command::Demo(_) => "warn,rumqttd=off",
        Command::Up(_) | Command::Run(_) => "info,rumqttd=warn",
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
            Command::Crds => {
                print!("{}", edgefleet_crds::crd_yaml()?);
                Ok(())
            }
            Command::Up(args) => standalone::up(*args).await,
            Command::Demo(args) => standalone::demo::run(*args).await,
            Command::Apply(args) => standalone::client::apply(args).await,
            Command::Get(args) => standalone::client::get(args).await,
            Command::Describe(args) => standalone::client::describe(args).await,
            Command::Delete(args) => standalone::client::delete(args).await,
        }
    });
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
