//! Keeping the node's certificates and the client CA bundle fresh while vks runs, without a
//! restart, the same way they were obtained.
//!
//! - The client certificate is renewed with the node's own credentials: on a k3s cluster by the
//!   supervisor (a DER CSR to `/v1-k3s/client-kubelet.crt`, authenticated with the current
//!   certificate and the token, as the k3s agent does), elsewhere with a
//!   `kube-apiserver-client-kubelet` CSR (auto-approved for `system:nodes` by the
//!   controller-manager); the kubeconfig is replaced atomically and the API clients are rebuilt
//!   from it ([`crate::api::Clients::reload`]); the agent tunnel notices and reconnects with it.
//! - The serving certificate likewise: from the supervisor, or with a `kubernetes.io/kubelet-serving`
//!   CSR (approved by the cluster operator, as for the kubelet); it is swapped into the kubelet
//!   API's TLS resolver. Until one is issued, the kubelet API serves the self-signed certificate
//!   made at start-up.
//! - The client CA bundle (`<state_dir>/client-ca.crt`) is read again every round and rewritten
//!   when it changed.
//!
//! Renewal happens at a point between 70 % and 90 % of a certificate's lifetime (fixed per
//! certificate, derived from its serial, so that nodes do not renew all at once), as the
//! kubelet's certificate manager does. The lifetime starts when the certificate was obtained
//! (its file was written) if that is later than its `notBefore`: k3s signs with the CA's
//! `notBefore`. Errors are logged and retried with capped back-off.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::files::{self, CertInfo, KeyPairPem};
use super::{JoinError, Settings, csr, k3s, written_at};
use crate::api::{Backoff, Clients};
use crate::kubelet_api::ServingIdentity;

/// When `cert` (obtained at `obtained`, if known) should be renewed: 70–90 % into its lifetime.
pub fn renew_at(cert: &CertInfo, obtained: Option<SystemTime>) -> SystemTime {
    let start = obtained.filter(|t| *t > cert.not_before && *t < cert.not_after).unwrap_or(cert.not_before);
    let lifetime = cert.not_after.duration_since(start).unwrap_or_default();
    let seed = Sha256::digest(cert.serial.as_bytes())[0];
    let fraction = 0.7 + 0.2 * f64::from(seed) / 255.0;
    start + lifetime.mul_f64(fraction)
}

/// Whether `cert` is due for renewal (or expired).
pub fn due(cert: &CertInfo, obtained: Option<SystemTime>) -> bool {
    SystemTime::now() >= renew_at(cert, obtained)
}

/// A time for log messages (RFC 3339, UTC).
pub fn show_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs as i64).map(|t| t.to_string()).unwrap_or_else(|_| format!("{secs}s"))
}

/// How long a renewal waits for its CSR.
const RENEW_CSR_WAIT: Duration = Duration::from_secs(300);
/// How long one serving CSR may wait for approval before a new one is made.
const SERVING_CSR_WAIT: Duration = Duration::from_secs(900);
/// Never sleep longer than this between checks.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Renews the client certificate with the node's current credentials and rewrites the
/// kubeconfig (same server and CA).
pub async fn renew_client(s: &Settings) -> Result<(), JoinError> {
    let text = std::fs::read_to_string(&s.kubeconfig).map_err(|source| files::FileError {
        what: "reading",
        path: s.kubeconfig.clone(),
        source,
    })?;
    let creds = files::read_kubeconfig(&s.kubeconfig).map_err(JoinError::Protocol)?;
    let ca = creds.ca_pem.clone().ok_or_else(|| {
        JoinError::Protocol(format!("kubeconfig {} has no CA for the server", s.kubeconfig.display()))
    })?;
    let key = csr::new_key()?;
    let certs_pem = if s.joined_k3s() {
        let request = csr::request_der(csr::Kind::Client, &s.node, &[], &key)?;
        supervisor(s, &ca, &creds.client)?.sign(csr::Kind::Client, request).await?
    } else {
        let client = super::client_from_kubeconfig_text(&text).await?;
        let request = csr::request(csr::Kind::Client, &s.node, &[], &key)?;
        csr::submit_and_wait(&client, &s.server, csr::Kind::Client, &s.node, &request, Some(RENEW_CSR_WAIT)).await?
    };
    let renewed = KeyPairPem { certs_pem, key_pem: csr::key_pem(&key) };
    let leaf = renewed.leaf().map_err(JoinError::Protocol)?;
    let text = files::render_kubeconfig(&creds.server, &ca, &renewed, &s.user()).map_err(JoinError::Protocol)?;
    files::write_private(&s.kubeconfig, text.as_bytes())?;
    log::info!(node = s.node.as_str(); "renewed the client certificate of node {} (valid until {})", s.node, show_time(leaf.not_after));
    Ok(())
}

/// The k3s supervisor, authenticated with the node's client certificate and the token (when it
/// can still be read), as the k3s agent asks it.
fn supervisor(s: &Settings, ca: &str, client: &KeyPairPem) -> Result<k3s::Supervisor, JoinError> {
    let token = s.read_token().ok();
    k3s::Supervisor::new(&s.server, ca, token.as_ref(), Some(client), &s.node, s.k3s_headers()?)
}

/// The serving certificate vks obtained earlier, if it is still valid. (The CSR API issues it
/// for `system:node:<name>`, k3s for `<name>`.)
pub fn stored_serving(s: &Settings) -> Option<(KeyPairPem, CertInfo)> {
    let pair = KeyPairPem::read_combined(&s.serving_path()).ok()?;
    let leaf = pair.leaf().ok()?;
    (leaf.valid_now() && (leaf.common_name == s.user() || leaf.common_name == s.node)).then_some((pair, leaf))
}

/// Requests a serving certificate with the node's credentials and stores it.
async fn request_serving(s: &Settings, client: &kube::Client) -> Result<(KeyPairPem, CertInfo), JoinError> {
    let key = csr::new_key()?;
    let certs_pem = if s.joined_k3s() {
        let creds = files::read_kubeconfig(&s.kubeconfig).map_err(JoinError::Protocol)?;
        let ca = creds.ca_pem.clone().unwrap_or_default();
        let request = csr::request_der(csr::Kind::Serving, &s.node, &s.ips, &key)?;
        supervisor(s, &ca, &creds.client)?.sign(csr::Kind::Serving, request).await?
    } else {
        let request = csr::request(csr::Kind::Serving, &s.node, &s.ips, &key)?;
        csr::submit_and_wait(client, &s.server, csr::Kind::Serving, &s.node, &request, Some(SERVING_CSR_WAIT)).await?
    };
    let pair = KeyPairPem { certs_pem, key_pem: csr::key_pem(&key) };
    let leaf = pair.leaf().map_err(JoinError::Protocol)?;
    pair.write_combined(&s.serving_path())?;
    log::info!(node = s.node.as_str(); "obtained the serving certificate of node {} (valid until {})", s.node, show_time(leaf.not_after));
    Ok((pair, leaf))
}

/// Keeps both certificates fresh until `cancel` fires. `serving` is `None` when the operator
/// configured the serving certificate (`kubelet.tls_cert_file`): vks then leaves it alone.
pub async fn maintain(
    s: Settings,
    clients: Clients,
    serving: Option<Arc<ServingIdentity>>,
    heartbeat: crate::notify::Heartbeat,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_secs(300));
    let mut installed: Option<String> = None;
    loop {
        // Every step of a pass has its own deadline (API requests, the wait for a serving CSR's
        // approval): the loop shows progress while the pass runs.
        let pass = crate::notify::beating(&heartbeat, BEAT, round(&s, &clients, serving.as_deref(), &mut installed));
        let result = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = pass => r,
        };
        let delay = match result {
            Ok(d) => {
                backoff.reset();
                d
            }
            Err(e) => {
                log::warn!(node = s.node.as_str(); "certificates of node {}: {e}", s.node);
                backoff.next_delay()
            }
        };
        // Sleep until the next renewal, showing the watchdog this loop is alive meanwhile.
        let wake = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < wake {
            heartbeat.beat();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake.min(tokio::time::Instant::now() + BEAT)) => {}
            }
        }
    }
}

/// How often the loop shows progress while it sleeps.
const BEAT: Duration = Duration::from_secs(10);

/// One pass: renew what is due, install the serving certificate; returns how long to sleep.
async fn round(
    s: &Settings,
    clients: &Clients,
    serving: Option<&ServingIdentity>,
    installed: &mut Option<String>,
) -> Result<Duration, JoinError> {
    let creds = files::read_kubeconfig(&s.kubeconfig).map_err(JoinError::Protocol)?;
    let mut leaf = creds.client.leaf().map_err(JoinError::Protocol)?;
    if due(&leaf, written_at(&s.kubeconfig)) {
        renew_client(s).await?;
        clients.reload().await.map_err(|e| JoinError::Protocol(format!("reloading the API clients: {e:#}")))?;
        let creds = files::read_kubeconfig(&s.kubeconfig).map_err(JoinError::Protocol)?;
        leaf = creds.client.leaf().map_err(JoinError::Protocol)?;
    }
    refresh_client_ca(s, clients).await?;
    let mut next = renew_at(&leaf, written_at(&s.kubeconfig));
    if let Some(identity) = serving {
        let obtained = written_at(&s.serving_path());
        let (pair, info) = match stored_serving(s).filter(|(_, info)| !due(info, obtained)) {
            Some(p) => p,
            None => request_serving(s, &clients.requests).await?,
        };
        if installed.as_deref() != Some(info.serial.as_str()) {
            identity.set(&pair).map_err(JoinError::Protocol)?;
            log::info!(node = s.node.as_str(); "kubelet API now serves certificate {} issued by {}", info.serial, info.issuer);
            *installed = Some(info.serial.clone());
        }
        next = next.min(renew_at(&info, written_at(&s.serving_path())));
    }
    let sleep = next.duration_since(SystemTime::now()).unwrap_or_default();
    Ok(sleep.clamp(Duration::from_secs(1), MAX_SLEEP))
}

/// Reads the client CA bundle again (from the supervisor, or the kubeadm way) and rewrites
/// `<state_dir>/client-ca.crt` when it changed.
async fn refresh_client_ca(s: &Settings, clients: &Clients) -> Result<(), JoinError> {
    let creds = files::read_kubeconfig(&s.kubeconfig).map_err(JoinError::Protocol)?;
    let ca = creds.ca_pem.clone().unwrap_or_default();
    let pem = if s.joined_k3s() {
        supervisor(s, &ca, &creds.client)?.client_ca().await?
    } else {
        kubeadm_client_ca(&clients.requests, &creds.server, &ca).await?
    };
    if files::write_client_ca(&s.state_dir, &pem)? {
        log::info!(node = s.node.as_str(); "client CA bundle of the kubelet API updated in {}", files::client_ca_path(&s.state_dir).display());
    }
    Ok(())
}

/// The client CA of a kubeadm-style cluster: the API server's `--client-ca-file` as published in
/// `kube-system/extension-apiserver-authentication` (key `client-ca-file`), readable by nodes
/// when the cluster grants it (the test cluster's `vks:nodes-read-client-ca`); without that
/// grant, the cluster CA (`cluster_ca`), which is the client CA too on clusters with one CA, as
/// kubeadm makes them.
pub async fn kubeadm_client_ca(client: &kube::Client, server: &str, cluster_ca: &str) -> Result<String, JoinError> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    match cms.get_opt("extension-apiserver-authentication").await {
        Ok(Some(cm)) => {
            if let Some(pem) =
                cm.data.and_then(|mut d| d.remove("client-ca-file")).filter(|p| p.contains("CERTIFICATE"))
            {
                return Ok(pem);
            }
        }
        Ok(None) => {}
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        Err(e) => return Err(super::api_error(server, "reading kube-system/extension-apiserver-authentication", e)),
    }
    log::warn!(
        "kube-system/extension-apiserver-authentication has no client-ca-file this node may read: the kubelet API \
         trusts the cluster CA for client certificates (right for clusters with a single CA, as kubeadm makes them)"
    );
    Ok(cluster_ca.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn info(serial: &str, from: u64, to: u64) -> CertInfo {
        CertInfo {
            common_name: "system:node:n1".into(),
            organizations: vec![],
            issuer: "CN=ca".into(),
            serial: serial.into(),
            not_before: UNIX_EPOCH + Duration::from_secs(from),
            not_after: UNIX_EPOCH + Duration::from_secs(to),
            sans: vec![],
        }
    }

    #[test]
    fn renewal_is_between_70_and_90_percent_of_the_lifetime() {
        for serial in ["01", "ab:cd", "7f", "ff:ee:dd"] {
            let c = info(serial, 1000, 2000);
            let at = renew_at(&c, None).duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert!((1700..=1900).contains(&at), "{serial}: {at}");
            assert_eq!(renew_at(&c, None), renew_at(&c, None), "stable");
        }
        assert!(due(&info("01", 0, 10), None), "long past");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(!due(&info("01", now - 10, now + 1_000_000), None), "fresh");
        assert!(due(&info("01", now - 1_000_000, now + 10), None), "near expiry");
    }

    #[test]
    fn the_lifetime_of_a_k3s_certificate_starts_when_it_was_obtained() {
        // k3s signs from its CA's notBefore: a certificate obtained at 10_000 with a CA from 0.
        let c = info("7f", 0, 11_000);
        let obtained = Some(UNIX_EPOCH + Duration::from_secs(10_000));
        let at = renew_at(&c, obtained).duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((10_700..=10_900).contains(&at), "{at}");
        // Without the time it was obtained, it would be due long before it was issued.
        assert!(renew_at(&c, None) < UNIX_EPOCH + Duration::from_secs(10_000));
        // A write time outside the validity is ignored.
        assert_eq!(renew_at(&c, Some(UNIX_EPOCH + Duration::from_secs(20_000))), renew_at(&c, None));
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(show_time(UNIX_EPOCH + Duration::from_secs(86_400)), "1970-01-02T00:00:00Z");
    }
}
