//! Caching of review answers, with the kubelet's lifetimes (its `authentication.webhook.cacheTTL`
//! 2 min, `authorization.webhook.cacheAuthorizedTTL` 5 min and `cacheUnauthorizedTTL` 30 s).
//! Errors are never cached. Tokens are kept only as their SHA-256. Each cache holds at most
//! [`MAX_ENTRIES`]; when full, expired entries go first, then everything (a flood of distinct
//! tokens cannot grow memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Decision, ReviewError, Reviewer, User};

/// A valid token's user is kept this long.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// An invalid token is remembered this long.
pub const TOKEN_REJECTED_TTL: Duration = Duration::from_secs(30);
/// An allowed decision is kept this long.
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// A denied decision is kept this long.
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries per cache.
pub const MAX_ENTRIES: usize = 4096;

type AccessKey = (User, String, String);

struct Ttl<K, V> {
    entries: HashMap<K, (Instant, V)>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Ttl<K, V> {
    fn get(&mut self, k: &K) -> Option<V> {
        match self.entries.get(k) {
            Some((until, v)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                self.entries.remove(k);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, k: K, v: V, ttl: Duration) {
        if self.entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            self.entries.retain(|_, (until, _)| *until > now);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(k, (Instant::now() + ttl, v));
    }
}

/// A [`Reviewer`] that remembers the answers of another.
pub struct CachedReviewer {
    inner: Arc<dyn Reviewer>,
    tokens: Mutex<Ttl<[u8; 32], Option<User>>>,
    decisions: Mutex<Ttl<AccessKey, Decision>>,
}

impl CachedReviewer {
    /// Caches `inner`'s answers.
    pub fn new(inner: Arc<dyn Reviewer>) -> CachedReviewer {
        CachedReviewer {
            inner,
            tokens: Mutex::new(Ttl { entries: HashMap::new() }),
            decisions: Mutex::new(Ttl { entries: HashMap::new() }),
        }
    }
}

#[async_trait]
impl Reviewer for CachedReviewer {
    async fn token(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit);
        }
        let answer = self.inner.token(token).await?;
        let ttl = if answer.is_some() { TOKEN_TTL } else { TOKEN_REJECTED_TTL };
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).put(key, answer.clone(), ttl);
        Ok(answer)
    }

    async fn access(&self, user: &User, verb: &str, subresource: &str) -> Result<Decision, ReviewError> {
        let key = (user.clone(), verb.to_owned(), subresource.to_owned());
        if let Some(hit) = self.decisions.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit);
        }
        let d = self.inner.access(user, verb, subresource).await?;
        let ttl = if d.allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.lock().unwrap_or_else(|e| e.into_inner()).put(key, d.clone(), ttl);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::super::FakeReviewer;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_live_as_long_as_the_kubelets() {
        let mut f = FakeReviewer::default();
        f.tokens.insert("good".into(), User::new("alice".into(), String::new(), vec![]));
        f.allow.push(("alice".into(), "get".into(), "proxy".into()));
        let fake = Arc::new(f);
        let cached = CachedReviewer::new(fake.clone());
        let calls = || *fake.calls.lock().unwrap();

        let alice = cached.token("good").await.unwrap().unwrap();
        assert_eq!(cached.token("good").await.unwrap().unwrap(), alice);
        assert_eq!(cached.token("bad").await.unwrap(), None);
        assert_eq!(cached.token("bad").await.unwrap(), None);
        assert_eq!(calls().0, 2, "one review per distinct token");
        tokio::time::advance(TOKEN_REJECTED_TTL + Duration::from_secs(1)).await;
        cached.token("good").await.unwrap();
        cached.token("bad").await.unwrap();
        assert_eq!(calls().0, 3, "the rejection expired after 30 s, the user did not");
        tokio::time::advance(TOKEN_TTL).await;
        cached.token("good").await.unwrap();
        assert_eq!(calls().0, 4, "the user expired after 2 min");

        assert!(cached.access(&alice, "get", "proxy").await.unwrap().allowed);
        assert!(!cached.access(&alice, "get", "stats").await.unwrap().allowed);
        assert!(cached.access(&alice, "get", "proxy").await.unwrap().allowed);
        assert!(!cached.access(&alice, "get", "stats").await.unwrap().allowed);
        assert_eq!(calls().1, 2);
        tokio::time::advance(DENIED_TTL + Duration::from_secs(1)).await;
        cached.access(&alice, "get", "proxy").await.unwrap();
        cached.access(&alice, "get", "stats").await.unwrap();
        assert_eq!(calls().1, 3, "the denial expired, the allowance did not");
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_the_cache_is_bounded() {
        let fake = Arc::new(FakeReviewer { fail: true, ..FakeReviewer::default() });
        let cached = CachedReviewer::new(fake.clone());
        assert!(cached.token("t").await.is_err());
        assert!(cached.token("t").await.is_err());
        assert_eq!(fake.calls.lock().unwrap().0, 2);

        let cached = CachedReviewer::new(Arc::new(FakeReviewer::default()));
        for i in 0..(MAX_ENTRIES + 10) {
            cached.token(&format!("t{i}")).await.unwrap();
        }
        assert!(cached.tokens.lock().unwrap().entries.len() <= MAX_ENTRIES);
    }
}
