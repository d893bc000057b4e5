//! The pods this node runs, as the kubelet API sees them: behind the narrow [`PodSource`] trait.
//! [`ApiPods`] reads them from the API server (pods with `spec.nodeName=<node>`); the pod
//! manager's in-memory view can implement the same trait.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// Reading the pods failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PodSourceError(pub String);

/// The pods bound to this node.
#[async_trait]
pub trait PodSource: Send + Sync + 'static {
    /// Every pod bound to this node.
    async fn list(&self) -> Result<Vec<Pod>, PodSourceError>;
    /// One pod bound to this node; `None` when there is none by that name here.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, PodSourceError>;
}

/// [`PodSource`] reading from the API server with the node's identity (which may list pods
/// only with a `spec.nodeName` field selector of its own name).
pub struct ApiPods {
    client: kube::Client,
    node: String,
}

impl ApiPods {
    /// The pods of `node`.
    pub fn new(client: kube::Client, node: String) -> ApiPods {
        ApiPods { client, node }
    }
}

#[async_trait]
impl PodSource for ApiPods {
    async fn list(&self) -> Result<Vec<Pod>, PodSourceError> {
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(|e| PodSourceError(format!("listing the pods of node {}: {e}", self.node)))?;
        Ok(pods.items)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, PodSourceError> {
        let lp = ListParams::default().fields(&format!("spec.nodeName={},metadata.name={name}", self.node));
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&lp)
            .await
            .map_err(|e| PodSourceError(format!("reading pod {namespace}/{name}: {e}")))?;
        Ok(pods.items.into_iter().next())
    }
}

/// In-memory [`PodSource`] for tests.
#[derive(Default)]
pub struct FakePods {
    /// The pods.
    pub pods: std::sync::Mutex<Vec<Pod>>,
}

#[async_trait]
impl PodSource for FakePods {
    async fn list(&self) -> Result<Vec<Pod>, PodSourceError> {
        Ok(self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, PodSourceError> {
        Ok(self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.metadata.namespace.as_deref() == Some(namespace) && p.metadata.name.as_deref() == Some(name))
            .cloned())
    }
}
