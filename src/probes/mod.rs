//! Container probes and lifecycle handlers: what they ask for ([`spec`], pure), how their
//! results add up ([`tracker`], pure), and how one is run ([`Prober`]: HTTP, TCP and gRPC as
//! futures on tokio, exec through [`exec::ContainerExec`]).
//!
//! The pod worker decides when to probe and what a result means for the container
//! (`pods/worker/probe.rs`, `hooks.rs`); a [`Prober`] only runs one probe or handler and says
//! how it went. Probing hundreds of pods costs tasks and sockets, not threads: the HTTP client
//! is shared, and a probe's timeout is a tokio timer. Only exec probes start a process (a
//! transient unit in the container's context).

pub mod exec;
pub mod fake;
pub mod http;
pub mod net;
pub mod spec;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::exec::{ContainerExec, ExecStatus};
use self::http::HttpProber;
pub use self::spec::{Action, HttpGet, ProbeKind, ProbeSpec, Scheme};

/// How one probe run went (the kubelet's `probe.Result` with its output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the output.
    Success(String),
    /// Passed with a remark (an HTTP redirect to another host was not followed).
    Warning(String),
    /// Failed; why (the command's output, the status code, the connection error).
    Failure(String),
    /// Could not be run (a port name that no port has): not counted, reported.
    Error(String),
}

/// The container a probe or handler is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its unit.
    pub unit: String,
    /// The container's name.
    pub container: String,
    /// The pod as the kubelet names it in messages: `name_namespace(uid)`.
    pub pod: String,
}

/// Runs probes and lifecycle handlers.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Runs one probe; it fails when it takes longer than `timeout`.
    async fn probe(&self, target: &Target, action: &Action, timeout: Duration) -> Outcome;
    /// Runs a lifecycle handler to its end (the caller drops the future to give up on it); the
    /// error is the kubelet's message.
    async fn handle(&self, target: &Target, action: &Action) -> Result<(), String>;
}

/// The real prober of a node.
pub struct NodeProber {
    http: HttpProber,
    exec: Arc<dyn ContainerExec>,
}

impl NodeProber {
    /// A prober running exec actions through `exec`.
    pub fn new(exec: Arc<dyn ContainerExec>) -> anyhow::Result<NodeProber> {
        Ok(NodeProber { http: HttpProber::new()?, exec })
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[async_trait]
impl Prober for NodeProber {
    async fn probe(&self, target: &Target, action: &Action, timeout: Duration) -> Outcome {
        match action {
            Action::Exec(cmd) => match self.exec.exec(&target.unit, cmd, Some(timeout)).await {
                Ok(o) => match o.status {
                    ExecStatus::Exited(0) => Outcome::Success(text(&o.output)),
                    ExecStatus::Exited(_) => Outcome::Failure(text(&o.output)),
                    ExecStatus::TimedOut => Outcome::Failure(format!("command {:?} timed out", cmd.join(" "))),
                },
                Err(e) => Outcome::Error(e.to_string()),
            },
            Action::Http(h) => match self.http.get(h, Some(timeout)).await {
                Ok(a) if (200..300).contains(&a.status) => Outcome::Success(a.body),
                Ok(a) if (300..400).contains(&a.status) => {
                    Outcome::Warning(format!("Probe terminated redirects, Response body: {}", a.body))
                }
                Ok(a) => Outcome::Failure(format!("HTTP probe failed with statuscode: {}", a.status)),
                Err(e) => Outcome::Failure(e),
            },
            Action::Tcp { host, port } => net::tcp(host, *port, timeout).await,
            Action::Grpc { host, port, service } => net::grpc(host, *port, service, timeout).await,
            Action::Sleep(_) => Outcome::Error("sleep is a lifecycle handler, not a probe".into()),
        }
    }

    async fn handle(&self, target: &Target, action: &Action) -> Result<(), String> {
        let (c, pod) = (&target.container, &target.pod);
        match action {
            Action::Exec(cmd) => {
                let line = cmd.join(" ");
                let failed = |error: String, output: &[u8]| {
                    format!(
                        "Exec lifecycle hook ([{line}]) for Container {c:?} in Pod {pod:?} failed - error: {error}, message: {:?}",
                        text(output)
                    )
                };
                match self.exec.exec(&target.unit, cmd, None).await {
                    Ok(o) => match o.status {
                        ExecStatus::Exited(0) => Ok(()),
                        ExecStatus::Exited(n) => Err(failed(format!("command '{line}' exited with {n}: "), &o.output)),
                        ExecStatus::TimedOut => Err(failed(format!("command '{line}' timed out"), &o.output)),
                    },
                    Err(e) => Err(failed(e.why, b"")),
                }
            }
            Action::Http(h) => match self.http.get(h, None).await {
                // A lifecycle handler fails only when no answer came; any status will do.
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "HTTP lifecycle hook ({}) for Container {c:?} in Pod {pod:?} failed - error: {e}",
                    h.path
                )),
            },
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
            Action::Tcp { .. } | Action::Grpc { .. } => Err(format!(
                "lifecycle hook for Container {c:?} in Pod {pod:?}: {} is not a handler",
                action.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exec::{ExecOutput, FakeExec};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target() -> Target {
        Target { unit: "vks.ns.p.c.service".into(), container: "c".into(), pod: "p_ns(u)".into() }
    }

    #[tokio::test]
    async fn exec_results_become_outcomes_and_hook_messages() {
        let exec = Arc::new(FakeExec::default());
        let p = NodeProber::new(exec.clone()).unwrap();
        let cmd = Action::Exec(vec!["cat".into(), "/tmp/healthy".into()]);
        let t = Duration::from_secs(1);
        exec.answer(Ok(ExecOutput { status: ExecStatus::Exited(0), output: b"ok".to_vec() }));
        assert_eq!(p.probe(&target(), &cmd, t).await, Outcome::Success("ok".into()));
        exec.answer(Ok(ExecOutput { status: ExecStatus::Exited(1), output: b"No such file".to_vec() }));
        assert_eq!(p.probe(&target(), &cmd, t).await, Outcome::Failure("No such file".into()));
        exec.answer(Ok(ExecOutput { status: ExecStatus::TimedOut, output: Vec::new() }));
        assert_eq!(
            p.probe(&target(), &cmd, t).await,
            Outcome::Failure("command \"cat /tmp/healthy\" timed out".into())
        );
        exec.answer(Err("the container's unit file does not exist".into()));
        let Outcome::Error(m) = p.probe(&target(), &cmd, t).await else { panic!() };
        assert!(m.ends_with("the container's unit file does not exist"), "{m}");
        exec.answer(Ok(ExecOutput { status: ExecStatus::Exited(2), output: b"oops".to_vec() }));
        assert_eq!(
            p.handle(&target(), &cmd).await,
            Err("Exec lifecycle hook ([cat /tmp/healthy]) for Container \"c\" in Pod \"p_ns(u)\" failed - error: \
                 command 'cat /tmp/healthy' exited with 2: , message: \"oops\""
                .into())
        );
        assert_eq!(exec.calls().len(), 5);
        assert!(exec.calls().iter().all(|c| c.unit == "vks.ns.p.c.service"));
    }

    /// Hundreds of HTTP and TCP probes at once are tasks on one thread, not a thread (or a
    /// process) each: 600 probes against a server that answers each after 300 ms finish together.
    #[tokio::test(flavor = "current_thread")]
    async fn hundreds_of_probes_run_concurrently_on_one_thread() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if s.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
                });
            }
        });
        let p = Arc::new(NodeProber::new(Arc::new(exec::FakeExec::default())).unwrap());
        let http = Action::Http(HttpGet {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port,
            path: "/healthz".into(),
            headers: Vec::new(),
        });
        let tcp = Action::Tcp { host: "127.0.0.1".into(), port };
        let t0 = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..600 {
            let (p, a) = (p.clone(), if i % 3 == 0 { tcp.clone() } else { http.clone() });
            set.spawn(async move { p.probe(&target(), &a, Duration::from_secs(20)).await });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            if matches!(r.unwrap(), Outcome::Success(_)) {
                ok += 1;
            }
        }
        let took = t0.elapsed();
        assert_eq!(ok, 600);
        assert!(took < Duration::from_secs(10), "600 probes took {took:?} (one after the other: 120 s)");
    }
}
