//! The cluster half of `vks run` (when `[cluster]` is configured): join, the kubelet port and
//! the Node's registration ([`connect_cluster`]), then the cluster's loops and the link of the
//! already running pods to the API ([`start_cluster_loops`]).

use std::sync::Arc;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::static_pods::mirror::Mirrors;

/// What connecting to the cluster gave.
pub(super) struct Cluster {
    pub(super) clients: api::Clients,
    server: KubeletServer,
    agent: Arc<NodeAgent>,
    joining: Option<join::Settings>,
    managed_serving: bool,
}

/// What links the running pods to the cluster once connected.
pub(super) struct ClusterLink {
    pub(super) pod_api: Arc<LocalPodApi>,
    pub(super) events: Arc<LocalEvents>,
    pub(super) health: Arc<ApiHealth>,
    pub(super) watch_tx: tokio::sync::oneshot::Sender<crate::pods::PodEvents>,
    pub(super) mirror_rx: tokio::sync::mpsc::UnboundedReceiver<watcher::Event<Pod>>,
    pub(super) statics: tokio::sync::watch::Receiver<Arc<crate::static_pods::Snapshot>>,
    pub(super) store: Arc<StatusStore>,
    /// The pods' objects, and the API they are read through once connected.
    pub(super) objects: Arc<crate::objects::Objects>,
    pub(super) object_api: Arc<crate::objects::Deferred>,
}

/// Joins (with the token, if configured and needed), reads the kubeconfig, binds the kubelet
/// port and registers the Node, retrying what is transient. `None` never happens but on a
/// shutdown, which the caller watches.
pub(super) async fn connect_cluster(
    config: &Arc<Config>,
    id: &NodeIdentity,
    systemd: Arc<dyn Systemd>,
    health: Arc<ApiHealth>,
    beats: &Heartbeats,
    pods_synced: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Cluster>> {
    // Shutdowns are watched by the caller; these waits just retry.
    let never = CancellationToken::new();
    let mut ips = vec![id.internal_ip];
    ips.extend(config.node.external_ip);
    let joining = join::Settings::from_config(config, ips);
    if let Some(settings) = &joining {
        notify::status(&format!("joining {}", settings.server));
        if !ensure_joined(settings, &never).await? {
            return Ok(None);
        }
    }

    let clients = api::clients_from_kubeconfig(&config.cluster.kubeconfig).await?;
    let client = clients.requests.clone();
    let mut names = vec![id.name.clone(), id.internal_ip.to_string()];
    names.extend(id.external_ip.map(|ip| ip.to_string()));
    // A joined node gets its serving certificate from the cluster (join::renew); until then,
    // or without a join, the configured files or a self-signed certificate.
    let managed_serving = joining.is_some() && config.kubelet.tls_cert_file.is_none();
    let stored = joining.as_ref().filter(|_| managed_serving).and_then(join::renew::stored_serving);
    let kubelet_deps = crate::kubelet_api::Deps {
        client: client.clone(),
        pods: Arc::new(crate::kubelet_api::pods::ApiPods::new(client.clone(), id.name.clone())),
        systemd: systemd.clone(),
        node: id.name.clone(),
        state_dir: config.paths.state_dir.clone(),
        pod_dir: config.paths.pod_dir.clone(),
    };
    let server =
        KubeletServer::bind(&config.kubelet, &names, stored.as_ref().map(|(pair, _)| pair), kubelet_deps).await?;
    log::info!("kubelet API listening on https://{}", server.local_addr()?);

    let password_hash = joining.as_ref().map(join::Settings::password_hash).transpose()?;
    let agent = Arc::new(
        NodeAgent::new(client.clone(), config.clone(), id.clone(), systemd, health)
            .with_password_hash(password_hash)
            .with_loops(beats.clone(), pods_synced),
    );
    notify::status(&format!("registering node {}", id.name));
    agent.register(&never).await?;
    Ok(Some(Cluster { clients, server, agent, joining, managed_serving }))
}

/// Starts the cluster's loops (kubelet API, Lease, node status, certificate renewal, the k3s
/// tunnel, events, mirror pods) and links the pods to the API: scheduled pods' status and
/// events go to it, and the pod manager gets the node's pod watch.
pub(super) fn start_cluster_loops(
    cluster: Cluster,
    link: ClusterLink,
    config: &Config,
    id: &NodeIdentity,
    beats: &Heartbeats,
    tasks: &mut Tasks,
    cancel: &CancellationToken,
) {
    let Cluster { clients, server, agent, joining, managed_serving } = cluster;
    let client = clients.requests.clone();
    let serving_identity = server.identity();
    // Joined through a k3s supervisor: keep the agent tunnel, served by the kubelet API's handler.
    if let Some(s) = joining.as_ref().filter(|s| s.joined_k3s()) {
        let t = crate::tunnel::Settings {
            supervisor: s.server.clone(),
            kubeconfig: s.kubeconfig.clone(),
            kubelet_port: config.kubelet.port,
            node: id.name.clone(),
        };
        let handler = Arc::new(server.handler(cancel.clone()));
        let hb = beats.register("k3s tunnel", LIMIT_TUNNEL);
        tasks.spawn("k3s tunnel", crate::tunnel::run(t, handler, Default::default(), hb, cancel.clone()));
    }
    tasks.spawn("kubelet API", server.serve(beats.register("kubelet API", LIMIT_KUBELET_API), cancel.clone()));
    tasks.spawn(
        "lease",
        LeaseKeeper::new(client.clone(), &id.name, link.health.clone())
            .run(beats.register("lease", LIMIT_LEASE), cancel.clone()),
    );
    {
        let (agent, hb, c) = (agent.clone(), beats.register("node status", LIMIT_NODE_STATUS), cancel.clone());
        tasks.spawn("node status", async move { agent.status_loop(hb, c).await });
    }
    if let Some(settings) = joining {
        let serving = managed_serving.then_some(serving_identity);
        let hb = beats.register("certificate renewal", LIMIT_RENEWAL);
        tasks.spawn(
            "certificate renewal",
            join::renew::maintain(settings, clients.clone(), serving, hb, cancel.clone()),
        );
    }
    let (sink, event_task) = crate::events::EventSink::new(client.clone(), &id.name, cancel.clone());
    tasks.spawn("events", event_task);
    link.events.connect(Arc::new(sink));
    link.pod_api.connect(KubePodApi::new(client.clone()));
    {
        use crate::objects::kube::{KubeObjects, api_server_of};
        let (objects, services) = KubeObjects::new(client.clone(), clients.watches.clone());
        let hb = beats.register("services", LIMIT_SERVICES);
        tasks.spawn("services", KubeObjects::run_services(services, hb, cancel.clone()));
        match api_server_of(&config.cluster.kubeconfig) {
            Some(a) => link.objects.set_api_server(a),
            None => log::warn!(
                "no API server address in {}: pods get no KUBERNETES_SERVICE_HOST",
                config.cluster.kubeconfig.display()
            ),
        }
        link.object_api.connect(Arc::new(objects));
    }
    {
        let mirrors = Mirrors::new(client, &id.name, link.store, link.statics, link.mirror_rx, link.health);
        tasks.spawn("mirror pods", mirrors.run(beats.register("mirror pods", LIMIT_MIRRORS), cancel.clone()));
    }
    let api: Api<Pod> = Api::all(clients.watches.clone());
    let selector = watcher::Config::default().fields(&format!("spec.nodeName={}", id.name));
    // The pod manager is already running (static pods): from now on it gets the node's pods.
    let _ = link.watch_tx.send(watcher::watcher(api, selector).default_backoff().boxed());
}
