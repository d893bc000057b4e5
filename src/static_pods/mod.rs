//! Static pods: pods read from manifest files in `[static] manifest_dir`, run on this node with
//! or without an API server, as the kubelet's `--pod-manifest-path`.
//!
//! - `manifest.rs`: a file's text → its pods (naming, UIDs, defaults, validation; pure);
//! - this file: reading a directory into a [`Snapshot`] (the pods to run and the invalid files);
//! - `source.rs`: the loop that watches the directory (inotify) and publishes snapshots;
//! - `merge.rs`: the snapshots and the API's pod watch merged into the one stream of pod events
//!   the [`crate::pods::PodManager`] consumes (mirror pods diverted), so static pods run through
//!   the same workers as scheduled ones;
//! - `mirror.rs`: with a cluster, the mirror pods that show static pods in the API.
//!
//! A file that cannot be read or holds anything but valid Pods is reported and skipped; while
//! vks runs, the pods it held when it was last valid keep running (an editor's half-written file
//! never stops a pod). Two files defining the same pod: the first in name order wins, the other
//! is reported.

pub mod manifest;
pub mod merge;
pub mod mirror;
pub mod source;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::api::PodRef;

/// A static pod and the file it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The pod as it runs (named, with its UID).
    pub pod: Pod,
    /// Its manifest file.
    pub file: PathBuf,
}

impl StaticPod {
    /// Its reference.
    pub fn id(&self) -> PodRef {
        PodRef::of(&self.pod)
    }
}

/// A manifest file that is not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The file.
    pub file: PathBuf,
    /// What is wrong (naming the document, pod and field).
    pub error: String,
}

/// The static pods to run now, and the files that were skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pods to run, in file order.
    pub pods: Vec<StaticPod>,
    /// Invalid files, in name order.
    pub invalid: Vec<Invalid>,
    /// False until the directory was read once.
    pub complete: bool,
}

/// What a directory read gives for each manifest file: its pods or the error.
pub type Files = BTreeMap<PathBuf, Result<Vec<Pod>, String>>;

/// Whether a directory entry name is a manifest file: `*.yaml`, `*.yml` or `*.json`, not hidden.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
}

/// Reads every manifest file of `dir` (blocking). A missing directory holds no files; one that
/// cannot be read is an error.
pub fn read_dir(dir: &Path, node: &str) -> std::io::Result<Files> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Files::new()),
        Err(e) => return Err(e),
    };
    let mut files = Files::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| is_manifest_name(n)) else { continue };
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                files.insert(path, Err(format!("cannot read it: {e}")));
                continue;
            }
        }
        files.insert(path.clone(), read_file(&path, node));
    }
    Ok(files)
}

fn read_file(path: &Path, node: &str) -> Result<Vec<Pod>, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(manifest::MAX_MANIFEST_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > manifest::MAX_MANIFEST_BYTES {
        return Err(format!("larger than {} MiB", manifest::MAX_MANIFEST_BYTES >> 20));
    }
    manifest::pods_in_file(path, &text, node)
}

/// The snapshot of a directory read, given the pods each file held when it was last valid
/// (`last_good`, updated here): an invalid file keeps those; a removed file has none. Pods whose
/// name an earlier file already uses are refused with their file.
pub fn snapshot(files: Files, last_good: &mut BTreeMap<PathBuf, Vec<Pod>>) -> Snapshot {
    last_good.retain(|f, _| files.contains_key(f));
    let mut snap = Snapshot { complete: true, ..Snapshot::default() };
    let mut owners: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for (file, result) in files {
        let pods = match result {
            Ok(pods) => {
                last_good.insert(file.clone(), pods.clone());
                pods
            }
            Err(error) => {
                let kept = last_good.get(&file).cloned().unwrap_or_default();
                let error =
                    if kept.is_empty() { error } else { format!("{error} (the pods it held before keep running)") };
                snap.invalid.push(Invalid { file: file.clone(), error });
                kept
            }
        };
        let clash = pods.iter().find_map(|p| {
            let id = PodRef::of(p);
            owners.get(&(id.namespace.clone(), id.name.clone())).map(|other| (id, other.clone()))
        });
        if let Some((id, other)) = clash {
            last_good.remove(&file);
            snap.invalid.retain(|i| i.file != file);
            snap.invalid.push(Invalid {
                file,
                error: format!("pod {id} is already defined in {}: none of this file's pods run", other.display()),
            });
            continue;
        }
        for p in pods {
            let id = PodRef::of(&p);
            owners.insert((id.namespace, id.name), file.clone());
            snap.pods.push(StaticPod { pod: p, file: file.clone() });
        }
    }
    snap.invalid.sort_by(|a, b| a.file.cmp(&b.file));
    snap
}

#[cfg(test)]
mod tests;
