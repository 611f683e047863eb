//! Snapshot restore against real microVMs, checked from inside the guests:
//! restored guests are unique and take the host's clock; a corrupt snapshot
//! is made anew; one that fails to restore falls back to a boot; a full
//! disk abandons a snapshot; a restored guest that does not answer is
//! killed; and memory a guest frees goes back to the host.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ignis_protocol::{Limits, Stream, Verdict};
use ignis_vmm::paths::Paths;
use ignis_vmm::report::{self, RunReport};
use ignis_vmm::snapshot::{self, SnapshotStore};
use ignis_vmm::{BootError, Launcher, Origin, RunEvent, Vm};
use serde_json::Value;

const PY_HELLO: &str = "print('hello, world')\n";

/// A launcher over the real images whose snapshots live in `dir`.
async fn launcher_in(language: &str, dir: &Path) -> Launcher {
    images(&[language]);
    let mut paths = Paths::from_env();
    paths.snapshots = dir.to_path_buf();
    Launcher::new(paths)
        .await
        .expect("launcher over the real images")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Saves `language`'s snapshot into `launcher`'s snapshot directory from a
/// guest whose clock says September 2001: a restored guest that kept the
/// clock it was saved with would be a quarter of a century late.
async fn save_with_a_stale_clock(launcher: &Launcher, language: &str) {
    let mut cfg = launcher.config(language).expect("config");
    cfg.guest_time = Some(1_000_000_000);
    let key = snapshot::key(&*launcher.driver, &cfg.kernel, &cfg.image).expect("qemu snapshots");
    let store = SnapshotStore::new(launcher.paths.snapshots());
    let snap = store
        .create(&*launcher.driver, &cfg, &key)
        .await
        .expect("snapshot saved");
    assert_eq!(snap.meta.guest.unix_time, 1_000_000_000);
}

/// Runs `files` in two VMs restored from the same snapshot, and returns
/// what each printed (one JSON object) with its VM id.
async fn run_in_two_restored(
    launcher: &Launcher,
    language: &str,
    files: &[(&str, &str)],
) -> Vec<(Value, String)> {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let vm = launcher.start(language).await.expect("restore");
        assert!(vm.info().restored, "{:?}", vm.info());
        let id = vm.info().id.clone();
        // A roomy compile limit: two VMs of another test may share the two
        // cores, and this test is about what the guest prints, not speed.
        let limits = Limits {
            compile_timeout_ms: 300_000,
            ..Limits::default()
        };
        let r = report::execute(vm, request(files, limits), |_| {}).await;
        assert_eq!(r.status, Verdict::Ok, "{r:#?}");
        let printed: Value = serde_json::from_str(&r.stdout_text()).expect("one JSON object");
        seen.push((printed, id));
    }
    seen
}

fn assert_unique_and_current(seen: &[(Value, String)], fields: &[&str]) {
    let [(a, id_a), (b, id_b)] = seen else {
        panic!("two guests expected");
    };
    for f in fields {
        assert_ne!(
            a[f], b[f],
            "{f} is the same in two restored guests: {a} / {b}"
        );
    }
    for (v, id) in [(a, id_a), (b, id_b)] {
        assert_eq!(v["hostname"], format!("ignis-{id}"), "{v}");
        let guest_time = v["time"].as_f64().expect("time");
        assert!(
            (guest_time - unix_now()).abs() < 120.0,
            "guest clock {guest_time} is not the host's {}",
            unix_now()
        );
    }
}

#[tokio::test]
async fn restored_python_guests_are_unique_and_take_the_host_clock() {
    let snaps = tempfile::tempdir().expect("tmp");
    let launcher = launcher_in("python", snaps.path()).await;
    save_with_a_stale_clock(&launcher, "python").await;
    let src = "import json, os, random, socket, time\n\
               print(json.dumps({'urandom': os.urandom(16).hex(), 'random': random.random(),\n\
               'hash': hash('ignis'), 'hostname': socket.gethostname(), 'time': time.time()}))\n";
    let seen = run_in_two_restored(&launcher, "python", &[("main.py", src)]).await;
    assert_unique_and_current(&seen, &["urandom", "random", "hash", "hostname"]);
}

/// Go 1.19's top-level math/rand is seeded with 1 by design (natively too);
/// programs seed it from the clock or from crypto/rand, and the runtime's
/// own seed (map order, hash/maphash) comes from the kernel.
#[tokio::test]
async fn restored_go_guests_are_unique_and_take_the_host_clock() {
    let snaps = tempfile::tempdir().expect("tmp");
    let launcher = launcher_in("go", snaps.path()).await;
    save_with_a_stale_clock(&launcher, "go").await;
    let src = r#"package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	mrand "math/rand"
	"os"
	"time"
)

func main() {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	var h maphash.Hash
	h.WriteString("ignis")
	host, _ := os.Hostname()
	out, _ := json.Marshal(map[string]any{
		"crypto":   hex.EncodeToString(b),
		"maphash":  fmt.Sprint(h.Sum64()),
		"seeded":   mrand.New(mrand.NewSource(time.Now().UnixNano())).Int63(),
		"hostname": host,
		"time":     float64(time.Now().UnixNano()) / 1e9,
	})
	fmt.Println(string(out))
}
"#;
    let seen = run_in_two_restored(&launcher, "go", &[("main.go", src)]).await;
    assert_unique_and_current(&seen, &["crypto", "maphash", "seeded", "hostname"]);
}

/// The one snapshot directory of `language` under `snaps`.
fn snapshot_dir(snaps: &Path, language: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = entries(snaps)
        .into_iter()
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{language}-")))
        })
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn run_with_snapshots(dir: &Path, snaps: &Path) -> (RunReport, Cli) {
    std::fs::write(dir.join("hello.py"), PY_HELLO).expect("write");
    let cli = ignis_env(
        dir,
        &["run", "--json", "hello.py"],
        &[("IGNIS_SNAPSHOT_DIR", snaps)],
    );
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    let r = cli.report();
    assert_eq!(
        (r.status, &*r.stdout_text()),
        (Verdict::Ok, "hello, world\n"),
        "{r:#?}"
    );
    (r, cli)
}

fn restored(r: &RunReport) -> bool {
    r.vm.as_ref().expect("vm").restored
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("WARN")).collect()
}

#[test]
fn a_corrupt_snapshot_is_made_anew_and_the_job_runs() {
    images(&["python"]);
    let (work, snaps) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (first, _) = run_with_snapshots(work.path(), snaps.path());
    assert!(
        restored(&first),
        "the first run makes the snapshot and restores"
    );
    let dir = snapshot_dir(snaps.path(), "python");
    let state = dir.join("state");
    let mut bytes = std::fs::read(&state).expect("state");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, &bytes).expect("corrupt it");

    let (second, cli) = run_with_snapshots(work.path(), snaps.path());
    let warned = warnings(&cli.stderr);
    assert_eq!(warned.len(), 1, "{}", cli.stderr);
    assert!(
        warned[0].contains("snapshot unusable") && warned[0].contains("checksum"),
        "{}",
        cli.stderr
    );
    assert!(restored(&second), "restored from the snapshot made anew");
    assert_ne!(
        std::fs::read(&state).expect("state"),
        bytes,
        "the corrupt state was replaced"
    );
}

#[test]
fn a_snapshot_that_fails_to_restore_falls_back_to_a_boot() {
    images(&["python"]);
    let (work, snaps) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    run_with_snapshots(work.path(), snaps.path());
    // A state file that QEMU cannot load, with a meta.json that vouches for
    // it: only the restore itself can find out.
    let dir = snapshot_dir(snaps.path(), "python");
    let garbage = b"not a migration stream".to_vec();
    std::fs::write(dir.join("state"), &garbage).expect("write");
    let meta_path = dir.join("meta.json");
    let mut meta: Value =
        serde_json::from_slice(&std::fs::read(&meta_path).expect("meta")).expect("json");
    meta["files"]["state"]["bytes"] = garbage.len().into();
    meta["files"]["state"]["sha256"] = sha256_hex(&garbage).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("json")).expect("write");

    let (r, cli) = run_with_snapshots(work.path(), snaps.path());
    assert!(!restored(&r), "{r:#?}");
    let warned = warnings(&cli.stderr);
    assert_eq!(warned.len(), 1, "{}", cli.stderr);
    assert!(
        warned[0].contains("restore failed, booting instead"),
        "{}",
        cli.stderr
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unmounts a tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_abandons_the_snapshot_and_the_job_boots() {
    images(&["python"]);
    let (work, snaps) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(snaps.path())
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "prerequisite missing: mounting a tmpfs needs root"
    );
    let _mount = Mount(snaps.path().to_path_buf());

    let (r, cli) = run_with_snapshots(work.path(), snaps.path());
    assert!(!restored(&r), "{r:#?}");
    let warned = warnings(&cli.stderr);
    assert_eq!(warned.len(), 1, "{}", cli.stderr);
    assert!(
        warned[0].contains("no snapshot, booting instead"),
        "{}",
        cli.stderr
    );
    let left: Vec<PathBuf> = entries(snaps.path())
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "a half snapshot was left: {left:?}");
}

#[tokio::test]
async fn a_restored_guest_that_does_not_answer_is_killed() {
    let frame = ready_frame();
    let fake = fake_image(READY_THEN_HANG_AGENT, &[("ready.frame", &frame)]).await;
    let store = SnapshotStore::new(fake._tmp.path().join("snapshots"));
    let key = snapshot::key(&fake.driver, &fake.cfg.kernel, &fake.cfg.image).expect("key");
    let snap = store
        .create(&fake.driver, &fake.cfg, &key)
        .await
        .expect("a guest that said ready can be saved");
    let err = Vm::start(&fake.driver, &fake.cfg, Origin::Restore(&snap))
        .await
        .expect_err("the fake agent never answers the resume");
    assert!(matches!(err, BootError::Timeout { .. }), "{err}");
    assert_eq!(entries(fake.runtime_dir()), Vec::<PathBuf>::new());
    assert!(
        !process_mentions(&snap.dir),
        "a VMM of the snapshot is still alive"
    );
}

/// Reads the VMM's resident set until `done` says yes, or gives up after
/// `within` with the last reading.
async fn rss_until(pid: u32, within: Duration, done: impl Fn(u64) -> bool) -> u64 {
    let started = Instant::now();
    loop {
        let rss = ignis_vmm::memory::of_process(pid)
            .expect("VMM alive")
            .rss_kib;
        if done(rss) || started.elapsed() > within {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn memory_a_restored_guest_frees_goes_back_to_the_host() {
    let launcher = launcher(&["python"]).await;
    let memory_file = launcher
        .snapshot("python")
        .await
        .expect("snapshot")
        .files()
        .memory();
    let blocks = || {
        std::fs::metadata(&memory_file)
            .expect("memory file")
            .blocks()
    };
    let blocks_before = blocks();
    let vm = launcher.start("python").await.expect("restore");
    assert!(vm.info().restored);
    let pid = vm.pid().expect("VMM pid");
    let base = ignis_vmm::memory::of_process(pid).expect("smaps").rss_kib;
    let src = "import time\n\
               b = bytearray(300 << 20)\n\
               for i in range(0, len(b), 4096):\n    b[i] = 1\n\
               print('allocated', flush=True)\n\
               del b\n\
               print('freed', flush=True)\n\
               time.sleep(30)\n";
    let limits = Limits {
        timeout_ms: 40_000,
        memory_mib: 400,
        ..Limits::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(report::execute(
        vm,
        request(&[("mem.py", src)], limits),
        move |e| {
            if let RunEvent::Output(Stream::Stdout, data) = e {
                let _ = tx.send(String::from_utf8_lossy(&data).into_owned());
            }
        },
    ));
    let mut printed = String::new();
    while !printed.contains("allocated") {
        printed.push_str(&rx.recv().await.expect("the program prints 'allocated'"));
    }
    let peak = ignis_vmm::memory::of_process(pid).expect("smaps").rss_kib;
    assert!(
        peak > base + 250 * 1024,
        "300 MiB in the guest: RSS {base} -> {peak} KiB"
    );
    while !printed.contains("freed") {
        printed.push_str(&rx.recv().await.expect("the program prints 'freed'"));
    }
    let after = rss_until(pid, Duration::from_secs(20), |rss| rss < peak - 200 * 1024).await;
    assert!(
        after < peak - 200 * 1024,
        "freed pages did not go back to the host: RSS base {base}, peak {peak}, after {after} KiB"
    );
    run.abort();
    let _ = run.await;
    assert_eq!(
        blocks(),
        blocks_before,
        "the shared memory file was changed"
    );
}
