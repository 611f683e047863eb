//! Warm per-language VM pools under one host-wide budget.
//!
//! Every VM alive (ready in a pool, booting, or running a job) holds a share
//! of the budget: one VM slot and its guest memory. A job takes a ready VM of
//! its language if there is one, else boots one on demand while the budget
//! allows, else evicts an idle VM of another language, else waits. Pools
//! refill in the background, but never while a job is waiting for budget:
//! jobs come first. A VM never serves two jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignis_vmm::{LaunchError, Launcher, Vm};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the {language} VM needs {need} MiB, more than the host budget of {budget} MiB")]
    TooBig {
        language: String,
        need: u64,
        budget: u64,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    launcher: Launcher,
    cfg: PoolConfig,
    state: Mutex<State>,
    /// Budget freed, a VM became ready, or a pool needs refilling.
    changed: Notify,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    ready: HashMap<String, VecDeque<Vm>>,
    booting: HashMap<String, usize>,
    /// Of those, boots started by a refill (their VM goes to the pool).
    refilling: HashMap<String, usize>,
    /// Jobs waiting for a refill boot already under way rather than starting
    /// their own: on a busy host a second boot only slows the first.
    claimed: HashMap<String, usize>,
    used_vms: usize,
    used_mib: u64,
    /// Jobs waiting for budget; while any wait, pools do not refill.
    waiters: usize,
}

/// A VM handed to a job, with its share of the budget. Dropping the lease
/// (after destroying the VM, or with it) gives the share back.
#[derive(Debug)]
pub struct Lease {
    vm: Option<Vm>,
    mib: u64,
    pools: Arc<Inner>,
    /// How long the job waited for this VM.
    pub waited: Duration,
    /// True if it came from a warm pool rather than an on-demand boot.
    pub warm: bool,
}

impl Lease {
    /// Takes the VM out; the budget share stays with the lease.
    pub fn take(&mut self) -> Option<Vm> {
        self.vm.take()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A VM still inside is killed by its own Drop.
        self.vm.take();
        self.pools.release(self.mib);
    }
}

impl Pools {
    pub fn new(launcher: Launcher, cfg: PoolConfig, metrics: Arc<Metrics>) -> Pools {
        Pools {
            inner: Arc::new(Inner {
                launcher,
                cfg,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                metrics,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn launcher(&self) -> &Launcher {
        &self.inner.launcher
    }

    /// Ready and booting VMs of a language.
    pub fn sizes(&self, language: &str) -> (usize, usize) {
        let s = self.inner.lock();
        (
            s.ready.get(language).map_or(0, VecDeque::len),
            s.booting.get(language).copied().unwrap_or(0),
        )
    }

    pub fn warm_target(&self) -> usize {
        self.inner.cfg.warm
    }

    /// Starts one refill task per language.
    pub fn start_refill(&self) {
        if self.inner.cfg.warm == 0 {
            return;
        }
        for language in self.inner.launcher.catalog.languages.keys() {
            tokio::spawn(refill(self.inner.clone(), language.clone()));
        }
    }

    /// A ready VM of `language` for one job.
    pub async fn acquire(&self, language: &str) -> Result<Lease, AcquireError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mib = inner.vm_mib(language)?;
        if mib > inner.cfg.max_memory_mib {
            return Err(AcquireError::TooBig {
                language: language.into(),
                need: mib,
                budget: inner.cfg.max_memory_mib,
            });
        }
        let mut waiting = false;
        let mut claiming = false;
        let result = loop {
            if inner.shutdown.is_cancelled() {
                break Err(AcquireError::ShuttingDown);
            }
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            enum Next {
                Warm(Vm),
                Boot,
                Evict(Vm),
                Wait,
            }
            let next = {
                let mut s = inner.lock();
                if claiming {
                    // Claims are made afresh each round.
                    claiming = false;
                    *s.claimed.entry(language.to_owned()).or_default() -= 1;
                }
                let refilling = s.refilling.get(language).copied().unwrap_or(0);
                let claimed = s.claimed.get(language).copied().unwrap_or(0);
                if let Some(vm) = s.ready.get_mut(language).and_then(VecDeque::pop_front) {
                    Next::Warm(vm)
                } else if refilling > claimed {
                    *s.claimed.entry(language.to_owned()).or_default() += 1;
                    claiming = true;
                    Next::Wait
                } else if s.fits(&inner.cfg, mib) {
                    s.reserve(mib);
                    *s.booting.entry(language.to_owned()).or_default() += 1;
                    Next::Boot
                } else if let Some(vm) = s.ready.values_mut().find_map(VecDeque::pop_front) {
                    Next::Evict(vm)
                } else {
                    if !waiting {
                        s.waiters += 1;
                        waiting = true;
                    }
                    Next::Wait
                }
            };
            inner.report(language);
            match next {
                Next::Warm(mut vm) => {
                    // A VM can die while it waits in the pool; check it answers.
                    if vm.ping(Duration::from_secs(5)).await.is_ok() {
                        break Ok((vm, true));
                    }
                    inner.metrics.vm_failure(language, "dead");
                    tracing::warn!(vm = %vm.info().id, language, "a pooled VM stopped answering; discarded");
                    inner.discard(vm).await;
                }
                Next::Boot => {
                    let booted = tokio::select! {
                        r = inner.launcher.boot(language) => r,
                        () = inner.shutdown.cancelled() => {
                            inner.boot_done(language);
                            inner.release(mib);
                            break Err(AcquireError::ShuttingDown);
                        }
                    };
                    match booted {
                        Ok(vm) => {
                            inner.observe_boot(language, &vm);
                            inner.boot_done(language);
                            break Ok((vm, false));
                        }
                        Err(e) => {
                            inner.metrics.vm_failure(language, "boot");
                            inner.boot_done(language);
                            inner.release(mib);
                            break Err(e.into());
                        }
                    }
                }
                Next::Evict(vm) => {
                    tracing::debug!(vm = %vm.info().id, "evicting an idle VM of another language");
                    inner.discard(vm).await;
                }
                Next::Wait => notified.await,
            }
        };
        {
            let mut s = inner.lock();
            if waiting {
                s.waiters -= 1;
            }
            if claiming {
                *s.claimed.entry(language.to_owned()).or_default() -= 1;
            }
        }
        let (vm, warm) = result?;
        // Taking a pooled VM leaves a gap to refill.
        inner.changed.notify_waiters();
        Ok(Lease {
            vm: Some(vm),
            mib,
            pools: inner.clone(),
            waited: started.elapsed(),
            warm,
        })
    }

    /// Stops refilling and destroys every pooled VM, and returns once no VM
    /// of the pools is left booting. Leased VMs die with their jobs.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.changed.notify_waiters();
        loop {
            let notified = inner.changed.notified();
            let (vms, booting): (Vec<Vm>, usize) = {
                let mut s = inner.lock();
                let vms = s.ready.values_mut().flat_map(std::mem::take).collect();
                (vms, s.booting.values().sum())
            };
            for vm in vms {
                inner.discard(vm).await;
            }
            if booting == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl State {
    fn fits(&self, cfg: &PoolConfig, mib: u64) -> bool {
        self.used_vms < cfg.max_vms && self.used_mib + mib <= cfg.max_memory_mib
    }

    fn reserve(&mut self, mib: u64) {
        self.used_vms += 1;
        self.used_mib += mib;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters and queues only; a panic elsewhere leaves them consistent
        // enough to keep serving (at worst a slot is lost until restart).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vm_mib(&self, language: &str) -> Result<u64, AcquireError> {
        let img = self
            .launcher
            .catalog
            .language(language)
            .map_err(|e| AcquireError::Launch(e.into()))?;
        Ok(img.manifest.vm_memory_mib)
    }

    fn release(&self, mib: u64) {
        {
            let mut s = self.lock();
            s.used_vms = s.used_vms.saturating_sub(1);
            s.used_mib = s.used_mib.saturating_sub(mib);
        }
        self.changed.notify_waiters();
    }

    fn boot_done(&self, language: &str) {
        if let Some(n) = self.lock().booting.get_mut(language) {
            *n = n.saturating_sub(1);
        }
        self.report(language);
        self.changed.notify_waiters();
    }

    /// Ends a refill boot; its VM, if any, joins the pool in the same step,
    /// so a job waiting on this boot finds it when woken.
    fn refill_done(&self, language: &str, vm: Option<Vm>) {
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            for n in [s.booting.get_mut(language), s.refilling.get_mut(language)]
                .into_iter()
                .flatten()
            {
                *n = n.saturating_sub(1);
            }
            if let Some(vm) = vm {
                s.ready
                    .entry(language.to_owned())
                    .or_default()
                    .push_back(vm);
            }
        }
        self.report(language);
        self.changed.notify_waiters();
    }

    fn observe_boot(&self, language: &str, vm: &Vm) {
        self.metrics
            .observe_boot(language, vm.info().boot_ms as f64 / 1000.0);
    }

    /// Destroys a VM that held a budget share and gives the share back.
    async fn discard(&self, vm: Vm) {
        let language = vm.info().language.clone();
        let mib = self.vm_mib(&language).unwrap_or(0);
        vm.destroy().await;
        self.release(mib);
        self.report(&language);
    }

    fn report(&self, language: &str) {
        let (ready, booting, leased) = {
            let s = self.lock();
            let idle: usize = s.ready.values().map(VecDeque::len).sum::<usize>()
                + s.booting.values().sum::<usize>();
            (
                s.ready.get(language).map_or(0, VecDeque::len),
                s.booting.get(language).copied().unwrap_or(0),
                s.used_vms.saturating_sub(idle),
            )
        };
        self.metrics.set_pool(language, ready, booting);
        self.metrics.set_vms_running(leased);
    }
}

/// Keeps `warm` ready VMs of one language, backing off after failed boots.
async fn refill(inner: Arc<Inner>, language: String) {
    let Ok(mib) = inner.vm_mib(&language) else {
        return;
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let notified = inner.changed.notified();
        let start = {
            let mut s = inner.lock();
            let have = s.ready.get(&language).map_or(0, VecDeque::len)
                + s.booting.get(&language).copied().unwrap_or(0);
            let go = have < inner.cfg.warm && s.waiters == 0 && s.fits(&inner.cfg, mib);
            if go {
                s.reserve(mib);
                *s.booting.entry(language.clone()).or_default() += 1;
                *s.refilling.entry(language.clone()).or_default() += 1;
            }
            go
        };
        if inner.shutdown.is_cancelled() {
            if start {
                inner.refill_done(&language, None);
                inner.release(mib);
            }
            return;
        }
        if !start {
            tokio::select! {
                () = notified => {}
                () = inner.shutdown.cancelled() => return,
            }
            continue;
        }
        inner.report(&language);
        // Shutdown drops a boot half-way: the monitor dies with its handle.
        let booted = tokio::select! {
            r = inner.launcher.boot(&language) => r,
            () = inner.shutdown.cancelled() => {
                inner.refill_done(&language, None);
                inner.release(mib);
                return;
            }
        };
        match booted {
            Ok(vm) => {
                backoff = Duration::from_millis(500);
                inner.observe_boot(&language, &vm);
                if inner.shutdown.is_cancelled() {
                    inner.refill_done(&language, None);
                    inner.discard(vm).await;
                    return;
                }
                inner.refill_done(&language, Some(vm));
            }
            Err(e) => {
                tracing::warn!(language, "pool boot failed: {e}");
                inner.metrics.vm_failure(&language, "boot");
                inner.refill_done(&language, None);
                inner.release(mib);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
