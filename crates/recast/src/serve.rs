//! `recast server` and `recast up`: the control plane in the foreground.

use anyhow::anyhow;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How `recast server` writes its log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for a person; coloured on a terminal unless NO_COLOR is set
    Human,
    /// One JSON object per line: timestamp, level, message and the event's fields
    Json,
}

/// Install the server's log: the engine's events (`recast_server`'s `oplog`) on stderr, in
/// `format`: info and above (`-q`: warnings and errors; `-v`: debug too). Colour as `--color`
/// and `NO_COLOR` say (`crate::term`).
fn init_logs(format: LogFormat) {
    use crate::term::{Verbosity, verbosity};
    let level = match verbosity() {
        Verbosity::Quiet => tracing::Level::WARN,
        Verbosity::Normal => tracing::Level::INFO,
        Verbosity::Verbose => tracing::Level::DEBUG,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    // A second call in one process keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => logs.with_ansi(crate::term::colours_stderr()).try_init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// Half the cores (at least one) run the engine and API; routes run their own thread per core
/// (see `recast-proxy`), and blocking work (containers, builds) tokio's blocking pool.
/// `RECAST_WORKERS` overrides it.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = std::env::var("RECAST_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or((cores / 2).max(1));
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

/// Run the server until SIGTERM/SIGINT; with `apply`, apply that spec once it is up. The API
/// is plain HTTP: a non-loopback `listen` is refused unless `insecure_listen`.
pub fn run(
    data_dir: &Path,
    listen: SocketAddr,
    insecure_listen: bool,
    state: Option<&str>,
    host: recast_server::engine::HostConfig,
    log_format: LogFormat,
    apply: Option<&crate::build::SpecArg>,
) -> anyhow::Result<ExitCode> {
    if !listen.ip().is_loopback() && !insecure_listen {
        eprintln!(
            "error: refusing to serve the API on {listen}: it is not a loopback address, and the API is plain HTTP (its bearer token and everything it answers would cross the network unencrypted)\n  hint: listen on 127.0.0.1 (the default) and reach it through an SSH tunnel, or pass --insecure-listen to accept the risk"
        );
        return Ok(ExitCode::from(2));
    }
    init_logs(log_format);
    // Before any thread starts, so that only the signal thread receives them.
    let signals = recast_runtime::signals::forward();
    let rt = runtime()?;
    let code = rt.block_on(async {
        let started = recast_server::start(data_dir, listen, state, host)
            .await
            .map_err(|e| anyhow!(e))?;
        for n in &started.notes {
            tracing::info!("recovered: {n}");
        }
        let (api, data_dir_shown) = (format!("http://{}", started.addr), data_dir.display());
        tracing::info!(api = %api, data_dir = %data_dir_shown, "server started");
        let mut code = ExitCode::SUCCESS;
        if let Some(spec) = apply {
            let path = std::fs::canonicalize(&spec.path)
                .map_err(|e| anyhow!("cannot read spec {}: {e}", spec.path.display()))?;
            // The server builds with recast.lock as it is: complete it first (an invalid spec
            // is the apply's to report).
            let mut secrets = Default::default();
            if let Ok(project) = recast_spec::load_with(&path, &spec.inputs) {
                crate::lock::pins(&project, false)?;
                secrets = crate::secrets::read(&project)?;
            }
            let input = recast_server::engine::ApplyInput {
                path,
                inputs: spec.inputs.clone(),
                secrets,
                promote: None,
                expect_plan: None,
            };
            let id = started.ctl.start_apply(input).map_err(|e| anyhow!(e))?;
            let ctl = started.ctl.clone();
            let status = tokio::task::spawn_blocking(move || {
                crate::deploy::follow(|| Ok(ctl.apply_status(id)), Duration::from_millis(50), true)
            })
            .await??;
            if let Some(e) = &status.error {
                eprintln!("error: {e}");
            }
            if status.state != recast_api::v1::ApplyState::Succeeded {
                code = ExitCode::FAILURE;
            }
            for r in started.ctl.route_rows().await {
                eprintln!(
                    "serving: route {} on http://{} → service {}",
                    r.name, r.listen, r.service
                );
            }
            if std::io::stderr().is_terminal() {
                eprintln!("Ctrl-C stops the server; instances keep running for the next one");
            }
        }
        // Wait for a stop signal on a blocking thread.
        let _ = tokio::task::spawn_blocking(move || signals.recv()).await;
        tracing::info!("server stopping (instances keep running)");
        recast_server::stopped(data_dir, &started.ctl);
        drop(started);
        Ok::<_, anyhow::Error>(code)
    })?;
    // Do not wait for in-flight tasks: instances are independent of this process.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}
