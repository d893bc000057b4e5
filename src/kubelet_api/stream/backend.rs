//! What the streaming endpoints need from the node, behind one narrow trait ([`Containers`]) so
//! that the protocol code is tested with in-memory fakes; [`super::host`] is the real one
//! (systemd units and transient exec units).

use std::io;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use super::channels::TermSize;
use crate::unit::UnitMeta;

/// A container of a pod on this node: its unit as vks wrote it and what systemd says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUnit {
    /// The unit name.
    pub unit: String,
    /// Its `[X-Kubernetes]` identity.
    pub meta: UnitMeta,
    /// The unit file vks wrote (its `[Service]` settings are what exec copies).
    pub file: String,
    /// `ActiveState`/`SubState`, e.g. `active/running`.
    pub state: String,
    /// Whether the container's process runs (`active/running`).
    pub running: bool,
    /// `InvocationID` of the current run (hex).
    pub invocation: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Waits for and stops a started process.
#[async_trait]
pub trait Control: Send {
    /// Waits until the process ended (and everything it started is gone, so its output ends).
    async fn wait(&mut self) -> Result<ExitStatus, String>;
    /// Stops it and everything it started (the client went away).
    async fn kill(&mut self);
}

/// A terminal whose size the client sets.
pub trait Terminal: Send + Sync {
    /// Sets the size (the process gets SIGWINCH).
    fn resize(&self, size: TermSize) -> io::Result<()>;
}

/// A process started for a client, with the ends of its standard streams.
pub struct Process {
    /// Its stdin, when the client sends input.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its stdout (with a terminal: stdout and stderr together).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its stderr (never with a terminal).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its terminal, when it has one.
    pub terminal: Option<Box<dyn Terminal>>,
    /// Waiting and stopping.
    pub control: Box<dyn Control>,
}

/// Which standard streams a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stdio {
    /// stdin is connected (else /dev/null).
    pub stdin: bool,
    /// stdout is connected.
    pub stdout: bool,
    /// stderr is connected.
    pub stderr: bool,
    /// A terminal, with this initial size when known: stdin, stdout and stderr are the terminal.
    pub tty: Option<Option<TermSize>>,
}

/// A connection to a pod's port.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// The node as the streaming endpoints see it.
#[async_trait]
pub trait Containers: Send + Sync + 'static {
    /// The containers vks runs for pod `namespace/pod` (empty when it runs none).
    async fn pod(&self, namespace: &str, pod: &str) -> Result<Vec<ContainerUnit>, String>;
    /// Starts `command` in the context of the container (its user, environment, working
    /// directory, file-system view and slice).
    async fn exec(&self, container: &ContainerUnit, command: &[String], stdio: Stdio) -> Result<Process, String>;
    /// Attaches to the container's own process: its output from now on, and its input when it
    /// has one. `wait` returns when the container stops; `kill` detaches.
    async fn attach(&self, container: &ContainerUnit, stdio: Stdio) -> Result<Process, String>;
    /// Connects to TCP `port` of the pod (host network: a port one of its processes listens on).
    async fn connect(&self, pod: &[ContainerUnit], port: u16) -> Result<Box<dyn Conn>, String>;
}
