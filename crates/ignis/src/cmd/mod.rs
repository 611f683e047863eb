pub mod api;
pub mod bench;
pub mod bench_api;
pub mod bench_dist;
pub mod bench_native;
pub mod bench_table;
pub mod bench_util;
pub mod bench_vm;
pub mod doctor;
pub mod images;
pub mod keys;
pub mod remote;
pub mod run;
pub mod serve;
pub mod worker;

/// Exit code when Ignis itself failed (BSD's EX_SOFTWARE).
pub const EXIT_INTERNAL: u8 = 70;

/// Where the recipes of this checkout live, unless `--recipes` says otherwise.
pub fn default_recipes_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/languages")
}

/// Where `scripts/build-agent` puts the static agent of this checkout.
pub fn default_agent_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/agent/ignis-agent")
}

/// How VMs are launched: the flags `ignis run` and `ignis serve` share.
#[derive(clap::Args, Debug, Clone)]
pub struct VmFlags {
    /// Which VMM runs the VMs: auto picks Firecracker where its binary is
    /// found and KVM really works, else QEMU (with KVM if a guest boots on
    /// it, else TCG).
    #[arg(long, value_enum, env = "IGNIS_DRIVER", default_value_t = DriverArg::Auto)]
    pub driver: DriverArg,
    /// Run VMMs without their jail (namespaces, pivot_root, unprivileged
    /// user, cgroup). Only where the host cannot provide it; see `ignis doctor`.
    #[arg(long)]
    pub insecure_no_jail: bool,
    /// Boot every VM instead of restoring it from its language's snapshot.
    #[arg(long)]
    pub no_snapshot: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverArg {
    Auto,
    Qemu,
    Firecracker,
}

impl VmFlags {
    pub fn options(&self) -> ignis_vmm::launcher::LaunchOptions {
        use ignis_vmm::launcher::DriverChoice;
        ignis_vmm::launcher::LaunchOptions {
            driver: match self.driver {
                DriverArg::Auto => DriverChoice::Auto,
                DriverArg::Qemu => DriverChoice::Qemu,
                DriverArg::Firecracker => DriverChoice::Firecracker,
            },
            jail: !self.insecure_no_jail,
            snapshots: !self.no_snapshot,
        }
    }
}
