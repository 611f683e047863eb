//! The NATS side of the distributed mode: connecting, the event bus and
//! cancels ([`bus::NatsBus`]), and the fleet of workers as they announce
//! themselves ([`fleet::RemoteFleet`]). The job queue is `queue::nats`.
//!
//! Subjects:
//! - `ignis.jobs.<language>`: queued jobs (JetStream work queue)
//! - `ignis.events.<job id>`: a job's events (JetStream, kept an hour)
//! - `ignis.cancel.<job id>`: a request to the worker running the job
//! - `ignis.fleet.status`: every worker's announcement, once a second

pub mod bus;
pub mod fleet;

use std::time::Duration;

use crate::queue::QueueError;

/// Connects to NATS, retrying until it answers at first, and reconnecting
/// for ever afterwards: a NATS outage pauses the process, never ends it.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, QueueError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .max_reconnects(None)
        .event_callback(|ev| async move {
            match ev {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::debug!("NATS: {other}"),
            }
        })
        .connect(url)
        .await
        .map_err(|e| QueueError::Unavailable(format!("connecting to NATS at {url}: {e}")))
}
