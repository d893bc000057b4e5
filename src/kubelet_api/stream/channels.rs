//! The Kubernetes remote-command protocol, independent of the transport: what an exec or attach
//! session looks like to the code that runs the command. The SPDY ([`super::spdy_io`]) and
//! WebSocket ([`super::websocket`]) transports both produce a [`Channels`] value.
//!
//! Protocol versions (k8s.io/cri-streaming remotecommand, client-go tools/remotecommand):
//! `channel.k8s.io` (v1), `v2.channel.k8s.io`, `v3.channel.k8s.io` (adds terminal resizing),
//! `v4.channel.k8s.io` (the error channel carries a JSON `metav1.Status` with the exit code) and,
//! over WebSocket only, `v5.channel.k8s.io` (adds a CLOSE signal so the client can end stdin).
//! Before v4 the error channel carries only a failure's message.

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which streams the client asked for (`input`, `output`, `error`, `tty` query parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never together with `tty`).
    pub stderr: bool,
    /// A terminal: stdout and stderr are one stream, the client sends resizes.
    pub tty: bool,
}

/// A terminal size, as the client sends it on the resize channel (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TermSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// A remote-command protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`.
    V3,
    /// `v4.channel.k8s.io`.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only).
    V5,
}

impl Version {
    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "channel.k8s.io",
            Version::V2 => "v2.channel.k8s.io",
            Version::V3 => "v3.channel.k8s.io",
            Version::V4 => "v4.channel.k8s.io",
            Version::V5 => "v5.channel.k8s.io",
        }
    }

    /// Whether the client sends terminal resizes.
    pub fn resizes(self) -> bool {
        self >= Version::V3
    }
}

/// The versions vks serves over SPDY, most preferred first (those of the kubelet's server).
pub const SPDY_VERSIONS: [Version; 4] = [Version::V4, Version::V3, Version::V2, Version::V1];
/// The versions vks serves over WebSocket, most preferred first.
pub const WEBSOCKET_VERSIONS: [Version; 2] = [Version::V5, Version::V4];

/// How a session ended, as the client is told on the error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with 0 (or the attach session ended normally).
    Success,
    /// The command exited with this code (1..=255; a signal N is reported as 128+N, as runtimes
    /// do).
    ExitCode(u8),
    /// Something went wrong running it (`InternalError`).
    Error(String),
}

impl Outcome {
    /// What is written on the error channel for `version`; `None` when nothing is (a success
    /// before v4).
    pub fn encode(&self, version: Version) -> Option<Bytes> {
        let json = match (self, version >= Version::V4) {
            (Outcome::Success, true) => serde_json::json!({"metadata": {}, "status": "Success"}),
            (Outcome::Success, false) => return None,
            (Outcome::ExitCode(code), true) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            (Outcome::ExitCode(code), false) => {
                return Some(Bytes::from(format!("command terminated with non-zero exit code: exit status {code}")));
            }
            (Outcome::Error(m), true) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": m,
                "reason": "InternalError",
                "code": 500,
            }),
            (Outcome::Error(m), false) => return Some(Bytes::from(m.clone())),
        };
        Some(Bytes::from(json.to_string()))
    }
}

/// What the command side sends to the client.
#[derive(Debug)]
pub enum Out {
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
    /// The end: report the outcome, close the connection.
    Done(Outcome),
}

/// One exec or attach session, seen from the code running the command.
pub struct Channels {
    /// What the client asked for.
    pub options: Options,
    /// The negotiated version.
    pub version: Version,
    /// Client input; `None` unless stdin was requested. Closes at the client's end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal sizes; `None` unless a TTY was requested and the version has resizes.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Output to the client; [`Out::Done`] ends the session.
    pub out: mpsc::Sender<Out>,
    /// Fired when the client is gone.
    pub gone: CancellationToken,
}

/// Reads the resize channel: a stream of JSON objects (Go's encoder writes one per message,
/// newline-terminated); an object split across messages is completed by the next one.
#[derive(Default)]
pub struct ResizeParser {
    buf: Vec<u8>,
}

impl ResizeParser {
    /// Adds received bytes; returns the sizes completed by them. Garbage is dropped.
    pub fn feed(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        let consumed = loop {
            match it.next() {
                Some(Ok(size)) => sizes.push(size),
                Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                Some(Err(_)) => break self.buf.len(),
                None => break it.byte_offset(),
            }
        };
        self.buf.drain(..consumed);
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_encoded_as_the_kubelet_does() {
        let s: serde_json::Value = serde_json::from_slice(&Outcome::ExitCode(3).encode(Version::V4).unwrap()).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let s: serde_json::Value = serde_json::from_slice(&Outcome::Success.encode(Version::V5).unwrap()).unwrap();
        assert_eq!(s["status"], "Success");
        let s: serde_json::Value =
            serde_json::from_slice(&Outcome::Error("boom".into()).encode(Version::V4).unwrap()).unwrap();
        assert_eq!((s["reason"].as_str(), s["message"].as_str()), (Some("InternalError"), Some("boom")));
        assert_eq!(Outcome::Success.encode(Version::V3), None);
        assert_eq!(
            Outcome::ExitCode(2).encode(Version::V2).unwrap(),
            "command terminated with non-zero exit code: exit status 2"
        );
    }

    #[test]
    fn resize_messages_are_read_like_go_writes_them() {
        let mut p = ResizeParser::default();
        let sizes = p.feed(b"{\"Width\":80,\"Height\":24}\n{\"Width\":100,\"Height\":30}\n");
        assert_eq!(sizes, [TermSize { width: 80, height: 24 }, TermSize { width: 100, height: 30 }]);
        assert_eq!(p.feed(b"{\"Width\":1,"), []);
        assert_eq!(p.feed(b"\"Height\":2}\n"), [TermSize { width: 1, height: 2 }]);
        assert_eq!(p.feed(b"garbage"), []);
        assert_eq!(p.feed(b"{\"Width\":3,\"Height\":4}"), [TermSize { width: 3, height: 4 }]);
    }
}
