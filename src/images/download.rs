//! Downloading .deb images over https, with a deadline, a size limit and an optional SHA-256.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Fetches https URLs into files.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    timeout: Duration,
    max_size: u64,
}

/// A download failure, naming the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DownloadError(pub String);

impl Downloader {
    /// A downloader trusting the system's CAs and, when given, `extra_ca` (PEM).
    pub fn new(timeout: Duration, max_size: u64, extra_ca: Option<&Path>) -> anyhow::Result<Downloader> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(path) = extra_ca {
            for c in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("reading images.download_ca_file {}: {e}", path.display()))?
            {
                let c = c.map_err(|e| anyhow::anyhow!("parsing images.download_ca_file {}: {e}", path.display()))?;
                roots.add(c).map_err(|e| anyhow::anyhow!("images.download_ca_file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(15))
            .https_only(true)
            .build()?;
        Ok(Downloader { client, timeout, max_size })
    }

    /// Downloads `url` to `dest`, returning the SHA-256 of what was written (lowercase hex).
    pub async fn fetch(&self, url: &str, dest: &Path) -> Result<String, DownloadError> {
        match tokio::time::timeout(self.timeout, self.fetch_inner(url, dest)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = tokio::fs::remove_file(dest).await;
                Err(DownloadError(format!("downloading {url}: no complete answer within {}s", self.timeout.as_secs())))
            }
        }
    }

    async fn fetch_inner(&self, url: &str, dest: &Path) -> Result<String, DownloadError> {
        let fail = |e: String| DownloadError(format!("downloading {url}: {e}"));
        let resp = self.client.get(url).send().await.map_err(|e| fail(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > self.max_size) {
            return Err(fail(format!(
                "{} bytes is more than images.download_max_size ({})",
                resp.content_length().unwrap_or(0),
                self.max_size
            )));
        }
        let mut file =
            tokio::fs::File::create(dest).await.map_err(|e| fail(format!("creating {}: {e}", dest.display())))?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(error_chain(&e)))?;
            size += chunk.len() as u64;
            if size > self.max_size {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                return Err(fail(format!("larger than images.download_max_size ({} bytes)", self.max_size)));
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| fail(format!("writing {}: {e}", dest.display())))?;
        }
        file.flush().await.map_err(|e| fail(format!("writing {}: {e}", dest.display())))?;
        Ok(hex::encode(hash.finalize()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A fresh file name for a download in `dir`.
pub fn temp_path(dir: &Path) -> PathBuf {
    let n: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    dir.join(format!("download-{}-{n}.deb", std::process::id()))
}
