//! The build's caching, against a recording fake host: which commands a
//! build runs when nothing, the agent, or the packages changed.

use std::cell::RefCell;
use std::path::PathBuf;

use super::*;

/// Records every command and plays its part on the file system: debootstrap
/// makes a minimal tree, mkfs makes an image file, chroot answers a version.
#[derive(Default)]
struct Recording {
    ran: RefCell<Vec<String>>,
}

impl BuildHost for Recording {
    fn exec(&self, cmd: &mut Command, _what: &str) -> Result<String, BuildError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let args: Vec<PathBuf> = cmd.get_args().map(PathBuf::from).collect();
        self.ran.borrow_mut().push(program.clone());
        match program.as_str() {
            "debootstrap" => {
                // debootstrap ... SUITE TARGET MIRROR
                let target = &args[args.len() - 2];
                std::fs::create_dir_all(target.join("etc")).expect("tree");
                std::fs::write(target.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")
                    .expect("passwd");
                std::fs::write(target.join("etc/group"), "root:x:0:\n").expect("group");
                std::fs::create_dir_all(target.join("sbin")).expect("sbin");
                Ok(String::new())
            }
            "mkfs.ext4" => {
                let image = args
                    .iter()
                    .find(|a| a.to_string_lossy().ends_with(".tmp"))
                    .expect("mkfs target");
                std::fs::write(image, vec![0u8; 4096]).expect("image");
                Ok(String::new())
            }
            "chroot" => Ok("Fake 1.0\n".into()),
            "du" => Ok("1048576\t/tree\n".into()),
            _ => Ok(String::new()),
        }
    }
}

impl Recording {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.ran.borrow_mut())
    }
}

fn recipe(packages: &[&str]) -> Recipe {
    Recipe {
        name: "fake".into(),
        extensions: vec!["fk".into()],
        packages: packages.iter().map(|p| p.to_string()).collect(),
        source_file: "main.fk".into(),
        prepare: vec!["true".into()],
        compile: None,
        run: vec!["/bin/fake".into(), "{entry}".into()],
        version: vec!["/bin/fake".into(), "--version".into()],
        warmup: vec![],
        vm_memory_mib: 256,
    }
}

#[test]
fn rebuilds_only_what_changed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let agent = tmp.path().join("agent");
    std::fs::write(&agent, b"agent v1").expect("agent");
    let opts = BuildOptions {
        images_dir: tmp.path().join("images"),
        cache_dir: tmp.path().join("cache"),
        agent: agent.clone(),
        mirror: "http://mirror.invalid/debian".into(),
    };
    let host = Recording::default();

    let first = build_on(&host, &recipe(&["fakepkg"]), &opts).expect("first build");
    assert!(matches!(&first, Built::Fresh(m) if m.version == "Fake 1.0" && m.rootfs_bytes == 4096));
    let ran = host.take();
    assert_eq!(
        ran.iter().filter(|c| *c == "debootstrap").count(),
        1,
        "{ran:?}"
    );
    assert_eq!(
        ran.iter().filter(|c| *c == "mkfs.ext4").count(),
        1,
        "{ran:?}"
    );
    let tree = std::fs::read_dir(opts.cache_dir.join("trees"))
        .expect("trees")
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a tree")
        .path();
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("runner:x:1000:1000"), "{passwd}");
    assert_eq!(
        std::fs::read(tree.join("sbin/ignis-agent")).expect("agent"),
        b"agent v1"
    );

    // Same inputs: nothing runs at all.
    let again = build_on(&host, &recipe(&["fakepkg"]), &opts).expect("second build");
    assert!(matches!(again, Built::UpToDate(_)));
    assert_eq!(host.take(), Vec::<String>::new());

    // A new agent: one mkfs over the cached tree, no debootstrap.
    std::fs::write(&agent, b"agent v2").expect("agent");
    let ran = {
        build_on(&host, &recipe(&["fakepkg"]), &opts).expect("agent rebuild");
        host.take()
    };
    assert!(!ran.contains(&"debootstrap".to_string()), "{ran:?}");
    assert!(ran.contains(&"mkfs.ext4".to_string()), "{ran:?}");
    assert_eq!(
        std::fs::read(tree.join("sbin/ignis-agent")).expect("agent"),
        b"agent v2"
    );

    // Other packages: a new tree.
    build_on(&host, &recipe(&["fakepkg", "more"]), &opts).expect("package rebuild");
    assert!(host.take().contains(&"debootstrap".to_string()));
}

#[test]
fn a_truncated_image_is_rebuilt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let agent = tmp.path().join("agent");
    std::fs::write(&agent, b"agent").expect("agent");
    let opts = BuildOptions {
        images_dir: tmp.path().join("images"),
        cache_dir: tmp.path().join("cache"),
        agent,
        mirror: "http://mirror.invalid/debian".into(),
    };
    let host = Recording::default();
    build_on(&host, &recipe(&[]), &opts).expect("build");
    host.take();
    std::fs::write(opts.images_dir.join("fake/rootfs.ext4"), b"short").expect("truncate");
    let r = build_on(&host, &recipe(&[]), &opts).expect("rebuild");
    assert!(matches!(r, Built::Fresh(_)));
    assert_eq!(host.take().iter().filter(|c| *c == "mkfs.ext4").count(), 1);
}
