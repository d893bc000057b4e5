//! [`DebianImages`]: images as Debian packages (installed with apt-get), .deb URLs and paths.
//!
//! - One install at a time on the node (a mutex); pods asking for a package while it is being
//!   installed wait and share the outcome of that install instead of running their own.
//! - Pull policies as the kubelet's: `Always` installs or upgrades to the candidate (or the
//!   pinned version); `IfNotPresent` installs only when the package is missing or installed at
//!   another version than the pinned one; `Never` only checks.
//! - A package vks installed gets its own units disabled and masked, so only vks runs its
//!   daemon; a package installed before keeps its units as the administrator set them.
//! - The configured apt sources are written to `/etc/apt/sources.list.d/vks-<name>.sources`
//!   before the first install; `apt-get update` runs when they changed or a package or version
//!   is not found.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::apt::{AptError, PackageManager};
use super::download::Downloader;
use super::reference::{self, ImageRef};
use super::unitfile;
use super::{ImageError, ImageInfo, Images, PullEvents, resolve_path_image};
use crate::config::AptSource;
use crate::systemd::Systemd;
use crate::unit::Arg;

/// Prefix of the apt source files vks owns.
const SOURCE_PREFIX: &str = "vks-";

/// The deny-everything policy-rc.d script vks points `POLICYRCD` at.
pub const POLICY_RC_D: &str = "#!/bin/sh\n\
# Written by vks: while vks runs apt-get, packages may not start, stop or restart their\n\
# daemons (policyrcd-script-zg2's /usr/sbin/policy-rc.d runs this script via POLICYRCD).\n\
exit 101\n";

/// Images that are Debian packages, .deb URLs or paths.
pub struct DebianImages {
    pm: Arc<dyn PackageManager>,
    systemd: Arc<dyn Systemd>,
    downloader: Option<Downloader>,
    settings: Settings,
    state: Mutex<State>,
}

/// What `[images]` and the host's layout fix for [`DebianImages`].
pub struct Settings {
    /// Image reference → what it stands for (`[images] aliases`).
    pub aliases: BTreeMap<String, String>,
    /// Extra apt sources (`[[images.apt_sources]]`).
    pub sources: Vec<AptSource>,
    /// Where their files go: `/etc/apt/sources.list.d`.
    pub sources_dir: PathBuf,
    /// Where .deb URLs are downloaded to.
    pub download_dir: PathBuf,
}

#[derive(Default)]
struct State {
    /// The apt source files were brought in line with the configuration.
    sources_synced: bool,
    /// Outcome of the last install per target, and when it finished: requests that were
    /// waiting while it ran take it instead of installing again.
    done: HashMap<String, (Instant, Result<ImageInfo, ImageError>)>,
    /// .deb URL → (package, version) it installed.
    urls: HashMap<String, (String, String)>,
}

fn pull_error(image: &str, message: impl std::fmt::Display) -> ImageError {
    ImageError { reason: "ErrImagePull", message: format!("image {image:?}: {message}") }
}

fn never_pull(image: &str, what: &str) -> ImageError {
    ImageError {
        reason: "ErrImageNeverPull",
        message: format!("Container image {image:?} is not present with pull policy of Never ({what})"),
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl DebianImages {
    /// Images from `pm`, with the aliases, apt sources and directories of `settings`.
    pub fn new(
        pm: Arc<dyn PackageManager>,
        systemd: Arc<dyn Systemd>,
        downloader: Option<Downloader>,
        settings: Settings,
    ) -> DebianImages {
        DebianImages { pm, systemd, downloader, settings, state: Mutex::new(State::default()) }
    }

    /// What an installed package offers as an image, its units listed once: when `kept` is given,
    /// its units are reported as left alone (the package was installed before vks needed it).
    async fn present_image(&self, image: &str, name: &str, version: &str, kept: Option<&dyn PullEvents>) -> ImageInfo {
        let units = self.pm.unit_files(name).await;
        if let (Ok(units), Some(events)) = (&units, kept) {
            self.report_kept_units(name, units, events).await;
        }
        package_info(image, name, version, units)
    }

    /// After vks installed `name`: its own units must not run besides the pod's.
    async fn take_over_units(&self, name: &str, units: &[String]) -> Result<(), String> {
        let names: Vec<String> =
            units.iter().filter_map(|p| Path::new(p).file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        if names.is_empty() {
            return Ok(());
        }
        self.systemd.disable_and_mask(&names).await.map_err(|e| e.to_string())?;
        log::info!("package {name}: disabled and masked its own unit(s) {}", names.join(", "));
        Ok(())
    }

    /// For a package that was installed before: say that its units are left alone.
    async fn report_kept_units(&self, name: &str, units: &[String], events: &dyn PullEvents) {
        for path in units {
            let Some(unit) = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            let state = self.systemd.status(&unit).await.map(|s| (s.load_state, s.active_state));
            if let Ok((load, active)) = state
                && load != "masked"
            {
                events.normal(
                    "PackageUnitKept",
                    format!(
                        "package {name} was installed before vks needed it: its own unit {unit} is left as the \
                         administrator set it (currently {})",
                        format!("{active:?}").to_lowercase()
                    ),
                );
            }
        }
    }

    /// Brings `/etc/apt/sources.list.d/vks-*.sources` in line with the configuration; true when
    /// something changed.
    fn sync_sources(&self) -> Result<bool, String> {
        let mut changed = false;
        let mut wanted = Vec::new();
        for s in &self.settings.sources {
            let file = self.settings.sources_dir.join(format!("{SOURCE_PREFIX}{}.sources", s.name));
            let text = render_source(s);
            if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                crate::host::write_atomic(&file, text.as_bytes(), 0o644)
                    .map_err(|e| format!("writing apt source {}: {e}", file.display()))?;
                log::info!("wrote apt source {}", file.display());
                changed = true;
            }
            wanted.push(file);
        }
        if let Ok(dir) = std::fs::read_dir(&self.settings.sources_dir) {
            for entry in dir.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(SOURCE_PREFIX) && name.ends_with(".sources") && !wanted.contains(&path) {
                    std::fs::remove_file(&path).map_err(|e| format!("removing apt source {}: {e}", path.display()))?;
                    log::info!("removed apt source {} (no longer configured)", path.display());
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Runs apt-get install (see [`Self::run_install`]), recording its duration and outcome in
    /// [`crate::metrics`].
    async fn install(&self, state: &mut State, target: &str, downgrade: bool) -> Result<(), AptError> {
        let started = Instant::now();
        let r = self.run_install(state, target, downgrade).await;
        crate::metrics::metrics().image_installed(started.elapsed(), r.is_ok());
        r
    }

    /// Runs apt-get install, updating the package lists first when the sources changed and
    /// once more when apt does not know the package or version.
    async fn run_install(&self, state: &mut State, target: &str, downgrade: bool) -> Result<(), AptError> {
        if !state.sources_synced {
            let changed = self.sync_sources().map_err(|message| AptError { message, not_found: false })?;
            state.sources_synced = true;
            if changed {
                self.pm.update().await?;
            }
        }
        match self.pm.install(target, downgrade).await {
            Err(e) if e.not_found => {
                log::info!("apt-get install {target}: {}; updating the package lists and trying again", e.message);
                self.pm.update().await?;
                self.pm.install(target, downgrade).await
            }
            r => r,
        }
    }

    async fn ensure_package(
        &self,
        image: &str,
        name: &str,
        version: Option<&str>,
        policy: &str,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
        let asked = Instant::now();
        let satisfied = |installed: &Option<String>| match (installed, version) {
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
            (None, _) => false,
        };
        let installed = self.pm.installed(name).await.map_err(|e| pull_error(image, e))?;
        if policy != "Always" && satisfied(&installed) {
            events.normal("Pulled", format!("Container image {image:?} already present on machine"));
            let v = installed.unwrap_or_default();
            return Ok(self.present_image(image, name, &v, Some(events)).await);
        }
        if policy == "Never" {
            let what = match (&installed, version) {
                (None, _) => format!("package {name} is not installed"),
                (Some(have), Some(want)) => format!("package {name} is installed at {have}, not {want}"),
                (Some(_), None) => format!("package {name} is installed"),
            };
            return Err(never_pull(image, &what));
        }
        let key = match version {
            Some(v) => format!("{name}={v}"),
            None => name.to_owned(),
        };
        let mut state = self.state.lock().await;
        if let Some((at, r)) = state.done.get(&key)
            && *at >= asked
        {
            return r.clone();
        }
        // Another install may have done it while this one waited.
        let before = self.pm.installed(name).await.map_err(|e| pull_error(image, e))?;
        if policy != "Always" && satisfied(&before) {
            let v = before.unwrap_or_default();
            return Ok(self.present_image(image, name, &v, None).await);
        }
        events.normal("Pulling", format!("Pulling image {image:?}"));
        let started = Instant::now();
        let result = match self.install(&mut state, &key, version.is_some()).await {
            Err(e) => Err(pull_error(image, e.message)),
            Ok(()) => match self.pm.installed(name).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(pull_error(image, format!("apt-get installed {key} but dpkg does not list {name}"))),
                Err(e) => Err(pull_error(image, e)),
            },
        };
        let result = match result {
            Ok(v) => Ok(self.installed_image(image, name, &v, before.is_none(), (asked, started), events).await),
            Err(e) => Err(e),
        };
        state.done.insert(key, (Instant::now(), result.clone()));
        result
    }

    async fn ensure_url(
        &self,
        image: &str,
        url: &str,
        sha256: Option<&str>,
        policy: &str,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((at, r)) = state.done.get(url)
            && *at >= asked
        {
            return r.clone();
        }
        if policy != "Always"
            && let Some((name, version)) = state.urls.get(url).cloned()
            && self.pm.installed(&name).await.ok().flatten().as_deref() == Some(version.as_str())
        {
            drop(state);
            events.normal("Pulled", format!("Container image {image:?} already present on machine"));
            return Ok(self.present_image(image, &name, &version, None).await);
        }
        if policy == "Never" {
            return Err(never_pull(image, "vks has not installed this .deb"));
        }
        let Some(downloader) = &self.downloader else {
            return Err(pull_error(image, "downloads are not available (the https client could not be set up)"));
        };
        events.normal("Pulling", format!("Pulling image {image:?}"));
        let started = Instant::now();
        if let Err(e) = std::fs::create_dir_all(&self.settings.download_dir) {
            return Err(pull_error(image, format!("creating {}: {e}", self.settings.download_dir.display())));
        }
        let file = super::download::temp_path(&self.settings.download_dir);
        let result = self.download_and_install(&mut state, image, url, sha256, downloader, &file).await;
        let _ = std::fs::remove_file(&file);
        let result = match result {
            Ok((name, version, fresh)) => {
                state.urls.insert(url.to_owned(), (name.clone(), version.clone()));
                Ok(self.installed_image(image, &name, &version, fresh, (asked, started), events).await)
            }
            Err(e) => Err(e),
        };
        state.done.insert(url.to_owned(), (Instant::now(), result.clone()));
        result
    }

    /// After an install of `name` at `version`: takes over its units when vks installed it fresh
    /// (else says they are kept), reports `Pulled` and returns what the package offers.
    async fn installed_image(
        &self,
        image: &str,
        name: &str,
        version: &str,
        fresh: bool,
        (asked, started): (Instant, Instant),
        events: &dyn PullEvents,
    ) -> ImageInfo {
        let units = self.pm.unit_files(name).await;
        match &units {
            Ok(u) if fresh => {
                if let Err(e) = self.take_over_units(name, u).await {
                    log::warn!("package {name}: could not disable and mask its own units: {e}");
                }
            }
            Ok(u) => self.report_kept_units(name, u, events).await,
            Err(e) => log::warn!("package {name}: listing its units: {e}"),
        }
        events.normal(
            "Pulled",
            format!(
                "Successfully pulled image {image:?} in {} ({} including waiting): package {name} {version}",
                seconds(started.elapsed()),
                seconds(asked.elapsed())
            ),
        );
        package_info(image, name, version, units)
    }

    /// Returns (package, version, whether vks installed it fresh).
    async fn download_and_install(
        &self,
        state: &mut State,
        image: &str,
        url: &str,
        sha256: Option<&str>,
        downloader: &Downloader,
        file: &Path,
    ) -> Result<(String, String, bool), ImageError> {
        let got = downloader.fetch(url, file).await.map_err(|e| pull_error(image, e))?;
        if let Some(want) = sha256
            && want != got
        {
            return Err(pull_error(image, format!("checksum mismatch: expected sha256 {want}, downloaded {got}")));
        }
        let (name, version) = self.pm.deb_fields(file).await.map_err(|e| pull_error(image, e))?;
        let before = self.pm.installed(&name).await.map_err(|e| pull_error(image, e))?;
        let target = file.to_string_lossy().into_owned();
        self.install(state, &target, true).await.map_err(|e| pull_error(image, e.message))?;
        Ok((name, version, before.is_none()))
    }
}

/// What a package offers as an image: its own unit (the default command and settings) and its
/// identity. `units` are the service files it ships.
fn package_info(image: &str, name: &str, version: &str, units: Result<Vec<String>, AptError>) -> ImageInfo {
    let mut info = ImageInfo { image_id: format!("deb://{name}={version}"), ..ImageInfo::default() };
    let units = match units {
        Ok(u) => u,
        Err(e) => {
            info.no_command = Some(format!("the files of package {name} could not be listed: {e}"));
            return info;
        }
    };
    let preferred = units.iter().find(|u| u.ends_with(&format!("/{name}.service"))).or(units.first());
    let Some(path) = preferred else {
        info.no_command = Some(format!("package {name} ships no systemd service to take the command from"));
        return info;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            info.no_command = Some(format!("reading {path} of package {name}: {e}"));
            return info;
        }
    };
    match unitfile::parse(&text) {
        Ok(s) => {
            info.entrypoint = vec![s.program];
            if !s.args.is_empty() {
                info.args = vec![Arg::Raw(s.args)];
            }
            info.service = s.settings;
        }
        Err(e) => info.no_command = Some(format!("the unit {path} of image {image:?} {e}")),
    }
    info
}

/// A deb822 source file for `s`.
pub fn render_source(s: &AptSource) -> String {
    let mut out = format!(
        "# Written by vks from [[images.apt_sources]] name = {:?} in its config.toml; vks replaces or removes \
         this file.\n",
        s.name
    );
    let mut field = |k: &str, v: &[String]| {
        if !v.is_empty() {
            out.push_str(&format!("{k}: {}\n", v.join(" ")));
        }
    };
    field("Types", &s.types);
    field("URIs", &s.uris);
    field("Suites", &s.suites);
    field("Components", &s.components);
    field("Architectures", &s.architectures);
    if let Some(k) = &s.signed_by {
        out.push_str(&format!("Signed-By: {}\n", k.display()));
    }
    out
}

#[async_trait]
impl Images for DebianImages {
    async fn ensure(&self, image: &str, pull_policy: &str, events: &dyn PullEvents) -> Result<ImageInfo, ImageError> {
        let target = self.settings.aliases.get(image).map_or(image, String::as_str);
        match reference::parse(target)? {
            ImageRef::Path(p) => resolve_path_image(&p),
            ImageRef::Package { name, version } => {
                self.ensure_package(image, &name, version.as_deref(), pull_policy, events).await
            }
            ImageRef::Url { url, sha256 } => self.ensure_url(image, &url, sha256.as_deref(), pull_policy, events).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::apt::FakeApt;
    use crate::systemd::fake::FakeSystemd;

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

        let e = imgs.ensure("tool", "Never", &ev).await.unwrap_err();
        assert_eq!(e.reason, "ErrImageNeverPull");
        assert!(e.message.contains("package tool is not installed"), "{}", e.message);

        let info = imgs.ensure("tool=1.0", "IfNotPresent", &ev).await.unwrap();
        assert_eq!(info.image_id, "deb://tool=1.0");
        assert!(info.no_command.as_deref().unwrap().contains("ships no systemd service"));
        assert_eq!(ev.reasons(), ["Pulling", "Pulled"]);
        // Present at the pinned version: nothing installed.
        imgs.ensure("tool:1.0", "IfNotPresent", &ev).await.unwrap();
        assert_eq!(apt.calls(), ["install tool=1.0"]);
        // Always upgrades to the candidate; the alias maps a container image name.
        let info = imgs.ensure("busybox:1.36", "Always", &ev).await.unwrap();
        assert_eq!(info.image_id, "deb://tool=2.0");
        assert_eq!(imgs.ensure("tool", "Never", &ev).await.unwrap().image_id, "deb://tool=2.0");
        let e = imgs.ensure("tool=1.0", "Never", &ev).await.unwrap_err();
        assert!(e.message.contains("installed at 2.0, not 1.0"), "{}", e.message);
    }

    #[tokio::test]
    async fn unknown_packages_and_versions_update_once_and_fail_with_apts_line() {
        let dir = tmp("unknown");
        let apt = Arc::new(FakeApt::default());
        apt.publish("tool", &["1.0"], &[]);
        let imgs = images(apt.clone(), Arc::new(FakeSystemd::new()), &dir);
        let ev = Recorded::default();
        let e = imgs.ensure("nope", "IfNotPresent", &ev).await.unwrap_err();
        assert_eq!(e.reason, "ErrImagePull");
        assert!(e.message.contains("E: Unable to locate package nope"), "{}", e.message);
        let e = imgs.ensure("tool=9.9", "IfNotPresent", &ev).await.unwrap_err();
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
                tokio::spawn(async move { imgs.ensure("tool", "Always", &*ev).await })
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
        std::fs::write(
            &unit,
            "[Service]\nType=notify\nExecStart=/usr/sbin/daemon -f $OPTS\nUser=daemon\nRestart=always\n",
        )
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
        let info = imgs.ensure("daemon", "IfNotPresent", &ev).await.unwrap();
        assert_eq!(info.entrypoint, ["/usr/sbin/daemon"]);
        assert_eq!(info.args, [Arg::Raw("-f $OPTS".into())]);
        assert_eq!(info.service, [("Type".into(), "notify".into()), ("User".into(), "daemon".into())]);
        assert!(sd.calls().contains(&"disable_and_mask daemon.service".to_owned()), "{:?}", sd.calls());
        // Installed before vks: left alone, and an event says so.
        imgs.ensure("old", "Always", &ev).await.unwrap();
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
        assert!(imgs.sync_sources().unwrap());
        assert!(!imgs.sync_sources().unwrap(), "unchanged the second time");
        let text = std::fs::read_to_string(dir.join("sources/vks-internal.sources")).unwrap();
        assert!(
            text.contains("\nTypes: deb\nURIs: http://127.0.0.1:1/repo\nSuites: ./\nSigned-By: /etc/vks/k.gpg\n"),
            "{text}"
        );
        assert!(!dir.join("sources/vks-gone.sources").exists());
        assert!(dir.join("sources/debian.sources").exists());
    }
}
