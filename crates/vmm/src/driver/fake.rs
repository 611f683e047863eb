//! A recording fake driver, for unit tests of what sits on the seam (the
//! launcher, pools, workers). There is no VMM and no guest: each machine is
//! a task that plays the agent and speaks real protocol frames over an
//! in-memory pipe, so the code under test runs its real handshake, pings
//! and runs. Never the proof that a real driver works.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ignis_protocol::{
    check_len, decode, encode, GuestMessage, HostMessage, Phase, Ready, Resumed, RunOutcome,
    Stream, Verdict, GUEST_FRAME_MAX, HOST_FRAME_MAX, LEN_PREFIX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::{
    Accel, AgentFuture, AgentStream, Driver, DriverError, GuestMemory, Machine, MachineSpec,
    SnapshotFiles,
};
use crate::console::Console;
use crate::memory::HostMemory;

/// What one fake machine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Says Ready (or Resumed), answers pings, and runs a program by
    /// printing its first file's content on stdout.
    Healthy,
    /// Starting the VMM fails at once.
    FailStart,
    /// The VMM runs; the agent never says a word.
    Silent,
    /// The VMM dies when asked to run a program, before any output.
    DieOnRun,
    /// The VMM dies after the program printed its first line.
    DieAfterOutput,
}

/// What the code under test asked of the driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start {
        snapshot_source: bool,
    },
    Restore,
    Snapshot,
    /// The agent was asked to warm up.
    Warm,
    Stop,
}

#[derive(Debug)]
struct Shared {
    /// Behaviours of the next machines, in order; `Healthy` once empty.
    script: VecDeque<Behaviour>,
    calls: Vec<Call>,
    /// Exit switches of machines that have not exited.
    live: Vec<watch::Sender<Option<String>>>,
    /// What every machine says it costs the host.
    memory: Option<HostMemory>,
}

#[derive(Debug, Clone)]
pub struct FakeDriver {
    shared: Arc<Mutex<Shared>>,
    /// While closed, new agents wait before saying Ready: a boot in progress.
    gate: Arc<watch::Sender<bool>>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        FakeDriver {
            shared: Arc::new(Mutex::new(Shared {
                script: VecDeque::new(),
                calls: Vec::new(),
                live: Vec::new(),
                memory: None,
            })),
            gate: Arc::new(watch::channel(true).0),
        }
    }
}

impl FakeDriver {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next machines behave like this, in order.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.lock().script.extend(behaviours);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Machines whose VMM has not exited yet.
    pub fn live(&self) -> usize {
        let mut s = self.lock();
        s.live.retain(|t| t.borrow().is_none());
        s.live.len()
    }

    /// Every live VMM dies at once, as if killed from outside.
    pub fn crash_all(&self) {
        for t in self.lock().live.drain(..) {
            t.send_replace(Some("crashed".into()));
        }
    }

    /// Every machine reports this host memory use (none by default).
    pub fn set_host_memory(&self, memory: HostMemory) {
        self.lock().memory = Some(memory);
    }

    /// Agents started from now on wait here before their first word.
    pub fn hold_boots(&self) {
        self.gate.send_replace(false);
    }

    pub fn release_boots(&self) {
        self.gate.send_replace(true);
    }

    fn machine(&self, behaviour: Behaviour, restored: bool) -> Box<dyn Machine> {
        let (host, guest) = tokio::io::duplex(64 * 1024);
        let (exit, exit_rx) = watch::channel(None);
        self.lock().live.push(exit.clone());
        let agent = FakeAgent {
            driver: self.clone(),
            io: guest,
            behaviour,
            restored,
            exit: exit.clone(),
            gate: self.gate.subscribe(),
        };
        tokio::spawn(agent.serve());
        Box::new(FakeMachine {
            driver: self.clone(),
            agent: Some(host),
            exit,
            exit_rx,
            console: Console::default(),
        })
    }

    fn next(&self, call: Call) -> Behaviour {
        let mut s = self.lock();
        s.calls.push(call);
        s.script.pop_front().unwrap_or(Behaviour::Healthy)
    }
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn accel(&self) -> Accel {
        Accel::Tcg
    }

    fn snapshot_identity(&self) -> Option<String> {
        Some("fake 1".into())
    }

    async fn start(
        &self,
        _spec: &MachineSpec<'_>,
        memory: GuestMemory<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        let snapshot_source = matches!(memory, GuestMemory::SnapshotSource(_));
        match self.next(Call::Start { snapshot_source }) {
            Behaviour::FailStart => Err(fail_start()),
            b => Ok(self.machine(b, false)),
        }
    }

    async fn restore(
        &self,
        _spec: &MachineSpec<'_>,
        snapshot: SnapshotFiles<'_>,
    ) -> Result<Box<dyn Machine>, DriverError> {
        let b = self.next(Call::Restore);
        std::fs::read(snapshot.dir.join(FAKE_STATE))
            .map_err(DriverError::io("reading the fake snapshot state"))?;
        match b {
            Behaviour::FailStart => Err(fail_start()),
            b => Ok(self.machine(b, true)),
        }
    }
}

fn fail_start() -> DriverError {
    DriverError::Spawn {
        binary: "fake-vmm".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

/// The file a fake snapshot consists of (besides the memory file).
pub const FAKE_STATE: &str = "fake-state";

#[derive(Debug)]
struct FakeMachine {
    driver: FakeDriver,
    agent: Option<DuplexStream>,
    exit: watch::Sender<Option<String>>,
    exit_rx: watch::Receiver<Option<String>>,
    console: Console,
}

#[async_trait::async_trait]
impl Machine for FakeMachine {
    fn agent(&mut self) -> AgentFuture {
        let stream = self.agent.take();
        Box::pin(async move {
            match stream {
                Some(s) => Ok(Box::new(s) as AgentStream),
                None => std::future::pending().await,
            }
        })
    }

    async fn exited(&mut self) -> String {
        match self.exit_rx.wait_for(Option::is_some).await {
            Ok(s) => s.clone().unwrap_or_default(),
            // The sender lives in `self`; it cannot be gone.
            Err(_) => "gone".into(),
        }
    }

    async fn snapshot(&mut self, into: SnapshotFiles<'_>) -> Result<(), DriverError> {
        self.driver.lock().calls.push(Call::Snapshot);
        std::fs::write(into.dir.join(FAKE_STATE), b"fake")
            .map_err(DriverError::io("writing the fake snapshot state"))
    }

    async fn stop(&mut self) {
        self.driver.lock().calls.push(Call::Stop);
        self.kill();
    }

    fn kill(&mut self) {
        self.exit.send_if_modified(|s| {
            s.get_or_insert_with(|| "killed".into());
            true
        });
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn host_memory(&self) -> Option<HostMemory> {
        self.driver.lock().memory
    }

    fn console(&self) -> &Console {
        &self.console
    }
}

impl Drop for FakeMachine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The guest side: a fake agent until its VMM exits.
struct FakeAgent {
    driver: FakeDriver,
    io: DuplexStream,
    behaviour: Behaviour,
    restored: bool,
    exit: watch::Sender<Option<String>>,
    gate: watch::Receiver<bool>,
}

type Step<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;

impl FakeAgent {
    async fn serve(mut self) {
        let mut exit_rx = self.exit.subscribe();
        // Biased: a fake agent whose VMM is gone answers nothing more.
        tokio::select! {
            biased;
            _ = exit_rx.wait_for(Option::is_some) => {}
            r = self.talk() => {
                if let Err(e) = r {
                    tracing::debug!("fake agent stopped: {e}");
                }
            }
        }
        // Whatever ended the conversation, the "VMM" is gone now.
        self.exit.send_if_modified(|s| {
            s.get_or_insert_with(|| "exited".into());
            true
        });
    }

    fn die(&self, why: &str) {
        self.exit.send_replace(Some(why.into()));
    }

    async fn talk(&mut self) -> std::io::Result<()> {
        if self.behaviour == Behaviour::Silent {
            return std::future::pending().await;
        }
        let _ = self.gate.wait_for(|open| *open).await;
        if !self.restored {
            self.send(&GuestMessage::Ready(Ready {
                agent_version: "fake".into(),
                language: "python".into(),
                runtime_version: "Fake 1".into(),
                uptime_ms: 1,
            }))
            .await?;
        }
        loop {
            match self.recv().await? {
                HostMessage::Ping => self.send(&GuestMessage::Pong).await?,
                HostMessage::Resume(r) => {
                    self.send(&GuestMessage::Resumed(Resumed {
                        vm_id: r.vm_id,
                        reseeded: true,
                    }))
                    .await?
                }
                HostMessage::Warm => {
                    self.driver.lock().calls.push(Call::Warm);
                    self.send(&GuestMessage::Warmed { duration_ms: 1 }).await?
                }
                HostMessage::Run(req) => {
                    if self.behaviour == Behaviour::DieOnRun {
                        self.die("died on run");
                        return Ok(());
                    }
                    let out = req.files.first().map(|f| f.content.clone());
                    self.run(out.unwrap_or_default()).await?;
                }
            }
        }
    }

    fn run(&mut self, stdout: Vec<u8>) -> Step<'_> {
        Box::pin(async move {
            self.send(&GuestMessage::Phase {
                phase: Phase::Running,
            })
            .await?;
            if self.behaviour == Behaviour::DieAfterOutput {
                self.send(&GuestMessage::Output {
                    stream: Stream::Stdout,
                    data: b"partial\n".to_vec(),
                })
                .await?;
                self.die("died after output");
                return Ok(());
            }
            self.send(&GuestMessage::Output {
                stream: Stream::Stdout,
                data: stdout,
            })
            .await?;
            self.send(&GuestMessage::Result(RunOutcome {
                status: Verdict::Ok,
                exit_code: Some(0),
                signal: None,
                compile_output: None,
                compile_ms: None,
                duration_ms: 1,
                cpu_ms: 1,
                memory_kib: 1024,
                stdout_truncated: false,
                stderr_truncated: false,
                message: None,
            }))
            .await
        })
    }

    async fn send(&mut self, m: &GuestMessage) -> std::io::Result<()> {
        let frame = encode(m, GUEST_FRAME_MAX).map_err(std::io::Error::other)?;
        self.io.write_all(&frame).await
    }

    async fn recv(&mut self) -> std::io::Result<HostMessage> {
        let mut prefix = [0u8; LEN_PREFIX];
        self.io.read_exact(&mut prefix).await?;
        let len = check_len(prefix, HOST_FRAME_MAX).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        decode(&body).map_err(std::io::Error::other)
    }
}

/// Whether `dir` holds a fake snapshot's state.
pub fn has_fake_state(dir: &Path) -> bool {
    dir.join(FAKE_STATE).is_file()
}
