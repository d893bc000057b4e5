//! Tests of reading a manifest directory into snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

const GOOD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: /usr/bin/sleep\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn names(s: &Snapshot) -> Vec<String> {
    s.pods.iter().map(|p| p.pod.metadata.name.clone().unwrap()).collect()
}

#[test]
fn only_manifest_files_are_read_and_a_broken_one_never_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", GOOD);
    write(
        dir.path(),
        "b.json",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"api"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#,
    );
    write(dir.path(), "broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [\n");
    write(dir.path(), ".hidden.yaml", GOOD);
    write(dir.path(), "notes.txt", "hello");
    write(dir.path(), "a.yaml.swp", "x");
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let files = read_dir(dir.path(), "n1").unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    let snap = snapshot(files, &mut BTreeMap::new());
    assert_eq!(names(&snap), ["web-n1", "api-n1"]);
    assert_eq!(snap.invalid.len(), 1);
    assert_eq!(snap.invalid[0].file, dir.path().join("broken.yaml"));
    assert!(snap.invalid[0].error.starts_with("not valid YAML"), "{}", snap.invalid[0].error);
    assert!(snap.complete);
}

#[test]
fn a_missing_directory_holds_no_pods() {
    let files = read_dir(Path::new("/nonexistent/vks/manifests"), "n1").unwrap();
    assert!(files.is_empty());
}

#[test]
fn an_invalid_file_keeps_its_last_good_pods_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut last_good = BTreeMap::new();
    let f = write(dir.path(), "a.yaml", GOOD);
    let first = snapshot(read_dir(dir.path(), "n1").unwrap(), &mut last_good);
    write(dir.path(), "a.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec: {}\n");
    let broken = snapshot(read_dir(dir.path(), "n1").unwrap(), &mut last_good);
    assert_eq!(broken.pods, first.pods, "the running pod is kept");
    assert!(broken.invalid[0].error.contains("spec.containers is empty"), "{:?}", broken.invalid);
    assert!(broken.invalid[0].error.contains("keep running"), "{:?}", broken.invalid);
    std::fs::remove_file(&f).unwrap();
    let gone = snapshot(read_dir(dir.path(), "n1").unwrap(), &mut last_good);
    assert!(gone.pods.is_empty() && gone.invalid.is_empty());
    assert!(last_good.is_empty());
}

#[test]
fn the_same_pod_in_two_files_runs_from_the_first() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", GOOD);
    write(dir.path(), "b.yaml", &format!("{GOOD}---\n{}", GOOD.replace("web", "other")));
    let snap = snapshot(read_dir(dir.path(), "n1").unwrap(), &mut BTreeMap::new());
    assert_eq!(names(&snap), ["web-n1"]);
    assert_eq!(snap.invalid[0].file, dir.path().join("b.yaml"));
    assert!(snap.invalid[0].error.contains("pod default/web-n1 is already defined in"), "{:?}", snap.invalid);
}

#[test]
fn manifest_names() {
    for ok in ["a.yaml", "b.yml", "c.json"] {
        assert!(is_manifest_name(ok), "{ok}");
    }
    for no in [".a.yaml", "a.yaml~", "a.yaml.swp", "a.txt", "yaml"] {
        assert!(!is_manifest_name(no), "{no}");
    }
}
