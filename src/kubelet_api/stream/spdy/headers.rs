//! SPDY/3 header blocks: the name/value block format and its zlib compression.
//!
//! A block is a 32-bit pair count followed by, for each pair, a 32-bit length and the name, a
//! 32-bit length and the value (all lengths big-endian). Names are lower-case; several values of
//! one name are joined with NUL. Each direction of a connection compresses its blocks as ONE zlib
//! stream primed with [`dictionary`](super::dictionary::dictionary), each block ending with a
//! sync flush, so the inflater and deflater live as long as the connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;
use super::dictionary::dictionary;

/// Upper bound of a decompressed header block (the Go implementation allows 1 MiB per field;
/// every block Kubernetes sends is under 1 KiB).
pub const MAX_BLOCK: usize = 256 * 1024;
/// Upper bound of the number of pairs in a block.
pub const MAX_PAIRS: usize = 1000;

/// The headers of one SYN_STREAM, SYN_REPLY or HEADERS frame, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Adds a pair; the name is lower-cased as SPDY requires.
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The first value of `name` (compared case-insensitively), if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// The pairs in wire order (values of one name still NUL-joined).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The uncompressed block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.0.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Parses an uncompressed block.
    pub fn decode(block: &[u8]) -> Result<Headers, SpdyError> {
        let mut r = block;
        let count = take_u32(&mut r)? as usize;
        if count > MAX_PAIRS {
            return Err(SpdyError::Protocol(format!("header block has {count} pairs, more than {MAX_PAIRS}")));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_str(&mut r)?;
            let value = take_str(&mut r)?;
            if name.is_empty() {
                return Err(SpdyError::Protocol("header block has an empty header name".into()));
            }
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(SpdyError::Protocol(format!("header name {name:?} is not lower-case")));
            }
            pairs.push((name, value));
        }
        if !r.is_empty() {
            return Err(SpdyError::Protocol(format!("header block has {} bytes after its last pair", r.len())));
        }
        Ok(Headers(pairs))
    }
}

fn take_u32(r: &mut &[u8]) -> Result<u32, SpdyError> {
    let (head, rest) =
        r.split_first_chunk::<4>().ok_or_else(|| SpdyError::Protocol("header block is truncated".into()))?;
    *r = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(r: &mut &[u8]) -> Result<String, SpdyError> {
    let len = take_u32(r)? as usize;
    if len > r.len() {
        return Err(SpdyError::Protocol(format!("header of {len} bytes in a block with {} left", r.len())));
    }
    let (s, rest) = r.split_at(len);
    *r = rest;
    String::from_utf8(s.to_vec()).map_err(|_| SpdyError::Protocol("header name or value is not UTF-8".into()))
}

/// Decompresses the header blocks one peer sends on a connection.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater { z: Decompress::new(true) }
    }
}

impl Inflater {
    /// Inflates one compressed block (the next part of the connection's zlib stream).
    pub fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let bad = |e: &dyn std::fmt::Display| SpdyError::Compression(format!("header block: {e}"));
        let start = self.z.total_in();
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let consumed = usize::try_from(self.z.total_in() - start).map_err(|e| bad(&e))?;
            let (before_in, before_out) = (consumed, out.len());
            match self.z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Err(bad(&"the peer ended its zlib stream")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(dictionary()).map_err(|e| bad(&e))?;
                    continue;
                }
                Err(e) => return Err(bad(&e)),
            }
            let consumed = usize::try_from(self.z.total_in() - start).map_err(|e| bad(&e))?;
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.len() >= MAX_BLOCK {
                    return Err(SpdyError::Protocol(format!("header block inflates to more than {MAX_BLOCK} bytes")));
                }
                out.reserve(out.len().max(1024));
            } else if consumed == before_in && out.len() == before_out {
                return Err(bad(&"truncated (no sync flush at its end)"));
            }
        }
    }
}

/// Compresses the header blocks this side sends on a connection.
pub struct Deflater {
    z: Compress,
    primed: bool,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater { z: Compress::new(Compression::default(), true), primed: false }
    }
}

impl Deflater {
    /// Deflates one block, ending with a sync flush.
    pub fn deflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let bad = |e: &dyn std::fmt::Display| SpdyError::Compression(format!("compressing a header block: {e}"));
        if !self.primed {
            self.z.set_dictionary(dictionary()).map_err(|e| bad(&e))?;
            self.primed = true;
        }
        let start = self.z.total_in();
        let mut out = Vec::with_capacity(block.len() + 64);
        loop {
            let consumed = usize::try_from(self.z.total_in() - start).map_err(|e| bad(&e))?;
            self.z.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync).map_err(|e| bad(&e))?;
            let consumed = usize::try_from(self.z.total_in() - start).map_err(|e| bad(&e))?;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_one_zlib_stream_per_direction() {
        let mut d = Deflater::default();
        let mut i = Inflater::default();
        let mut h = Headers::new();
        h.push("streamType", "error");
        h.push("port", "8080");
        let first = d.deflate(&h.encode()).unwrap();
        // The zlib header names the SPDY dictionary by its Adler-32.
        assert_eq!(&first[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!(Headers::decode(&i.inflate(&first).unwrap()).unwrap(), h);
        // Later blocks continue the same streams.
        for n in 0..50 {
            let mut h = Headers::new();
            h.push("requestid", &n.to_string());
            let z = d.deflate(&h.encode()).unwrap();
            assert_eq!(
                Headers::decode(&i.inflate(&z).unwrap()).unwrap().get("requestID"),
                Some(n.to_string().as_str())
            );
        }
    }

    #[test]
    fn large_blocks_grow_the_buffers() {
        let mut d = Deflater::default();
        let mut i = Inflater::default();
        let mut h = Headers::new();
        let big: String = (0..20_000).map(|n| char::from(b'a' + (n * 7 % 26) as u8)).collect();
        h.push("x", &big);
        assert_eq!(Headers::decode(&i.inflate(&d.deflate(&h.encode()).unwrap()).unwrap()).unwrap(), h);
    }

    #[test]
    fn malformed_blocks_are_protocol_errors() {
        assert!(matches!(Headers::decode(&[0, 0]), Err(SpdyError::Protocol(_))));
        assert!(matches!(Headers::decode(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']), Err(SpdyError::Protocol(_))));
        let upper = Headers(vec![("Port".into(), "1".into())]).encode();
        assert!(matches!(Headers::decode(&upper), Err(SpdyError::Protocol(m)) if m.contains("lower-case")));
        assert!(matches!(Headers::decode(&[0xff, 0, 0, 0]), Err(SpdyError::Protocol(m)) if m.contains("pairs")));
        assert!(matches!(Inflater::default().inflate(b"not zlib"), Err(SpdyError::Compression(_))));
    }

    #[test]
    fn multiple_values_are_nul_joined_and_the_first_is_returned() {
        let h = Headers(vec![("x-stream-protocol-version".into(), "v4.channel.k8s.io\0v3.channel.k8s.io".into())]);
        assert_eq!(h.get("X-Stream-Protocol-Version"), Some("v4.channel.k8s.io"));
        assert_eq!(h.get("missing"), None);
    }
}
