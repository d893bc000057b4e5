//! SPDY/3.1 frames and their wire format (SPDY Protocol draft 3.1, section 2.2 and 2.6).
//!
//! Every frame has an 8-byte header. A control frame starts with the control bit, the version
//! (3) and a 16-bit type; a data frame with a 31-bit stream id. Both then carry 8 bits of flags
//! and a 24-bit payload length. [`Codec`] reads and writes frames on a byte stream and keeps the
//! connection's two header compression streams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::SpdyError;
use super::headers::{Deflater, Headers, Inflater, MAX_BLOCK};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FIN flag (control and data frames): the sender's half of the stream is closed.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag of SYN_STREAM: the recipient's half starts closed.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// Largest payload accepted in a received frame. The protocol allows 2^24-1; the Kubernetes Go
/// clients write at most 32 KiB per frame.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// RST_STREAM status codes used here.
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM: a frame for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM: the stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL: the stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 6;
    /// STREAM_IN_USE: SYN_STREAM for a stream id already open.
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK: a normal teardown.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM (type 1): the peer opens a stream.
    SynStream {
        /// New stream id (odd when the client opens it).
        stream_id: u32,
        /// Stream this one is associated with (0 = none).
        associated: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// FIN and/or UNIDIRECTIONAL.
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// SYN_REPLY (type 2): accepts a stream.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// RST_STREAM (type 3): abnormal end of a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why ([`rst`]).
        status: u32,
    },
    /// SETTINGS (type 4); vks reads and ignores them.
    Settings {
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// PING (type 6): answered with the same id when the peer started it.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// GOAWAY (type 7): no new streams after `last_good`.
    GoAway {
        /// Last stream id the sender processed.
        last_good: u32,
        /// Why ([`goaway`]).
        status: u32,
    },
    /// HEADERS (type 8): more headers for an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// WINDOW_UPDATE (type 9). The Kubernetes peers (spdystream) do no flow control; read and
    /// ignored.
    WindowUpdate {
        /// The stream (0 = the connection).
        stream_id: u32,
        /// Window increase.
        delta: u32,
    },
    /// A control frame type this implementation does not know (the protocol says: ignore it).
    Unknown {
        /// Its type.
        kind: u16,
    },
    /// DATA.
    Data {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
}

/// Reads and writes [`Frame`]s; owns the connection's header (de)compression state.
#[derive(Default)]
pub struct Codec {
    inflater: Inflater,
    deflater: Deflater,
}

fn stream_id(b: &mut Bytes) -> u32 {
    b.get_u32() & 0x7fff_ffff
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<(), SpdyError> {
    if b.len() < n {
        return Err(SpdyError::Protocol(format!("{what} frame of {} bytes is too short (needs {n})", b.len())));
    }
    Ok(())
}

impl Codec {
    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        Headers::decode(&self.inflater.inflate(block)?)
    }

    fn control(&mut self, kind: u16, flags: u8, mut p: Bytes) -> Result<Frame, SpdyError> {
        Ok(match kind {
            1 => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = stream_id(&mut p);
                let associated = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                p.advance(1); // credential slot
                Frame::SynStream { stream_id, associated, priority, flags, headers: self.headers(&p)? }
            }
            2 => {
                need(&p, 4, "SYN_REPLY")?;
                let stream_id = stream_id(&mut p);
                Frame::SynReply { stream_id, flags, headers: self.headers(&p)? }
            }
            3 => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream { stream_id: stream_id(&mut p), status: p.get_u32() }
            }
            4 => {
                need(&p, 4, "SETTINGS")?;
                let n = p.get_u32() as usize;
                if p.len() != n.saturating_mul(8) {
                    return Err(SpdyError::Protocol(format!("SETTINGS frame with {n} entries has {} bytes", p.len())));
                }
                let entries = (0..n)
                    .map(|_| {
                        let id = p.get_u32();
                        ((id >> 24) as u8, id & 0x00ff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            6 => {
                need(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            7 => {
                need(&p, 8, "GOAWAY")?;
                Frame::GoAway { last_good: stream_id(&mut p), status: p.get_u32() }
            }
            8 => {
                need(&p, 4, "HEADERS")?;
                let stream_id = stream_id(&mut p);
                Frame::Headers { stream_id, flags, headers: self.headers(&p)? }
            }
            9 => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate { stream_id: stream_id(&mut p), delta: p.get_u32() & 0x7fff_ffff }
            }
            kind => Frame::Unknown { kind },
        })
    }
}

impl Codec {
    fn headers_frame(
        &mut self,
        dst: &mut BytesMut,
        kind: u16,
        stream_id: u32,
        flags: u8,
        headers: &Headers,
    ) -> Result<(), SpdyError> {
        let block = self.deflater.deflate(&headers.encode())?;
        control_header(dst, kind, flags, 4 + block.len());
        dst.put_u32(stream_id);
        dst.extend_from_slice(&block);
        Ok(())
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = SpdyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if src.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, src[5], src[6], src[7]]) as usize;
        let max = if src[0] & 0x80 != 0 { MAX_BLOCK } else { MAX_PAYLOAD };
        if len > max {
            return Err(SpdyError::FrameTooLarge { len, max });
        }
        if src.len() < 8 + len {
            src.reserve(8 + len - src.len());
            return Ok(None);
        }
        let mut head = src.split_to(8);
        let payload = src.split_to(len).freeze();
        let first = head.get_u32();
        let flags = head.get_u8();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream_id: first & 0x7fff_ffff, flags, data: payload }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("control frame of SPDY version {version}, not {VERSION}")));
        }
        self.control((first & 0xffff) as u16, flags, payload).map(Some)
    }
}

fn control_header(dst: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u8(flags);
    dst.put_uint(len as u64, 3);
}

impl Encoder<Frame> for Codec {
    type Error = SpdyError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(SpdyError::FrameTooLarge { len: data.len(), max: MAX_PAYLOAD });
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u8(flags);
                dst.put_uint(data.len() as u64, 3);
                dst.extend_from_slice(&data);
            }
            Frame::SynStream { stream_id, associated, priority, flags, headers } => {
                let block = self.deflater.deflate(&headers.encode())?;
                control_header(dst, 1, flags, 10 + block.len());
                dst.put_u32(stream_id);
                dst.put_u32(associated);
                dst.put_u8(priority << 5);
                dst.put_u8(0);
                dst.extend_from_slice(&block);
            }
            Frame::SynReply { stream_id, flags, headers } => self.headers_frame(dst, 2, stream_id, flags, &headers)?,
            Frame::Headers { stream_id, flags, headers } => self.headers_frame(dst, 8, stream_id, flags, &headers)?,
            Frame::RstStream { stream_id, status } => {
                control_header(dst, 3, 0, 8);
                dst.put_u32(stream_id);
                dst.put_u32(status);
            }
            Frame::Settings { entries } => {
                control_header(dst, 4, 0, 4 + 8 * entries.len());
                dst.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    dst.put_u32((u32::from(flags) << 24) | (id & 0x00ff_ffff));
                    dst.put_u32(value);
                }
            }
            Frame::Ping { id } => {
                control_header(dst, 6, 0, 4);
                dst.put_u32(id);
            }
            Frame::GoAway { last_good, status } => {
                control_header(dst, 7, 0, 8);
                dst.put_u32(last_good);
                dst.put_u32(status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(dst, 9, 0, 8);
                dst.put_u32(stream_id);
                dst.put_u32(delta);
            }
            Frame::Unknown { kind } => {
                return Err(SpdyError::Protocol(format!("cannot send a control frame of unknown type {kind}")));
            }
        }
        Ok(())
    }
}
