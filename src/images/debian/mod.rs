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
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::apt::{AptError, PackageManager};
use super::download::Downloader;
use super::reference::{self, ImageRef};
use super::{ImageError, ImageInfo, Images, PullEvents, resolve_path_image};
use crate::config::AptSource;
use crate::policy::PullPolicy;
use crate::reason::WaitingReason;
use crate::systemd::Systemd;

/// How long the outcome of an install is kept for the requests that waited for it.
const DONE_KEPT: Duration = Duration::from_secs(600);

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
#[derive(Debug, Clone)]
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
    /// waiting while it ran take it instead of installing again. Entries older than
    /// [`DONE_KEPT`] are dropped (no request can still be waiting for them).
    done: HashMap<String, (Instant, Result<ImageInfo, ImageError>)>,
    /// .deb URL → (package, version) it installed.
    urls: HashMap<String, (String, String)>,
}

impl State {
    /// Records the outcome of an install, forgetting outcomes nobody can be waiting for.
    fn record(&mut self, key: String, result: &Result<ImageInfo, ImageError>) {
        let now = Instant::now();
        self.done.retain(|_, (at, _)| now.duration_since(*at) < DONE_KEPT);
        self.done.insert(key, (now, result.clone()));
    }
}

fn pull_error(image: &str, message: impl std::fmt::Display) -> ImageError {
    ImageError { reason: WaitingReason::ErrImagePull, message: format!("image {image:?}: {message}") }
}

fn never_pull(image: &str, what: &str) -> ImageError {
    ImageError {
        reason: WaitingReason::ErrImageNeverPull,
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
            let settings = self.settings.clone();
            let changed = tokio::task::spawn_blocking(move || sources::sync(&settings))
                .await
                .unwrap_or_else(|e| Err(format!("syncing the apt sources: {e}")))
                .map_err(|message| AptError { message, not_found: false })?;
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
        policy: PullPolicy,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
        let asked = Instant::now();
        let satisfied = |installed: &Option<String>| match (installed, version) {
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
            (None, _) => false,
        };
        let installed = self.pm.installed(name).await.map_err(|e| pull_error(image, e))?;
        if policy != PullPolicy::Always && satisfied(&installed) {
            events.normal("Pulled", format!("Container image {image:?} already present on machine"));
            let v = installed.unwrap_or_default();
            return Ok(self.present_image(image, name, &v, Some(events)).await);
        }
        if policy == PullPolicy::Never {
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
        if policy != PullPolicy::Always && satisfied(&before) {
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
        state.record(key, &result);
        result
    }

    async fn ensure_url(
        &self,
        image: &str,
        url: &str,
        sha256: Option<&str>,
        policy: PullPolicy,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
        let asked = Instant::now();
        let known = self.state.lock().await.urls.get(url).cloned();
        if policy != PullPolicy::Always
            && let Some((name, version)) = known
            && self.pm.installed(&name).await.ok().flatten().as_deref() == Some(version.as_str())
        {
            events.normal("Pulled", format!("Container image {image:?} already present on machine"));
            return Ok(self.present_image(image, &name, &version, None).await);
        }
        if policy == PullPolicy::Never {
            return Err(never_pull(image, "vks has not installed this .deb"));
        }
        let Some(downloader) = &self.downloader else {
            return Err(pull_error(image, "downloads are not available (the https client could not be set up)"));
        };
        events.normal("Pulling", format!("Pulling image {image:?}"));
        let started = Instant::now();
        // The download (up to images.download_timeout) happens outside the install lock, so it
        // never holds up other pods' installs.
        let dir = &self.settings.download_dir;
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            return Err(pull_error(image, format!("creating {}: {e}", dir.display())));
        }
        let file = super::download::temp_path(dir);
        let fetched = self.fetch_deb(image, url, sha256, downloader, &file).await;
        let mut state = self.state.lock().await;
        let result = if let Some((at, r)) = state.done.get(url).filter(|(at, _)| *at >= asked) {
            // Installed by another request while this one downloaded.
            log::debug!("{url} was installed at {at:?} while this request downloaded it");
            r.clone()
        } else {
            let installed = match fetched {
                Ok((name, version)) => {
                    self.install_deb(&mut state, image, &name, &file).await.map(|fresh| (name, version, fresh))
                }
                Err(e) => Err(e),
            };
            let result = match installed {
                Ok((name, version, fresh)) => {
                    state.urls.insert(url.to_owned(), (name.clone(), version.clone()));
                    Ok(self.installed_image(image, &name, &version, fresh, (asked, started), events).await)
                }
                Err(e) => Err(e),
            };
            state.record(url.to_owned(), &result);
            result
        };
        drop(state);
        let _ = tokio::fs::remove_file(&file).await;
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
        units::package_info_async(image, name, version, units).await
    }

    /// Downloads `url` to `file` and checks it; returns the package's name and version.
    async fn fetch_deb(
        &self,
        image: &str,
        url: &str,
        sha256: Option<&str>,
        downloader: &Downloader,
        file: &Path,
    ) -> Result<(String, String), ImageError> {
        let got = downloader.fetch(url, file).await.map_err(|e| pull_error(image, e))?;
        if let Some(want) = sha256
            && want != got
        {
            return Err(pull_error(image, format!("checksum mismatch: expected sha256 {want}, downloaded {got}")));
        }
        self.pm.deb_fields(file).await.map_err(|e| pull_error(image, e))
    }

    /// Installs the downloaded .deb (holding the install lock); true when the package was not
    /// installed before.
    async fn install_deb(&self, state: &mut State, image: &str, name: &str, file: &Path) -> Result<bool, ImageError> {
        let before = self.pm.installed(name).await.map_err(|e| pull_error(image, e))?;
        let target = file.to_string_lossy().into_owned();
        self.install(state, &target, true).await.map_err(|e| pull_error(image, e.message))?;
        Ok(before.is_none())
    }
}

mod sources;
#[cfg(test)]
mod tests;
mod units;

pub use sources::render_source;
pub use units::package_info;

#[async_trait]
impl Images for DebianImages {
    async fn ensure(
        &self,
        image: &str,
        pull_policy: PullPolicy,
        events: &dyn PullEvents,
    ) -> Result<ImageInfo, ImageError> {
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
