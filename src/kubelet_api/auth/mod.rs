//! Who may call the kubelet API, decided as the kubelet does in webhook mode.
//!
//! - Authentication: a client certificate verified against the client CA during the handshake
//!   (see `tls.rs`; CN = user, O = groups), else a bearer token checked with a TokenReview.
//!   No credentials: 401, unless `kubelet.anonymous_auth` lets them through as
//!   `system:anonymous`. `/healthz` needs none while `kubelet.healthz_anonymous` is on.
//! - Authorization: a SubjectAccessReview on `nodes/<subresource>` named after this node,
//!   verb from the HTTP method ([`verb`]), subresource from the path ([`subresources`]); a
//!   denial is 403.
//!
//! The two reviews are behind the narrow [`Reviewer`] trait: [`api::ApiReviewer`] asks the API
//! server, [`FakeReviewer`] answers from tables in unit tests. [`CachedReviewer`] keeps answers
//! as long as the kubelet does: tokens 2 min (rejections 30 s), allowed decisions 5 min, denied
//! ones 30 s.

pub mod api;
mod cache;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use cache::CachedReviewer;

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// User name, e.g. `kube-apiserver-kubelet-client`, `system:serviceaccount:ns:sa`.
    pub name: String,
    /// UID (tokens only).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (tokens only).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

impl User {
    /// A user authenticated by a credential: `system:authenticated` is added to the groups
    /// when missing (as the API server's authenticators do).
    pub fn new(name: String, uid: String, mut groups: Vec<String>) -> User {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        User { name, uid, groups, extra: BTreeMap::new() }
    }

    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }
}

/// A SubjectAccessReview's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allowed: bool,
    /// The authorizer's reason, if it gave one.
    pub reason: String,
}

/// A review could not be made (the API server did not answer, or refused to review).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

/// The two questions the kubelet API asks the cluster.
#[async_trait]
pub trait Reviewer: Send + Sync + 'static {
    /// TokenReview: the token's user, or `None` when the token is not valid.
    async fn token(&self, token: &str) -> Result<Option<User>, ReviewError>;
    /// SubjectAccessReview: may `user` do `verb` on `nodes/<subresource>` of this node?
    async fn access(&self, user: &User, verb: &str, subresource: &str) -> Result<Decision, ReviewError>;
}

/// The API verb of an HTTP method, as the kubelet maps it (HEAD is a read too).
pub fn verb(method: &http::Method) -> Option<&'static str> {
    Some(match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => return None,
    })
}

/// `path` is `prefix` or below it (`/stats` covers `/stats/summary`, not `/statsx`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The subresources of `nodes` a request to `path` is authorized against, in order: any one
/// allowing it is enough. As the kubelet with fine-grained authorization (1.33+): `/pods` and
/// `/healthz` are checked as `pods` and `healthz` first and then as `proxy`; `/stats`,
/// `/metrics`, `/logs` are `stats`, `metrics`, `log`; everything else — `/containerLogs`,
/// `/exec`, `/attach`, `/portForward` included — is `proxy`.
pub fn subresources(path: &str) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    if under(path, "/pods") || under(path, "/runningpods") {
        out.push("pods");
    } else if under(path, "/healthz") {
        out.push("healthz");
    } else if under(path, "/configz") {
        out.push("configz");
    }
    out.push(if under(path, "/stats") {
        "stats"
    } else if under(path, "/metrics") {
        "metrics"
    } else if under(path, "/logs") {
        "log"
    } else if under(path, "/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    });
    out
}

/// What the kubelet API does with a request after checking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Serve it.
    Allowed(User),
    /// 401: no usable credentials.
    Unauthenticated(String),
    /// 403: authenticated, not allowed.
    Forbidden(String),
    /// 500: a review failed.
    Failed(String),
}

/// Authentication and authorization of kubelet API requests.
pub struct Access {
    reviewer: Arc<dyn Reviewer>,
    anonymous_auth: bool,
    healthz_anonymous: bool,
}

impl Access {
    /// `reviewer` should be a [`CachedReviewer`].
    pub fn new(reviewer: Arc<dyn Reviewer>, anonymous_auth: bool, healthz_anonymous: bool) -> Access {
        Access { reviewer, anonymous_auth, healthz_anonymous }
    }

    /// Checks one request: `cert_user` from the connection's verified client certificate,
    /// `bearer` from its `Authorization: Bearer` header.
    pub async fn check(
        &self,
        method: &http::Method,
        path: &str,
        bearer: Option<&str>,
        cert_user: Option<&User>,
    ) -> Outcome {
        if self.healthz_anonymous
            && under(path, "/healthz")
            && matches!(*method, http::Method::GET | http::Method::HEAD)
        {
            return Outcome::Allowed(cert_user.cloned().unwrap_or_else(User::anonymous));
        }
        let user = match (cert_user, bearer) {
            (Some(u), _) => u.clone(),
            (None, Some(token)) => match self.reviewer.token(token).await {
                Ok(Some(u)) => u,
                Ok(None) => return Outcome::Unauthenticated("invalid bearer token".into()),
                Err(e) => {
                    log::warn!("kubelet API: TokenReview failed: {e}");
                    return Outcome::Unauthenticated(format!("the token could not be reviewed: {e}"));
                }
            },
            (None, None) if self.anonymous_auth => User::anonymous(),
            (None, None) => return Outcome::Unauthenticated("no client certificate or bearer token".into()),
        };
        let Some(verb) = verb(method) else {
            return Outcome::Forbidden(format!("Forbidden (user={}, method {} has no API verb)", user.name, method));
        };
        let subs = subresources(path);
        for sub in &subs {
            match self.reviewer.access(&user, verb, sub).await {
                Ok(d) if d.allowed => return Outcome::Allowed(user),
                Ok(_) => {}
                Err(e) => {
                    log::warn!("kubelet API: SubjectAccessReview for {} failed: {e}", user.name);
                    return Outcome::Failed(format!("authorization check failed: {e}"));
                }
            }
        }
        Outcome::Forbidden(format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource(s)=[{}])",
            user.name,
            subs.join(", ")
        ))
    }
}

/// In-memory [`Reviewer`] for tests: tokens map to users, `allow` lists
/// `(user, verb, subresource)` triples; `fail` makes every review an error. Counts calls.
#[derive(Default)]
pub struct FakeReviewer {
    /// Valid tokens.
    pub tokens: BTreeMap<String, User>,
    /// Allowed `(user name, verb, subresource)`.
    pub allow: Vec<(String, String, String)>,
    /// Every review fails.
    pub fail: bool,
    /// Reviews made so far: (token reviews, access reviews).
    pub calls: std::sync::Mutex<(u32, u32)>,
}

#[async_trait]
impl Reviewer for FakeReviewer {
    async fn token(&self, token: &str) -> Result<Option<User>, ReviewError> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        if self.fail {
            return Err(ReviewError("fake failure".into()));
        }
        Ok(self.tokens.get(token).cloned())
    }

    async fn access(&self, user: &User, verb: &str, subresource: &str) -> Result<Decision, ReviewError> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
        if self.fail {
            return Err(ReviewError("fake failure".into()));
        }
        let allowed = self.allow.iter().any(|(u, v, s)| *u == user.name && v == verb && s == subresource);
        Ok(Decision { allowed, reason: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        assert_eq!(subresources("/stats/summary"), ["stats"]);
        assert_eq!(subresources("/stats"), ["stats"]);
        assert_eq!(subresources("/statsx"), ["proxy"]);
        assert_eq!(subresources("/metrics/resource"), ["metrics"]);
        assert_eq!(subresources("/metrics"), ["metrics"]);
        assert_eq!(subresources("/logs/"), ["log"]);
        assert_eq!(subresources("/containerLogs/ns/p/c"), ["proxy"]);
        assert_eq!(subresources("/exec/ns/p/c"), ["proxy"]);
        assert_eq!(subresources("/portForward/ns/p"), ["proxy"]);
        assert_eq!(subresources("/pods"), ["pods", "proxy"]);
        assert_eq!(subresources("/healthz"), ["healthz", "proxy"]);
        assert_eq!(verb(&Method::GET), Some("get"));
        assert_eq!(verb(&Method::POST), Some("create"));
        assert_eq!(verb(&Method::OPTIONS), None);
    }

    fn fake() -> Arc<FakeReviewer> {
        let mut f = FakeReviewer::default();
        f.tokens.insert("good".into(), User::new("alice".into(), "u1".into(), vec![]));
        f.tokens.insert("weak".into(), User::new("bob".into(), "u2".into(), vec![]));
        f.allow.push(("alice".into(), "get".into(), "proxy".into()));
        f.allow.push(("alice".into(), "get".into(), "stats".into()));
        f.allow.push(("apiserver".into(), "create".into(), "proxy".into()));
        Arc::new(f)
    }

    #[tokio::test]
    async fn credentials_decide_401_403_200() {
        let access = Access::new(fake(), false, true);
        let get = Method::GET;
        let check = |path: &'static str, bearer: Option<&'static str>, cert: Option<User>| {
            let access = &access;
            let get = get.clone();
            async move { access.check(&get, path, bearer, cert.as_ref()).await }
        };
        assert!(matches!(check("/containerLogs/a/b/c", None, None).await, Outcome::Unauthenticated(_)));
        assert!(matches!(check("/stats/summary", Some("bad"), None).await, Outcome::Unauthenticated(_)));
        assert!(matches!(check("/stats/summary", Some("weak"), None).await, Outcome::Forbidden(_)));
        assert!(matches!(check("/stats/summary", Some("good"), None).await, Outcome::Allowed(u) if u.name == "alice"));
        // /pods: "pods" is denied, the "proxy" fallback allows it.
        assert!(matches!(check("/pods", Some("good"), None).await, Outcome::Allowed(_)));
        assert!(
            matches!(check("/metrics", Some("good"), None).await, Outcome::Forbidden(m) if m.contains("subresource(s)=[metrics]"))
        );
        // /healthz: anonymous allowed by configuration.
        assert!(matches!(check("/healthz", None, None).await, Outcome::Allowed(u) if u.name == "system:anonymous"));
        // A verified certificate wins over a bad token.
        let apiserver = User::new("apiserver".into(), String::new(), vec!["system:masters".into()]);
        let post = access.check(&Method::POST, "/exec/a/b/c", Some("bad"), Some(&apiserver)).await;
        assert!(matches!(post, Outcome::Allowed(u) if u.name == "apiserver"));
        assert!(matches!(access.check(&Method::OPTIONS, "/pods", Some("good"), None).await, Outcome::Forbidden(_)));
    }

    #[tokio::test]
    async fn anonymous_settings() {
        let strict = Access::new(fake(), false, false);
        assert!(matches!(strict.check(&Method::GET, "/healthz", None, None).await, Outcome::Unauthenticated(_)));
        let mut f = FakeReviewer::default();
        f.allow.push(("system:anonymous".into(), "get".into(), "healthz".into()));
        let open = Access::new(Arc::new(f), true, false);
        assert!(matches!(open.check(&Method::GET, "/healthz", None, None).await, Outcome::Allowed(_)));
        assert!(matches!(open.check(&Method::GET, "/pods", None, None).await, Outcome::Forbidden(_)));
    }

    #[tokio::test]
    async fn review_errors_are_401_for_tokens_and_500_for_decisions() {
        let f = FakeReviewer { fail: true, ..FakeReviewer::default() };
        let access = Access::new(Arc::new(f), false, true);
        assert!(matches!(access.check(&Method::GET, "/pods", Some("t"), None).await, Outcome::Unauthenticated(_)));
        let u = User::new("x".into(), String::new(), vec![]);
        assert!(matches!(access.check(&Method::GET, "/pods", None, Some(&u)).await, Outcome::Failed(_)));
    }
}
