//! TCP and gRPC probes (pkg/probe/tcp, pkg/probe/grpc): a TCP probe passes when a connection is
//! accepted within the timeout; a gRPC probe calls `grpc.health.v1.Health/Check` over plaintext
//! HTTP/2 (tonic, tonic-health) and passes when the answer is `SERVING`. Both are futures on
//! tokio: no thread or process per probe.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Outcome;
use super::spec::join_host_port;

/// Connects to `host:port` within `timeout`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Outcome::Success(String::new()),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout after {}s", timeout.as_secs())),
    }
}

/// The kubelet's gRPC probe.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, grpc_check(&addr, service)).await {
        Ok(o) => o,
        Err(_) => Outcome::Failure(format!("timeout: health rpc did not complete within {}s", timeout.as_secs())),
    }
}

async fn grpc_check(addr: &str, service: &str) -> Outcome {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(concat!("kube-probe/", env!("CARGO_PKG_VERSION"))));
    let endpoint = match endpoint {
        Ok(e) => e,
        Err(e) => return Outcome::Error(format!("address {addr}: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            return Outcome::Failure(format!("error: failed to connect service at {addr:?}: {cause}"));
        }
    };
    let mut client = HealthClient::new(channel);
    match client.check(HealthCheckRequest { service: service.to_owned() }).await {
        Ok(resp) => {
            let status = resp.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Outcome::Success("service healthy".into())
            } else {
                let name =
                    ServingStatus::try_from(status).map_or_else(|_| status.to_string(), |s| s.as_str_name().into());
                Outcome::Failure(format!("service unhealthy (responding with {name:?})"))
            }
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => Outcome::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Err(s) => Outcome::Failure(format!("error: health rpc probe failed: {}: {}", s.code(), s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probes_pass_when_a_connection_is_accepted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(tcp("127.0.0.1", port, Duration::from_secs(1)).await, Outcome::Success(String::new()));
        drop(l);
        let Outcome::Failure(m) = tcp("127.0.0.1", port, Duration::from_secs(1)).await else { panic!() };
        assert!(m.starts_with(&format!("dial tcp 127.0.0.1:{port}: ")), "{m}");
    }

    /// The real grpc.health.v1 server of tonic-health answers the probe.
    #[tokio::test]
    async fn grpc_probes_speak_grpc_health_v1() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("web", tonic_health::ServingStatus::NotServing).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let incoming = tonic::transport::server::TcpIncoming::from(l);
        let server =
            tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let t = Duration::from_secs(5);
        assert_eq!(grpc("127.0.0.1", port, "", t).await, Outcome::Success("service healthy".into()));
        assert_eq!(
            grpc("127.0.0.1", port, "web", t).await,
            Outcome::Failure("service unhealthy (responding with \"NOT_SERVING\")".into())
        );
        reporter.set_service_status("web", tonic_health::ServingStatus::Serving).await;
        assert_eq!(grpc("127.0.0.1", port, "web", t).await, Outcome::Success("service healthy".into()));
        let Outcome::Failure(m) = grpc("127.0.0.1", port, "unknown", t).await else { panic!() };
        assert!(m.starts_with("error: health rpc probe failed: "), "{m}");
        server.abort();
        let Outcome::Failure(m) = grpc("127.0.0.1", 1, "", t).await else { panic!() };
        assert!(m.starts_with("error: failed to connect service at \"127.0.0.1:1\""), "{m}");
    }
}
