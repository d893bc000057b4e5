//! An in-memory [`ObjectApi`] for tests: objects are set and deleted by the test, watches see
//! the changes; tokens are numbered and expire after the requested lifetime.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;
use tokio::sync::watch;

use super::{IssuedToken, ObjectApi};
use crate::api::PodRef;
use crate::clock::Clock;
use crate::unit::data::{Kind, ObjData, ObjKey, Token, TokenSpec};

/// Objects kept in memory.
pub struct FakeObjects {
    objects: Mutex<HashMap<ObjKey, watch::Sender<Option<ObjData>>>>,
    tokens: Mutex<Vec<(PodRef, TokenSpec)>>,
    services: Mutex<Vec<Service>>,
    clock: Clock,
}

impl FakeObjects {
    /// No objects; tokens expire on `clock`.
    pub fn new(clock: Clock) -> FakeObjects {
        FakeObjects { objects: Mutex::default(), tokens: Mutex::default(), services: Mutex::default(), clock }
    }

    fn sender(&self, key: ObjKey) -> watch::Sender<Option<ObjData>> {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Creates or replaces an object in namespace `ns` with text data.
    pub fn set(&self, kind: Kind, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data = data.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
        self.set_data(kind, ns, name, ObjData { data, ..ObjData::default() });
    }

    /// Creates or replaces an object.
    pub fn set_data(&self, kind: Kind, ns: &str, name: &str, data: ObjData) {
        let key = ObjKey { kind, namespace: ns.to_owned(), name: name.to_owned() };
        self.sender(key).send_replace(Some(data));
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) {
        let key = ObjKey { kind, namespace: ns.to_owned(), name: name.to_owned() };
        self.sender(key).send_replace(None);
    }

    /// The token requests made so far.
    pub fn token_requests(&self) -> Vec<(PodRef, TokenSpec)> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the Services.
    pub fn set_services(&self, services: Vec<Service>) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) = services;
    }

    /// Number of watches open now.
    pub fn open_watches(&self) -> usize {
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).values().map(|s| s.receiver_count()).sum()
    }
}

#[async_trait]
impl ObjectApi for FakeObjects {
    fn watch(&self, key: &ObjKey) -> BoxStream<'static, Result<Option<ObjData>, String>> {
        let rx = self.sender(key.clone()).subscribe();
        futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let v = rx.borrow_and_update().clone();
            Some((Ok(v), (rx, false)))
        })
        .boxed()
    }

    async fn request_token(&self, pod: &PodRef, spec: &TokenSpec) -> Result<IssuedToken, String> {
        let n = {
            let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            t.push((pod.clone(), spec.clone()));
            t.len()
        };
        Ok(IssuedToken {
            token: Token(format!("token-{n}-{}-{}", pod.name, spec.service_account)),
            expires: self.clock.wall() + Duration::from_secs(spec.expiration_seconds.max(0) as u64),
            ttl_secs: spec.expiration_seconds,
        })
    }

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, String> {
        let all = self.services.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(all.into_iter().filter(|s| s.metadata.namespace.as_deref() == Some(namespace)).collect())
    }
}
