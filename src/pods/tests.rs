//! Scenario tests of the pod manager and its workers against fakes (systemd, images, the API,
//! events) with tokio's paused clock: each runs minutes of virtual time in milliseconds,
//! deterministically. The end-to-end tests (tests/e2e/pods.rs) check the same behaviour against
//! a real API server and a real systemd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::FakePodApi;
use super::{PodManager, Shared};
use crate::api::ApiHealth;
use crate::clock::Clock;
use crate::events::FakeRecorder;
use crate::images::{ImageError, ImageInfo, Images, PullEvents};
use crate::notify::Heartbeats;
use crate::policy::PullPolicy;
use crate::reason::WaitingReason;
use crate::systemd::Systemd;
use crate::systemd::fake::FakeSystemd;
use crate::unit::NodeContext;

/// Path images that exist; a pull of an image listed in `failures` fails that many times first.
#[derive(Default)]
struct FakeImages {
    failures: Mutex<HashMap<String, u32>>,
    pulls: Mutex<Vec<(String, SystemTime)>>,
    clock: Clock,
}

#[async_trait]
impl Images for FakeImages {
    async fn ensure(&self, image: &str, _: PullPolicy, _: &dyn PullEvents) -> Result<ImageInfo, ImageError> {
        self.pulls.lock().unwrap().push((image.to_owned(), self.clock.wall()));
        if let Some(n) = self.failures.lock().unwrap().get_mut(image)
            && *n > 0
        {
            *n -= 1;
            return Err(ImageError {
                reason: WaitingReason::ErrImagePull,
                message: format!("image {image:?}: E: Unable to locate package"),
            });
        }
        Ok(ImageInfo {
            entrypoint: vec![image.to_owned()],
            image_id: format!("file://{image}"),
            ..ImageInfo::default()
        })
    }
}

type PodTx = mpsc::UnboundedSender<Result<Event<Pod>, watcher::Error>>;

/// A pod manager running against fakes.
pub(super) struct World {
    pub systemd: Arc<FakeSystemd>,
    /// ConfigMaps, Secrets, tokens (issue 12).
    objects: Arc<crate::objects::fake::FakeObjects>,
    /// The pod directories (`pods/`, `run/`).
    dirs: tempfile::TempDir,
    pub api: Arc<FakePodApi>,
    pub events: Arc<FakeRecorder>,
    images: Arc<FakeImages>,
    pub prober: Arc<crate::probes::fake::FakeProber>,
    pub logs: Arc<super::termination::FakeLogs>,
    pub clock: Clock,
    /// The pod directory (a fresh one per world).
    pub pod_dir: tempfile::TempDir,
    pods: PodTx,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub(super) const START: u64 = 1_800_000_000;
/// The node-level slices the pod manager writes when it starts (they stay).
const NODE_SLICES: [&str; 3] = ["vks.slice", "vks-burstable.slice", "vks-besteffort.slice"];

impl World {
    pub(super) async fn start() -> World {
        World::start_with(Arc::new(FakeSystemd::with_clock(World::clock())), &[]).await
    }

    fn clock() -> Clock {
        Clock::following_tokio(SystemTime::UNIX_EPOCH + Duration::from_secs(START))
    }

    /// A world on `systemd`, whose first pod list (the watch's initial listing) is `initial`.
    async fn start_with(systemd: Arc<FakeSystemd>, initial: &[Pod]) -> World {
        World::start_full(systemd, Some(initial), true, &[], None).await
    }

    /// As [`World::start_with`], but the initial listing is not finished yet: the test sends
    /// `Event::InitDone` itself.
    async fn start_listing(systemd: Arc<FakeSystemd>, initial: &[Pod]) -> World {
        World::start_full(systemd, Some(initial), false, &[], None).await
    }

    /// A world whose pod watch sends nothing (an API server unreachable at start-up).
    async fn start_without_listing(systemd: Arc<FakeSystemd>) -> World {
        World::start_full(systemd, None, false, &[], None).await
    }

    /// A world whose node admits pods against `allocatable`.
    async fn start_node(
        systemd: Arc<FakeSystemd>,
        initial: &[Pod],
        allocatable: Option<crate::unit::resources::NodeAllocatable>,
    ) -> World {
        World::start_full(systemd, Some(initial), true, &[], allocatable).await
    }

    /// A world on `systemd` with the `listing` of pods (finished with `InitDone` if `finish`),
    /// or none, directories of these pod UIDs left on the node (as a crash would leave them),
    /// and allocatable to admit pods against.
    async fn start_full(
        systemd: Arc<FakeSystemd>,
        listing: Option<&[Pod]>,
        finish: bool,
        pre_existing_dirs: &[&str],
        allocatable: Option<crate::unit::resources::NodeAllocatable>,
    ) -> World {
        let clock = World::clock();
        let api = Arc::new(FakePodApi::default());
        let events = Arc::new(FakeRecorder::default());
        let images = Arc::new(FakeImages { clock, ..FakeImages::default() });
        let prober = Arc::new(crate::probes::fake::FakeProber::new(clock));
        let logs = Arc::new(super::termination::FakeLogs::default());
        let pod_dir = tempfile::tempdir().unwrap();
        let mut shared = Shared::new(
            api.clone(),
            events.clone(),
            systemd.clone(),
            images.clone(),
            clock,
            NodeContext::new("n1", "10.0.0.5"),
            pod_dir.path().to_owned(),
            Arc::new(ApiHealth::default()),
        );
        shared.is_executable = |_| true;
        if let Some(a) = allocatable {
            shared = shared.with_node_resources(a, None, true);
        }
        let dirs = tempfile::tempdir().unwrap();
        let objects = Arc::new(crate::objects::fake::FakeObjects::new(clock));
        let api_server = Some(("192.0.2.1".to_owned(), 6443));
        shared.objects = crate::objects::Objects::with_node(objects.clone(), clock, api_server, Default::default());
        shared.volumes = Arc::new(crate::volumes::Volumes::new(
            dirs.path().join("pods"),
            dirs.path().join("run"),
            Vec::new(),
            clock,
        ));
        for uid in pre_existing_dirs {
            std::fs::create_dir_all(dirs.path().join("pods").join(uid).join("volumes")).unwrap();
            std::fs::create_dir_all(dirs.path().join("run").join(uid).join("env")).unwrap();
        }
        shared.prober = prober.clone();
        shared.logs = logs.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let manager = PodManager::new(Arc::new(shared), cancel.clone(), Default::default());
        let stream = tokio_stream_of(rx);
        let hb = Heartbeats::default().register("pod manager", Duration::from_secs(30));
        let task = tokio::spawn(manager.run(stream, hb));
        if let Some(initial) = listing {
            tx.send(Ok(Event::Init)).unwrap();
            for p in initial {
                tx.send(Ok(Event::InitApply(p.clone()))).unwrap();
            }
            if finish {
                tx.send(Ok(Event::InitDone)).unwrap();
            }
        }
        World { systemd, objects, dirs, api, events, images, prober, logs, clock, pod_dir, pods: tx, cancel, task }
    }

    pub(super) fn apply(&self, pod: &Pod) {
        self.pods.send(Ok(Event::Apply(pod.clone()))).unwrap();
    }

    /// Runs the world for `d` of virtual time.
    pub(super) async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Runs the world until `f` holds (virtual deadline: 30 minutes).
    pub(super) async fn until(&self, what: &str, mut f: impl FnMut(&World) -> bool) {
        for _ in 0..18_000 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never happened: {what}");
    }

    pub(super) fn status(&self, uid: &str) -> PodStatus {
        self.api.status(uid).unwrap_or_default()
    }

    pub(super) fn container(&self, uid: &str, name: &str) -> ContainerStatus {
        let s = self.status(uid);
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten())
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn running(&self, unit: &str) -> bool {
        self.systemd.unit(unit).is_some_and(|u| u.main_pid != 0)
    }

    /// Times (seconds since the start) of the start and restart jobs of `unit`.
    pub(super) fn starts(&self, unit: &str) -> Vec<u64> {
        self.systemd
            .timed_calls()
            .into_iter()
            .filter(|c| c.what == format!("start {unit}") || c.what == format!("restart {unit}"))
            .map(|c| c.at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() - START)
            .collect()
    }

    pub(super) async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Scenarios of ConfigMaps, Secrets, tokens and volumes (issue 12).
mod data;

fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<Result<Event<Pod>, watcher::Error>>) -> super::PodEvents {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

pub(super) fn pod(name: &str, uid: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
        "spec": spec,
    }))
    .unwrap()
}

pub(super) fn unit(pod: &str, container: &str) -> String {
    crate::unit::name::unit_name("ns", pod, container)
}

pub(super) fn waiting(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

pub(super) fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

#[tokio::test(start_paused = true)]
async fn a_pod_starts_and_reports_running_and_ready() {
    let w = World::start().await;
    let p = pod("web", "u1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    w.apply(&p);
    w.until("app running", |w| is_running(&w.container("u1", "app"))).await;
    let s = w.status("u1");
    assert_eq!(s.phase.as_deref(), Some("Running"));
    let ready = s.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    let c = w.container("u1", "app");
    assert_eq!(
        c.container_id.as_deref(),
        Some(format!("systemd://{}", w.systemd.unit(&unit("web", "app")).unwrap().invocation_id).as_str())
    );
    assert_eq!(w.starts(&unit("web", "app")), [0]);
    assert!(w.events.reasons().contains(&"Started".to_owned()));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn crashing_containers_restart_with_the_kubelets_back_off() {
    let w = World::start().await;
    let p = pod("crash", "u1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/false"}]}));
    let u = unit("crash", "app");
    w.apply(&p);
    for round in 0..8 {
        w.until("the container runs again", |w| w.running(&u)).await;
        w.run_for(Duration::from_secs(1)).await;
        w.systemd.exit(&u, 1);
        if round == 2 {
            w.until("CrashLoopBackOff shown", |w| {
                waiting(&w.container("u1", "app")).as_deref() == Some("CrashLoopBackOff")
            })
            .await;
            let c = w.container("u1", "app");
            assert_eq!(c.restart_count, 2);
            assert_eq!(c.last_state.unwrap().terminated.unwrap().exit_code, 1);
        }
    }
    w.until("the last restart", |w| w.starts(&u).len() == 9).await;
    // Each run lasts 1 s: restarts follow at once, then after 10, 20, 40, 80, 160 and 300 s.
    let t = w.starts(&u);
    let gaps: Vec<u64> = t.windows(2).map(|p| p[1] - p[0] - 1).collect();
    assert_eq!(gaps, [0, 10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(w.container("u1", "app").restart_count, 8);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_the_phase() {
    let w = World::start().await;
    let ok = pod(
        "ok",
        "u1",
        serde_json::json!({"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "/bin/true"}]}),
    );
    let bad = pod(
        "bad",
        "u2",
        serde_json::json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "/bin/false"}]}),
    );
    w.apply(&ok);
    w.apply(&bad);
    w.until("both run", |w| w.running(&unit("ok", "c")) && w.running(&unit("bad", "c"))).await;
    w.systemd.exit(&unit("ok", "c"), 0);
    w.systemd.exit(&unit("bad", "c"), 3);
    w.until("both finished", |w| {
        w.status("u1").phase.as_deref() == Some("Succeeded") && w.status("u2").phase.as_deref() == Some("Failed")
    })
    .await;
    w.run_for(Duration::from_secs(60)).await;
    assert_eq!(w.starts(&unit("ok", "c")).len(), 1, "no restart after success under OnFailure");
    assert_eq!(w.starts(&unit("bad", "c")).len(), 1, "no restart under Never");
    assert_eq!(w.container("u2", "c").state.unwrap().terminated.unwrap().exit_code, 3);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_then_sidecars_then_apps() {
    let w = World::start().await;
    let p = pod(
        "order",
        "u1",
        serde_json::json!({
            "initContainers": [
                {"name": "init1", "image": "/bin/i1"},
                {"name": "side", "image": "/bin/s", "restartPolicy": "Always"},
                {"name": "init2", "image": "/bin/i2"}
            ],
            "containers": [{"name": "app", "image": "/bin/app"}]
        }),
    );
    w.apply(&p);
    w.until("init1 runs", |w| w.running(&unit("order", "init1"))).await;
    w.run_for(Duration::from_secs(5)).await;
    assert!(w.starts(&unit("order", "side")).is_empty(), "nothing starts while init1 runs");
    assert_eq!(waiting(&w.container("u1", "app")).as_deref(), Some("PodInitializing"));
    assert_eq!(w.status("u1").phase.as_deref(), Some("Pending"));
    w.systemd.exit(&unit("order", "init1"), 0);
    w.until("the sidecar runs", |w| w.running(&unit("order", "side"))).await;
    w.until("init2 runs", |w| w.running(&unit("order", "init2"))).await;
    assert!(w.starts(&unit("order", "app")).is_empty(), "the app waits for init2");
    w.systemd.exit(&unit("order", "init2"), 0);
    w.until("the app runs", |w| w.running(&unit("order", "app"))).await;
    let order: Vec<String> = w.systemd.calls().into_iter().filter(|c| c.starts_with("start ")).collect();
    let names = ["init1", "side", "init2", "app"].map(|c| format!("start {}", unit("order", c)));
    assert_eq!(order, names);
    w.until("Running", |w| w.status("u1").phase.as_deref() == Some("Running")).await;
    w.stop().await;
}

pub(super) fn deleting(mut p: Pod, grace: i64) -> Pod {
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(START as i64).unwrap(),
    ));
    p.metadata.deletion_grace_period_seconds = Some(grace);
    p
}

#[tokio::test(start_paused = true)]
async fn deletion_stops_apps_then_sidecars_and_kills_at_the_end_of_the_grace_period() {
    let w = World::start().await;
    let p = pod(
        "del",
        "u1",
        serde_json::json!({
            "initContainers": [{"name": "side", "image": "/bin/s", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "/bin/app"}]
        }),
    );
    let (app, side) = (unit("del", "app"), unit("del", "side"));
    w.apply(&p);
    w.until("both run", |w| w.running(&app) && w.running(&side)).await;
    w.systemd.ignore_sigterm(&app);
    let t0 = w.clock.wall();
    w.apply(&deleting(p, 5));
    w.until("SIGTERM to the app", |w| w.systemd.calls().iter().any(|c| c == &format!("kill {app} Main SIGTERM"))).await;
    w.run_for(Duration::from_secs(4)).await;
    assert!(w.running(&app), "the app ignores SIGTERM until the grace period ends");
    assert!(
        !w.systemd.calls().iter().any(|c| c.starts_with(&format!("kill {side} Main"))),
        "the sidecar waits for the app"
    );
    w.until("the app is killed", |w| !w.running(&app)).await;
    let killed = w.systemd.timed_calls().into_iter().find(|c| c.what == format!("kill {app} All SIGKILL")).unwrap();
    assert_eq!(killed.at.duration_since(t0).unwrap().as_secs(), 5);
    w.until("the pod object is deleted", |w| w.api.deleted().iter().any(|p| p.uid == "u1")).await;
    // The grace period is shared: what still runs at its end is killed, sidecars included.
    assert!(w.systemd.calls().iter().any(|c| c == &format!("kill {side} All SIGKILL")));
    let left: Vec<String> = w.systemd.files().into_keys().filter(|f| !NODE_SLICES.contains(&f.as_str())).collect();
    assert!(left.is_empty(), "unit files and pod slices removed: {left:?}");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sidecars_get_sigterm_once_the_apps_have_stopped() {
    let w = World::start().await;
    let p = pod(
        "del2",
        "u1",
        serde_json::json!({
            "initContainers": [{"name": "side", "image": "/bin/s", "restartPolicy": "Always"}],
            "containers": [{"name": "a", "image": "/bin/a"}, {"name": "b", "image": "/bin/b"}]
        }),
    );
    w.apply(&p);
    w.until("all run", |w| ["side", "a", "b"].iter().all(|c| w.running(&unit("del2", c)))).await;
    w.apply(&deleting(p, 30));
    w.until("the pod object is deleted", |w| w.api.deleted().iter().any(|p| p.uid == "u1")).await;
    let kills: Vec<String> = w.systemd.calls().into_iter().filter(|c| c.ends_with(" Main SIGTERM")).collect();
    let sigterm = |c: &str| format!("kill {} Main SIGTERM", unit("del2", c));
    assert_eq!(kills, [sigterm("b"), sigterm("a"), sigterm("side")], "apps (last first), then the sidecar");
    let status = w.status("u1");
    assert!(status.container_statuses.unwrap().iter().all(|c| c.state.as_ref().unwrap().terminated.is_some()));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn image_pull_failures_back_off_then_the_pod_starts() {
    let w = World::start().await;
    w.images.failures.lock().unwrap().insert("/opt/tool".into(), 3);
    let p = pod("img", "u1", serde_json::json!({"containers": [{"name": "c", "image": "/opt/tool"}]}));
    w.apply(&p);
    w.until("ErrImagePull shown", |w| waiting(&w.container("u1", "c")).as_deref() == Some("ErrImagePull")).await;
    w.until("ImagePullBackOff shown", |w| waiting(&w.container("u1", "c")).as_deref() == Some("ImagePullBackOff"))
        .await;
    w.until("running after three failures", |w| w.running(&unit("img", "c"))).await;
    let pulls: Vec<u64> = w
        .images
        .pulls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() - START)
        .collect();
    assert_eq!(pulls, [0, 10, 30, 70], "10 s, 20 s, 40 s between pulls");
    let failed =
        w.events.all().into_iter().filter(|e| e.reason == "Failed" && e.note.contains("Unable to locate")).count();
    assert_eq!(failed, 3);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn units_on_the_node_are_adopted_without_a_restart() {
    // The unit of a running pod, as an earlier vks left it.
    let systemd = Arc::new(FakeSystemd::with_clock(World::clock()));
    let mut p = pod("kept", "u1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let image =
        ImageInfo { entrypoint: vec!["/bin/app".into()], image_id: "file:///bin/app".into(), ..ImageInfo::default() };
    let c = p.spec.as_ref().unwrap().containers[0].clone();
    let node = NodeContext::new("n1", "10.0.0.5");
    let plan = crate::unit::plan(&p, &c, crate::unit::ContainerKind::App, &image, &node, &Default::default(), |_| true)
        .unwrap();
    systemd.write_unit(&plan.name, &crate::unit::render(&plan).unwrap()).await.unwrap();
    systemd.start(&plan.name).await.unwrap();
    p.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{"name": "app", "image": "/bin/app", "imageID": "file:///bin/app", "ready": true,
                "restartCount": 2, "state": {"running": {}}}]
        }))
        .unwrap(),
    );
    let w = World::start_with(systemd.clone(), std::slice::from_ref(&p)).await;
    w.until("status published", |w| is_running(&w.container("u1", "app"))).await;
    w.run_for(Duration::from_secs(120)).await;
    assert_eq!(w.starts(&plan.name).len(), 1, "only the earlier vks started it: {:?}", w.systemd.calls());
    assert_eq!(w.container("u1", "app").restart_count, 2, "{:?}", w.api.statuses("u1"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_unit_name_held_by_an_older_pod_waits_until_it_is_removed() {
    let w = World::start().await;
    let old = pod("same", "old", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let u = unit("same", "app");
    w.apply(&old);
    w.until("the old pod runs", |w| w.running(&u)).await;
    w.systemd.ignore_sigterm(&u);
    w.apply(&deleting(old, 3));
    let new = pod("same", "new", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    w.apply(&new);
    w.run_for(Duration::from_secs(2)).await;
    assert_eq!(w.starts(&u).len(), 1, "the new pod waits while the old one stops");
    let c = w.container("new", "app");
    assert!(c.state.unwrap().waiting.unwrap().message.unwrap_or_default().contains("previous pod old"));
    w.until("the new pod runs", |w| w.starts(&u).len() == 2 && w.running(&u)).await;
    assert!(w.api.deleted().iter().any(|p| p.uid == "old"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_replaced_and_drives_its_pod_again() {
    let w = World::start().await;
    let p = pod(
        "boom",
        "u1",
        serde_json::json!({"restartPolicy": "Always", "containers": [{"name": "app", "image": "/bin/app"}]}),
    );
    let u = unit("boom", "app");
    w.apply(&p);
    w.until("running", |w| w.running(&u)).await;
    w.systemd.panic_on_next_read(&u);
    // A resync makes the worker read its unit: it panics.
    w.systemd.resync();
    w.run_for(Duration::from_secs(5)).await;
    // The new worker adopted the running unit (no second start) and still drives the pod: a
    // crash is restarted.
    assert_eq!(w.starts(&u).len(), 1);
    w.systemd.exit(&u, 1);
    w.until("restarted by the new worker", |w| w.starts(&u).len() == 2 && w.running(&u)).await;
    assert_eq!(w.container("u1", "app").restart_count, 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn changes_missed_while_disconnected_are_seen_after_a_resync() {
    let w = World::start().await;
    let p = pod("lost", "u1", serde_json::json!({"containers": [{"name": "app", "image": "/bin/app"}]}));
    let u = unit("lost", "app");
    w.apply(&p);
    w.until("running", |w| w.running(&u)).await;
    w.systemd.exit_unnoticed(&u, 2);
    w.run_for(Duration::from_secs(5)).await;
    assert_eq!(w.starts(&u).len(), 1, "no signal, no reaction");
    w.systemd.resync();
    w.until("restarted after the resync", |w| w.starts(&u).len() == 2).await;
    w.stop().await;
}

mod adoption;
mod limits;

#[tokio::test(start_paused = true)]
async fn ephemeral_containers_run_once_in_their_targets_context_and_stop_with_the_pod() {
    let w = World::start().await;
    let mut p = pod(
        "dbg",
        "e1",
        serde_json::json!({"containers": [{"name": "app", "image": "/bin/app",
            "securityContext": {"runAsUser": 1000}, "env": [{"name": "GREETING", "value": "hi"}]}]}),
    );
    w.apply(&p);
    w.until("app running", |w| is_running(&w.container("e1", "app"))).await;
    let add = |p: &mut Pod, e: serde_json::Value| {
        let spec = p.spec.as_mut().unwrap();
        spec.ephemeral_containers.get_or_insert_with(Vec::new).push(serde_json::from_value(e).unwrap());
    };
    // `kubectl debug --target=app`: started at once, as the target's user with its env.
    add(
        &mut p,
        serde_json::json!({"name": "once", "image": "/bin/sh", "targetContainerName": "app", "command": ["/bin/sh", "-c", "id"]}),
    );
    w.apply(&p);
    let once = unit("dbg", "once");
    w.until("the ephemeral container runs", |w| is_running(&w.container("e1", "once"))).await;
    let file = w.systemd.files()[&once].clone();
    assert!(file.contains("ContainerType=ephemeral") && file.contains("User=1000"), "{file}");
    assert!(file.contains("GREETING=hi"), "{file}");
    let s = w.status("e1");
    let e = &s.ephemeral_container_statuses.clone().unwrap()[0];
    assert_eq!((e.name.as_str(), e.ready, e.started), ("once", false, None));
    assert!(s.container_statuses.unwrap().iter().all(|c| c.name == "app"));
    // It exits: Completed, never started again; the pod stays Running and Ready.
    let started = w.starts(&once);
    w.systemd.exit(&once, 0);
    w.until("completed", |w| {
        w.container("e1", "once")
            .state
            .and_then(|s| s.terminated)
            .is_some_and(|t| t.reason.as_deref() == Some("Completed"))
    })
    .await;
    w.run_for(Duration::from_secs(120)).await;
    assert_eq!(w.starts(&once), started, "never restarted");
    let s = w.status("e1");
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert!(s.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(w.events.all().iter().all(|e| e.reason != "FieldIgnored"), "nothing ignored: {:?}", w.events.all());

    // A second one keeps running until the pod is deleted: it is stopped with the apps.
    add(&mut p, serde_json::json!({"name": "stay", "image": "/bin/sh", "command": ["sleep", "1d"]}));
    w.apply(&p);
    let stay = unit("dbg", "stay");
    w.until("the second runs", |w| w.running(&stay)).await;
    assert!(!w.systemd.files()[&stay].contains("User=1000"), "no target: its own context");
    w.apply(&deleting(p, 30));
    w.until("the pod object is deleted", |w| w.api.deleted().iter().any(|p| p.uid == "e1")).await;
    let kills: Vec<String> = w.systemd.calls().into_iter().filter(|c| c.ends_with(" Main SIGTERM")).collect();
    assert_eq!(kills, [format!("kill {stay} Main SIGTERM"), format!("kill {} Main SIGTERM", unit("dbg", "app"))]);
    assert!(w.systemd.files().keys().all(|u| !u.starts_with("vks.ns.dbg.")), "{:?}", w.systemd.files().keys());
    w.stop().await;
}
