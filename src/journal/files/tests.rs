//! The fast reader against `sdjournal`, on journal files journald wrote (`tests/testdata/journal/make`).

use super::*;
use crate::journal::native::read_general;

fn testdata(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/journal").join(variant)
}

fn request(matches: &[(&str, &str)], since_us: Option<u64>, tail: Option<u64>) -> Request {
    let matches = matches.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Request { matches, since_us, tail, directories: vec![] }
}

fn fast(r: &Request, dir: &Path) -> Result<Vec<u8>, Unsupported> {
    let mut out = Vec::new();
    read(r, &[dir.to_owned()], &mut out).unwrap().map(|()| out)
}

fn general(r: &Request, dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    read_general(r, &[dir.to_owned()], &mut out).unwrap();
    out
}

/// The values of `field` in export output, in order.
fn values(out: &[u8], field: &str) -> Vec<String> {
    let prefix = format!("{field}=");
    String::from_utf8_lossy(out).lines().filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned)).collect()
}

#[test]
fn every_query_reads_as_sdjournal_reads_it() {
    for variant in ["compact-zstd", "regular-zstd"] {
        let dir = testdata(variant);
        let unit = general(&request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], None, None), &dir);
        let mut runs = values(&unit, "_SYSTEMD_INVOCATION_ID");
        runs.dedup();
        assert_eq!(runs.len(), 2, "{variant}: two runs of the container");
        let times: Vec<u64> = values(&unit, "__REALTIME_TIMESTAMP").iter().map(|t| t.parse().unwrap()).collect();
        let middle = times[times.len() / 2];
        let mut queries = vec![
            request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], None, None),
            request(&[("_SYSTEMD_UNIT", "vks.ns.p.d.service")], None, None),
            request(&[("VKS_POD_UID", "uid-1")], None, None),
            request(&[("VKS_CONTAINER", "nope")], None, None),
            request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], Some(middle), None),
            request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], Some(middle), Some(7)),
            request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], Some(u64::MAX), None),
        ];
        // Times at which whole entry arrays are skipped (they double in size along the list).
        for at in [times[1], times[times.len() / 4], times[times.len() - 2]] {
            queries.push(request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], Some(at), None));
            queries.push(request(&[("VKS_POD_UID", "uid-1"), ("VKS_CONTAINER", "c")], Some(at), None));
        }
        for run in &runs {
            let m = [("VKS_POD_UID", "uid-1"), ("VKS_CONTAINER", "c"), ("_SYSTEMD_INVOCATION_ID", run.as_str())];
            for tail in [None, Some(0), Some(1), Some(5), Some(100_000)] {
                queries.push(request(&m, None, tail));
            }
        }
        for r in &queries {
            let want = general(r, &dir);
            let got = fast(r, &dir).unwrap_or_else(|e| panic!("{variant}: {e:?}"));
            assert!(got == want, "{variant} {r:?}: {} bytes, sdjournal {} bytes", got.len(), want.len());
        }
        // The checks above compare something: a run's lines, the long and the unfinished ones.
        let m = [("VKS_POD_UID", "uid-1"), ("VKS_CONTAINER", "c"), ("_SYSTEMD_INVOCATION_ID", runs[0].as_str())];
        let first = fast(&request(&m, None, None), &dir).unwrap();
        let text = String::from_utf8_lossy(&first);
        for line in ["short line 0 of first", "long line 299 of first", "no newline at the end of first"] {
            assert!(text.contains(line), "{variant}: {line:?} missing");
        }
        assert!(!text.contains("of second"), "{variant}: a line of the other run");
        assert!(values(&first, "_LINE_BREAK").contains(&"line-max".to_owned()), "{variant}: the split line");
        assert!(first.len() > 500_000, "{variant}: {} bytes", first.len());
    }
}

#[test]
fn files_it_cannot_read_go_to_sdjournal() {
    let dir = testdata("unkeyed");
    let r = request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], None, None);
    let why = fast(&r, &dir).unwrap_err();
    assert!(why.0.contains("unkeyed"), "{why:?}");
    let mut out = Vec::new();
    let mut native = r.clone();
    native.directories = vec![dir.clone()];
    crate::journal::native::read(&native, &mut out).unwrap();
    assert!(out.len() > 500_000 && out == general(&r, &dir));
    assert!(fast(&request(&[], None, None), &testdata("compact-zstd")).is_err(), "no match: everything");
}

/// A copy of a variant's files in a temporary directory.
fn copy(variant: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(testdata(variant)).unwrap() {
        let p = e.unwrap().path();
        let to = tmp.path().join(p.file_name().unwrap());
        std::fs::copy(&p, &to).unwrap();
        files.push(to);
    }
    files.sort();
    (tmp, files)
}

#[test]
fn a_file_cut_short_loses_its_end_not_the_read() {
    let r = request(&[("VKS_POD_UID", "uid-1")], None, None);
    let (tmp, files) = copy("compact-zstd");
    let whole = fast(&r, tmp.path()).unwrap();
    // The active file, cut as a rotation or a full disk might leave it for a reader.
    let active = files.iter().find(|p| p.ends_with("system.journal")).unwrap();
    // Where its last object starts (the header's tail_object_offset): cuts before it lose entries.
    let tail = le64(&std::fs::read(active).unwrap(), 136);
    for keep in [tail * 3 / 4, tail / 2, tail / 5, 4096, 100] {
        std::fs::OpenOptions::new().write(true).open(active).unwrap().set_len(keep).unwrap();
        let cut = fast(&r, tmp.path()).unwrap();
        assert!(cut.len() < whole.len() && whole.starts_with(&cut[..cut.len().min(1000)]), "kept {keep}");
    }
}

#[test]
fn damaged_objects_are_skipped_not_followed() {
    let r = request(&[("_SYSTEMD_UNIT", "vks.ns.p.c.service")], None, None);
    let (tmp, files) = copy("regular-zstd");
    let whole = fast(&r, tmp.path()).unwrap();
    // Overwrite 64 bytes in every 4 KiB after the hash tables with bytes that look like offsets
    // and sizes, then read: entries go missing or change; nothing loops, panics or reads past
    // the end.
    let mut k = 0u64;
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let len = bytes.len();
        let tables = (le64(&bytes, 104) + le64(&bytes, 112)).max(le64(&bytes, 120) + le64(&bytes, 128));
        let start = usize::try_from(tables.next_multiple_of(4096)).unwrap();
        for block in (start..len).step_by(4096) {
            for b in &mut bytes[block..(block + 64).min(len)] {
                k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (k >> 56) as u8;
            }
        }
        std::fs::write(f, &bytes).unwrap();
    }
    let out = fast(&r, tmp.path()).unwrap();
    assert!(out != whole && !out.is_empty(), "{} of {} bytes", out.len(), whole.len());
}
