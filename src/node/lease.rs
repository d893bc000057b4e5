//! The node Lease in `kube-node-lease`: the kubelet's heartbeat. Renewed every 10 s with a
//! 40 s duration; owned by the Node so it goes away with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiHealth, Backoff};

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` (the kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Renewal interval: a quarter of the duration, as the kubelet.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Renews the node's Lease until cancelled.
pub struct LeaseKeeper {
    leases: Api<Lease>,
    nodes: Api<Node>,
    node: String,
    health: Arc<ApiHealth>,
    last: Option<Lease>,
}

impl LeaseKeeper {
    /// A keeper for `node`'s lease.
    pub fn new(client: kube::Client, node: &str, health: Arc<ApiHealth>) -> LeaseKeeper {
        LeaseKeeper {
            leases: Api::namespaced(client.clone(), LEASE_NAMESPACE),
            nodes: Api::all(client),
            node: node.to_owned(),
            health,
            last: None,
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.node.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }
    }

    /// Renews once: updates the last known lease, or creates/fetches it.
    pub async fn renew(&mut self) -> Result<()> {
        if let Some(mut lease) = self.last.take() {
            lease.spec = Some(LeaseSpec { ..self.spec() });
            match self.leases.replace(&self.node, &PostParams::default(), &lease).await {
                Ok(l) => {
                    self.last = Some(l);
                    return Ok(());
                }
                // Someone else wrote it (or it was deleted): start over from the API's copy.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("renewing Lease {LEASE_NAMESPACE}/{}", self.node)),
            }
        }
        match self.leases.get_opt(&self.node).await.context("reading the node Lease")? {
            Some(mut lease) => {
                lease.spec = Some(self.spec());
                let l = self
                    .leases
                    .replace(&self.node, &PostParams::default(), &lease)
                    .await
                    .with_context(|| format!("renewing Lease {LEASE_NAMESPACE}/{}", self.node))?;
                self.last = Some(l);
            }
            None => {
                let node = self.nodes.get(&self.node).await.with_context(|| format!("reading Node {}", self.node))?;
                let owner = OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: self.node.clone(),
                    uid: node.metadata.uid.unwrap_or_default(),
                    ..OwnerReference::default()
                };
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.node.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: Some(vec![owner]),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec()),
                };
                let l = self
                    .leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .with_context(|| format!("creating Lease {LEASE_NAMESPACE}/{}", self.node))?;
                self.last = Some(l);
            }
        }
        Ok(())
    }

    /// Renews every [`RENEW_INTERVAL`]; after a failure retries with back-off (200 ms to 7 s).
    pub async fn run(mut self, heartbeat: crate::notify::Heartbeat, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_secs(7));
        loop {
            heartbeat.beat();
            let delay = match self.renew().await {
                Ok(()) => {
                    self.health.ok();
                    backoff.reset();
                    RENEW_INTERVAL
                }
                Err(e) => {
                    self.health.report(&format!("renewing the Lease of node {}", self.node), &e);
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
