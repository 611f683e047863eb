//! Snapshot keys, saving, checking and the launcher's fallbacks, over the
//! fake driver. The real restores are tested in `crates/ignis/tests`.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::accel::AccelChoice;
use crate::driver::fake::{Behaviour, Call, FakeDriver};
use crate::driver::Accel;
use crate::image::{Catalog, ImageProblem, LanguageImage};
use crate::jail::Containment;
use crate::launcher::Launcher;
use crate::paths::Paths;

fn image(dir: &Path, memory: u64, key: &str) -> LanguageImage {
    let mut image = LanguageImage::fake(dir, "python", memory);
    image.manifest.version = "Python 3".into();
    image.manifest.extensions = vec!["py".into()];
    image.manifest.source_file = "main.py".into();
    image.manifest.layer_bytes = 1000;
    image.manifest.key = key.into();
    image
}

fn kernel(key: &str) -> KernelImage {
    KernelImage {
        path: "/k/vmlinux".into(),
        key: key.into(),
    }
}

fn launcher(dir: &Path, driver: &FakeDriver) -> Launcher {
    let mut catalog = Catalog {
        dir: dir.join("images"),
        kernel: Err(ImageProblem {
            name: "kernel".into(),
            problem: "fake".into(),
        }),
        languages: Default::default(),
        bases: Default::default(),
        problems: vec![],
    };
    catalog
        .languages
        .insert("python".into(), image(dir, 64, "img-1"));
    Launcher::with_driver(
        Paths::new(dir),
        catalog,
        kernel("k-1"),
        AccelChoice {
            accel: Accel::Tcg,
            reason: "test".into(),
        },
        Arc::new(driver.clone()),
    )
}

#[test]
fn the_key_changes_with_everything_a_saved_guest_depends_on() {
    let d = Path::new("/x");
    let fake = FakeDriver::default();
    let base = key(&fake, &kernel("k-1"), &image(d, 512, "img-1")).expect("fake snapshots");
    assert_eq!(
        base,
        key(&fake, &kernel("k-1"), &image(d, 512, "img-1")).expect("key"),
        "the same inputs give the same key"
    );
    for other in [
        key(&fake, &kernel("k-2"), &image(d, 512, "img-1")),
        key(&fake, &kernel("k-1"), &image(d, 1024, "img-1")),
        key(&fake, &kernel("k-1"), &image(d, 512, "img-2")),
    ] {
        assert_ne!(other.expect("key"), base);
    }
    let qemu = crate::driver::qemu::Qemu::new("/bin/true", Accel::Tcg, Containment::Insecure);
    let kvm = crate::driver::qemu::Qemu::new("/bin/true", Accel::Kvm, Containment::Insecure);
    let i = image(d, 512, "img-1");
    assert_ne!(
        key(&qemu, &kernel("k-1"), &i),
        key(&kvm, &kernel("k-1"), &i)
    );
    assert_ne!(key(&qemu, &kernel("k-1"), &i).expect("qemu"), base);
    let missing =
        crate::driver::qemu::Qemu::new("/no/such/qemu", Accel::Tcg, Containment::Insecure);
    assert_eq!(
        key(&missing, &kernel("k-1"), &i),
        None,
        "no binary, no snapshot"
    );
}

#[tokio::test]
async fn a_snapshot_is_made_once_then_restored() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    for _ in 0..2 {
        let vm = l.start("python").await.expect("start");
        assert!(vm.info().restored);
        vm.destroy().await;
    }
    assert_eq!(
        fake.calls(),
        [
            Call::Start {
                snapshot_source: true
            },
            Call::Snapshot,
            Call::Stop,
            Call::Restore,
            Call::Stop,
            Call::Restore,
            Call::Stop,
        ]
    );
    let listed = SnapshotStore::new(l.paths.snapshots()).list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let snap = listed[0].1.as_ref().expect("sound");
    assert_eq!(snap.meta.memory_mib, 64);
    assert_eq!(snap.meta.runtime_version, "Fake 1");
    assert!(snap
        .meta
        .files
        .contains_key(crate::driver::fake::FAKE_STATE));
    assert_eq!(fake.live(), 0);
}

#[tokio::test]
async fn a_leftover_half_snapshot_is_never_used_and_is_swept() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    let cfg = l.config("python").expect("config");
    let k = key(&fake, &cfg.kernel, &cfg.image).expect("key");
    let store = SnapshotStore::new(l.paths.snapshots());
    // What a saver that died half-way leaves behind.
    let tmp = store.dir.join(format!(".python-{k}.tmp-999999"));
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::write(tmp.join("memory"), b"partial").expect("write");
    assert_eq!(store.open("python", &k).err(), Some(Problem::Missing));
    assert!(
        store.list().is_empty(),
        "a temporary directory is not a snapshot"
    );

    let vm = l.start("python").await.expect("start");
    vm.destroy().await;
    assert!(!tmp.exists(), "the next saver swept it");
    store.open("python", &k).expect("a sound snapshot now");
}

#[tokio::test]
async fn a_snapshot_that_does_not_match_its_meta_is_corrupt() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    l.snapshot("python").await.expect("made");
    let store = SnapshotStore::new(l.paths.snapshots());
    let (name, snap) = store.list().pop().expect("one");
    let snap = snap.expect("sound");
    let k = name.rsplit_once('-').expect("language-key").1.to_owned();

    let state = snap.dir.join(crate::driver::fake::FAKE_STATE);
    std::fs::write(&state, b"fakf").expect("same size, other bytes");
    assert!(matches!(store.open("python", &k), Err(Problem::Corrupt(w)) if w.contains("checksum")));
    std::fs::write(&state, b"fake-but-longer").expect("write");
    assert!(matches!(store.open("python", &k), Err(Problem::Corrupt(w)) if w.contains("bytes")));
    std::fs::write(snap.dir.join("meta.json"), b"{").expect("write");
    assert!(matches!(store.open("python", &k), Err(Problem::Corrupt(_))));

    // A fresh launcher (another process) makes it anew and restores.
    let again = launcher(dir.path(), &fake);
    let vm = again.start("python").await.expect("start");
    assert!(vm.info().restored);
    vm.destroy().await;
    store.open("python", &k).expect("sound again");
}

#[tokio::test]
async fn a_failed_restore_boots_and_three_in_a_row_discard_the_snapshot() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    let snap = l.snapshot("python").await.expect("made");
    for round in 1..=3 {
        fake.script([Behaviour::FailStart]);
        let vm = l.start("python").await.expect("a boot stands in");
        assert!(!vm.info().restored, "round {round}");
        vm.destroy().await;
        assert_eq!(snap.dir.exists(), round < 3, "round {round}");
    }
    let calls = fake.calls();
    assert_eq!(calls.iter().filter(|c| **c == Call::Restore).count(), 3);
    // Asked again, the snapshot is made anew.
    let vm = l.start("python").await.expect("start");
    assert!(vm.info().restored);
    vm.destroy().await;
    assert!(snap.dir.exists());
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_made_is_not_retried_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    fake.script([Behaviour::FailStart]);
    let vm = l.start("python").await.expect("boots instead");
    assert!(!vm.info().restored);
    vm.destroy().await;
    let vm = l.start("python").await.expect("boots again");
    assert!(!vm.info().restored);
    vm.destroy().await;
    let sources = fake
        .calls()
        .iter()
        .filter(|c| {
            **c == Call::Start {
                snapshot_source: true,
            }
        })
        .count();
    assert_eq!(sources, 1, "the failed save is not tried again right away");
    assert!(matches!(
        l.snapshot("python").await,
        Err(crate::LaunchError::Snapshot {
            source: SnapshotError::Backoff { .. },
            ..
        })
    ));
}

#[tokio::test]
async fn without_snapshots_every_vm_boots_and_nothing_is_saved() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake).without_snapshots();
    let vm = l.start("python").await.expect("boot");
    assert!(!vm.info().restored);
    vm.destroy().await;
    assert_eq!(
        fake.calls(),
        [
            Call::Start {
                snapshot_source: false
            },
            Call::Stop
        ]
    );
    assert!(!l.paths.snapshots().exists());
}

#[tokio::test]
async fn a_ready_vm_can_be_saved_once_and_never_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakeDriver::default();
    let l = launcher(dir.path(), &fake);
    let mut vm = l.boot("python").await.expect("boot");
    let into = dir.path().join("into");
    std::fs::create_dir_all(&into).expect("mkdir");
    let files = SnapshotFiles { dir: &into };
    vm.save(files).await.expect("a ready VM saves");
    assert_eq!(vm.state(), crate::VmState::Saved);
    assert!(matches!(
        vm.save(files).await,
        Err(crate::SaveError::NotAllowed(crate::VmState::Saved))
    ));
    let req = ignis_protocol::RunRequest {
        files: vec![],
        stdin: vec![],
        args: vec![],
        env: Default::default(),
        limits: Default::default(),
    };
    assert!(matches!(
        vm.run(req, std::time::Duration::from_secs(1), |_| {}).await,
        Err(crate::RunError::NotReady(crate::VmState::Saved))
    ));
    vm.destroy().await;
}
