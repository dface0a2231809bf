//! `warren`: parse arguments, set up logging and Ctrl-C handling, and hand over to the library
//! ([`warren::cli::run`]).

use std::process::ExitCode;

use clap::Parser;

use tokio_util::sync::CancellationToken;
use warren::cli::{run, Cli, EXIT_INTERRUPTED};

/// Faster than the system allocator for the many small allocations of a batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                // lapin logs every refused operation at ERROR; warren reports those itself.
                .unwrap_or_else(|_| "warn,lapin=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warren: error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone()));
        run(cli, shutdown).await
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("warren: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// First Ctrl-C (or SIGTERM): stop gracefully — stop publishing, wait for outstanding confirms,
/// keep everything on disk consistent. Second: leave at once (still consistent: nothing is acked
/// before it is written).
async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("\nwarren: stopping (Ctrl-C again to quit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    std::process::exit(EXIT_INTERRUPTED);
}
