//! SPDY/3.1, server side: the framing ([`frame`]), header blocks with their zlib dictionary
//! ([`headers`], [`dictionary`]) and a connection that accepts the streams a client opens
//! ([`session`]). This is what API servers speak to kubelets for exec, attach and port-forward
//! unless the node declares `ExtendWebSocketsToKubelet`, and what port-forward tunnels inside
//! WebSocket. No maintained Rust crate serves it, so it lives here, small and tested against
//! bytes recorded from the Go implementation (`tests/testdata/spdy/`, `k3s/spdy-record/`).

pub mod dictionary;
pub mod frame;
pub mod headers;
pub mod session;

#[cfg(test)]
pub(crate) mod tests;

pub use frame::Frame;
pub use headers::Headers;
pub use session::{Closer, Incoming, Limits, Session, Stream, StreamReader, StreamWriter};

/// What can go wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// The peer broke the protocol.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// A frame larger than accepted.
    #[error("SPDY frame of {len} bytes is larger than the {max} accepted")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Header (de)compression failed.
    #[error("SPDY header compression: {0}")]
    Compression(String),
    /// The connection failed.
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The `Upgrade:` token of SPDY/3.1.
pub const UPGRADE: &str = "SPDY/3.1";
