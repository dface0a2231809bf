//! What a daemon process needs around [`daemon::run`](crate::daemon::run): its logs, its tokio
//! runtime and its stop signal. Shared by every binary that runs the daemon (`warren-worker
//! run`, and the test and benchmark workers built on
//! [`daemon::run_with`](crate::daemon::run_with)), so they all run it the same way.

/// Logs to stderr, filtered by `WARREN_LOG` (tracing's `EnvFilter` syntax; default `warn`).
/// lapin's warning for each returned message is silenced: it dumps the whole body, and the
/// daemon logs each return itself, by task id and reply_to.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| "warn".into())
                .add_directive(
                    "lapin::returned_messages=error"
                        .parse()
                        .expect("a valid log directive"),
                ),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The runtime the daemon runs on: one thread. The async side only waits on the broker
/// (confirms, acks, reconnects) and serves `/metrics`; tasks run on the lanes. A second runtime
/// thread only adds wake-ups (a task woken from lapin's I/O thread also wakes an idle runtime
/// thread to look for work), CPU the lanes would rather have (BENCHMARKS.md, "Decisions").
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// Runs the daemon with `executor` on [`runtime`] until SIGTERM or SIGINT, then drains: the
/// whole life of a daemon binary after logging is set up.
pub fn serve(
    args: crate::daemon::RunArgs,
    executor: impl FnOnce(crate::TaskRunner) -> Box<dyn crate::daemon::Execute>,
) -> anyhow::Result<()> {
    runtime()?.block_on(crate::daemon::run_with(args, executor, shutdown_signal()))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C): the daemon's shutdown.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
