//! The apt sources of `[[images.apt_sources]]` as deb822 files `/etc/apt/sources.list.d/vks-*.sources`
//! (vks owns the `vks-` prefix: it writes what is configured and removes what is not).

use super::Settings;
use crate::config::AptSource;

/// Prefix of the apt source files vks owns.
const SOURCE_PREFIX: &str = "vks-";

/// Brings `/etc/apt/sources.list.d/vks-*.sources` in line with the configuration; true when
/// something changed.
pub fn sync(settings: &Settings) -> Result<bool, String> {
    let mut changed = false;
    let mut wanted = Vec::new();
    for s in &settings.sources {
        let file = settings.sources_dir.join(format!("{SOURCE_PREFIX}{}.sources", s.name));
        let text = render_source(s);
        if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            crate::fsutil::write_atomic(&file, text.as_bytes(), 0o644)
                .map_err(|e| format!("writing apt source {}: {e}", file.display()))?;
            log::info!("wrote apt source {}", file.display());
            changed = true;
        }
        wanted.push(file);
    }
    if let Ok(dir) = std::fs::read_dir(&settings.sources_dir) {
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
