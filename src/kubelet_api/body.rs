//! Response bodies of the kubelet API: one type throughout ([`Body`]), whole or streamed.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

/// The response body type of every kubelet API handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The sending end of a streamed body: frames go out as they are sent; dropping it ends the
/// body; an `Err` aborts the response.
pub type Sender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// A streamed body and its sender; at most `depth` frames wait in between.
pub fn channel(depth: usize) -> (Sender, Body) {
    let (tx, mut rx) = mpsc::channel(depth);
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, StreamBody::new(stream).boxed())
}

/// A plain-text response (how the kubelet answers errors).
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A response with a content type.
pub fn typed(content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

/// JSON of `value` (500 if it cannot be encoded).
pub fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(v) => typed("application/json", full(v)),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the response: {e}")),
    }
}
