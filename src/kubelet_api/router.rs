//! Every request: size limits, authentication and authorization, the per-client stream cap,
//! then the endpoint.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};

use super::auth::{Access, Outcome, User};
use super::body::{self, Body};
use super::limits::{Activity, Limiter, Limits};
use super::logs::Logs;
use super::pods::PodSource;
use super::stats::{self, Stats};
use crate::metrics::metrics;

/// What a request knows about its connection.
pub struct ConnInfo {
    /// `address:port` of the client (or what a tunnel says it is).
    pub peer: String,
    /// The user of the verified client certificate, if one was presented.
    pub cert_user: Option<User>,
    /// The connection's activity (idle timeout, held permits).
    pub activity: Arc<Activity>,
}

impl ConnInfo {
    /// The client address, without the port: what the per-client caps count by.
    pub fn client(&self) -> &str {
        match self.peer.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                host.trim_start_matches('[').trim_end_matches(']')
            }
            _ => &self.peer,
        }
    }
}

/// The endpoints and what they need.
pub struct App {
    /// Who may do what.
    pub access: Access,
    /// `/containerLogs`.
    pub logs: Arc<Logs>,
    /// `/stats/summary`, `/metrics/resource`.
    pub stats: Arc<Stats>,
    /// `/pods`.
    pub pods: Arc<dyn PodSource>,
    /// Concurrent streams per client.
    pub streams: Arc<Limiter<String>>,
    /// exec, attach and portForward.
    pub stream: super::stream::StreamContext,
    /// The limits.
    pub limits: Limits,
}

/// A body that keeps some values alive until it is dropped (the request's in-flight mark, a
/// stream permit).
struct Guarded {
    inner: Body,
    _held: Vec<Box<dyn Send + Sync>>,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request is long-running (counts against `max_streams_per_client`).
fn is_stream(path: &str, query: Option<&str>) -> bool {
    super::stream::is_stream_path(path)
        || (path.starts_with("/containerLogs/")
            && form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .any(|(k, v)| k == "follow" && matches!(&*v, "true" | "1" | "t" | "T" | "TRUE" | "True")))
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl App {
    /// Serves one request (hyper's service function).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<Body>, Infallible> {
        let in_flight = conn.activity.begin();
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let mut held: Vec<Box<dyn Send + Sync>> = vec![Box::new(in_flight)];
        let resp = self.route(req, &conn, &mut held).await;
        let code = resp.status().as_u16();
        metrics().kubelet_request(&path, code);
        log::debug!("kubelet API: {method} {path} from {} -> {code}", conn.peer);
        let (parts, inner) = resp.into_parts();
        Ok(Response::from_parts(parts, Guarded { inner, _held: held }.boxed()))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        held: &mut Vec<Box<dyn Send + Sync>>,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes)
            || (declared.is_none()
                && req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
                && !super::stream::is_stream_path(&path))
        {
            return body::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {} bytes (kubelet.max_body_bytes)", self.limits.max_body_bytes),
            );
        }
        let user = match self.access.check(req.method(), &path, bearer(&req), conn.cert_user.as_ref()).await {
            Outcome::Allowed(u) => u,
            Outcome::Unauthenticated(why) => {
                log::debug!("kubelet API: 401 for {path} from {}: {why}", conn.peer);
                return body::text(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
            Outcome::Forbidden(msg) => return body::text(StatusCode::FORBIDDEN, msg),
            Outcome::Failed(msg) => return body::text(StatusCode::INTERNAL_SERVER_ERROR, msg),
        };
        if is_stream(&path, query.as_deref()) {
            match self.streams.try_acquire(conn.client().to_owned()) {
                Ok(permit) => {
                    if super::stream::is_stream_path(&path) {
                        // An upgraded connection outlives the response: the permit goes with it.
                        conn.activity.mark_streaming();
                        conn.activity.hold(Box::new(permit));
                    } else {
                        held.push(Box::new(permit));
                    }
                }
                Err(_) => {
                    return body::text(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many concurrent streams from {} (kubelet.max_streams_per_client = {})",
                            conn.client(),
                            self.limits.max_streams_per_client
                        ),
                    );
                }
            }
        }
        log::trace!("kubelet API: {} {path} as {}", req.method(), user.name);
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match path.as_str() {
            _ if super::stream::is_stream_path(&path) => super::stream::serve(req, &self.stream).await,
            // "ok" without a newline, as the kubelet.
            "/healthz" if get => body::typed("text/plain; charset=utf-8", body::full("ok")),
            "/pods" | "/pods/" if get => self.pods_list().await,
            "/stats/summary" | "/stats/summary/" if get => self.summary().await,
            "/metrics/resource" | "/metrics/resource/" if get => self.resource().await,
            "/metrics" if get => body::typed(crate::metrics::CONTENT_TYPE, body::full(crate::metrics::encode())),
            p if get && p.starts_with("/containerLogs/") => {
                self.logs.serve(&p["/containerLogs/".len()..], query.as_deref()).await
            }
            "/healthz" | "/pods" | "/stats/summary" | "/metrics/resource" | "/metrics" => {
                body::text(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}", req.method()))
            }
            _ => body::text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    async fn pods_list(&self) -> Response<Body> {
        match self.pods.list().await {
            Ok(items) => body::json(&serde_json::json!({
                "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items
            })),
            Err(e) => body::text(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        }
    }

    async fn summary(&self) -> Response<Body> {
        match self.stats.sample(true).await {
            Ok(s) => body::json(&stats::Summary::new(&self.stats, &s)),
            Err(e) => body::text(StatusCode::INTERNAL_SERVER_ERROR, format!("collecting stats: {e:#}")),
        }
    }

    async fn resource(&self) -> Response<Body> {
        match self.stats.sample(false).await {
            Ok(s) => body::typed(stats::resource::CONTENT_TYPE, body::full(stats::resource::render(&s))),
            Err(e) => body::text(StatusCode::INTERNAL_SERVER_ERROR, format!("collecting stats: {e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_clients_are_recognised() {
        assert!(is_stream("/exec/a/b/c", Some("command=ls")));
        assert!(is_stream("/portForward/a/b", None));
        assert!(is_stream("/containerLogs/a/b/c", Some("tailLines=1&follow=true")));
        assert!(!is_stream("/containerLogs/a/b/c", Some("follow=false")));
        assert!(!is_stream("/stats/summary", None));
        let info = |peer: &str| ConnInfo { peer: peer.into(), cert_user: None, activity: Activity::new() };
        assert_eq!(info("127.0.0.1:4000").client(), "127.0.0.1");
        assert_eq!(info("[::1]:4000").client(), "::1");
        assert_eq!(info("tunnel").client(), "tunnel");
    }
}
