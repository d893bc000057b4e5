//! The real [`ObjectApi`]: one watch per referenced ConfigMap or Secret (list and watch with a
//! `metadata.name=<name>` field selector in its namespace: the only reads of them the Node
//! authorizer allows a node), TokenRequests bound to the pod, and a reflector of the Services
//! (the `system:node` role may list and watch them, as the kubelet does for the service links).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::ready;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};

use super::{IssuedToken, ObjectApi};
use crate::api::PodRef;
use crate::notify::Heartbeat;
use crate::unit::data::{Kind, ObjData, ObjKey, Token, TokenSpec};

/// How long a container start waits for the first list of Services before it is retried.
const SERVICES_WAIT: Duration = Duration::from_secs(5);

/// Objects read from the API server.
pub struct KubeObjects {
    requests: kube::Client,
    watches: kube::Client,
    services: Store<Service>,
}

fn config_map_data(cm: ConfigMap) -> ObjData {
    ObjData {
        data: cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        binary: cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
    }
}

fn secret_data(s: Secret) -> ObjData {
    ObjData { data: s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(), ..ObjData::default() }
}

/// A watcher's events as the states of one object: after each (re)list, whether it exists;
/// then each change.
fn states<K: Send + 'static>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    data: fn(K) -> ObjData,
) -> BoxStream<'static, Result<Option<ObjData>, String>> {
    events
        .scan(None::<Option<ObjData>>, move |listing, ev| {
            let out = match ev {
                Ok(Event::Init) => {
                    *listing = Some(None);
                    None
                }
                Ok(Event::InitApply(o)) => {
                    *listing = Some(Some(data(o)));
                    None
                }
                Ok(Event::InitDone) => Some(Ok(listing.take().flatten())),
                Ok(Event::Apply(o)) => Some(Ok(Some(data(o)))),
                Ok(Event::Delete(_)) => Some(Ok(None)),
                Err(e) => Some(Err(e.to_string())),
            };
            ready(Some(out))
        })
        .filter_map(ready)
        .boxed()
}

impl KubeObjects {
    /// Objects read with `requests` (TokenRequests) and `watches` (watches); also returns the
    /// loop that keeps the Services current, which the daemon supervises.
    pub fn new(
        requests: kube::Client,
        watches: kube::Client,
    ) -> (KubeObjects, impl Future<Output = anyhow::Result<()>> + Send + use<>) {
        let (reader, writer) = reflector::store::<Service>();
        let api: Api<Service> = Api::all(watches.clone());
        let stream =
            reflector::reflector(writer, watcher::watcher(api, watcher::Config::default())).default_backoff().boxed();
        let task = async move {
            let mut stream = stream;
            let mut failing = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) if failing => {
                        failing = false;
                        log::info!("watching Services works again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        log::warn!("watching Services (for the service links of pods): {e}; retrying");
                    }
                    Err(_) => {}
                }
            }
            anyhow::bail!("the watch of Services ended")
        };
        (KubeObjects { requests, watches, services: reader }, task)
    }

    /// Runs the Services loop `task` (from [`KubeObjects::new`]) with a heartbeat.
    pub async fn run_services(
        task: impl Future<Output = anyhow::Result<()>>,
        heartbeat: Heartbeat,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut task = std::pin::pin!(task);
        let mut beat = tokio::time::interval(Duration::from_secs(5));
        loop {
            heartbeat.beat();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = &mut task => return r,
                _ = beat.tick() => {}
            }
        }
    }
}

#[async_trait]
impl ObjectApi for KubeObjects {
    fn watch(&self, key: &ObjKey) -> BoxStream<'static, Result<Option<ObjData>, String>> {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
        match key.kind {
            Kind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.watches.clone(), &key.namespace);
                states(watcher::watcher(api, cfg).default_backoff(), config_map_data)
            }
            Kind::Secret => {
                let api: Api<Secret> = Api::namespaced(self.watches.clone(), &key.namespace);
                states(watcher::watcher(api, cfg).default_backoff(), secret_data)
            }
        }
    }

    async fn request_token(&self, pod: &PodRef, spec: &TokenSpec) -> Result<IssuedToken, String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.requests.clone(), &pod.namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: spec.audience.clone().map(|a| vec![a]),
                expiration_seconds: Some(spec.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name.clone()),
                    uid: Some(pod.uid.clone()),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let what = format!("requesting a token of service account {}/{}", pod.namespace, spec.service_account);
        let tr = api
            .create_token_request(&spec.service_account, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = tr.status.ok_or_else(|| format!("{what}: the answer has no status"))?;
        let token = status.token.ok_or_else(|| format!("{what}: the answer has no token"))?;
        let expires = status.expiration_timestamp.ok_or_else(|| format!("{what}: the answer has no expiry"))?;
        let micros = expires.0.as_microsecond().max(0) as u64;
        Ok(IssuedToken {
            token: Token(token),
            expires: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
            ttl_secs: tr.spec.and_then(|s| s.expiration_seconds).unwrap_or(spec.expiration_seconds),
        })
    }

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, String> {
        if tokio::time::timeout(SERVICES_WAIT, self.services.wait_until_ready()).await.is_err() {
            return Err("the Services have not been read yet (needed for the service links)".into());
        }
        Ok(self
            .services
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .map(|s| (*s).clone())
            .collect())
    }
}

/// The API server as pods on this node reach it: host and port of the kubeconfig's server
/// (pods use the node's network, where the `kubernetes` Service's cluster IP is not routed).
pub fn api_server_of(kubeconfig: &std::path::Path) -> Option<(String, u16)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let ctx_name = kc.current_context.clone()?;
    let ctx = kc.contexts.iter().find(|c| c.name == ctx_name)?.context.clone()?;
    let cluster = kc.clusters.iter().find(|c| c.name == ctx.cluster)?.cluster.clone()?;
    let uri: http::Uri = cluster.server?.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
    Some((host, port))
}
