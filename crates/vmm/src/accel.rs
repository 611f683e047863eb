//! Picking the accelerator. `/dev/kvm` existing proves nothing: on a nested
//! PVM host it opens fine and then no normal guest reaches user space. So KVM
//! is chosen only after a real guest booted on it to the agent's Ready; the
//! verdict is cached per host boot and kernel, since a probe that fails costs
//! its whole timeout.

use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::driver::qemu::Qemu;
use crate::driver::{Accel, Driver};
use crate::image::{KernelImage, LanguageImage};
use crate::jail::Containment;
use crate::lock::FileLock;
use crate::paths::Paths;
use crate::vm::{Origin, Vm, VmConfig};

/// How long a KVM guest may take to reach Ready before KVM is judged unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct ProbeRecord {
    boot_id: String,
    kernel_key: String,
    /// Whether a guest reached the agent, and how fast (or why not).
    verdict: Result<u64, String>,
}

/// Chooses KVM or TCG for QEMU. `IGNIS_ACCEL=kvm|tcg` forces the answer.
pub async fn choose(
    paths: &Paths,
    kernel: &KernelImage,
    probe_image: Option<&LanguageImage>,
    containment: &Containment,
) -> AccelChoice {
    let choice = match std::env::var("IGNIS_ACCEL").as_deref() {
        Ok("tcg") => AccelChoice {
            accel: Accel::Tcg,
            reason: "forced by IGNIS_ACCEL".into(),
        },
        Ok("kvm") => AccelChoice {
            accel: Accel::Kvm,
            reason: "forced by IGNIS_ACCEL".into(),
        },
        _ => {
            let qemu = Qemu::from_path(Accel::Kvm, containment.clone());
            match kvm_boots(paths, kernel, probe_image, &qemu).await {
                Ok(ms) => AccelChoice {
                    accel: Accel::Kvm,
                    reason: format!("a KVM guest reached the agent in {ms} ms"),
                },
                Err(why) => AccelChoice {
                    accel: Accel::Tcg,
                    reason: why,
                },
            }
        }
    };
    tracing::info!(accel = %choice.accel, reason = %choice.reason, "accelerator chosen");
    choice
}

/// Opens /dev/kvm and asks for its API version: the cheap half of the probe.
pub fn kvm_device_answers() -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and returns an int.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v == 12 {
        Ok(())
    } else {
        Err(format!("/dev/kvm answered API version {v}, expected 12"))
    }
}

/// Whether a guest on `driver` (with KVM) really reaches the agent: the
/// milliseconds it took, or why not. Cached per host boot, kernel and
/// driver, since a probe that fails costs its whole timeout.
pub async fn kvm_boots(
    paths: &Paths,
    kernel: &KernelImage,
    image: Option<&LanguageImage>,
    driver: &dyn Driver,
) -> Result<u64, String> {
    kvm_device_answers().map_err(|why| format!("KVM unusable: {why}"))?;
    let image = image.ok_or("KVM not probed: no language image to boot")?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let name = driver.name();
    let record_path = paths.cache().join(format!("kvm-probe-{name}.json"));
    let _ = std::fs::create_dir_all(paths.cache());
    // Concurrent first runs (parallel tests, a server and a CLI) probe once.
    let _lock = FileLock::exclusive(&paths.cache().join(format!("kvm-probe-{name}.lock")))
        .await
        .map_err(|e| tracing::warn!("probing KVM without the probe lock: {e}"));
    if let Some(r) = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ProbeRecord>(&b).ok())
    {
        if r.boot_id == boot_id && r.kernel_key == kernel.key {
            return r.verdict;
        }
    }
    tracing::info!(
        "probing KVM by booting a {} guest on {name} (up to {} s)",
        image.name(),
        PROBE_TIMEOUT.as_secs()
    );
    let mut cfg = VmConfig::new(kernel.clone(), image.clone(), paths);
    cfg.boot_timeout = PROBE_TIMEOUT;
    let verdict = match Vm::start(driver, &cfg, Origin::Boot).await {
        Ok(vm) => {
            let ms = vm.info().ready_ms;
            vm.destroy().await;
            Ok(ms)
        }
        Err(e) => Err(format!(
            "KVM present but a {name} guest did not reach user space: {e}"
        )),
    };
    let record = ProbeRecord {
        boot_id,
        kernel_key: kernel.key.clone(),
        verdict: verdict.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
        let _ = std::fs::write(&record_path, bytes);
    }
    verdict
}
