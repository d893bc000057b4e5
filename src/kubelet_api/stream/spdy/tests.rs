//! Tests against bytes recorded from the Go implementation (client-go's SPDY clients and the
//! k8s.io/cri-streaming server, recorded by k3s/spdy-record into tests/testdata/spdy/).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{Codec, FLAG_FIN, Frame};
use super::headers::Headers;
use super::session::{Limits, Session};

/// A recording: (the HTTP head, the SPDY bytes after it).
pub(crate) fn recording(name: &str) -> (String, Vec<u8>) {
    let path = format!("{}/tests/testdata/spdy/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    (String::from_utf8_lossy(&raw[..end]).into_owned(), raw[end..].to_vec())
}

pub(crate) fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut codec = Codec::default();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).expect("a valid frame") {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} trailing bytes", buf.len());
    out
}

fn stream_type(f: &Frame) -> Option<(u32, String)> {
    match f {
        Frame::SynStream { stream_id, headers, .. } => Some((*stream_id, headers.get("streamType")?.to_owned())),
        _ => None,
    }
}

/// Concatenated data per stream id, and whether a FIN was seen.
fn data_of(frames: &[Frame], id: u32) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut fin = false;
    for f in frames {
        if let Frame::Data { stream_id, flags, data: d } = f
            && *stream_id == id
        {
            data.extend_from_slice(d);
            fin |= flags & FLAG_FIN != 0;
        }
    }
    (data, fin)
}

#[test]
fn the_go_client_exec_request_decodes() {
    let (head, spdy) = recording("exec-v4-pipes-exit3.c2s");
    assert!(head.starts_with("POST /exec/ns/pod/c?command=cat&error=1&input=1&output=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Upgrade: SPDY/3.1\r\n"));
    assert!(head.contains("X-Stream-Protocol-Version: v5.channel.k8s.io\r\n"));
    let frames = frames(&spdy);
    let types: Vec<(u32, String)> = frames.iter().filter_map(stream_type).collect();
    assert_eq!(
        types,
        [(1, "error".to_owned()), (3, "stdin".to_owned()), (5, "stdout".to_owned()), (7, "stderr".to_owned())]
    );
    assert_eq!(data_of(&frames, 3), (b"hello\n".to_vec(), true), "stdin, then its FIN");
}

#[test]
fn the_go_server_exec_reply_decodes() {
    let (head, spdy) = recording("exec-v4-pipes-exit3.s2c");
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"));
    let frames = frames(&spdy);
    let replies: Vec<u32> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynReply { stream_id, headers, .. } if headers.pairs().is_empty() => Some(*stream_id),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [1, 3, 5, 7]);
    assert_eq!(data_of(&frames, 5).0, b"hello\n");
    assert_eq!(data_of(&frames, 7).0, b"to stderr\n");
    let status: serde_json::Value = serde_json::from_slice(&data_of(&frames, 1).0).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
    assert!(matches!(frames.last(), Some(Frame::GoAway { .. })), "the server ends with GOAWAY");
}

#[test]
fn the_go_port_forward_exchange_decodes() {
    let (head, c2s) = recording("portforward.c2s");
    assert!(head.contains("X-Stream-Protocol-Version: portforward.k8s.io\r\n"), "{head}");
    let frames = frames(&c2s);
    let pairs: Vec<(String, String, String)> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynStream { headers, .. } => Some((
                headers.get("streamType")?.to_owned(),
                headers.get("port")?.to_owned(),
                headers.get("requestID")?.to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(pairs, [("error".into(), "8080".into(), "0".into()), ("data".into(), "8080".into(), "0".into())]);
    let (_, s2c) = recording("portforward.s2c");
    assert_eq!(data_of(&super::tests::frames(&s2c), 3).0, b"pong 8080 ping");
}

#[test]
fn frames_vks_writes_read_back_identically() {
    let mut h = Headers::new();
    h.push("streamType", "stdout");
    let all = vec![
        Frame::SynStream { stream_id: 1, associated: 0, priority: 2, flags: 0, headers: h.clone() },
        Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() },
        Frame::Headers { stream_id: 1, flags: FLAG_FIN, headers: h },
        Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"abc") },
        Frame::RstStream { stream_id: 1, status: 5 },
        Frame::Settings { entries: vec![(1, 7, 65536)] },
        Frame::Ping { id: 1 },
        Frame::GoAway { last_good: 1, status: 0 },
        Frame::WindowUpdate { stream_id: 1, delta: 10 },
    ];
    let mut enc = Codec::default();
    let mut buf = BytesMut::new();
    for f in all.clone() {
        enc.encode(f, &mut buf).unwrap();
    }
    assert_eq!(frames(&buf), all);
}

#[test]
fn oversized_and_foreign_frames_are_refused() {
    let mut c = Codec::default();
    let mut huge = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
    assert!(matches!(c.decode(&mut huge), Err(super::SpdyError::FrameTooLarge { .. })));
    let mut v2 = BytesMut::from(&[0x80u8, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
    assert!(matches!(c.decode(&mut v2), Err(super::SpdyError::Protocol(m)) if m.contains("version 2")));
    // An unknown control type is read and skipped.
    let mut unknown = BytesMut::from(&[0x80u8, 3, 0, 10, 0, 0, 0, 0][..]);
    assert_eq!(c.decode(&mut unknown).unwrap(), Some(Frame::Unknown { kind: 10 }));
}

/// Replays the Go client's bytes against vks's session with an application that behaves like
/// the recording's server (echo stdin to stdout, a line on stderr, exit code 3) and checks that
/// the Go client would get the same streams, data and status.
#[tokio::test]
async fn a_recorded_go_client_gets_the_go_servers_answers_from_vks() {
    let (_, c2s) = recording("exec-v4-pipes-exit3.c2s");
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    client_w.write_all(&c2s).await.unwrap();
    let mut session = Session::start(server, Limits::default());
    let closer = session.closer();
    let mut by_type = std::collections::HashMap::new();
    for _ in 0..4 {
        let s = session.next_stream().await.unwrap().accept().await.unwrap();
        by_type.insert(s.headers.get("streamType").unwrap().to_owned(), s);
    }
    let mut stdin = by_type.remove("stdin").unwrap();
    let mut input = Vec::new();
    while let Some(b) = stdin.reader.recv().await {
        input.extend_from_slice(&b);
    }
    let out = &by_type["stdout"].writer;
    out.write(input.into()).await.unwrap();
    out.finish().await.unwrap();
    by_type["stderr"].writer.write(Bytes::from_static(b"to stderr\n")).await.unwrap();
    by_type["stderr"].writer.finish().await.unwrap();
    let status = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
    by_type["error"].writer.write(Bytes::from_static(status)).await.unwrap();
    by_type["error"].writer.finish().await.unwrap();
    closer.close().await;
    let mut ours = Vec::new();
    client_r.read_to_end(&mut ours).await.unwrap();

    let (_, s2c) = recording("exec-v4-pipes-exit3.s2c");
    let (go, vks) = (frames(&s2c), frames(&ours));
    for id in [1, 3, 5, 7] {
        let replied =
            |fs: &[Frame]| fs.iter().any(|f| matches!(f, Frame::SynReply { stream_id, .. } if *stream_id == id));
        assert!(replied(&go) && replied(&vks), "stream {id} replied");
    }
    // The Go server ends its streams with RST_STREAM when it closes the connection; vks sends
    // FIN first. Both end the client's copy loops; the data must be the same.
    for id in [5, 7] {
        assert_eq!(data_of(&vks, id).0, data_of(&go, id).0, "stream {id}");
        assert!(data_of(&vks, id).1, "stream {id} ends with FIN");
    }
    let status =
        |fs: &[Frame]| serde_json::from_slice::<serde_json::Value>(&data_of(fs, 1).0).unwrap()["details"].clone();
    assert_eq!(status(&vks), status(&go), "status details");
    assert!(matches!(vks.last(), Some(Frame::GoAway { .. })), "{vks:#?}");
}

#[test]
#[ignore = "prints the recordings"]
fn print_recordings() {
    for name in ["exec-v4-pipes-exit3", "exec-v4-tty", "portforward"] {
        for dir in ["c2s", "s2c"] {
            let (_, b) = recording(&format!("{name}.{dir}"));
            eprintln!("== {name}.{dir}");
            for f in frames(&b) {
                eprintln!("{f:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_peer_breaking_the_protocol_gets_goaway_and_is_disconnected() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(client);
    let mut session = Session::start(server, Limits::default());
    // A control frame of SPDY version 2.
    w.write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).await.unwrap();
    assert!(session.next_stream().await.is_none(), "no streams from a broken connection");
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert_eq!(frames(&out), [Frame::GoAway { last_good: 0, status: super::frame::goaway::PROTOCOL_ERROR }]);
}

#[tokio::test]
async fn pings_from_the_client_are_echoed_and_duplicate_stream_ids_refused() {
    use tokio_util::codec::Encoder;
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(client);
    let mut session = Session::start(server, Limits::default());
    let mut enc = Codec::default();
    let mut buf = BytesMut::new();
    let mut h = Headers::new();
    h.push("streamType", "error");
    enc.encode(Frame::Ping { id: 1 }, &mut buf).unwrap();
    enc.encode(Frame::SynStream { stream_id: 1, associated: 0, priority: 0, flags: 0, headers: h.clone() }, &mut buf)
        .unwrap();
    enc.encode(Frame::SynStream { stream_id: 1, associated: 0, priority: 0, flags: 0, headers: h }, &mut buf).unwrap();
    w.write_all(&buf).await.unwrap();
    let s = session.next_stream().await.unwrap();
    assert_eq!(s.id, 1);
    let _stream = s.accept().await.unwrap();
    session.closer().close().await;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    let fs = frames(&out);
    assert!(fs.contains(&Frame::Ping { id: 1 }), "{fs:?}");
    assert!(fs.contains(&Frame::RstStream { stream_id: 1, status: super::frame::rst::STREAM_IN_USE }), "{fs:?}");
    assert!(fs.contains(&Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() }), "{fs:?}");
}
