//! Saving and loading a QEMU guest through its QMP monitor, with typed
//! commands from the `qapi` crate.
//!
//! Saving pauses the guest for good, then migrates its device state to a
//! Unix socket of ours that we copy into the snapshot. Loading tells a QEMU
//! started with `-incoming defer` to read that state from a descriptor it
//! inherited. On both sides the `x-ignore-shared` capability keeps guest
//! RAM out of the stream: it lives in the snapshot's memory file. The end
//! of a migration is taken from QEMU's own `MIGRATION` events, not by
//! polling.

use std::os::fd::RawFd;
use std::path::Path;

use futures::StreamExt;
use qapi::qmp;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::DriverError;

type Service = qapi::futures::QapiService<qapi::futures::QmpStreamTokio<WriteHalf<UnixStream>>>;

/// An open QMP session whose replies and events are read by a task.
struct Session {
    qmp: Service,
    /// Migration status changes, in order.
    migration: mpsc::UnboundedReceiver<qmp::MigrationStatus>,
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn refused(what: &str) -> impl FnOnce(qapi::ExecuteError) -> DriverError + '_ {
    move |e| match e {
        qapi::ExecuteError::Qapi(e) => DriverError::Refused(format!("{what}: {e}")),
        qapi::ExecuteError::Io(source) => DriverError::Io {
            what: format!("QMP {what}"),
            source,
        },
    }
}

impl Session {
    /// Takes QEMU's monitor connection from `listener` and negotiates.
    async fn accept(listener: &UnixListener) -> Result<Session, DriverError> {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(DriverError::io("accepting the QMP connection"))?;
        let (r, w): (ReadHalf<UnixStream>, WriteHalf<UnixStream>) = tokio::io::split(stream);
        let negotiation = qapi::futures::QmpStreamTokio::open_split(r, w)
            .await
            .map_err(DriverError::io("reading the QMP greeting"))?;
        let stream = negotiation
            .negotiate()
            .await
            .map_err(DriverError::io("QMP capabilities negotiation"))?;
        let (qmp, mut events) = stream.into_parts();
        // The event stream also carries the command replies: it must be read
        // for `execute` to complete.
        let (tx, migration) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(qmp::Event::MIGRATION { data, .. }) => {
                        let _ = tx.send(data.status);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("QMP stream ended: {e}");
                        return;
                    }
                }
            }
        });
        Ok(Session {
            qmp,
            migration,
            reader,
        })
    }

    /// Migration without guest RAM, reporting status changes as events.
    async fn ignore_shared(&self) -> Result<(), DriverError> {
        let capabilities = [
            qmp::MigrationCapability::x_ignore_shared,
            qmp::MigrationCapability::events,
        ]
        .map(|capability| qmp::MigrationCapabilityStatus {
            capability,
            state: true,
        })
        .to_vec();
        self.qmp
            .execute(qmp::migrate_set_capabilities { capabilities })
            .await
            .map_err(refused("migrate-set-capabilities"))?;
        Ok(())
    }

    async fn migration_completed(&mut self) -> Result<(), DriverError> {
        loop {
            match self.migration.recv().await {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(s @ (qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled)) => {
                    return Err(DriverError::Refused(format!("migration ended {s:?}")))
                }
                Some(_) => {}
                None => {
                    return Err(DriverError::Refused(
                        "the QMP monitor closed before the migration completed".into(),
                    ))
                }
            }
        }
    }
}

/// Pauses the guest whose monitor dials `listener` and writes its device
/// state to `state_file` (created here, synced before this returns).
/// `vm_dir` holds the temporary migration socket; `vmm_owner` is the
/// (uid, gid) of a jailed QEMU, which must be able to connect to it.
pub async fn save(
    listener: &UnixListener,
    vm_dir: &Path,
    vmm_owner: Option<(u32, u32)>,
    state_file: &Path,
) -> Result<(), DriverError> {
    let mut s = Session::accept(listener).await?;
    s.qmp.execute(qmp::stop {}).await.map_err(refused("stop"))?;
    s.ignore_shared().await?;
    let socket = vm_dir.join("migrate.sock");
    let to_file =
        UnixListener::bind(&socket).map_err(DriverError::io("binding the migration socket"))?;
    if let Some((uid, gid)) = vmm_owner {
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(DriverError::io(
            "handing the migration socket to the VMM user",
        ))?;
    }
    s.qmp
        .execute(qmp::migrate {
            uri: Some(format!("unix:{}", socket.display())),
            channels: None,
            detach: None,
            resume: None,
        })
        .await
        .map_err(refused("migrate"))?;
    // A migration that fails before it connects (QEMU could not reach the
    // socket) is only ever reported as an event: wait for either. One that
    // completed first left its whole stream in the socket's backlog.
    let mut completed = false;
    let accepted = tokio::select! {
        biased;
        accepted = to_file.accept() => accepted,
        ended = s.migration_completed() => {
            ended?;
            completed = true;
            to_file.accept().await
        }
    };
    let (mut from_qemu, _) = accepted.map_err(DriverError::io("accepting the migration stream"))?;
    let mut file = tokio::fs::File::create(state_file)
        .await
        .map_err(DriverError::io("creating the device-state file"))?;
    tokio::io::copy(&mut from_qemu, &mut file)
        .await
        .map_err(DriverError::io("writing the device-state file"))?;
    file.flush()
        .await
        .map_err(DriverError::io("writing the device-state file"))?;
    file.sync_all()
        .await
        .map_err(DriverError::io("syncing the device-state file"))?;
    if !completed {
        s.migration_completed().await?;
    }
    Ok(())
}

/// Tells the QEMU whose monitor dials `listener` (started with `-incoming
/// defer`) to load its device state from its descriptor `fd`, then lets the
/// guest run: the saved state says "paused", as the source was when saved.
pub async fn load(listener: &UnixListener, fd: RawFd) -> Result<(), DriverError> {
    let mut s = Session::accept(listener).await?;
    s.ignore_shared().await?;
    s.qmp
        .execute(qmp::migrate_incoming {
            uri: Some(format!("fd:{fd}")),
            channels: None,
            exit_on_error: None,
        })
        .await
        .map_err(refused("migrate-incoming"))?;
    s.migration_completed().await?;
    s.qmp.execute(qmp::cont {}).await.map_err(refused("cont"))?;
    Ok(())
}
