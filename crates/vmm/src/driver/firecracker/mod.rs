//! The Firecracker driver: one `firecracker` process per VM, configured
//! through its REST API on a Unix socket, the agent reached over vsock.
//!
//! Boot: machine-config, boot-source, the root drive (read-only), vsock,
//! balloon (free page reporting), entropy, then `InstanceStart`. The agent
//! dials the host (CID 2, port [`VSOCK_PORT`]) and Firecracker forwards
//! the connection to `<vsock uds>_<port>`, where we listen.
//!
//! Snapshots use Firecracker's own API: pause, then `snapshot/create`
//! (device state and a full memory file); a restore loads them with the
//! `File` memory backend, which maps the memory file privately (shared
//! between every restore, like QEMU's), with the vsock socket moved to the
//! new VM's directory. Firecracker resets vsock connections on restore;
//! the agent dials again and the host's first message is `Resume`.

pub mod api;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use ignis_protocol::VSOCK_PORT;
use tokio::net::UnixListener;

use super::qemu::resolve;
use super::{
    Accel, AgentFuture, AgentStream, Driver, DriverError, GuestMemory, GuestParams, Machine,
    MachineSpec, SnapshotFiles,
};
use crate::console::Console;
use crate::jail::{self, Containment, VmmProcess};
use api::{CallError, Client};

/// Bumped when what Ignis configures changes (devices, their settings).
const LAYOUT: u32 = 2;
/// The device-state file in a snapshot directory.
pub const STATE_FILE: &str = "vmstate";
const GUEST_CID: u32 = 3;
/// How long Firecracker may take to open its API socket.
const API_WAIT: Duration = Duration::from_secs(5);
/// What a Firecracker process may use beyond its guest's memory.
const OVERHEAD_MIB: u64 = 128;

#[derive(Debug, Clone)]
pub struct Firecracker {
    binary: PathBuf,
    containment: Containment,
}

impl Firecracker {
    /// The `firecracker` binary named by `IGNIS_FIRECRACKER`, or on `PATH`.
    pub fn from_env(containment: Containment) -> Result<Firecracker, String> {
        let named = std::env::var_os("IGNIS_FIRECRACKER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("firecracker"));
        let binary = resolve(&named).ok_or_else(|| {
            format!(
                "no firecracker binary ({} not found; set IGNIS_FIRECRACKER or put it on PATH)",
                named.display()
            )
        })?;
        Ok(Firecracker {
            binary,
            containment,
        })
    }

    /// What `firecracker --version` says, first line.
    pub fn version(&self) -> Result<String, String> {
        let out = std::process::Command::new(&self.binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()
            .map(str::to_owned)
            .filter(|l| out.status.success() && !l.is_empty())
            .ok_or_else(|| format!("{} --version failed", self.binary.display()))
    }

    async fn spawn(
        &self,
        spec: &MachineSpec<'_>,
        extra: Vec<jail::Mount>,
    ) -> Result<(FcMachine, Client), DriverError> {
        super::check_drives(spec)?;
        let api_socket = spec.dir.join("api.sock");
        let vsock = spec.dir.join("v.sock");
        // Listening before the guest can dial: a guest connection is
        // forwarded here.
        let agent = UnixListener::bind(format!("{}_{VSOCK_PORT}", vsock.display()))
            .map_err(DriverError::io("binding the vsock agent socket"))?;
        if let Containment::Jailed(j) = &self.containment {
            std::os::unix::fs::chown(spec.dir, Some(j.uid), Some(j.gid))
                .map_err(DriverError::io("handing the VM directory to the VMM user"))?;
            let forwarded = PathBuf::from(format!("{}_{VSOCK_PORT}", vsock.display()));
            std::os::unix::fs::chown(&forwarded, Some(j.uid), Some(j.gid))
                .map_err(DriverError::io("handing the vsock socket to the VMM user"))?;
        }
        let mut mounts = vec![
            jail::Mount::ro(&self.binary),
            jail::Mount::ro(spec.kernel),
            jail::Mount::rw(spec.dir),
            jail::Mount::Device("/dev/kvm".into()),
            jail::Mount::Device("/dev/null".into()),
            jail::Mount::Device("/dev/urandom".into()),
        ];
        // Every image drive: the base and each layer above it.
        mounts.extend(spec.drives.iter().map(jail::Mount::ro));
        mounts.extend(extra);
        let dir_name = spec.dir.file_name().unwrap_or_default().to_string_lossy();
        let id = dir_name.trim_start_matches("vm-");
        let args: Vec<OsString> = vec![
            "--api-sock".into(),
            api_socket.clone().into(),
            "--id".into(),
            id.into(),
        ];
        let spawned = jail::spawn(
            &self.containment,
            jail::Spawn {
                id,
                root: &spec.dir.join("root"),
                program: &self.binary,
                args: &args,
                mounts,
                limits: jail::Limits {
                    memory_bytes: (spec.memory_mib + OVERHEAD_MIB) << 20,
                    cpu_quota_us: 100_000,
                    pids: 32,
                },
                pass_fd: None,
                // Firecracker installs its own default filters.
                seccomp: Vec::new(),
            },
        )
        .await
        .map_err(|source| DriverError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let console = Console::default();
        console.capture(spawned.stdout);
        console.capture(spawned.stderr);
        let mut machine = FcMachine {
            process: spawned.process,
            agent: Some(agent),
            api_socket,
            vsock,
            console,
        };
        if let Some(name) = machine.process.pid().and_then(jail::process_name) {
            let _ = std::fs::write(spec.dir.join(jail::VMM_FILE), name);
        }
        let client = machine.api().await?;
        Ok((machine, client))
    }
}

/// The kernel command line of a Firecracker guest with `drives` image
/// drives (the root first).
pub fn boot_args(guest: &GuestParams, drives: usize) -> String {
    [
        "console=ttyS0",
        "quiet",
        // No rootfstype: the kernel finds the root's file system itself.
        "root=/dev/vda",
        "ro",
        "init=/sbin/ignis-agent",
        "panic=-1",
        "reboot=k",
        "ignis.channel=vsock",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("ignis.time={}", guest.unix_time),
        format!("ignis.vm={}", guest.vm_id),
    ])
    .chain(super::layers_arg(drives))
    .collect::<Vec<_>>()
    .join(" ")
}

/// One API call: what the driver sends, as data, so that tests check
/// exactly these bodies against Firecracker's API description.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: serde_json::Value,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, body: impl serde::Serialize) -> Call {
        Call {
            method,
            path: path.into(),
            // Serializing these plain structs cannot fail.
            body: serde_json::to_value(body).unwrap_or_default(),
        }
    }

    async fn send(&self, api: &mut Client) -> Result<(), DriverError> {
        api.call(self.method.clone(), &self.path, &self.body)
            .await
            .map_err(refused)
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The calls that configure and boot a VM, in order.
pub fn boot_calls(spec: &MachineSpec<'_>, vsock: &Path) -> Vec<Call> {
    // The root drive is the guest's vda; the others follow in order (vdb,
    // ...), as `boot_args` names them to the agent.
    let drives = spec.drives.iter().enumerate().map(|(i, path)| {
        let id = if i == 0 {
            "root".to_owned()
        } else {
            format!("layer{i}")
        };
        Call::new(
            Method::PUT,
            format!("/drives/{id}"),
            api::Drive {
                drive_id: id,
                path_on_host: path_string(path),
                is_root_device: i == 0,
                is_read_only: true,
            },
        )
    });
    let mut calls = vec![
        Call::new(
            Method::PUT,
            "/machine-config",
            api::MachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: spec.memory_mib,
                smt: None,
            },
        ),
        Call::new(
            Method::PUT,
            "/boot-source",
            api::BootSource {
                kernel_image_path: path_string(spec.kernel),
                boot_args: Some(boot_args(spec.guest, spec.drives.len())),
            },
        ),
    ];
    calls.extend(drives);
    calls.extend([
        Call::new(
            Method::PUT,
            "/vsock",
            api::Vsock {
                guest_cid: GUEST_CID,
                uds_path: path_string(vsock),
            },
        ),
        Call::new(
            Method::PUT,
            "/balloon",
            api::Balloon {
                amount_mib: 0,
                deflate_on_oom: false,
                free_page_reporting: Some(true),
            },
        ),
        Call::new(Method::PUT, "/entropy", api::EntropyDevice::default()),
        Call::new(
            Method::PUT,
            "/actions",
            api::InstanceActionInfo {
                action_type: api::ActionType::InstanceStart,
            },
        ),
    ]);
    calls
}

/// The call that loads a snapshot and resumes it, its vsock moved here.
pub fn restore_call(state: &Path, memory: &Path, vsock: &Path) -> Call {
    Call::new(
        Method::PUT,
        "/snapshot/load",
        api::SnapshotLoadParams {
            snapshot_path: path_string(state),
            mem_backend: api::MemoryBackend {
                backend_type: api::BackendType::File,
                backend_path: path_string(memory),
            },
            resume_vm: true,
            vsock_override: Some(api::VsockOverride {
                uds_path: path_string(vsock),
            }),
        },
    )
}

/// The calls that pause a VM for good and save it into `into`.
pub fn snapshot_calls(into: SnapshotFiles<'_>) -> Vec<Call> {
    vec![
        Call::new(
            Method::PATCH,
            "/vm",
            api::Vm {
                state: api::VmState::Paused,
            },
        ),
        Call::new(
            Method::PUT,
            "/snapshot/create",
            api::SnapshotCreateParams {
                snapshot_path: path_string(&into.dir.join(STATE_FILE)),
                mem_file_path: path_string(&into.memory()),
                snapshot_type: Some(api::SnapshotType::Full),
            },
        ),
    ]
}

fn refused(e: CallError) -> DriverError {
    match e {
        CallError::Io(source) => DriverError::Io {
            what: "the Firecracker API socket".into(),
            source,
        },
        other => DriverError::Refused(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Driver for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    fn snapshot_identity(&self) -> Option<String> {
        let m = std::fs::metadata(&self.binary).ok()?;
        use std::os::unix::fs::MetadataExt;
        Some(format!(
            "firecracker {} {} bytes mtime {}; layout {LAYOUT}; host cpu {}",
            self.binary.display(),
            m.len(),
            m.mtime(),
            super::qemu::host_cpu_model()
        ))
    }

    async fn start(
        &self,
        spec: &MachineSpec<'_>,
        memory: GuestMemory<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        // A snapshot source writes its snapshot into that file's directory.
        let extra = match memory {
            GuestMemory::SnapshotSource(file) => {
                file.parent().map(jail::Mount::rw).into_iter().collect()
            }
            GuestMemory::Anonymous => Vec::new(),
        };
        let (machine, mut api) = self.spawn(spec, extra).await?;
        for c in boot_calls(spec, &machine.vsock) {
            c.send(&mut api).await?;
        }
        Ok(Box::new(machine))
    }

    async fn restore(
        &self,
        spec: &MachineSpec<'_>,
        snapshot: SnapshotFiles<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        let state = snapshot.dir.join(STATE_FILE);
        let memory = snapshot.memory();
        let extra = vec![jail::Mount::ro(&state), jail::Mount::ro(&memory)];
        let (machine, mut api) = self.spawn(spec, extra).await?;
        restore_call(&state, &memory, &machine.vsock)
            .send(&mut api)
            .await?;
        Ok(Box::new(machine))
    }
}

#[derive(Debug)]
struct FcMachine {
    process: VmmProcess,
    agent: Option<UnixListener>,
    api_socket: PathBuf,
    vsock: PathBuf,
    console: Console,
}

impl FcMachine {
    /// Connects to the API socket, which Firecracker opens moments after it
    /// starts; gives up when the process exits or after [`API_WAIT`].
    async fn api(&mut self) -> Result<Client, DriverError> {
        let socket = self.api_socket.clone();
        let connect = async {
            loop {
                match Client::connect(&socket).await {
                    Ok(c) => return Ok(c),
                    Err(CallError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => return Err(refused(e)),
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(API_WAIT, connect) => r.unwrap_or_else(|_| Err(DriverError::Refused(
                format!("firecracker did not open its API socket within {} s", API_WAIT.as_secs()),
            ))),
            status = self.process.wait() => Err(DriverError::Refused(format!("firecracker exited at start ({status})"))),
        }
    }
}

#[async_trait::async_trait]
impl Machine for FcMachine {
    fn agent(&mut self) -> AgentFuture {
        let listener = self.agent.take();
        Box::pin(async move {
            let Some(listener) = listener else {
                return std::future::pending().await;
            };
            let (stream, _) = listener
                .accept()
                .await
                .map_err(DriverError::io("accepting the agent's vsock connection"))?;
            Ok(Box::new(stream) as AgentStream)
        })
    }

    async fn exited(&mut self) -> String {
        self.process.wait().await
    }

    async fn snapshot(&mut self, into: SnapshotFiles<'_>) -> Result<(), DriverError> {
        let mut api = self.api().await?;
        for c in snapshot_calls(into) {
            c.send(&mut api).await?;
        }
        Ok(())
    }

    async fn stop(&mut self) {
        self.process.kill();
        self.process.wait().await;
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    fn console(&self) -> &Console {
        &self.console
    }
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod schema_tests;
