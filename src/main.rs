//! `loggregator`: one binary for the whole pipeline.
//!
//! With no subcommand it runs every component in one process on loopback defaults (what a newcomer
//! runs) and prints the endpoint table; `loggregator <component>` runs one component of a real
//! multi-host deployment, configured by defaults < `--config` TOML file < environment < flags.

mod cli;
mod client;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.log_format, cli.is_client());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loggregator: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, joined by ": ", without a backtrace.
            eprintln!("loggregator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The components log to stdout at `info`; client commands, whose stdout is their output, log
/// warnings only, to stderr. Colour codes only when that stream is a terminal (a file or a pipe
/// gets plain text), or one JSON object a line with `--log-format json`.
fn init_logging(format: cli::LogFormat, client: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| if client { "warn" } else { "info" }.into());
    let (writer, terminal) = if client {
        (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal())
    } else {
        (BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal())
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        cli::LogFormat::Text => builder.with_ansi(terminal).init(),
        cli::LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
