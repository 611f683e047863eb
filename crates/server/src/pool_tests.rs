//! Tests of `pool.rs` over the fake driver, kept apart to keep the module
//! readable. No VM boots: every machine is a task playing the agent.

use std::collections::BTreeMap;

use ignis_protocol::{File, Limits, RunRequest};
use ignis_vmm::driver::fake::{Behaviour, Call, FakeDriver};
use ignis_vmm::HostMemory;
use tempfile::TempDir;

use super::*;
use crate::test_kit::fake_launcher;

/// How long a test waits for a state before it gives up (a hang, not a
/// measurement; virtual time under a paused clock).
const PATIENCE: Duration = Duration::from_secs(60);

/// Pools over a fake driver the test keeps a handle on.
struct Setup {
    _dir: TempDir,
    driver: FakeDriver,
    pools: Pools,
    metrics: Arc<Metrics>,
}

fn setup(cfg: PoolConfig, snapshots: bool) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let driver = FakeDriver::default();
    let mut launcher = fake_launcher(dir.path(), driver.clone());
    if !snapshots {
        launcher = launcher.without_snapshots();
    }
    let metrics = Arc::new(Metrics::new());
    metrics.add_language("python");
    let pools = Pools::new(launcher, cfg, metrics.clone());
    Setup {
        _dir: dir,
        driver,
        pools,
        metrics,
    }
}

fn config(warm: usize, max_vms: usize, max_memory_mib: u64) -> PoolConfig {
    PoolConfig {
        warm,
        max_vms,
        max_memory_mib,
    }
}

impl Setup {
    /// Waits until `cond` holds of the pools' state, woken by the pools' own
    /// notifications (a VM joined a pool, a boot ended, budget came back).
    async fn settle(&self, what: &str, cond: impl Fn(&State) -> bool) {
        let inner = &self.pools.inner;
        let wait = async {
            loop {
                let notified = inner.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if cond(&inner.lock()) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// The pools' budget in use: VMs and MiB.
    fn used(&self) -> (usize, u64) {
        let s = self.pools.inner.lock();
        (s.used_vms, s.used_mib)
    }

    fn waiters(&self) -> usize {
        self.pools.inner.lock().waiters
    }

    /// Machines asked of the driver for VMs (snapshot sources left out).
    fn vm_starts(&self) -> usize {
        count_vm_starts(&self.driver.calls())
    }

    fn metric(&self, line: &str) -> bool {
        self.metrics.render().lines().any(|l| l == line)
    }
}

fn count_vm_starts(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::Restore
                    | Call::Start {
                        snapshot_source: false
                    }
            )
        })
        .count()
}

/// Waits until `cond` holds, letting every other task run in between. For
/// what no notification announces (the fake driver's machines, a job
/// joining the line for budget). Real time: not for paused-clock tests.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

fn program(stdout: &str) -> RunRequest {
    RunRequest {
        files: vec![File {
            name: "main.py".into(),
            content: stdout.as_bytes().to_vec(),
        }],
        stdin: vec![],
        args: vec![],
        env: BTreeMap::new(),
        limits: Limits::default(),
    }
}

/// Runs a program on the lease's VM: the fake prints its first file.
async fn run_on(lease: &mut Lease, text: &str) {
    let mut vm = lease.take().expect("the lease holds a VM");
    let exec = vm
        .run(program(text), Duration::from_secs(10), |_| {})
        .await
        .expect("the leased VM runs a program");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), text);
    vm.destroy().await;
}

fn pss(mib: u64) -> HostMemory {
    HostMemory {
        rss_kib: mib * 1024,
        pss_kib: mib * 1024,
        pss_anon_kib: mib * 1024,
        pss_file_kib: 0,
    }
}

#[tokio::test]
async fn warm_acquire_takes_the_pooled_vm_without_starting_one() {
    // One VM slot: once the pooled VM is leased, nothing else can start.
    let t = setup(config(1, 1, 4096), true);
    t.pools.start_refill();
    t.settle("a warm VM", |s| s.sizes("python") == (1, 0)).await;
    // The first start made the snapshot, then restored from it, and the
    // restored VM was warmed before it joined the pool.
    let before = t.driver.calls();
    assert_eq!(
        before,
        [
            Call::Start {
                snapshot_source: true
            },
            Call::Snapshot,
            Call::Stop,
            Call::Restore,
            Call::Warm,
        ]
    );

    let mut lease = t.pools.acquire("python").await.expect("a VM");
    assert!(lease.warm, "the pooled VM is handed out");
    assert_eq!(t.driver.calls(), before, "no VM started for the job");
    assert_eq!(t.pools.sizes("python"), (0, 0));
    assert_eq!(t.driver.live(), 1);
    run_on(&mut lease, "from the pool\n").await;

    // The lease gone, the slot is free and the pool refills by a restore.
    drop(lease);
    t.settle("the pool refilled", |s| s.sizes("python") == (1, 0))
        .await;
    assert_eq!(t.vm_starts(), 2);
    assert!(t.driver.calls().ends_with(&[Call::Restore, Call::Warm]));

    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

/// One language only: the fake agent always says it is Python, so a VM of
/// any other image fails its handshake.
#[tokio::test]
async fn refill_keeps_the_warm_target() {
    let t = setup(config(3, 8, 8192), false);
    t.pools.start_refill();
    t.settle("three warm VMs", |s| s.sizes("python") == (3, 0))
        .await;
    assert_eq!(t.vm_starts(), 3);
    assert_eq!(t.driver.live(), 3, "no more than the target was started");
    assert!(t.metric("ignis_pool_ready{language=\"python\"} 3"));

    // Two jobs take two pooled VMs; the pool makes up for both.
    let a = t.pools.acquire("python").await.expect("a VM");
    let b = t.pools.acquire("python").await.expect("a VM");
    assert!(a.warm && b.warm);
    t.settle("the pool refilled", |s| s.sizes("python") == (3, 0))
        .await;
    assert_eq!(t.vm_starts(), 5);
    assert_eq!(t.driver.live(), 5, "three pooled and two leased");
    assert_eq!(t.used().0, 5);

    drop((a, b));
    assert_eq!(t.driver.live(), 3, "leased VMs die with their lease");
    assert_eq!(t.used().0, 3);
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
    assert_eq!(t.used(), (0, 0));
}

#[tokio::test]
async fn a_vm_started_for_a_job_is_restored_but_not_warmed() {
    // Warming costs what the job's first run would: a job that waits for
    // its VM should not pay it twice.
    let t = setup(config(0, 2, 4096), true);
    let mut lease = t.pools.acquire("python").await.expect("a VM");
    assert!(!lease.warm);
    let calls = t.driver.calls();
    assert_eq!(calls.last(), Some(&Call::Restore), "{calls:?}");
    assert!(!calls.contains(&Call::Warm), "{calls:?}");
    run_on(&mut lease, "cold\n").await;
    drop(lease);
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

#[tokio::test]
async fn a_job_waits_for_the_vm_budget_and_proceeds_when_a_lease_is_dropped() {
    let t = setup(config(0, 1, 4096), false);
    let first = t.pools.acquire("python").await.expect("a VM");
    assert!(!first.warm, "no pool: started on demand");
    assert_eq!(t.used(), (1, 512));

    let pools = t.pools.clone();
    let second = tokio::spawn(async move { pools.acquire("python").await });
    until("the second job to wait for budget", || t.waiters() == 1).await;
    assert!(!second.is_finished());
    assert_eq!(t.vm_starts(), 1, "the waiting job started nothing");
    assert_eq!(t.driver.live(), 1);

    drop(first);
    let mut second = second
        .await
        .expect("task")
        .expect("a VM once budget is free");
    assert!(!second.warm);
    assert_eq!(t.vm_starts(), 2);
    assert_eq!(t.driver.live(), 1, "the first VM died with its lease");
    assert_eq!(t.used(), (1, 512));
    assert_eq!(t.waiters(), 0);
    run_on(&mut second, "after waiting\n").await;

    drop(second);
    assert_eq!(t.used(), (0, 0));
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

#[tokio::test]
async fn idle_vms_are_charged_their_measured_memory_and_leased_ones_the_guest() {
    // 512 MiB guests in a 1024 MiB budget: two by their nominal size, but
    // an idle one reports 30 MiB (charged 34 with the margin).
    let t = setup(config(8, 16, 1024), false);
    t.driver.set_host_memory(pss(30));
    t.pools.start_refill();
    t.settle("eight warm VMs", |s| s.sizes("python") == (8, 0))
        .await;
    assert_eq!(t.driver.live(), 8);
    assert_eq!(t.used(), (8, 8 * 34));
    let bytes = 8 * 34 * 1024 * 1024;
    assert!(t.metric(&format!("ignis_vm_memory_bytes {bytes}")));

    // A job may use its whole guest: its VM is charged 512 MiB now. No
    // room is left to boot an eighth idle VM (7 × 34 + 512 + 512 > 1024).
    let first = t.pools.acquire("python").await.expect("a VM");
    assert!(first.warm);
    assert_eq!(t.used(), (8, 7 * 34 + 512));

    // A second job needs 478 MiB more than its VM's idle charge: idle VMs
    // are evicted until that fits, and only then is it handed out.
    let second = t.pools.acquire("python").await.expect("a VM");
    assert!(second.warm);
    assert_eq!(t.used(), (2, 1024));
    assert_eq!(t.pools.sizes("python"), (0, 0));
    assert_eq!(t.driver.live(), 2);
    assert_eq!(t.vm_starts(), 8, "eviction made room; nothing was started");

    drop((first, second));
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
    assert_eq!(t.used(), (0, 0));
}

#[tokio::test]
async fn a_pooled_vm_that_died_is_discarded_and_another_started() {
    let t = setup(config(1, 4, 4096), false);
    t.pools.start_refill();
    t.settle("a warm VM", |s| s.sizes("python") == (1, 0)).await;
    t.driver.crash_all();
    assert_eq!(t.driver.live(), 0);

    // The ping before hand-out sees the VMM is gone, answer or not.
    let mut lease = t.pools.acquire("python").await.expect("a live VM");
    assert_eq!(t.vm_starts(), 2, "a new VM replaced the dead one");
    assert_eq!(t.driver.live(), 1);
    assert!(t.metric("ignis_vm_failures_total{kind=\"dead\",language=\"python\"} 1"));
    run_on(&mut lease, "alive\n").await;

    drop(lease);
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
    assert_eq!(t.used(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn failed_starts_make_refill_back_off() {
    let t = setup(config(1, 4, 4096), false);
    t.driver.script([Behaviour::FailStart; 5]);
    t.pools.start_refill();
    // Ten seconds of (paused, auto-advanced) time: attempts at 0, 0.5, 1.5,
    // 3.5 and 7.5 s as the pause doubles from 500 ms; a spinning refill
    // would have made thousands.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(t.vm_starts(), 5);
    assert!(t.metric("ignis_vm_failures_total{kind=\"boot\",language=\"python\"} 5"));
    assert_eq!(t.pools.sizes("python"), (0, 0));
    assert_eq!(t.used(), (0, 0), "failed boots give their budget back");
    assert_eq!(t.driver.live(), 0);

    // The script is spent: the next attempt (at 15.5 s) fills the pool.
    t.settle("a warm VM", |s| s.sizes("python") == (1, 0)).await;
    assert_eq!(t.vm_starts(), 6);

    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

/// A pool of one restored VM, with room for its refill beside it, and a
/// job that took the pooled VM: the refill starts as this returns.
async fn pooled_vm_taken() -> (Setup, Lease) {
    let t = setup(config(1, 2, 4096), true);
    t.pools.start_refill();
    t.settle("a warm VM", |s| s.sizes("python") == (1, 0)).await;
    let lease = t.pools.acquire("python").await.expect("the pooled VM");
    assert!(lease.warm, "it came from the pool");
    (t, lease)
}

#[tokio::test]
async fn a_refill_a_job_waits_for_is_not_warmed_first() {
    // Warmed, the pool's VM would cost the waiting job two runs: the job's
    // own run warms it anyway.
    let (t, first) = pooled_vm_taken().await;
    // The refill's restore is held; a second job claims it and waits.
    t.driver.hold_boots();
    until("a refill under way", || t.pools.sizes("python") == (0, 1)).await;
    let before = t.driver.calls();
    let second = t.pools.acquire("python");
    tokio::pin!(second);
    tokio::select! {
        biased;
        r = &mut second => panic!("acquired while boots are held: {r:?}"),
        () = until("the job to claim the refill", || {
            t.pools.inner.lock().claimed.get("python").copied() == Some(1)
        }) => {}
    }
    t.driver.release_boots();
    let mut second = second.await.expect("the refilled VM");
    assert!(second.warm, "it came from the pool");
    // The held restore was the last call; no warm-up followed it.
    assert_eq!(before.last(), Some(&Call::Restore), "{before:?}");
    assert_eq!(t.driver.calls(), before, "warmed before the job ran");
    run_on(&mut second, "cold but first\n").await;
    drop((first, second));
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

#[tokio::test]
async fn a_refill_waits_to_warm_until_no_job_runs() {
    // A warm-up beside a running job only slows the job: the refill's VM
    // is restored at once, and warmed when the job is over.
    let (t, mut job) = pooled_vm_taken().await;
    until("the refill holding its warm-up", || {
        t.pools.inner.lock().warm_held == 1
    })
    .await;
    let calls = t.driver.calls();
    assert_eq!(calls.last(), Some(&Call::Restore), "{calls:?}");
    assert_eq!(t.pools.sizes("python"), (0, 1), "not in the pool yet");

    run_on(&mut job, "running\n").await;
    drop(job);
    t.settle("the refill warmed and pooled", |s| {
        s.sizes("python") == (1, 0) && s.warm_held == 0
    })
    .await;
    let after = t.driver.calls();
    assert_eq!(after[calls.len()..], [Call::Stop, Call::Warm], "{after:?}");
    assert_eq!(t.vm_starts(), 2);
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

#[tokio::test]
async fn an_acquire_cancelled_while_its_vm_starts_gives_everything_back() {
    let t = setup(config(0, 1, 4096), false);
    t.driver.hold_boots();
    {
        let acquire = t.pools.acquire("python");
        tokio::pin!(acquire);
        tokio::select! {
            biased;
            r = &mut acquire => panic!("acquired while boots are held: {r:?}"),
            () = until("the job's VM to start", || t.driver.live() == 1) => {}
        }
        assert_eq!(t.pools.sizes("python"), (0, 1));
        assert_eq!(t.used(), (1, 512));
        // Dropped here, half-way through the boot.
    }
    assert_eq!(t.driver.live(), 0, "the half-started VM was killed");
    assert_eq!(t.pools.sizes("python"), (0, 0));
    assert_eq!(t.used(), (0, 0), "the budget share came back");

    // The one slot is free again.
    t.driver.release_boots();
    let lease = t.pools.acquire("python").await.expect("a VM");
    assert_eq!(t.vm_starts(), 2);
    drop(lease);
    t.pools.shutdown().await;
    assert_eq!(t.driver.live(), 0);
}

#[tokio::test]
async fn shutdown_destroys_pooled_and_booting_vms() {
    let t = setup(config(2, 8, 8192), true);
    t.pools.start_refill();
    t.settle("two warm VMs", |s| s.sizes("python") == (2, 0))
        .await;
    let lease = t.pools.acquire("python").await.expect("a VM");
    // The pool refills the gap, but that restore hangs half-way.
    t.driver.hold_boots();
    until("a refill under way", || {
        t.driver.live() == 3 && t.pools.sizes("python") == (1, 1)
    })
    .await;

    t.pools.shutdown().await;
    assert_eq!(t.pools.sizes("python"), (0, 0));
    assert_eq!(t.driver.live(), 1, "only the leased VM is left");
    assert!(matches!(
        t.pools.acquire("python").await,
        Err(AcquireError::ShuttingDown)
    ));

    drop(lease);
    assert_eq!(t.driver.live(), 0);
    assert_eq!(t.used(), (0, 0));
}
