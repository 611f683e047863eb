//! What the workers can run: their languages, capacity and health.
//!
//! In one process the fleet is this process's own pools ([`LocalFleet`]).
//! Across processes every worker announces the same [`WorkerStatus`] on
//! NATS and the API keeps the latest of each (`queue::nats::RemoteFleet`),
//! so `GET /v1/languages`, `/healthz` and `/metrics` describe the whole
//! fleet either way.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::RunningJobs;
use crate::metrics::Metrics;
use crate::pool::Pools;

/// One language on one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageInfo {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
    pub compiled: bool,
    /// The recipe's own compile timeout (0: the request's alone decides).
    #[serde(default)]
    pub compile_timeout_ms: u64,
    /// The file `code` becomes.
    pub source_file: String,
    /// The guest's memory, which bounds a job's memory limit.
    pub vm_memory_mib: u64,
    pub ready: usize,
    pub booting: usize,
    pub target: usize,
}

/// What a worker announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub driver: String,
    pub snapshots: bool,
    pub accel: String,
    pub accel_reason: String,
    /// Jobs it runs at once.
    pub capacity: usize,
    /// Jobs it runs now.
    pub running: usize,
    pub draining: bool,
    pub languages: Vec<LanguageInfo>,
    /// Jobs it ended, by verdict (and `canceled`), since it started.
    pub jobs: BTreeMap<String, u64>,
}

/// The workers that can run jobs now.
pub trait Fleet: Send + Sync + std::fmt::Debug + 'static {
    fn workers(&self) -> Vec<WorkerStatus>;

    /// A language jobs may be submitted in: one a live worker has, or one
    /// a worker had lately (its job waits in the queue for a worker to
    /// come back). With the pools of the live workers added up.
    fn language(&self, name: &str) -> Option<LanguageInfo> {
        self.languages().remove(name)
    }

    /// The names [`Fleet::language`] knows.
    fn known(&self) -> Vec<String> {
        self.languages().into_keys().collect()
    }

    /// Every language some worker has, pools added up over the workers.
    fn languages(&self) -> BTreeMap<String, LanguageInfo> {
        let mut out: BTreeMap<String, LanguageInfo> = BTreeMap::new();
        for w in self.workers() {
            for l in w.languages {
                match out.get_mut(&l.name) {
                    Some(sum) => {
                        sum.ready += l.ready;
                        sum.booting += l.booting;
                        sum.target += l.target;
                    }
                    None => {
                        out.insert(l.name.clone(), l);
                    }
                }
            }
        }
        out
    }
}

/// This process's own pools, as a fleet of one.
#[derive(Debug)]
pub struct LocalFleet {
    pub id: String,
    pub pools: Pools,
    pub capacity: usize,
    pub running: Arc<RunningJobs>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl LocalFleet {
    pub fn status(&self) -> WorkerStatus {
        let l = self.pools.launcher();
        let target = self.pools.warm_target();
        WorkerStatus {
            id: self.id.clone(),
            driver: l.driver.name().to_owned(),
            snapshots: l.snapshots.is_some(),
            accel: l.accel.accel.to_string(),
            accel_reason: l.accel.reason.clone(),
            capacity: self.capacity,
            running: self.running.len(),
            draining: self.draining.load(std::sync::atomic::Ordering::SeqCst),
            languages: l
                .catalog
                .languages
                .values()
                .map(|image| {
                    let m = &image.manifest;
                    let (ready, booting) = self.pools.sizes(image.name());
                    LanguageInfo {
                        name: image.name().to_owned(),
                        version: m.version.clone(),
                        extensions: m.extensions.clone(),
                        compiled: m.compiled,
                        compile_timeout_ms: m
                            .recipe
                            .compile
                            .as_ref()
                            .and_then(|c| c.timeout_ms)
                            .unwrap_or(0),
                        source_file: m.source_file.clone(),
                        vm_memory_mib: m.vm_memory_mib,
                        ready,
                        booting,
                        target,
                    }
                })
                .collect(),
            jobs: self.metrics.jobs_by_verdict(),
        }
    }
}

impl Fleet for LocalFleet {
    fn workers(&self) -> Vec<WorkerStatus> {
        vec![self.status()]
    }
}
