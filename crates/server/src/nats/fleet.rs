//! The fleet over NATS: every worker announces its [`WorkerStatus`] once a
//! second on `ignis.fleet.status`; an API process keeps the latest of each
//! and forgets a worker it has not heard from for a few seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, LanguageInfo, WorkerStatus};

const SUBJECT: &str = "ignis.fleet.status";
/// How often a worker announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Unheard of this long, a worker no longer counts.
const FORGET_AFTER: Duration = Duration::from_secs(5);

/// The workers as an API process last heard them.
#[derive(Debug, Default)]
pub struct RemoteFleet {
    seen: Arc<Mutex<HashMap<String, (WorkerStatus, Instant)>>>,
    /// Every language a worker announced since this process started: a
    /// NATS outage or a restart of the workers does not make a language
    /// unknown; its jobs wait in the queue.
    languages: Arc<Mutex<BTreeMap<String, LanguageInfo>>>,
}

impl RemoteFleet {
    /// Listens to the workers' announcements until `stop`.
    pub async fn listen(
        client: &async_nats::Client,
        stop: CancellationToken,
    ) -> Result<RemoteFleet, async_nats::SubscribeError> {
        let mut sub = client.subscribe(SUBJECT).await?;
        let fleet = RemoteFleet::default();
        let seen = fleet.seen.clone();
        let languages = fleet.languages.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => return,
                    m = sub.next() => m,
                };
                let Some(msg) = msg else { return };
                match serde_json::from_slice::<WorkerStatus>(&msg.payload) {
                    Ok(w) => {
                        let mut known = languages.lock().unwrap_or_else(|p| p.into_inner());
                        for l in &w.languages {
                            known.insert(l.name.clone(), l.clone());
                        }
                        drop(known);
                        let mut g = seen.lock().unwrap_or_else(|p| p.into_inner());
                        g.insert(w.id.clone(), (w, Instant::now()));
                    }
                    Err(e) => tracing::warn!("a worker's announcement not understood: {e}"),
                }
            }
        });
        Ok(fleet)
    }
}

impl Fleet for RemoteFleet {
    fn workers(&self) -> Vec<WorkerStatus> {
        // A map of plain values; a panic elsewhere leaves it whole.
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        let mut out: Vec<WorkerStatus> = g.values().map(|(w, _)| w.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn language(&self, name: &str) -> Option<LanguageInfo> {
        if let Some(live) = self.languages().remove(name) {
            return Some(live);
        }
        let known = self.languages.lock().unwrap_or_else(|p| p.into_inner());
        known.get(name).map(|l| LanguageInfo {
            ready: 0,
            booting: 0,
            target: 0,
            ..l.clone()
        })
    }

    fn known(&self) -> Vec<String> {
        let known = self.languages.lock().unwrap_or_else(|p| p.into_inner());
        known.keys().cloned().collect()
    }
}

/// Announces this worker (`status()`) until `stop`, and once more at the
/// end, when it says it is draining.
pub fn announce(
    client: async_nats::Client,
    stop: CancellationToken,
    status: impl Fn() -> Option<WorkerStatus> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            let Some(me) = status() else { return };
            match serde_json::to_vec(&me) {
                Ok(body) => {
                    if let Err(e) = client.publish(SUBJECT, body.into()).await {
                        tracing::debug!("announcement not sent: {e}");
                    }
                }
                Err(e) => tracing::error!("encoding the announcement: {e}"),
            }
            if stopping {
                // Bounded: NATS may be away as the worker stops.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                return;
            }
        }
    })
}
