//! The tokio runtime the subcommands run on.

/// `workers` threads; one: a current-thread runtime.
pub(crate) fn build_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if workers <= 1 {
        // One worker: a current-thread runtime, no work stealing, as nginx's one process.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    Ok(runtime)
}

/// The runtime the gateway's commands (`run`, `demo`) start on: with `worker_model =
/// "per_worker"` a current-thread runtime — worker 0's event loop, which also runs the admin
/// listener and the background work; the gateway starts the other workers' loops itself —,
/// with `"shared"` one runtime over every worker thread.
pub(crate) fn gateway_runtime(
    server: &sekisho_config::Server,
) -> anyhow::Result<tokio::runtime::Runtime> {
    match server.worker_model {
        sekisho_config::WorkerModel::PerWorker => build_runtime(1),
        sekisho_config::WorkerModel::Shared => build_runtime(server.worker_count()),
    }
}
