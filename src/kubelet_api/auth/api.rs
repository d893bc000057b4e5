//! The [`Reviewer`] that asks the API server: `TokenReview` and `SubjectAccessReview`, created
//! with the node's own identity. `system:node:<name>` may create both without any extra RBAC:
//! the Node authorizer allows them through the static node rules (the `system:node` role's
//! `tokenreviews` and `subjectaccessreviews` create rules), as for every kubelet in webhook mode.

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

use super::{Decision, ReviewError, Reviewer, User};

/// Reviews through the API server, for node `node`.
pub struct ApiReviewer {
    client: kube::Client,
    node: String,
}

impl ApiReviewer {
    /// Reviews with `client` (the node's identity) about node `node`.
    pub fn new(client: kube::Client, node: String) -> ApiReviewer {
        ApiReviewer { client, node }
    }
}

/// The SubjectAccessReview the kubelet sends for `user` doing `verb` on `nodes/<sub>/<node>`.
pub fn access_review(node: &str, user: &User, verb: &str, subresource: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(String::new()),
                version: Some("v1".to_owned()),
                resource: Some("nodes".to_owned()),
                subresource: Some(subresource.to_owned()),
                name: Some(node.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

#[async_trait]
impl Reviewer for ApiReviewer {
    async fn token(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError(format!("creating a TokenReview: {e}")))?;
        let Some(status) = answer.status else {
            return Err(ReviewError("the TokenReview came back without a status".into()));
        };
        if status.authenticated != Some(true) {
            if let Some(err) = status.error.filter(|e| !e.is_empty()) {
                log::debug!("kubelet API: token rejected: {err}");
            }
            return Ok(None);
        }
        let info = status.user.unwrap_or_default();
        let Some(name) = info.username.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let mut user = User::new(name, info.uid.unwrap_or_default(), info.groups.unwrap_or_default());
        user.extra = info.extra.unwrap_or_default();
        Ok(Some(user))
    }

    async fn access(&self, user: &User, verb: &str, subresource: &str) -> Result<Decision, ReviewError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &access_review(&self.node, user, verb, subresource))
            .await
            .map_err(|e| ReviewError(format!("creating a SubjectAccessReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if let Some(err) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            log::debug!("kubelet API: SubjectAccessReview for {} had an evaluation error: {err}", user.name);
        }
        Ok(Decision {
            allowed: status.allowed && status.denied != Some(true),
            reason: status.reason.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_review_names_the_node_and_subresource() {
        let u = User::new("alice".into(), "u1".into(), vec!["devs".into()]);
        let r = serde_json::to_value(access_review("n1", &u, "get", "proxy")).unwrap();
        assert_eq!(
            r["spec"],
            serde_json::json!({
                "user": "alice", "uid": "u1", "groups": ["devs", "system:authenticated"],
                "resourceAttributes": {
                    "verb": "get", "group": "", "version": "v1", "resource": "nodes",
                    "subresource": "proxy", "name": "n1"
                }
            })
        );
    }
}
