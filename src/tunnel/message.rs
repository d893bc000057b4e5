//! The frames of the rancher/remotedialer protocol (its `message.go`), pure.
//!
//! Every frame is one binary WebSocket message: the message id, the connection id and the type
//! as Go `binary.PutVarint` varints (zig-zag), then, for `Data` and `Connect` only, a legacy
//! deadline varint (always 15000 ms, ignored), then the payload:
//! - `Connect`: `<proto>/<address>` (at most 266 bytes are read), e.g. `tcp/127.0.0.1:10250`;
//! - `Data`: the bytes of the connection;
//! - `Error`: the error text (`EOF` for a clean close; at most 100 bytes are read);
//! - `AddClient`/`RemoveClient`: a peer's `<client key>/<session key>` (peering only; ignored);
//! - `Pause`/`Resume`: none (flow control of one connection);
//! - `SyncConnections`: the sender's open connection ids, each a little-endian u64.

use thiserror::Error;

/// The message types, with remotedialer's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes of a connection.
    Data = 1,
    /// The server asks the client to dial an address.
    Connect = 2,
    /// A connection ended (`EOF`) or failed.
    Error = 3,
    /// A peer session was added (server to server).
    AddClient = 4,
    /// A peer session was removed (server to server).
    RemoveClient = 5,
    /// Stop sending on a connection.
    Pause = 6,
    /// Sending may go on.
    Resume = 7,
    /// The ids of the sender's open connections; the others are stale.
    SyncConnections = 8,
}

impl Kind {
    fn from_i64(v: i64) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Connect,
            3 => Kind::Error,
            4 => Kind::AddClient,
            5 => Kind::RemoveClient,
            6 => Kind::Pause,
            7 => Kind::Resume,
            8 => Kind::SyncConnections,
            _ => return None,
        })
    }
}

/// The value remotedialer still writes into the deadline field (15 s, in milliseconds).
const LEGACY_DEADLINE_MS: i64 = 15_000;
/// How much of a Connect payload remotedialer reads.
const MAX_CONNECT: usize = 266;
/// How much of an Error (or Add/RemoveClient) payload remotedialer reads.
const MAX_ERROR: usize = 100;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's message id (informational).
    pub id: i64,
    /// The connection the frame belongs to (0 for session-wide frames).
    pub conn_id: i64,
    /// What the frame is.
    pub kind: Kind,
    /// The payload (see the module documentation).
    pub payload: Vec<u8>,
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame ends inside a header varint.
    #[error("the frame ends inside its {0} field")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes.
    #[error("the {0} field is not a valid varint")]
    Overflow(&'static str),
    /// A type number remotedialer does not define.
    #[error("unknown message type {0}")]
    UnknownKind(i64),
}

impl Message {
    /// A frame of `kind` on `conn_id` with `payload`.
    pub fn new(id: i64, conn_id: i64, kind: Kind, payload: Vec<u8>) -> Message {
        Message { id, conn_id, kind, payload }
    }

    /// The bytes of the frame, as `message.Bytes()` writes them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.payload.len());
        put_varint(&mut out, self.id);
        put_varint(&mut out, self.conn_id);
        put_varint(&mut out, self.kind as i64);
        if matches!(self.kind, Kind::Data | Kind::Connect) {
            put_varint(&mut out, LEGACY_DEADLINE_MS);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a frame as `newServerMessage` does (payloads of Connect, Error and Add/RemoveClient
    /// are cut to what remotedialer reads of them).
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        let mut rest = frame;
        let id = take_varint(&mut rest, "id")?;
        let conn_id = take_varint(&mut rest, "connection id")?;
        let kind_num = take_varint(&mut rest, "type")?;
        let kind = Kind::from_i64(kind_num).ok_or(DecodeError::UnknownKind(kind_num))?;
        if matches!(kind, Kind::Data | Kind::Connect) {
            take_varint(&mut rest, "deadline")?;
        }
        let limit = match kind {
            Kind::Connect => MAX_CONNECT,
            Kind::Error | Kind::AddClient | Kind::RemoveClient => MAX_ERROR,
            _ => usize::MAX,
        };
        let payload = rest[..rest.len().min(limit)].to_vec();
        Ok(Message { id, conn_id, kind, payload })
    }

    /// The `(proto, address)` of a Connect frame.
    pub fn connect_target(&self) -> Option<(String, String)> {
        let text = std::str::from_utf8(&self.payload).ok()?;
        let (proto, address) = text.split_once('/')?;
        Some((proto.to_owned(), address.to_owned()))
    }

    /// The text of an Error frame (`EOF` for a clean close).
    pub fn error_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The connection ids of a SyncConnections frame (`None` when its length is no multiple of
    /// 8, which remotedialer rejects).
    pub fn connection_ids(&self) -> Option<Vec<i64>> {
        if !self.payload.len().is_multiple_of(8) {
            return None;
        }
        Some(
            self.payload
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()))
                .collect(),
        )
    }

    /// The payload of a SyncConnections frame for these ids.
    pub fn sync_payload(ids: &[i64]) -> Vec<u8> {
        ids.iter().flat_map(|id| id.to_le_bytes()).collect()
    }
}

/// Go's `binary.PutVarint`: zig-zag, then 7 bits per byte, low first.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// Go's `binary.ReadVarint`.
fn take_varint(rest: &mut &[u8], field: &'static str) -> Result<i64, DecodeError> {
    let mut u: u64 = 0;
    for (i, b) in rest.iter().enumerate() {
        if i == 10 || (i == 9 && *b > 1) {
            return Err(DecodeError::Overflow(field));
        }
        u |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Ok(((u >> 1) as i64) ^ -((u & 1) as i64));
        }
    }
    Err(DecodeError::Truncated(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_bytes_written_by_remotedialer() {
        // remotedialer v0.6.1 message.Bytes() for (&message{id: 1, connID: 5, messageType: Connect,
        // bytes: []byte("tcp/127.0.0.1:10250")}): Go binary.PutVarint gives 1→0x02, 5→0x0a, 2→0x04,
        // 15000→0xb0 0xea 0x01.
        let connect = [&[0x02u8, 0x0a, 0x04, 0xb0, 0xea, 0x01][..], b"tcp/127.0.0.1:10250"].concat();
        let m = Message::decode(&connect).unwrap();
        assert_eq!(m, Message::new(1, 5, Kind::Connect, b"tcp/127.0.0.1:10250".to_vec()));
        assert_eq!(m.connect_target(), Some(("tcp".into(), "127.0.0.1:10250".into())));
        assert_eq!(m.encode(), connect);
        // An Error frame has no deadline field: id -3 → 0x05, conn 300 → 0xd8 0x04, type 3 → 0x06.
        let error = [&[0x05u8, 0xd8, 0x04, 0x06][..], b"EOF"].concat();
        let m = Message::decode(&error).unwrap();
        assert_eq!((m.id, m.conn_id, m.kind, m.error_text().as_str()), (-3, 300, Kind::Error, "EOF"));
        assert_eq!(m.encode(), error);
    }

    #[test]
    fn varints_round_trip_over_the_whole_range() {
        for v in [0, 1, -1, 63, -64, 64, 8191, -8192, i64::MAX, i64::MIN, 4_611_686_018_427_387_904] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut rest = &out[..];
            assert_eq!(take_varint(&mut rest, "x").unwrap(), v, "{v}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn payload_limits_and_bad_frames() {
        let long = Message::new(1, 1, Kind::Error, vec![b'x'; 500]);
        assert_eq!(Message::decode(&long.encode()).unwrap().payload.len(), 100);
        let data = Message::new(1, 1, Kind::Data, vec![7; 100_000]);
        assert_eq!(Message::decode(&data.encode()).unwrap().payload.len(), 100_000);
        assert_eq!(Message::decode(&[0x02, 0x0a]), Err(DecodeError::Truncated("type")));
        assert_eq!(Message::decode(&[0x02, 0x0a, 0x14]), Err(DecodeError::UnknownKind(10)));
        assert_eq!(Message::decode(&[0xff; 12]), Err(DecodeError::Overflow("id")));
        assert_eq!(Message::decode(&[0x02, 0x0a, 0x02]), Err(DecodeError::Truncated("deadline")));
    }

    #[test]
    fn sync_connections_payload() {
        let p = Message::sync_payload(&[1, 258]);
        assert_eq!(p, [1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);
        let m = Message::new(9, 0, Kind::SyncConnections, p);
        assert_eq!(Message::decode(&m.encode()).unwrap().connection_ids(), Some(vec![1, 258]));
        assert_eq!(Message::new(9, 0, Kind::SyncConnections, vec![1, 2, 3]).connection_ids(), None);
    }
}
