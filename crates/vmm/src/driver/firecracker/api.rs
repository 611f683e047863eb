//! Firecracker's REST API: the request bodies Ignis sends, typed, and a
//! small client over the API's Unix socket (hyper, HTTP/1.1).
//!
//! Field names and enums follow Firecracker's swagger description
//! (`firecracker.yaml`); the schema tests check every body against it.
//! Bodies refuse unknown fields when parsed, as Firecracker does.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// `PUT /boot-source`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `PUT /machine-config`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
}

/// `PUT /vsock`. The guest dials the host: Firecracker forwards a guest
/// connection to port P to the Unix socket `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /balloon`: free page reporting gives freed guest pages back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    pub amount_mib: u64,
    pub deflate_on_oom: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `PUT /entropy`: a virtio-rng device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {}

/// `PUT /actions`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    FlushMetrics,
    SendCtrlAltDel,
}

/// `PATCH /vm`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/load`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
    /// The restored VM's vsock listens under its own directory, not the
    /// source's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: BackendType,
    pub backend_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    File,
    Uffd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// Firecracker's error body.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiError {
    pub fault_message: String,
}

/// Why an API call failed: the socket (may pass) or Firecracker's answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the API socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP on the API socket: {0}")]
    Http(String),
    #[error("{method} {path}: {status}: {message}")]
    Refused {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
}

/// A connection to one Firecracker's API socket.
#[derive(Debug)]
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Client {
    pub async fn connect(socket: &Path) -> Result<Client, CallError> {
        let stream = UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Http(e.to_string()))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("firecracker API connection ended: {e}");
            }
        });
        Ok(Client { sender, conn })
    }

    /// Sends `body` as JSON; Firecracker answers 204 (or 200) on success.
    pub async fn call<T: Serialize>(
        &mut self,
        method: Method,
        path: &str,
        body: &T,
    ) -> Result<(), CallError> {
        let json = serde_json::to_vec(body).map_err(|e| CallError::Http(e.to_string()))?;
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| CallError::Http(e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| CallError::Http(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Http(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(CallError::Refused {
            method,
            path: path.to_owned(),
            status,
            message,
        })
    }
}
