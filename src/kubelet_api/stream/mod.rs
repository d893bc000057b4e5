//! Streaming endpoints of the kubelet API: `/exec/{ns}/{pod}/{container}`,
//! `/attach/{ns}/{pod}/{container}` and `/portForward/{ns}/{pod}`, each with an optional
//! trailing `/{podUID}`, over SPDY/3.1 ([`spdy`]) or WebSocket ([`websocket`]).
//!
//! [`serve`] checks the request (path, parameters, that the pod runs on this node and the
//! container is running) before upgrading, so that errors reach the client as an HTTP status
//! with a `metav1.Status` body; it then answers `101 Switching Protocols` and serves the
//! session in a task of its own. What it needs from the node comes through [`Containers`].

pub mod attach;
pub mod backend;
pub mod channels;
pub mod drive;
pub mod host;
pub mod portforward;
pub mod ports;
pub mod pty;
pub mod spdy;
pub mod spdy_io;
pub mod websocket;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub use self::backend::{ContainerUnit, Containers};
use self::channels::{Options, SPDY_VERSIONS, Version, WEBSOCKET_VERSIONS};
use self::drive::Kind;

/// The body type of the kubelet API.
pub use super::body::Body;

const PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
const ACCEPTED_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// How long after a session opened a failure to start is sent at the earliest. client-go's
/// WebSocket client (kubectl 1.30+, whether the API server passes its WebSocket through or
/// translates it to SPDY) reads the connection before it registered its streams and drops what
/// arrives first ("Unknown stream id 3, discarding message"): a failure sent at once, like an
/// executable not found, would be lost and kubectl would print "closed all streams" instead.
const EARLY_FAILURE_HOLD: Duration = Duration::from_millis(250);

/// Timeouts of streaming sessions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A session without traffic in either direction for this long is closed (the kubelet's
    /// `streamingConnectionIdleTimeout`, 4 h by default).
    pub idle_timeout: Duration,
    /// How long a SPDY client may take to open the streams of a session (30 s, as the kubelet).
    pub creation_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { idle_timeout: Duration::from_secs(4 * 3600), creation_timeout: Duration::from_secs(30) }
    }
}

/// What the streaming endpoints serve with.
#[derive(Clone)]
pub struct StreamContext {
    containers: Arc<dyn Containers>,
    limits: Limits,
}

impl StreamContext {
    /// Serves the containers of `containers`.
    pub fn new(containers: Arc<dyn Containers>, limits: Limits) -> StreamContext {
        StreamContext { containers, limits }
    }
}

/// Whether `path` is one of the streaming endpoints.
pub fn is_stream_path(path: &str) -> bool {
    ["/exec/", "/attach/", "/portForward/"].iter().any(|p| path.starts_with(p))
}

/// A request for one of the streaming endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Exec { container: String },
    Attach { container: String },
    PortForward,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    endpoint: Endpoint,
    namespace: String,
    pod: String,
    uid: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.iter().skip(1).any(|p| p.is_empty() || p.chars().any(char::is_control)) {
        return None;
    }
    let t = |endpoint, ns: &str, pod: &str, uid: Option<&&str>| Target {
        endpoint,
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        uid: uid.map(|u| (*u).to_owned()),
    };
    match parts.as_slice() {
        ["exec", ns, pod, c, rest @ ..] if rest.len() <= 1 => {
            Some(t(Endpoint::Exec { container: (*c).to_owned() }, ns, pod, rest.first()))
        }
        ["attach", ns, pod, c, rest @ ..] if rest.len() <= 1 => {
            Some(t(Endpoint::Attach { container: (*c).to_owned() }, ns, pod, rest.first()))
        }
        ["portForward", ns, pod, rest @ ..] if rest.len() <= 1 => Some(t(Endpoint::PortForward, ns, pod, rest.first())),
        _ => None,
    }
}

/// A `metav1.Status` failure response.
pub fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let message = message.into();
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).map_err(|e| match e {}).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn bad_request(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn query_values(query: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).collect()
}

fn flag(query: &str, keys: &[&str]) -> bool {
    keys.iter().any(|k| query_values(query, k).iter().any(|v| v == "1" || v.eq_ignore_ascii_case("true")))
}

/// The stream options of an exec or attach request (`input`/`stdin`, `output`/`stdout`,
/// `error`/`stderr`, `tty`; "1" or "true").
fn options(query: &str) -> Result<Options, String> {
    let tty = flag(query, &["tty"]);
    let o = Options {
        stdin: flag(query, &["input", "stdin"]),
        stdout: flag(query, &["output", "stdout"]),
        // With a terminal stderr is stdout, as the kubelet does.
        stderr: flag(query, &["error", "stderr"]) && !tty,
        tty,
    };
    if !o.stdin && !o.stdout && !o.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(o)
}

fn header_values<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

fn wants_upgrade_to(h: &HeaderMap, proto: &str) -> bool {
    header_values(h, UPGRADE.as_str()).any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(proto)))
        && header_values(h, CONNECTION.as_str()).any(|v| v.to_ascii_lowercase().contains("upgrade"))
}

fn switching(headers: &[(&http::HeaderName, String)]) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in headers {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            resp.headers_mut().append(*k, v);
        }
    }
    resp
}

/// The transport a request asked for, negotiated.
enum Transport {
    /// SPDY with this `X-Stream-Protocol-Version`.
    Spdy(&'static str),
    /// WebSocket with this subprotocol and `Sec-WebSocket-Accept`.
    WebSocket(&'static str, String),
}

fn negotiate(h: &HeaderMap, spdy: &[&'static str], ws: &[&'static str]) -> Result<Transport, Box<Response<Body>>> {
    if wants_upgrade_to(h, "websocket") {
        let key = h
            .get(SEC_WEBSOCKET_KEY)
            .ok_or_else(|| Box::new(bad_request("WebSocket upgrade without Sec-WebSocket-Key")))?;
        let Some(proto) = websocket::choose(header_values(h, SEC_WEBSOCKET_PROTOCOL.as_str()), ws) else {
            let offered: Vec<&str> = header_values(h, SEC_WEBSOCKET_PROTOCOL.as_str()).collect();
            return Err(Box::new(bad_request(format!(
                "unable to upgrade: none of the WebSocket subprotocols {offered:?} is supported; vks serves {ws:?}"
            ))));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Transport::WebSocket(proto, accept));
    }
    if wants_upgrade_to(h, spdy::UPGRADE) {
        let offered: Vec<&str> = header_values(h, PROTOCOL_VERSION)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            return Err(Box::new(bad_request(format!(
                "unable to upgrade: header {PROTOCOL_VERSION} is missing or empty"
            ))));
        }
        let Some(chosen) = offered.iter().find_map(|p| spdy.iter().copied().find(|s| s == p)) else {
            let mut resp = status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {spdy:?}"
                ),
            );
            for s in spdy {
                resp.headers_mut().append(ACCEPTED_VERSIONS, http::HeaderValue::from_static(s));
            }
            return Err(Box::new(resp));
        };
        return Ok(Transport::Spdy(chosen));
    }
    Err(Box::new(bad_request("this endpoint needs a connection upgrade to SPDY/3.1 or WebSocket")))
}

fn version(name: &str) -> Version {
    [Version::V5, Version::V4, Version::V3, Version::V2].into_iter().find(|v| v.name() == name).unwrap_or(Version::V1)
}

/// Serves one request for `/exec/`, `/attach/` or `/portForward/` (the caller authenticated and
/// authorized it).
pub async fn serve<B: Send + 'static>(mut req: Request<B>, ctx: &StreamContext) -> Response<Body> {
    let Some(target) = parse_path(req.uri().path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no streaming endpoint at {}", req.uri().path()));
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not allowed here", req.method()),
        );
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let pod_name = format!("{}/{}", target.namespace, target.pod);
    let units = match ctx.containers.pod(&target.namespace, &target.pod).await {
        Ok(u) => u,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("pod {pod_name}: {e}")),
    };
    let units: Vec<ContainerUnit> =
        units.into_iter().filter(|u| target.uid.as_ref().is_none_or(|uid| &u.meta.pod_uid == uid)).collect();
    if units.is_empty() {
        let uid = target.uid.as_ref().map(|u| format!(" with UID {u}")).unwrap_or_default();
        return status(StatusCode::NOT_FOUND, "NotFound", format!("pod {pod_name}{uid} does not run on this node"));
    }

    let (container, kind) = match &target.endpoint {
        Endpoint::PortForward => {
            let transport = match negotiate(req.headers(), &[portforward::PROTOCOL], &[websocket::TUNNEL_PROTOCOL]) {
                Ok(t) => t,
                Err(resp) => return *resp,
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let pf = Arc::new(portforward::Target { containers: ctx.containers.clone(), pod: units, name: pod_name });
            let limits = ctx.limits;
            let session_limits = spdy::Limits { idle_timeout: limits.idle_timeout, ..spdy::Limits::default() };
            let ws = matches!(transport, Transport::WebSocket(..));
            tokio::spawn(async move {
                let io = match on_upgrade.await {
                    Ok(u) => TokioIo::new(u),
                    Err(e) => return log::debug!("port-forward to {}: upgrade failed: {e}", pf.name),
                };
                let how = if ws { "tunnelled in WebSocket" } else { "over SPDY" };
                log::info!("port-forward to pod {} {how}", pf.name);
                let session = if ws {
                    spdy::Session::start(websocket::Tunnel::new(websocket::server(io).await), session_limits)
                } else {
                    spdy::Session::start(io, session_limits)
                };
                portforward::serve(session, pf, limits.creation_timeout).await;
            });
            return upgraded(transport);
        }
        Endpoint::Exec { container } => (container, Kind::Exec),
        Endpoint::Attach { container } => (container, Kind::Attach),
    };
    let Some(unit) = units.into_iter().find(|u| &u.meta.container == container) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("container {container:?} not found in pod {pod_name}"),
        );
    };
    if !unit.running {
        return bad_request(format!(
            "container {container:?} of pod {pod_name} is not running (unit {} is {})",
            unit.unit, unit.state
        ));
    }
    let options = match options(&query) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let command = query_values(&query, "command");
    if kind == Kind::Exec && command.is_empty() {
        return bad_request("exec: no command given (the command query parameter)");
    }
    let spdy_names: Vec<&'static str> = SPDY_VERSIONS.iter().map(|v| v.name()).collect();
    let ws_names: Vec<&'static str> = WEBSOCKET_VERSIONS.iter().map(|v| v.name()).collect();
    let transport = match negotiate(req.headers(), &spdy_names, &ws_names) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let containers = ctx.containers.clone();
    let limits = ctx.limits;
    let what = format!("{} in {pod_name}/{container}", if kind == Kind::Exec { "exec" } else { "attach" });
    let (ws, proto) = match &transport {
        Transport::WebSocket(p, _) => (true, *p),
        Transport::Spdy(p) => (false, *p),
    };
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return log::debug!("{what}: upgrade failed: {e}"),
        };
        let v = version(proto);
        log::info!("{what}: {command:?} over {} ({proto})", if ws { "WebSocket" } else { "SPDY" });
        let channels = if ws {
            websocket::channels(websocket::server(io).await, options, v, limits.idle_timeout)
        } else {
            let session_limits = spdy::Limits { idle_timeout: limits.idle_timeout, ..spdy::Limits::default() };
            match spdy_io::channels(spdy::Session::start(io, session_limits), options, v, limits.creation_timeout).await
            {
                Ok(c) => c,
                Err(e) => return log::info!("{what}: {e}"),
            }
        };
        run(containers, unit, command, kind, channels, &what).await;
    });
    upgraded(transport)
}

fn upgraded(transport: Transport) -> Response<Body> {
    match transport {
        Transport::Spdy(p) => switching(&[
            (&CONNECTION, "Upgrade".into()),
            (&UPGRADE, spdy::UPGRADE.into()),
            (&http::HeaderName::from_static("x-stream-protocol-version"), p.into()),
        ]),
        Transport::WebSocket(p, accept) => switching(&[
            (&CONNECTION, "Upgrade".into()),
            (&UPGRADE, "websocket".into()),
            (&SEC_WEBSOCKET_ACCEPT, accept),
            (&SEC_WEBSOCKET_PROTOCOL, p.into()),
        ]),
    }
}

/// Starts the command (or attaches) and drives it for the client.
async fn run(
    containers: Arc<dyn Containers>,
    unit: ContainerUnit,
    command: Vec<String>,
    kind: Kind,
    mut channels: channels::Channels,
    what: &str,
) {
    let opened = tokio::time::Instant::now();
    let o = channels.options;
    // kubectl sends the terminal's size right after opening the session: start with it.
    let mut first_size = None;
    if let Some(rx) = channels.resize.as_mut() {
        first_size = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.ok().flatten();
    }
    let stdio = backend::Stdio { stdin: o.stdin, stdout: o.stdout, stderr: o.stderr, tty: o.tty.then_some(first_size) };
    let started = match kind {
        Kind::Exec => containers.exec(&unit, &command, stdio).await,
        Kind::Attach => containers.attach(&unit, stdio).await,
    };
    match started {
        Ok(process) => {
            if let (Some(size), Some(t)) = (first_size, process.terminal.as_ref())
                && let Err(e) = t.resize(size)
            {
                log::debug!("{what}: setting the terminal size: {e}");
            }
            drive::drive(process, channels, kind).await;
        }
        Err(e) => {
            log::info!("{what}: {e}");
            tokio::time::sleep_until(opened + EARLY_FAILURE_HOLD).await;
            let _ = channels.out.send(channels::Out::Done(channels::Outcome::Error(e))).await;
        }
    }
}
