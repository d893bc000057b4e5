//! Which machine a Node belongs to. A machine that joined with a token has a node password
//! (`join::files::node_password`); the SHA-256 of it is the Node's `vks.io/node-password-hash`
//! annotation, set when vks registers (or first claims) the Node. A Node whose hash is another
//! machine's is refused ([`NodeNameTaken`]): two machines configured with the same node name
//! must not share one Node. (k3s enforces the same with its node-password Secrets, which the k3s
//! supervisor checks before it signs a node's certificates.)

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// Annotation on the Node holding the SHA-256 of the node password of the machine that
/// registered it.
pub const PASSWORD_HASH_ANNOTATION: &str = "vks.io/node-password-hash";

/// Another machine registered this node name (its node password differs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node name {node} is already taken by another machine (the node-password hash of Node {node} does not match \
     this machine's): set another [node] name, or delete Node {node} if that machine is gone"
)]
pub struct NodeNameTaken {
    /// The node name.
    pub node: String,
}

/// Who owns a Node, by its annotation.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// No Node of that name.
    NoNode,
    /// The Node has no owner annotation (registered by something else than a joined vks).
    Unclaimed,
    /// This machine.
    Us,
    /// Another machine.
    Other,
}

/// Who owns `node`, given this machine's password hash.
pub fn owner(node: Option<&Node>, hash: &str) -> Owner {
    let Some(node) = node else { return Owner::NoNode };
    match node.metadata.annotations.as_ref().and_then(|a| a.get(PASSWORD_HASH_ANNOTATION)) {
        None => Owner::Unclaimed,
        Some(h) if h == hash => Owner::Us,
        Some(_) => Owner::Other,
    }
}

/// Why [`claim`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The Node is another machine's.
    #[error(transparent)]
    Taken(#[from] NodeNameTaken),
    /// Reading or annotating the Node failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Checks that the Node `node` is free or ours, and claims an unclaimed one by annotating it.
/// A Node that does not exist yet is claimed when vks registers it.
pub async fn claim(client: &kube::Client, node: &str, hash: &str) -> Result<(), ClaimError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let existing =
        nodes.get_opt(node).await.map_err(|source| ClaimError::Api { what: format!("reading Node {node}"), source })?;
    match owner(existing.as_ref(), hash) {
        Owner::NoNode | Owner::Us => Ok(()),
        Owner::Other => Err(NodeNameTaken { node: node.to_owned() }.into()),
        Owner::Unclaimed => {
            log::warn!(node = node; "Node {node} exists without a node-password hash; claiming it for this machine");
            let patch = serde_json::json!({ "metadata": { "annotations": { PASSWORD_HASH_ANNOTATION: hash } } });
            nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| ClaimError::Api { what: format!("annotating Node {node}"), source })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotation: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.annotations =
            annotation.map(|h| [(PASSWORD_HASH_ANNOTATION.to_owned(), h.to_owned())].into_iter().collect());
        n
    }

    #[test]
    fn node_ownership_follows_the_password_hash() {
        assert_eq!(owner(None, "h"), Owner::NoNode);
        assert_eq!(owner(Some(&node(None)), "h"), Owner::Unclaimed);
        assert_eq!(owner(Some(&node(Some("h"))), "h"), Owner::Us);
        assert_eq!(owner(Some(&node(Some("x"))), "h"), Owner::Other);
        let e = NodeNameTaken { node: "n1".into() };
        assert!(e.to_string().contains("node name n1 is already taken by another machine"), "{e}");
    }
}
