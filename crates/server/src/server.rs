//! Running the service: recovery, workers, pools and the HTTP listener, and
//! the orderly way down.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::state::Services;

/// Serves until `shutdown` resolves, then: takes no new jobs, lets running
/// jobs finish for the configured grace (requeueing those that do not),
/// kills every VM and returns.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    svc: Arc<Services>,
) -> anyhow::Result<()> {
    let Some(pools) = svc.pools.clone() else {
        anyhow::bail!("the one-process server needs VM pools");
    };
    crate::service::recover(&svc).await?;
    pools.start_refill();
    let stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let workers = tokio::spawn(crate::worker::run(
        svc.clone(),
        pools.clone(),
        svc.config.workers,
        stop.clone(),
        hard_stop.clone(),
    ));

    let http_done = CancellationToken::new();
    let app = api::app(AppState::new(svc.clone()));
    let http = {
        let http_done = http_done.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_done.cancelled().await })
                .await
        })
    };

    shutdown.await;
    tracing::info!(
        "shutting down: no new jobs; running jobs get {:?}",
        svc.config.shutdown_grace
    );
    svc.draining.store(true, Ordering::SeqCst);
    stop.cancel();
    svc.queue.close();
    let grace = svc.config.shutdown_grace;
    let hard = hard_stop.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        hard.cancel();
    });
    let _ = workers.await;
    timer.abort();
    pools.shutdown().await;
    svc.shutdown.cancel();
    http_done.cancel();
    http.await??;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses `--dev` (no API keys) anywhere but on loopback.
pub fn check_dev_listener(dev: bool, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if dev && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--dev disables authentication and is only allowed on a loopback address, not {addr}"
        );
    }
    Ok(())
}
