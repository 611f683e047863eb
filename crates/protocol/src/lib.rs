//! The language spoken between the Ignis host and the agent inside a microVM.
//!
//! Every message travels as one *frame*: a 4-byte big-endian length followed
//! by that many bytes of JSON. Frames are capped per direction so that neither
//! side can be made to allocate without bound, and every message carries the
//! protocol version so that a host never misreads an agent from another build.
//!
//! The host treats everything the guest sends as hostile: lengths are checked
//! before anything is allocated, unknown fields are rejected and the contents
//! are validated again on the host side (see `ignis-vmm`).

mod bytes;
mod frame;
mod message;
mod names;

pub use frame::{
    check_len, decode, encode, read_frame, write_frame, FrameError, GUEST_FRAME_MAX,
    HOST_FRAME_MAX, LEN_PREFIX,
};
pub use message::{
    Envelope, File, GuestMessage, HostMessage, Limits, Phase, Ready, Resume, Resumed, RunOutcome,
    RunRequest, Stream, Verdict,
};
pub use names::{
    validate_args_env, validate_file_name, validate_files, FileNameError, InputError, ARGS_MAX,
    ARG_BYTES_MAX, ENV_ENTRY_BYTES_MAX, ENV_MAX, FILES_MAX, FILE_NAME_MAX,
};

/// Bumped whenever a message changes shape; both sides refuse other versions.
pub const PROTOCOL_VERSION: u32 = 2;

/// The virtio-serial port name (QEMU) the agent looks for.
pub const SERIAL_PORT_NAME: &str = "ignis.0";

/// The vsock port the agent connects to on the host (CID 2) under Firecracker.
pub const VSOCK_PORT: u32 = 1024;

/// Bytes of host entropy a restored guest receives (256 bits of seed and
/// some to spare); the agent refuses a `Resume` with fewer.
pub const RESUME_ENTROPY_BYTES: usize = 64;

/// Largest chunk of program output the agent puts into one `Output` message.
pub const OUTPUT_CHUNK_MAX: usize = 32 * 1024;
pub use recipe::{version_line, CompileStep, Conformance, Native, Recipe};
pub mod recipe;

/// Where the image carries its recipe for the agent.
pub const RECIPE_PATH: &str = "/etc/ignis/recipe.json";
