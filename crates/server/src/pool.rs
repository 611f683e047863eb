//! Warm per-language VM pools under one host-wide budget.
//!
//! Every VM alive (ready in a pool, starting, or running a job) holds a
//! share of the budget: one VM slot and some memory. The memory is what the
//! VM really costs the host where that is known: an idle pooled VM is
//! charged the proportional set size (PSS) of its VMM, measured once it is
//! ready — a few tens of MiB for a VM restored from a snapshot, whose
//! untouched RAM is shared with every sibling. A VM that is starting or
//! running a job is charged its whole guest memory, all of which the job
//! may use. So many more restored VMs wait in the same budget than their
//! nominal sizes would allow.
//!
//! A job takes a ready VM of its language if there is one (growing its
//! share to the guest's size), else starts one on demand while the budget
//! allows, else evicts an idle VM, else waits. Pools refill in the
//! background, but never while a job is waiting for budget: jobs come
//! first. For the same reason a restored refill is warmed only while no job
//! runs (see `pool_refill.rs`). A VM never serves two jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignis_vmm::{LaunchError, Launcher, Vm};

/// Added to an idle VM's measured PSS: it moves a little as pages come
/// and go.
const IDLE_MARGIN_MIB: u64 = 4;
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
    /// A job claimed a refill under way. Apart from `changed`, which the
    /// claiming jobs themselves wait on: only refills listen to this.
    claims: Notify,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    ready: HashMap<String, VecDeque<Pooled>>,
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
    /// Refills restored and holding back their warm-up until no job runs.
    warm_held: usize,
}

/// A share of the host budget: one VM slot and its memory. It is given back
/// when dropped, so a job canceled at any await point cannot leak budget.
/// Never dropped while the state lock is held (its drop takes the lock).
#[derive(Debug)]
struct Share {
    inner: Arc<Inner>,
    mib: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.inner.release(self.mib);
    }
}

/// A ready VM in a pool, with the share it holds.
#[derive(Debug)]
struct Pooled {
    vm: Vm,
    share: Share,
}

/// A boot under way, counted in `booting` (and `refilling`) until it ends,
/// whichever way it ends.
#[derive(Debug)]
struct Booting {
    inner: Arc<Inner>,
    language: String,
    refill: bool,
    counted: bool,
}

impl Booting {
    fn start(inner: &Arc<Inner>, s: &mut State, language: &str, refill: bool) -> Booting {
        *s.booting.entry(language.to_owned()).or_default() += 1;
        if refill {
            *s.refilling.entry(language.to_owned()).or_default() += 1;
        }
        Booting {
            inner: inner.clone(),
            language: language.to_owned(),
            refill,
            counted: true,
        }
    }

    /// Ends the boot; a VM given joins the pool in the same step, so a job
    /// waiting on this boot finds it when woken.
    fn finish(mut self, into_pool: Option<Pooled>) {
        {
            let inner = self.inner.clone();
            let mut guard = inner.lock();
            self.uncount(&mut guard);
            if let Some(p) = into_pool {
                guard
                    .ready
                    .entry(self.language.clone())
                    .or_default()
                    .push_back(p);
            }
        }
        self.inner.report(&self.language);
        self.inner.changed.notify_waiters();
    }

    fn uncount(&mut self, s: &mut State) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        let refill = self.refill;
        for (map, on) in [(&mut s.booting, true), (&mut s.refilling, refill)] {
            if let Some(n) = map.get_mut(&self.language).filter(|_| on) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Drop for Booting {
    fn drop(&mut self) {
        if self.counted {
            let inner = self.inner.clone();
            let mut guard = inner.lock();
            self.uncount(&mut guard);
            drop(guard);
            self.inner.report(&self.language);
            self.inner.changed.notify_waiters();
        }
    }
}

/// A job's place in line for a VM, undone when it leaves the line however
/// it leaves (a VM, an error, or cancellation).
struct Waiting<'a> {
    inner: &'a Inner,
    language: &'a str,
    /// Counted in `waiters`: waiting for budget.
    budget: bool,
    /// Counted in `claimed`: waiting for a refill boot under way.
    claim: bool,
}

impl Waiting<'_> {
    fn reset(&mut self, s: &mut State) {
        if std::mem::take(&mut self.budget) {
            s.waiters = s.waiters.saturating_sub(1);
        }
        if std::mem::take(&mut self.claim) {
            if let Some(n) = s.claimed.get_mut(self.language) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.budget || self.claim {
            let mut s = self.inner.lock();
            self.reset(&mut s);
        }
    }
}

/// A VM handed to a job, with its share of the budget. Dropping the lease
/// (after destroying the VM, or with it) gives the share back.
#[derive(Debug)]
pub struct Lease {
    // Field order matters: the VM dies before its share is given back.
    vm: Option<Vm>,
    _share: Share,
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

impl Pools {
    pub fn new(launcher: Launcher, cfg: PoolConfig, metrics: Arc<Metrics>) -> Pools {
        Pools {
            inner: Arc::new(Inner {
                launcher,
                cfg,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                claims: Notify::new(),
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
        self.inner.lock().sizes(language)
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

    /// A ready VM of `language` for one job. Safe to cancel at any point:
    /// budget, counters and half-booted VMs are all given back.
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
        let mut line = Waiting {
            inner,
            language,
            budget: false,
            claim: false,
        };
        enum Next {
            /// A pooled VM, and how much its share grew for the job.
            Warm(Pooled, u64),
            Boot(Share, Booting),
            Evict(Pooled),
            Wait,
        }
        loop {
            if inner.shutdown.is_cancelled() {
                return Err(AcquireError::ShuttingDown);
            }
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut s = inner.lock();
                // Claims and places are made afresh each round.
                line.reset(&mut s);
                let refilling = s.refilling.get(language).copied().unwrap_or(0);
                let claimed = s.claimed.get(language).copied().unwrap_or(0);
                if let Some(p) = s.ready.get_mut(language).and_then(VecDeque::pop_front) {
                    // A job may use the whole guest: the idle charge grows.
                    let growth = mib.saturating_sub(p.share.mib);
                    if s.used_mib + growth <= inner.cfg.max_memory_mib {
                        s.used_mib += growth;
                        Next::Warm(p, growth)
                    } else {
                        s.ready
                            .entry(language.to_owned())
                            .or_default()
                            .push_front(p);
                        match s.evictable(language) {
                            Some(victim) => Next::Evict(victim),
                            None => {
                                s.waiters += 1;
                                line.budget = true;
                                Next::Wait
                            }
                        }
                    }
                } else if refilling > claimed {
                    *s.claimed.entry(language.to_owned()).or_default() += 1;
                    line.claim = true;
                    inner.claims.notify_waiters();
                    Next::Wait
                } else if s.fits(&inner.cfg, mib) {
                    s.reserve(mib);
                    let share = Share {
                        inner: inner.clone(),
                        mib,
                    };
                    Next::Boot(share, Booting::start(inner, &mut s, language, false))
                } else if let Some(p) = s.ready.values_mut().find_map(VecDeque::pop_front) {
                    Next::Evict(p)
                } else {
                    s.waiters += 1;
                    line.budget = true;
                    Next::Wait
                }
            };
            inner.report(language);
            let (vm, share, warm) = match next {
                Next::Warm(mut p, growth) => {
                    p.share.mib += growth;
                    // A VM can die while it waits in the pool; check it answers.
                    if p.vm.ping(Duration::from_secs(5)).await.is_ok() {
                        (p.vm, p.share, true)
                    } else {
                        inner.metrics.vm_failure(language, "dead");
                        tracing::warn!(vm = %p.vm.info().id, language, "a pooled VM stopped answering; discarded");
                        inner.discard(p).await;
                        continue;
                    }
                }
                Next::Boot(share, booting) => {
                    let started = tokio::select! {
                        r = inner.launcher.start(language) => r,
                        () = inner.shutdown.cancelled() => return Err(AcquireError::ShuttingDown),
                    };
                    drop(booting);
                    match started {
                        Ok(vm) => {
                            inner.observe_ready(language, &vm);
                            (vm, share, false)
                        }
                        Err(e) => {
                            inner.metrics.vm_failure(language, "boot");
                            return Err(e.into());
                        }
                    }
                }
                Next::Evict(p) => {
                    tracing::debug!(vm = %p.vm.info().id, "evicting an idle VM of another language");
                    inner.discard(p).await;
                    continue;
                }
                Next::Wait => {
                    notified.await;
                    continue;
                }
            };
            drop(line);
            // Taking a pooled VM leaves a gap to refill.
            inner.changed.notify_waiters();
            return Ok(Lease {
                vm: Some(vm),
                _share: share,
                waited: started.elapsed(),
                warm,
            });
        }
    }

    /// Stops refilling and destroys every pooled VM, and returns once no VM
    /// of the pools is left booting. Leased VMs die with their jobs.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.changed.notify_waiters();
        loop {
            let notified = inner.changed.notified();
            let (pooled, booting): (Vec<Pooled>, usize) = {
                let mut s = inner.lock();
                let pooled = s.ready.values_mut().flat_map(std::mem::take).collect();
                (pooled, s.booting.values().sum())
            };
            for p in pooled {
                inner.discard(p).await;
            }
            if booting == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl State {
    /// Ready and booting VMs of a language.
    fn sizes(&self, language: &str) -> (usize, usize) {
        (
            self.ready.get(language).map_or(0, VecDeque::len),
            self.booting.get(language).copied().unwrap_or(0),
        )
    }

    /// VMs running jobs or starting for one: every VM in the budget but
    /// the pools' ready and refilling ones.
    fn jobs(&self) -> usize {
        let ready: usize = self.ready.values().map(VecDeque::len).sum();
        let refilling: usize = self.refilling.values().sum();
        self.used_vms.saturating_sub(ready + refilling)
    }

    fn fits(&self, cfg: &PoolConfig, mib: u64) -> bool {
        self.used_vms < cfg.max_vms && self.used_mib + mib <= cfg.max_memory_mib
    }

    /// An idle VM to evict to make room: one of another language first,
    /// else the newest of this one (the oldest is next in line).
    fn evictable(&mut self, language: &str) -> Option<Pooled> {
        let other = self
            .ready
            .iter_mut()
            .filter(|(l, q)| l.as_str() != language && !q.is_empty())
            .find_map(|(_, q)| q.pop_front());
        other.or_else(|| {
            let q = self.ready.get_mut(language)?;
            (q.len() > 1).then(|| q.pop_back()).flatten()
        })
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

    fn observe_ready(&self, language: &str, vm: &Vm) {
        let i = vm.info();
        self.metrics
            .observe_ready(language, i.restored, i.ready_ms as f64 / 1000.0);
    }

    /// Charges an idle VM what it measurably costs (when that is less than
    /// its share): the rest of the share goes back to the budget.
    fn charge_idle(&self, share: &mut Share, vm: &Vm) {
        let Some(used) = vm.host_memory() else {
            return;
        };
        let charge = used.pss_mib() + IDLE_MARGIN_MIB;
        if charge < share.mib {
            {
                let mut s = self.lock();
                s.used_mib = s.used_mib.saturating_sub(share.mib - charge);
            }
            share.mib = charge;
            self.changed.notify_waiters();
        }
    }

    /// Destroys a pooled VM; its share goes back when `p` is gone.
    async fn discard(&self, p: Pooled) {
        let language = p.vm.info().language.clone();
        p.vm.destroy().await;
        drop(p.share);
        self.report(&language);
    }

    fn report(&self, language: &str) {
        let ((ready, booting), leased, used_mib) = {
            let s = self.lock();
            let idle: usize = s.ready.values().map(VecDeque::len).sum::<usize>()
                + s.booting.values().sum::<usize>();
            (
                s.sizes(language),
                s.used_vms.saturating_sub(idle),
                s.used_mib,
            )
        };
        self.metrics.set_pool(language, ready, booting);
        self.metrics.set_vms_running(leased);
        self.metrics
            .set_vm_memory(used_mib, self.cfg.max_memory_mib);
    }
}

#[path = "pool_refill.rs"]
mod refill;
use refill::refill;

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
