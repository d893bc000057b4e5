//! Port-forward over SPDY (protocol `portforward.k8s.io`), directly or tunnelled in a WebSocket:
//! for every forwarded connection the client opens a pair of streams, `error` and `data`, both
//! with the `port` and the same `requestID` header. vks connects to the pod's port when the pair
//! is complete and copies bytes until the pod's side closes; a failure is written on the error
//! stream and both streams are reset, as the kubelet does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backend::{ContainerUnit, Containers};
use super::spdy::{self, Stream, frame::rst};

/// The SPDY protocol name of port-forward (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

/// What a port-forward session forwards to.
pub struct Target {
    /// The node.
    pub containers: Arc<dyn Containers>,
    /// The pod's containers.
    pub pod: Vec<ContainerUnit>,
    /// `namespace/name` for messages.
    pub name: String,
}

fn header_error(s: &spdy::Incoming) -> Option<String> {
    let port = s.headers.get("port").unwrap_or("");
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Some(format!("port header {port:?} is not a port (1-65535)")),
    }
    match s.headers.get("streamType") {
        Some("data" | "error") => None,
        other => Some(format!("streamType header {other:?} is neither \"data\" nor \"error\"")),
    }
}

/// The request a stream belongs to: its `requestID`, or for clients too old to send one, the
/// stream id of the pair's error stream (the data stream follows it: error id + 2).
fn request_id(s: &spdy::Incoming) -> String {
    if let Some(id) = s.headers.get("requestID").filter(|v| !v.is_empty()) {
        return id.to_owned();
    }
    match s.headers.get("streamType") {
        Some("data") => s.id.saturating_sub(2).to_string(),
        _ => s.id.to_string(),
    }
}

/// Serves port-forward streams on `session` until the client closes it.
pub async fn serve(mut session: spdy::Session, target: Arc<Target>, creation_timeout: Duration) {
    let closer = session.closer();
    let closed = closer.closed();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let (expired_tx, mut expired_rx) = mpsc::channel::<String>(16);
    loop {
        let incoming = tokio::select! {
            s = session.next_stream() => match s {
                Some(s) => s,
                None => break,
            },
            Some(id) = expired_rx.recv() => {
                if let Some(pair) = pending.remove(&id) {
                    let msg = format!("timed out after {creation_timeout:?} waiting for the streams of request {id}");
                    log::debug!("port-forward to {}: {msg}", target.name);
                    if let Some(e) = pair.error {
                        let _ = e.writer.write(Bytes::from(msg)).await;
                        let _ = e.writer.reset(rst::CANCEL).await;
                    }
                    if let Some(d) = pair.data {
                        let _ = d.writer.reset(rst::CANCEL).await;
                    }
                }
                continue;
            }
        };
        if let Some(why) = header_error(&incoming) {
            log::debug!("port-forward to {}: refusing stream {}: {why}", target.name, incoming.id);
            incoming.refuse(rst::PROTOCOL_ERROR).await;
            continue;
        }
        let id = request_id(&incoming);
        let is_data = incoming.headers.get("streamType") == Some("data");
        let Ok(stream) = incoming.accept().await else { break };
        let pair = pending.entry(id.clone()).or_insert_with(|| {
            let (tx, id) = (expired_tx.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(creation_timeout).await;
                let _ = tx.send(id).await;
            });
            Pair::default()
        });
        let slot = if is_data { &mut pair.data } else { &mut pair.error };
        if slot.is_some() {
            let kind = if is_data { "data" } else { "error" };
            log::debug!("port-forward to {}: request {id} has a second {kind} stream", target.name);
            let _ = stream.writer.reset(rst::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some()
            && pair.error.is_some()
            && let Some(Pair { data: Some(data), error: Some(error) }) = pending.remove(&id)
        {
            tokio::spawn(forward(target.clone(), data, error, closed.clone()));
        }
    }
    closer.close().await;
}

async fn forward(target: Arc<Target>, data: Stream, error: Stream, closed: CancellationToken) {
    let port: u16 = data.headers.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let Stream { reader: mut from_client, writer: to_client, .. } = data;
    let conn = match target.containers.connect(&target.pod, port).await {
        Ok(c) => c,
        Err(why) => {
            let msg = format!("error forwarding port {port} to pod {}: {why}", target.name);
            log::info!("{msg}");
            let _ = error.writer.write(Bytes::from(msg)).await;
            let _ = to_client.reset(rst::CANCEL).await;
            let _ = error.writer.reset(rst::CANCEL).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tokio::io::split(conn);
    let upstream = async move {
        while let Some(b) = from_client.recv().await {
            if to_pod.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to_client.finish().await;
    };
    let upstream = tokio::spawn(upstream);
    tokio::select! {
        () = downstream => {}
        () = closed.cancelled() => {}
    }
    upstream.abort();
    let _ = error.writer.finish().await;
}
