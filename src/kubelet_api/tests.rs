//! In-process tests of a whole connection: a real TLS handshake and HTTP/1.1 against
//! [`ConnectionHandler::serve`], with the fake reviewer, pods and systemd.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::auth::{Access, FakeReviewer, User};
use super::limits::{Limiter, Limits};
use super::pods::FakePods;
use super::router::App;
use super::tls::{CaSource, ServingIdentity, TlsState};
use super::{ConnectionHandler, logs, stats};

struct Setup {
    handler: ConnectionHandler,
    server_cert: CertificateDer<'static>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str, limits: Limits) -> Setup {
    let dir = std::env::temp_dir().join(format!("vks-kapi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let k = rcgen::generate_simple_self_signed(vec!["n1".to_owned()]).unwrap();
    let server_cert = k.cert.der().clone();
    let key = PrivateKeyDer::try_from(k.signing_key.serialize_der()).unwrap();
    let identity = Arc::new(ServingIdentity::new(vec![server_cert.clone()], key).unwrap());
    let tls = Arc::new(TlsState::new(identity, CaSource { path: dir.join("client-ca.crt"), required: false }).unwrap());
    let mut reviewer = FakeReviewer::default();
    reviewer.tokens.insert("good".into(), User::new("alice".into(), String::new(), vec![]));
    reviewer.allow.push(("alice".into(), "get".into(), "proxy".into()));
    let pods = Arc::new(FakePods::default());
    let systemd: Arc<dyn crate::systemd::Systemd> = Arc::new(crate::systemd::fake::FakeSystemd::new());
    let app = Arc::new(App {
        access: Access::new(Arc::new(reviewer), false, true),
        logs: Arc::new(logs::Logs::new(pods.clone(), Arc::new(logs::SystemdRuns(systemd.clone())))),
        stats: Arc::new(stats::Stats::new(systemd, &dir, "n1".into(), dir.clone(), dir.clone())),
        pods,
        streams: Limiter::new(usize::MAX, limits.max_streams_per_client),
        stream: crate::kubelet_api::stream::StreamContext::new(
            Arc::new(crate::kubelet_api::stream::host::HostContainers::default()),
            crate::kubelet_api::stream::Limits::default(),
        ),
        limits: limits.clone(),
    });
    let handler = ConnectionHandler::new(tls, app, limits, CancellationToken::new());
    Setup { handler, server_cert, _dir: TempDir(dir) }
}

fn limits() -> Limits {
    let cfg = crate::config::Config::from_toml(toml::Table::new(), "n1").unwrap();
    Limits::from_config(&cfg.kubelet)
}

/// Serves one connection and returns the client's TLS stream.
async fn connect(s: &Setup) -> tokio_rustls::client::TlsStream<DuplexStream> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let handler = s.handler.clone();
    tokio::spawn(async move { handler.serve(server, "10.0.0.9:5000".into()).await });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.server_cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from("n1").unwrap(), client).await.unwrap()
}

/// Sends `head` (request line and headers, without the final blank line) and returns the
/// status code and body.
async fn request(s: &Setup, head: &str) -> (u16, String) {
    let mut tls = connect(s).await;
    tls.write_all(format!("{head}\r\nHost: n1\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn requests_are_authenticated_then_served() {
    let s = setup("auth", limits());
    assert_eq!(request(&s, "GET /healthz HTTP/1.1").await, (200, "ok".into()));
    assert_eq!(request(&s, "GET /pods HTTP/1.1").await.0, 401);
    assert_eq!(request(&s, "GET /pods HTTP/1.1\r\nAuthorization: Bearer bad").await.0, 401);
    let (code, body) = request(&s, "GET /pods HTTP/1.1\r\nAuthorization: Bearer good").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");
    let (code, body) = request(&s, "GET /stats/summary HTTP/1.1\r\nAuthorization: Bearer good").await;
    assert_eq!(code, 403, "alice may not read nodes/stats: {body}");
    let (code, body) = request(&s, "GET /containerLogs/ns/p/c HTTP/1.1\r\nAuthorization: Bearer good").await;
    assert_eq!((code, body.trim()), (404, "pod ns/p does not exist"));
    assert_eq!(request(&s, "GET /nope HTTP/1.1\r\nAuthorization: Bearer good").await.0, 404);
    assert_eq!(request(&s, "POST /exec/ns/p/c HTTP/1.1\r\nAuthorization: Bearer good").await.0, 403, "create on proxy");
}

#[tokio::test]
async fn oversized_requests_are_refused_with_a_status() {
    let s = setup("sizes", limits());
    let big = format!("GET /pods HTTP/1.1\r\nAuthorization: Bearer good\r\nX-Big: {}", "a".repeat(100 << 10));
    assert_eq!(request(&s, &big).await.0, 431);
    let body = "GET /pods HTTP/1.1\r\nAuthorization: Bearer good\r\nContent-Length: 2000000";
    assert_eq!(request(&s, body).await.0, 413);
}

#[tokio::test]
async fn too_many_streams_from_one_client_get_429() {
    let s = setup("streams", Limits { max_streams_per_client: 1, ..limits() });
    // The first exec holds the client's only stream slot for as long as its connection lives.
    let mut first = connect(&s).await;
    first.write_all(b"GET /exec/ns/p/c HTTP/1.1\r\nHost: n1\r\nAuthorization: Bearer good\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 9];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 ", "the first exec is answered (the pod is unknown here), not refused");
    let (code, body) = request(&s, "GET /exec/ns/p/c HTTP/1.1\r\nAuthorization: Bearer good").await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("kubelet.max_streams_per_client = 1"), "{body}");
    drop(first);
    // The slot is released when the first connection's task sees it close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = request(&s, "GET /exec/ns/p/c HTTP/1.1\r\nAuthorization: Bearer good").await;
        if code != 429 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never released: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let s = setup("handshake", limits());
    let (mut client, server) = tokio::io::duplex(1024);
    let handler = s.handler.clone();
    let served = tokio::spawn(async move { handler.serve(server, "10.0.0.9:1".into()).await });
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!served.is_finished());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(served.is_finished(), "closed after kubelet.tls_handshake_timeout (10 s)");
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).await.unwrap(), 0);
}
