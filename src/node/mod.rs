//! The node's identity in the cluster: registration of the Node object, its status, and the
//! Lease heartbeat, kept true as the kubelet does (status computed every 10 s, patched when it
//! changed or every 5 minutes; Lease renewed every 10 s). An unreachable API server never stops
//! these loops: they retry with capped back-off and log state changes through [`ApiHealth`].

pub mod lease;
pub mod ownership;
pub mod status;

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiHealth, Backoff};
use crate::config::Config;
use crate::host::HostFacts;
use crate::notify::Heartbeats;
use crate::systemd::Systemd;
pub use status::{NodeIdentity, Readiness};

/// How often the node status is computed (the kubelet's `nodeStatusUpdateFrequency`).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often an unchanged status is re-sent (the kubelet's `nodeStatusReportFrequency`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// Keeps the Node object of this machine true.
pub struct NodeAgent {
    nodes: Api<Node>,
    config: Arc<Config>,
    id: NodeIdentity,
    systemd: Arc<dyn Systemd>,
    health: Arc<ApiHealth>,
    /// This machine's node-password hash, when it joined with a token: the Node carries it in
    /// the `vks.io/node-password-hash` annotation, and a Node with another hash is refused.
    password_hash: Option<String>,
    /// The daemon's loops and whether the pods were synced once: the node is Ready only when
    /// vks actually runs its pods.
    loops: Option<(Heartbeats, tokio::sync::watch::Receiver<bool>)>,
}

/// One reading of everything the status is made of.
struct Observed {
    facts: HostFacts,
    runtime_version: String,
    readiness: Readiness,
}

impl NodeAgent {
    /// A node agent; nothing is contacted until [`NodeAgent::register`].
    pub fn new(
        client: kube::Client,
        config: Arc<Config>,
        id: NodeIdentity,
        systemd: Arc<dyn Systemd>,
        health: Arc<ApiHealth>,
    ) -> NodeAgent {
        NodeAgent { nodes: Api::all(client), config, id, systemd, health, password_hash: None, loops: None }
    }

    /// Makes readiness depend on the daemon's loops: NotReady until `pods_synced` turns true
    /// (the pod manager listed this node's pods and adopted their units) and whenever one of
    /// `beats` has stalled, like the kubelet's "PLEG is not healthy".
    pub fn with_loops(mut self, beats: Heartbeats, pods_synced: tokio::sync::watch::Receiver<bool>) -> NodeAgent {
        self.loops = Some((beats, pods_synced));
        self
    }

    fn loops_readiness(&self) -> Readiness {
        let Some((beats, synced)) = &self.loops else { return Readiness::Ready };
        if !*synced.borrow() {
            return Readiness::NotReady("vks has not synced this node's pods yet".into());
        }
        let stalled = beats.stalled();
        if stalled.is_empty() {
            Readiness::Ready
        } else {
            let list: Vec<String> = stalled.iter().map(|(n, age)| format!("{n} ({}s)", age.as_secs())).collect();
            Readiness::NotReady(format!("vks loops make no progress: {}", list.join(", ")))
        }
    }

    /// Registers the Node as owned by the machine with this node-password hash.
    pub fn with_password_hash(mut self, hash: Option<String>) -> NodeAgent {
        self.password_hash = hash;
        self
    }

    /// Refuses a Node registered by another machine (see [`ownership`]).
    fn check_owner(&self, node: &Node) -> Result<()> {
        match &self.password_hash {
            Some(hash) if ownership::owner(Some(node), hash) == ownership::Owner::Other => {
                Err(ownership::NodeNameTaken { node: self.id.name.clone() }.into())
            }
            _ => Ok(()),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.id.name
    }

    async fn observe(&self) -> Result<Observed> {
        let state_dir = self.config.paths.state_dir.clone();
        let facts =
            tokio::task::spawn_blocking(move || HostFacts::read(&state_dir)).await.context("host probe task")??;
        let (runtime_version, readiness) = match self.systemd.version().await {
            Ok(v) => (v, self.loops_readiness()),
            Err(e) => ("unknown".to_owned(), Readiness::NotReady(format!("systemd is not reachable: {e}"))),
        };
        Ok(Observed { facts, runtime_version, readiness })
    }

    fn status(&self, o: &Observed, current: Option<&NodeStatus>) -> NodeStatus {
        let previous = current.and_then(|s| s.conditions.clone()).unwrap_or_default();
        status::node_status(
            &self.config,
            &self.id,
            &o.facts,
            &o.runtime_version,
            &o.readiness,
            &previous,
            Timestamp::now(),
        )
    }

    /// Creates the Node object, or brings an existing one's labels up to date. Retries until it
    /// succeeds or `cancel` fires (then returns an error).
    pub async fn register(&self, cancel: &CancellationToken) -> Result<Node> {
        let mut backoff = Backoff::new(Duration::from_secs(7));
        loop {
            match self.try_register().await {
                Ok(node) => {
                    self.health.ok();
                    self.check_owner(&node)?;
                    return Ok(node);
                }
                Err(e) if e.downcast_ref::<ownership::NodeNameTaken>().is_some() => return Err(e),
                Err(e) => self.health.report(&format!("registering node {}", self.id.name), &e),
            }
            tokio::select! {
                () = cancel.cancelled() => anyhow::bail!("shut down before node {} was registered", self.id.name),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn try_register(&self) -> Result<Node> {
        let observed = self.observe().await?;
        match self.nodes.get_opt(&self.id.name).await? {
            None => {
                let mut node = status::new_node(&self.config, &self.id, &observed.facts, self.status(&observed, None));
                if let Some(hash) = &self.password_hash {
                    node.metadata.annotations =
                        Some([(ownership::PASSWORD_HASH_ANNOTATION.to_owned(), hash.clone())].into());
                }
                match self.nodes.create(&PostParams::default(), &node).await {
                    Ok(created) => {
                        log::info!(node = self.id.name.as_str(); "registered node {}", self.id.name);
                        Ok(created)
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.nodes.get(&self.id.name).await?),
                    Err(e) => Err(e).with_context(|| format!("creating Node {}", self.id.name)),
                }
            }
            Some(existing) => {
                self.check_owner(&existing)?;
                if let Some(hash) = &self.password_hash
                    && ownership::owner(Some(&existing), hash) == ownership::Owner::Unclaimed
                {
                    let annotation = ownership::PASSWORD_HASH_ANNOTATION;
                    let patch = serde_json::json!({ "metadata": { "annotations": { annotation: hash } } });
                    self.nodes
                        .patch(&self.id.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("annotating Node {} with its node-password hash", self.id.name))?;
                }
                let labels = status::node_labels(&self.config, &observed.facts);
                let current = existing.metadata.labels.clone().unwrap_or_default();
                if labels.iter().any(|(k, v)| current.get(k) != Some(v)) {
                    let patch = serde_json::json!({ "metadata": { "labels": labels } });
                    self.nodes
                        .patch(&self.id.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("updating the labels of Node {}", self.id.name))?;
                }
                let want = status::node_taints(&self.config);
                let have = existing.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
                let key = |t: &k8s_openapi::api::core::v1::Taint| (t.key.clone(), t.value.clone(), t.effect.clone());
                let missing: Vec<_> = want.iter().filter(|w| !have.iter().any(|h| key(h) == key(w))).collect();
                if !missing.is_empty() {
                    log::warn!(
                        node = self.id.name.as_str();
                        "node {} exists without configured taints {:?}; a node may not change its own taints \
                         (NodeRestriction): add them with kubectl taint",
                        self.id.name,
                        missing.iter().map(|t| &t.key).collect::<Vec<_>>()
                    );
                }
                log::info!(node = self.id.name.as_str(); "node {} already registered", self.id.name);
                Ok(existing)
            }
        }
    }

    /// Computes the status every [`STATUS_INTERVAL`] and patches it when it changed or every
    /// [`REPORT_INTERVAL`]; re-registers the node if its object was deleted. Returns when
    /// `cancel` fires. `heartbeat` beats once per round, whatever the API server did, so the
    /// watchdog can tell the loop is alive.
    pub async fn status_loop(&self, heartbeat: crate::notify::Heartbeat, cancel: CancellationToken) -> Result<()> {
        let mut last_report: Option<Instant> = None;
        let mut interval = tokio::time::interval(STATUS_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced = self.loops.as_ref().map(|(_, s)| s.clone());
        loop {
            // A change of the pods' sync state is reported at once, not at the next interval.
            let sync_change = async {
                let changed = match synced.as_mut() {
                    Some(s) => s.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = interval.tick() => {}
                () = sync_change => {}
            }
            heartbeat.beat();
            match self.sync_status(&mut last_report).await {
                Ok(()) => self.health.ok(),
                Err(e) => self.health.report(&format!("updating the status of node {}", self.id.name), &e),
            }
        }
    }

    async fn sync_status(&self, last_report: &mut Option<Instant>) -> Result<()> {
        let observed = self.observe().await?;
        let Some(current) = self.nodes.get_opt(&self.id.name).await? else {
            log::warn!(node = self.id.name.as_str(); "Node {} was deleted; registering it again", self.id.name);
            self.try_register().await?;
            *last_report = Some(Instant::now());
            return Ok(());
        };
        let new = self.status(&observed, current.status.as_ref());
        let due = last_report.is_none_or(|t| t.elapsed() >= REPORT_INTERVAL);
        if due || status::status_changed(current.status.as_ref(), &new) {
            let patch = serde_json::json!({ "status": new });
            self.nodes
                .patch_status(&self.id.name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .with_context(|| format!("patching the status of Node {}", self.id.name))?;
            *last_report = Some(Instant::now());
            log::debug!(node = self.id.name.as_str(); "node status reported");
        }
        Ok(())
    }
}
