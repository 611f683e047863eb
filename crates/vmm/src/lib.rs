//! Boots and drives Ignis microVMs: discovers images, picks an accelerator,
//! starts one monitor process per VM and talks to the agent inside it.

pub mod accel;
pub mod agent;
pub mod console;
pub mod image;
pub mod launcher;
pub mod paths;
pub mod qemu;
pub mod report;
pub mod vm;

pub use launcher::{LaunchError, Launcher};
pub use qemu::Accel;
pub use report::RunReport;
pub use vm::{BootError, Execution, RunError, RunEvent, Vm, VmConfig, VmInfo, VmState};
