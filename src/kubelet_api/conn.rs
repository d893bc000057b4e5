//! One connection to the kubelet port: TLS (with a deadline), then HTTP/1.1 with upgrades,
//! bounded headers, a header read timeout and the streaming idle timeout.

use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::limits::{Activity, IdleIo, Limits};
use super::router::{App, ConnInfo};
use super::tls::{TlsState, certificate_user};
use crate::metrics::metrics;

/// How long a connection may take to finish its responses after shutdown began.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves connections of any origin: accepted on the kubelet port, or tunneled from the API
/// server. The caps on connections are applied by whoever accepts them (see
/// `KubeletServer::serve`); everything else is applied here.
#[derive(Clone)]
pub struct ConnectionHandler {
    tls: Arc<TlsState>,
    app: Arc<App>,
    limits: Limits,
    cancel: CancellationToken,
}

impl ConnectionHandler {
    pub(super) fn new(tls: Arc<TlsState>, app: Arc<App>, limits: Limits, cancel: CancellationToken) -> Self {
        ConnectionHandler { tls, app, limits, cancel }
    }

    /// Serves one connection until it closes (or shutdown); `peer` names the client
    /// (`address:port`) in logs and for the per-client stream cap.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, stream: S, peer: String) {
        let acceptor = TlsAcceptor::from(self.tls.config());
        let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                metrics().kubelet_refused("tls_error");
                log::debug!("kubelet API: TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                metrics().kubelet_refused("tls_handshake_timeout");
                log::debug!(
                    "kubelet API: no TLS handshake from {peer} within {}s; closed",
                    self.limits.tls_handshake_timeout.as_secs()
                );
                return;
            }
        };
        let cert_user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| certificate_user(c));
        let activity = Activity::new();
        tokio::spawn(activity.clone().watch(self.limits.streaming_idle_timeout));
        let info = Arc::new(ConnInfo { peer, cert_user, activity: activity.clone() });
        let io = TokioIo::new(IdleIo::new(tls, activity));
        let app = self.app.clone();
        let conn_info = info.clone();
        let service = hyper::service::service_fn(move |req| app.clone().handle(req, conn_info.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle_timeout)
            .max_header_size(self.limits.max_header_bytes)
            .serve_connection(io, service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    log::debug!("kubelet API: connection from {}: {e}", info.peer);
                }
            }
            () = self.cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
            }
        }
    }
}
