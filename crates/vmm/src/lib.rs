//! Boots and drives Ignis microVMs: discovers images, picks an accelerator,
//! starts one VMM process per VM through a driver, restores VMs from
//! snapshots, and talks to the agent inside.

pub mod accel;
pub mod agent;
pub mod console;
pub mod driver;
pub mod image;
pub mod jail;
pub mod launcher;
mod lock;
pub mod memory;
pub mod paths;
pub mod report;
mod seccomp;
pub mod snapshot;
pub mod vm;

pub use driver::{Accel, Driver, DriverError};
pub use launcher::{LaunchError, Launcher};
pub use memory::HostMemory;
pub use report::RunReport;
pub use vm::{
    BootError, Execution, Origin, RunError, RunEvent, SaveError, Vm, VmConfig, VmInfo, VmState,
};
