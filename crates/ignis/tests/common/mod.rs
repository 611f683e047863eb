//! Helpers shared by the VM integration tests: finding the real images,
#![allow(dead_code)] // Each test binary uses some of these helpers.
//! running the real `ignis` binary, and building tiny fake images whose
//! "agent" misbehaves on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ignis_protocol::{encode, GuestMessage, Limits, Ready, RunRequest, GUEST_FRAME_MAX};
use ignis_vmm::driver::qemu::Qemu;
use ignis_vmm::image::{BaseManifest, Catalog, LanguageImage, LAYER_FILE};
use ignis_vmm::paths::Paths;
use ignis_vmm::report::RunReport;
use ignis_vmm::{BootError, Launcher, Origin, Vm, VmConfig};
use tempfile::TempDir;

pub mod serve;

/// The real images. A test that needs images which are not built fails
/// here, with the reason.
pub fn images(langs: &[&str]) -> Catalog {
    let dir = Paths::from_env().images();
    let catalog = Catalog::discover(&dir);
    if let Err(p) = &catalog.kernel {
        panic!(
            "prerequisite missing: no usable guest kernel in {} ({p}); run scripts/setup",
            dir.display()
        );
    }
    for l in langs {
        if let Err(e) = catalog.language(l) {
            panic!(
                "prerequisite missing: no usable {l} image in {} ({e}); run scripts/setup",
                dir.display()
            );
        }
    }
    catalog
}

pub async fn launcher(langs: &[&str]) -> Launcher {
    images(langs);
    Launcher::new(Paths::from_env())
        .await
        .expect("launcher over the real images")
}

pub fn request(files: &[(&str, &str)], limits: Limits) -> RunRequest {
    RunRequest {
        files: files
            .iter()
            .map(|(n, c)| ignis_protocol::File {
                name: (*n).to_owned(),
                content: c.as_bytes().to_vec(),
            })
            .collect(),
        stdin: Vec::new(),
        args: Vec::new(),
        env: Default::default(),
        limits,
    }
}

/// What one `ignis` invocation did.
#[derive(Debug)]
pub struct Cli {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Cli {
    /// The `--json` report on stdout.
    pub fn report(&self) -> RunReport {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not a run report ({e}):\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }
}

/// Runs the real `ignis` binary with `args`, from `dir`.
pub fn ignis(dir: &Path, args: &[&str]) -> Cli {
    ignis_env(dir, args, &[])
}

/// Runs the real `ignis` binary with `args` and extra environment, from `dir`.
pub fn ignis_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Cli {
    let out = Command::new(env!("CARGO_BIN_EXE_ignis"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(dir)
        .output()
        .expect("spawn ignis");
    Cli {
        code: out.status.code().expect("ignis exited by a signal"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `files` into `dir` and runs `ignis run --json [extra...] files...`.
pub fn run_json(dir: &Path, files: &[(&str, &str)], extra: &[&str]) -> (RunReport, Cli) {
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("write program");
    }
    let mut args = vec!["run", "--json"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(|(n, _)| *n));
    let cli = ignis(dir, &args);
    (cli.report(), cli)
}

pub fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    }
}

/// Whether any process on the host has `needle` in its command line (a
/// monitor still running on a test's image).
pub fn process_mentions(needle: &Path) -> bool {
    let needle = needle.to_string_lossy();
    let procs = std::fs::read_dir("/proc").expect("/proc");
    procs.flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle.as_ref()))
    })
}

/// A language image whose `/sbin/ignis-agent` is a busybox shell script,
/// with the real kernel beside it, and the config and driver to boot it.
/// Runtime and log directories are private to the test.
#[derive(Debug)]
pub struct FakeImage {
    /// Holds the image, runtime and log directories until the test ends.
    pub _tmp: TempDir,
    pub cfg: VmConfig,
    pub driver: Qemu,
}

impl FakeImage {
    pub fn runtime_dir(&self) -> &Path {
        &self.cfg.runtime_dir
    }

    pub async fn boot(&self) -> Result<Vm, BootError> {
        Vm::start(&self.driver, &self.cfg, Origin::Boot).await
    }

    /// Fails the test if a VM of this image left its directory or a
    /// running monitor behind.
    pub fn assert_nothing_left(&self) {
        assert_eq!(entries(self.runtime_dir()), Vec::<PathBuf>::new());
        assert!(
            !process_mentions(&self.cfg.image.base.path),
            "a monitor of the image is still alive"
        );
    }
}

pub const FAKE_LANGUAGE: &str = "fake";

fn mkfs() -> Option<PathBuf> {
    ["/usr/bin/mkfs.erofs", "/usr/sbin/mkfs.erofs"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Packs `tree` into an (uncompressed) EROFS image at `out`; its size.
fn erofs(mkfs: &Path, tree: &Path, out: &Path) -> u64 {
    let o = Command::new(mkfs)
        .arg("--quiet")
        .arg(out)
        .arg(tree)
        .output()
        .expect("run mkfs.erofs");
    assert!(o.status.success(), "mkfs.erofs failed: {o:?}");
    std::fs::metadata(out).expect("stat").len()
}

/// Builds the fake image; fails the test if the host lacks the real
/// kernel, busybox or mkfs.ext4.
pub async fn fake_image(script: &str, extra: &[(&str, &[u8])]) -> FakeImage {
    fake_image_with(script, extra, &[]).await
}

/// [`fake_image`] whose `setuid` files (of `extra`) are set-user-id, as
/// an image Ignis did not build could be.
pub async fn fake_image_with(script: &str, extra: &[(&str, &[u8])], setuid: &[&str]) -> FakeImage {
    let real = images(&[]);
    let busybox = Path::new("/bin/busybox");
    let (Some(mkfs), true) = (mkfs(), busybox.exists()) else {
        panic!("prerequisite missing: /bin/busybox (busybox-static) and mkfs.erofs (erofs-utils)");
    };
    // The jail and accelerator the real launcher settled on (its probe is cached).
    let real_launcher = Launcher::new(Paths::from_env())
        .await
        .expect("launcher over the real images");

    let tmp = tempfile::tempdir().expect("tempdir");
    let images = tmp.path().join("images");
    let kernel_dir = images.join("kernel");
    std::fs::create_dir_all(&kernel_dir).expect("mkdir");
    let real_kernel = real.dir.join("kernel");
    let vmlinux = std::fs::canonicalize(real_kernel.join("vmlinux")).expect("real vmlinux");
    std::os::unix::fs::symlink(vmlinux, kernel_dir.join("vmlinux")).expect("symlink");
    std::fs::copy(
        real_kernel.join("kernel.json"),
        kernel_dir.join("kernel.json"),
    )
    .expect("copy");

    let tree = tmp.path().join("tree");
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, tree.join("bin/busybox")).expect("copy busybox");
    let agent = tree.join("sbin/ignis-agent");
    std::fs::write(&agent, script).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, bytes) in extra {
        std::fs::write(tree.join(name), bytes).expect("write extra file");
    }
    for name in setuid {
        std::fs::set_permissions(tree.join(name), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod u+s");
    }

    // The busybox tree is the base; the layer is empty (the fake agent
    // never stacks it), as a language without packages would be.
    let base_dir = images.join("base");
    std::fs::create_dir_all(&base_dir).expect("mkdir");
    let base_id = "fake-base";
    let base_bytes = erofs(&mkfs, &tree, &base_dir.join(format!("{base_id}.erofs")));
    std::fs::write(
        base_dir.join(format!("{base_id}.json")),
        serde_json::to_vec_pretty(&BaseManifest {
            id: base_id.into(),
            suite: "bookworm".into(),
            tree_key: "test".into(),
            bytes: base_bytes,
        })
        .expect("json"),
    )
    .expect("write base manifest");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let lang_dir = images.join(FAKE_LANGUAGE);
    std::fs::create_dir_all(&lang_dir).expect("mkdir");
    let layer_bytes = erofs(&mkfs, &empty, &lang_dir.join(LAYER_FILE));
    let mut manifest = LanguageImage::fake(&images, FAKE_LANGUAGE, 128).manifest;
    manifest.version = "fake 1".into();
    manifest.base = base_id.into();
    manifest.layer_bytes = layer_bytes;
    std::fs::write(
        lang_dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");

    // The fake image goes through the same discovery as real ones.
    let catalog = Catalog::discover(&images);
    assert!(catalog.problems.is_empty(), "{:?}", catalog.problems);
    let mut cfg = VmConfig::new(
        catalog.kernel().expect("kernel").clone(),
        catalog.language(FAKE_LANGUAGE).expect("fake").clone(),
        &Paths::new(tmp.path()),
    );
    cfg.boot_timeout = Duration::from_secs(5);
    cfg.restore_timeout = Duration::from_secs(5);
    cfg.runtime_dir = tmp.path().join("run");
    cfg.log_dir = tmp.path().join("logs");
    FakeImage {
        _tmp: tmp,
        cfg,
        driver: Qemu::from_path(real_launcher.accel.accel, real_launcher.containment.clone()),
    }
}

/// A fake agent that never says anything.
pub const SILENT_AGENT: &str = "#!/bin/busybox sh
echo 'fake agent: staying silent'
exec /bin/busybox sleep 100000
";

/// A fake agent that sends a valid Ready frame (from /ready.frame) on the
/// virtio-serial port, found the way the real agent finds it, then hangs
/// with the port still open.
pub const READY_THEN_HANG_AGENT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t sysfs sys /sys
$bb mountpoint -q /dev || $bb mount -t devtmpfs dev /dev
i=0
while [ $i -lt 500 ]; do
    for p in /sys/class/virtio-ports/*; do
        if [ "$($bb cat "$p/name" 2>/dev/null)" = ignis.0 ]; then
            port=/dev/${p##*/}
            echo "fake agent: ready on $port, then hanging"
            exec 3<>"$port"
            $bb cat /ready.frame >&3
            exec $bb sleep 100000
        fi
    done
    i=$((i + 1))
    $bb usleep 10000
done
echo 'fake agent: no port named ignis.0'
exec $bb sleep 100000
"#;

/// The exact bytes of a Ready frame for the fake language.
pub fn ready_frame() -> Vec<u8> {
    encode(
        &GuestMessage::Ready(Ready {
            agent_version: "fake".into(),
            language: FAKE_LANGUAGE.into(),
            runtime_version: "fake 1".into(),
            uptime_ms: 1,
        }),
        GUEST_FRAME_MAX,
    )
    .expect("encode ready")
}
