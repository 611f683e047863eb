//! Refilling the pools: one task per language keeps `warm` VMs ready, and
//! warms a restored one only while that helps.

use super::*;

/// How long a pooled VM's warm-up may take.
const WARM_TIMEOUT: Duration = Duration::from_secs(60);

/// A VM for the pool: started, and warmed when it was restored (a booted
/// VM warmed itself while booting). Under TCG a restored guest's VMM has
/// translated nothing yet; without a warm-up its first job would pay for
/// that, and a pool is there for latency. See [`Inner::wait_to_warm`] for
/// when the warm-up waits, and when it is skipped.
async fn start_warm(inner: &Inner, language: &str) -> Result<Vm, String> {
    let mut vm = inner
        .launcher
        .start(language)
        .await
        .map_err(|e| e.to_string())?;
    if vm.info().restored && inner.wait_to_warm(language).await {
        match vm.warm(WARM_TIMEOUT).await {
            Ok(took) => {
                tracing::debug!(vm = %vm.info().id, ms = took.as_millis() as u64, "pooled VM warmed")
            }
            Err(e) => {
                let log = vm.destroy().await;
                let log = log.map(|p| format!(" (console log in {})", p.display()));
                return Err(format!(
                    "warming a restored VM failed: {e}{}",
                    log.unwrap_or_default()
                ));
            }
        }
    }
    Ok(vm)
}

impl Inner {
    /// Holds a restored refill back until no job runs, and says whether to
    /// warm it then: not if a job claimed this language's refills in the
    /// meantime. A warm-up is a whole run of CPU; beside running jobs it
    /// only slows them, and under load a pool of warmed VMs gave less
    /// throughput than no pool at all. A job that takes an unwarmed VM warms
    /// it by its own run, as it would on a VM started for it, and waiting
    /// for a warm-up first would make it wait for two runs.
    async fn wait_to_warm(&self, language: &str) -> bool {
        let mut held = Held::new(self);
        loop {
            let (changed, claims) = (self.changed.notified(), self.claims.notified());
            tokio::pin!(changed, claims);
            changed.as_mut().enable();
            claims.as_mut().enable();
            {
                let mut s = self.lock();
                if s.claimed.get(language).copied().unwrap_or(0) > 0 {
                    return false;
                }
                if s.jobs() == 0 {
                    return true;
                }
                held.count(&mut s);
            }
            tokio::select! {
                () = changed => {}
                () = claims => {}
            }
        }
    }
}

/// A refill counted in `warm_held` while it waits, however the wait ends
/// (shutdown drops it mid-way).
struct Held<'a> {
    inner: &'a Inner,
    counted: bool,
}

impl<'a> Held<'a> {
    fn new(inner: &'a Inner) -> Held<'a> {
        Held {
            inner,
            counted: false,
        }
    }

    fn count(&mut self, s: &mut State) {
        if !std::mem::replace(&mut self.counted, true) {
            s.warm_held += 1;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut s = self.inner.lock();
            s.warm_held = s.warm_held.saturating_sub(1);
        }
    }
}

/// Keeps `warm` ready VMs of one language, backing off after failed boots.
pub(super) async fn refill(inner: Arc<Inner>, language: String) {
    let Ok(mib) = inner.vm_mib(&language) else {
        return;
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let notified = inner.changed.notified();
        let started = {
            let mut s = inner.lock();
            let (ready, booting) = s.sizes(&language);
            let have = ready + booting;
            let go = have < inner.cfg.warm
                && s.waiters == 0
                && s.fits(&inner.cfg, mib)
                && !inner.shutdown.is_cancelled();
            go.then(|| {
                s.reserve(mib);
                let booting = Booting::start(&inner, &mut s, &language, true);
                (booting, mib)
            })
        };
        // The share is made outside the lock: its drop takes the lock.
        let Some((booting, mib)) = started else {
            tokio::select! {
                () = notified => continue,
                () = inner.shutdown.cancelled() => return,
            }
        };
        let mut share = Share {
            inner: inner.clone(),
            mib,
        };
        inner.report(&language);
        // Shutdown drops a start half-way: the VMM dies with its handle,
        // and the guards give back the count and the share.
        let started = tokio::select! {
            r = start_warm(&inner, &language) => r,
            () = inner.shutdown.cancelled() => return,
        };
        match started {
            Ok(vm) => {
                backoff = Duration::from_millis(500);
                inner.observe_ready(&language, &vm);
                inner.charge_idle(&mut share, &vm);
                if inner.shutdown.is_cancelled() {
                    drop(booting);
                    inner.discard(Pooled { vm, share }).await;
                    return;
                }
                booting.finish(Some(Pooled { vm, share }));
            }
            Err(e) => {
                tracing::warn!(language, "pool boot failed: {e}");
                inner.metrics.vm_failure(&language, "boot");
                drop(booting);
                drop(share);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
