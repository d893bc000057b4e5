//! A package's own systemd units: read as the container's base ([`package_info`]), taken over
//! (disabled and masked) when vks installed the package, left alone (and said so) when the
//! administrator had installed it.

use std::path::Path;

use super::DebianImages;
use crate::images::apt::AptError;
use crate::images::unitfile;
use crate::images::{ImageInfo, PullEvents};
use crate::unit::Arg;

impl DebianImages {
    /// What an installed package offers as an image, its units listed once: when `kept` is given,
    /// its units are reported as left alone (the package was installed before vks needed it).
    pub(super) async fn present_image(
        &self,
        image: &str,
        name: &str,
        version: &str,
        kept: Option<&dyn PullEvents>,
    ) -> ImageInfo {
        let units = self.pm.unit_files(name).await;
        if let (Ok(units), Some(events)) = (&units, kept) {
            self.report_kept_units(name, units, events).await;
        }
        package_info_async(image, name, version, units).await
    }

    /// After vks installed `name`: its own units must not run besides the pod's.
    pub(super) async fn take_over_units(&self, name: &str, units: &[String]) -> Result<(), String> {
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
    pub(super) async fn report_kept_units(&self, name: &str, units: &[String], events: &dyn PullEvents) {
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
}

/// What a package offers as an image: its own unit (the default command and settings) and its
/// identity. `units` are the service files it ships.
pub fn package_info(image: &str, name: &str, version: &str, units: Result<Vec<String>, AptError>) -> ImageInfo {
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

/// [`package_info`] on the blocking pool (it reads the unit file).
pub(super) async fn package_info_async(
    image: &str,
    name: &str,
    version: &str,
    units: Result<Vec<String>, AptError>,
) -> ImageInfo {
    let (image, name, version) = (image.to_owned(), name.to_owned(), version.to_owned());
    let fallback = ImageInfo { image_id: format!("deb://{name}={version}"), ..ImageInfo::default() };
    tokio::task::spawn_blocking(move || package_info(&image, &name, &version, units)).await.unwrap_or(fallback)
}
