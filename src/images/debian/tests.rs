//! Tests of [`super::DebianImages`] against the fake package manager and systemd.

use super::*;
use crate::images::apt::FakeApt;
use crate::systemd::fake::FakeSystemd;
use crate::unit::Arg;

#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl PullEvents for Recorded {
    fn normal(&self, reason: &str, note: String) {
        self.0.lock().unwrap().push(format!("{reason}: {note}"));
    }
}

impl Recorded {
    fn reasons(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|e| e.split(':').next().unwrap_or("").to_owned()).collect()
    }
}

fn images(apt: Arc<FakeApt>, sd: Arc<FakeSystemd>, dir: &Path) -> DebianImages {
    let aliases = BTreeMap::from([("busybox:1.36".to_owned(), "tool".to_owned())]);
    let settings = Settings {
        aliases,
        sources: Vec::new(),
        sources_dir: dir.join("sources"),
        download_dir: dir.join("downloads"),
    };
    DebianImages::new(apt, sd, None, settings)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vks-images-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("sources")).unwrap();
    d
}

#[tokio::test]
async fn pull_policies() {
    let dir = tmp("policies");
    let apt = Arc::new(FakeApt::default());
    apt.publish("tool", &["1.0", "2.0"], &[]);
    let sd = Arc::new(FakeSystemd::new());
    let imgs = images(apt.clone(), sd, &dir);
    let ev = Recorded::default();

    let e = imgs.ensure("tool", PullPolicy::Never, &ev).await.unwrap_err();
    assert_eq!(e.reason, WaitingReason::ErrImageNeverPull);
    assert!(e.message.contains("package tool is not installed"), "{}", e.message);

    let info = imgs.ensure("tool=1.0", PullPolicy::IfNotPresent, &ev).await.unwrap();
    assert_eq!(info.image_id, "deb://tool=1.0");
    assert!(info.no_command.as_deref().unwrap().contains("ships no systemd service"));
    assert_eq!(ev.reasons(), ["Pulling", "Pulled"]);
    // Present at the pinned version: nothing installed.
    imgs.ensure("tool:1.0", PullPolicy::IfNotPresent, &ev).await.unwrap();
    assert_eq!(apt.calls(), ["install tool=1.0"]);
    // Always upgrades to the candidate; the alias maps a container image name.
    let info = imgs.ensure("busybox:1.36", PullPolicy::Always, &ev).await.unwrap();
    assert_eq!(info.image_id, "deb://tool=2.0");
    assert_eq!(imgs.ensure("tool", PullPolicy::Never, &ev).await.unwrap().image_id, "deb://tool=2.0");
    let e = imgs.ensure("tool=1.0", PullPolicy::Never, &ev).await.unwrap_err();
    assert!(e.message.contains("installed at 2.0, not 1.0"), "{}", e.message);
}

#[tokio::test]
async fn unknown_packages_and_versions_update_once_and_fail_with_apts_line() {
    let dir = tmp("unknown");
    let apt = Arc::new(FakeApt::default());
    apt.publish("tool", &["1.0"], &[]);
    let imgs = images(apt.clone(), Arc::new(FakeSystemd::new()), &dir);
    let ev = Recorded::default();
    let e = imgs.ensure("nope", PullPolicy::IfNotPresent, &ev).await.unwrap_err();
    assert_eq!(e.reason, WaitingReason::ErrImagePull);
    assert!(e.message.contains("E: Unable to locate package nope"), "{}", e.message);
    let e = imgs.ensure("tool=9.9", PullPolicy::IfNotPresent, &ev).await.unwrap_err();
    assert!(e.message.contains("Version '9.9' for 'tool' was not found"), "{}", e.message);
    assert_eq!(
        apt.calls(),
        ["install nope", "update", "install nope", "install tool=9.9", "update", "install tool=9.9"]
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_install() {
    let dir = tmp("race");
    let apt = Arc::new(FakeApt::default());
    apt.publish("tool", &["1.0"], &[]);
    apt.set_install_time(Duration::from_millis(200));
    let imgs = Arc::new(images(apt.clone(), Arc::new(FakeSystemd::new()), &dir));
    let ev = Arc::new(Recorded::default());
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (imgs, ev) = (imgs.clone(), ev.clone());
            tokio::spawn(async move { imgs.ensure("tool", PullPolicy::Always, &*ev).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().image_id, "deb://tool=1.0");
    }
    assert_eq!(apt.calls(), ["install tool"]);
}

#[tokio::test]
async fn packaged_units_are_the_base_and_taken_over_only_when_vks_installed_them() {
    let dir = tmp("units");
    let unit = dir.join("daemon.service");
    std::fs::write(&unit, "[Service]\nType=notify\nExecStart=/usr/sbin/daemon -f $OPTS\nUser=daemon\nRestart=always\n")
        .unwrap();
    let apt = Arc::new(FakeApt::default());
    apt.publish("daemon", &["1.0"], &[unit.to_str().unwrap()]);
    let old_unit = dir.join("old.service");
    std::fs::write(&old_unit, "[Service]\nExecStart=/usr/sbin/old\n").unwrap();
    apt.publish("old", &["1.0"], &[old_unit.to_str().unwrap()]);
    apt.preinstall("old", "1.0");
    let sd = Arc::new(FakeSystemd::new());
    sd.write_unit("old.service", "[Service]\nExecStart=/usr/sbin/old\n").await.unwrap();
    let imgs = images(apt.clone(), sd.clone(), &dir);
    let ev = Recorded::default();
    let info = imgs.ensure("daemon", PullPolicy::IfNotPresent, &ev).await.unwrap();
    assert_eq!(info.entrypoint, ["/usr/sbin/daemon"]);
    assert_eq!(info.args, [Arg::Raw("-f $OPTS".into())]);
    assert_eq!(info.service, [("Type".into(), "notify".into()), ("User".into(), "daemon".into())]);
    assert!(sd.calls().contains(&"disable_and_mask daemon.service".to_owned()), "{:?}", sd.calls());
    // Installed before vks: left alone, and an event says so.
    imgs.ensure("old", PullPolicy::Always, &ev).await.unwrap();
    assert_eq!(sd.calls().iter().filter(|c| c.starts_with("disable_and_mask")).count(), 1);
    assert!(ev.reasons().contains(&"PackageUnitKept".to_owned()), "{:?}", ev.reasons());
}

#[test]
fn sources_are_written_and_stale_ones_removed() {
    let dir = tmp("sources");
    std::fs::write(dir.join("sources/vks-gone.sources"), "x").unwrap();
    std::fs::write(dir.join("sources/debian.sources"), "keep").unwrap();
    let src = AptSource {
        name: "internal".into(),
        types: vec!["deb".into()],
        uris: vec!["http://127.0.0.1:1/repo".into()],
        suites: vec!["./".into()],
        components: vec![],
        signed_by: Some("/etc/vks/k.gpg".into()),
        architectures: vec![],
    };
    let mut imgs = images(Arc::new(FakeApt::default()), Arc::new(FakeSystemd::new()), &dir);
    imgs.settings.sources = vec![src];
    assert!(sources::sync(&imgs.settings).unwrap());
    assert!(!sources::sync(&imgs.settings).unwrap(), "unchanged the second time");
    let text = std::fs::read_to_string(dir.join("sources/vks-internal.sources")).unwrap();
    assert!(
        text.contains("\nTypes: deb\nURIs: http://127.0.0.1:1/repo\nSuites: ./\nSigned-By: /etc/vks/k.gpg\n"),
        "{text}"
    );
    assert!(!dir.join("sources/vks-gone.sources").exists());
    assert!(dir.join("sources/debian.sources").exists());
}

#[tokio::test(start_paused = true)]
async fn finished_installs_are_forgotten_once_nobody_can_wait_for_them() {
    let mut state = State::default();
    let ok = Ok(ImageInfo::default());
    state.record("a".into(), &ok);
    tokio::time::advance(DONE_KEPT / 2).await;
    state.record("b".into(), &ok);
    assert_eq!(state.done.len(), 2);
    tokio::time::advance(DONE_KEPT / 2 + Duration::from_secs(1)).await;
    state.record("c".into(), &ok);
    let mut keys: Vec<_> = state.done.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["b", "c"], "the entry older than DONE_KEPT is gone");
}
