//! HTTP GET probes and handlers, as the kubelet's (pkg/probe/http): one shared client for every
//! probe of the node (requests are futures, not threads), no keep-alive, no proxy, HTTPS without
//! certificate verification, redirects followed on the same host only (at most 10), the
//! kubelet's `User-Agent` and `Accept` unless the spec sets them (a `Host` header sets the
//! request's host), and at most 10 KiB of the body kept for the message.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::spec::HttpGet;

/// The most of a response body kept (the kubelet's `maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// Redirects followed on the same host before the probe fails.
const MAX_REDIRECTS: usize = 10;

/// What a GET got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The start of the body (at most [`MAX_BODY`] bytes), lossily decoded.
    pub body: String,
}

/// The shared HTTP client of all probes and handlers.
#[derive(Clone)]
pub struct HttpProber {
    client: reqwest::Client,
    user_agent: HeaderValue,
}

/// Accepts any server certificate (the kubelet's `InsecureSkipVerify`); handshake signatures are
/// still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An error and its causes, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

impl HttpProber {
    /// The client.
    pub fn new() -> anyhow::Result<HttpProber> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let same_host = reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().and_then(|u| u.host_str().map(str::to_owned));
            if attempt.url().host_str() != first.as_deref() {
                attempt.stop()
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("stopped after {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(same_host)
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()?;
        let version = env!("CARGO_PKG_VERSION").split('.').take(2).collect::<Vec<_>>().join(".");
        let user_agent = HeaderValue::from_str(&format!("kube-probe/{version}"))?;
        Ok(HttpProber { client, user_agent })
    }

    fn headers(&self, h: &HttpGet) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in &h.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("invalid HTTP header name {k:?}"))?;
            let value = HeaderValue::from_str(v).map_err(|_| format!("invalid value of HTTP header {k}: {v:?}"))?;
            headers.append(name, value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.user_agent.clone());
        }
        // An empty Accept from the spec stays empty (the kubelet drops it; the client would put
        // its own `*/*` in its place).
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        if headers.get(HOST).is_some_and(|v| v.is_empty()) {
            headers.remove(HOST);
        }
        Ok(headers)
    }

    /// GETs `h`, within `timeout` when given. The error names the URL and the cause.
    pub async fn get(&self, h: &HttpGet, timeout: Option<Duration>) -> Result<Answer, String> {
        let url = h.url();
        let headers = self.headers(h)?;
        let mut req = self.client.get(&url).headers(headers);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("Get {url:?}: no answer within {}s (timeout)", timeout.unwrap_or_default().as_secs())
            } else {
                format!("Get {url:?}: {}", chain(&e))
            }
        };
        let mut resp = req.send().await.map_err(fail)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - body.len())]),
                Ok(None) => break,
                // The status decides; a body cut short (or too slow) only shortens the message.
                Err(_) => break,
            }
        }
        Ok(Answer { status, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::Scheme;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback: answers each connection with `reply(request)`.
    async fn server(reply: fn(&str) -> String) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_millis(500), l.accept()).await {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = s.write_all(reply(&req).as_bytes()).await;
                seen.push(req);
            }
            seen
        });
        (port, task)
    }

    fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpGet {
        HttpGet {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[tokio::test]
    async fn requests_carry_the_kubelets_headers_unless_the_spec_sets_them() {
        let (port, seen) =
            server(|_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".into()).await;
        let p = HttpProber::new().unwrap();
        let a = p.get(&get(port, "/healthz", &[("Host", "example.org"), ("X-Probe", "1")]), None).await.unwrap();
        assert_eq!(a, Answer { status: 200, body: "ok".into() });
        let a = p.get(&get(port, "x", &[("User-Agent", "mine"), ("Accept", "")]), None).await.unwrap();
        assert_eq!(a.status, 200);
        let seen = seen.await.unwrap();
        let first = seen[0].to_ascii_lowercase();
        assert!(first.starts_with("get /healthz http/1.1"), "{first}");
        assert!(first.contains("host: example.org\r\n"), "{first}");
        assert!(first.contains("user-agent: kube-probe/"), "{first}");
        assert!(first.contains("accept: */*\r\n") && first.contains("x-probe: 1\r\n"), "{first}");
        let second = seen[1].to_ascii_lowercase();
        assert!(second.starts_with("get /x http/1.1") && second.contains("user-agent: mine\r\n"), "{second}");
        assert!(!second.contains("accept: */*"), "{second}");
    }

    #[tokio::test]
    async fn redirects_to_another_host_are_not_followed() {
        let (port, _seen) =
            server(|_| "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:1/\r\nContent-Length: 0\r\n\r\n".into()).await;
        let a = HttpProber::new().unwrap().get(&get(port, "/", &[]), None).await.unwrap();
        assert_eq!(a.status, 302);
    }

    #[tokio::test]
    async fn errors_name_the_url() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = HttpProber::new().unwrap().get(&get(port, "/", &[]), None).await.unwrap_err();
        assert!(e.starts_with(&format!("Get \"http://127.0.0.1:{port}/\": ")), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }
}
