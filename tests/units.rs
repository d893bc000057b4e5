//! Tests of the pod → unit translation with vks's real code:
//! - golden units: every `tests/testdata/units/<case>.yaml` pod is rendered, one unit per
//!   container in start order (`unit::all_containers`: ephemeral ones last), and compared with
//!   `<case>.units`. Set
//!   `VKS_UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate change, then review
//!   the diff;
//! - the round trip through a model of systemd 252's parser (`units/model.rs`, itself checked
//!   against the real systemd by tests/e2e/unit_roundtrip.rs): the corpus
//!   (tests/testdata/unit-roundtrip/corpus.yaml) and property-based random cases, each either
//!   refused with a clear reason or received by the process exactly as the pod asked;
//! - one regression test per defect of issue 9 that concerns the pod → unit path.

#[path = "units/cases.rs"]
mod cases;
#[path = "units/model.rs"]
mod model;

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use vks::unit::{self, ImageInfo, NodeContext};

use cases::{Case, Expect};

/// Files that "exist and are executable" in these tests.
fn is_executable(p: &str) -> bool {
    matches!(
        p,
        "/usr/bin/sleep" | "/bin/sh" | "/usr/bin/env" | "/opt/tool/bin/run" | "/usr/sbin/uptimed" | "/usr/sbin/sshd"
    ) || p.starts_with("/usr/local/bin/")
        || p.starts_with("/opt/issue9/")
}

/// A Debian package image, read by the real `images::debian::package_info` from the unit in
/// `testdata/units/packages/<name>.service`, if any.
fn package(name: &str) -> ImageInfo {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/testdata/units/packages/{name}.service"));
    let units = if path.exists() { vec![path.display().to_string()] } else { Vec::new() };
    vks::images::debian::package_info(name, name, "1.0", Ok(units))
}

fn render_pod(pod: &Pod) -> String {
    let node = NodeContext::new("node-1", "192.0.2.10");
    let spec = pod.spec.as_ref().expect("pod has a spec");
    let mut out = String::new();
    for (c, kind) in unit::all_containers(spec) {
        let c = &c;
        let image = c.image.clone().unwrap_or_default();
        let info = if image.starts_with('/') {
            ImageInfo { entrypoint: vec![image.clone()], image_id: format!("file://{image}"), ..ImageInfo::default() }
        } else {
            package(&image)
        };
        match unit::plan(pod, c, kind, &info, &node, &unit::ContainerData::default(), is_executable) {
            Ok(u) => {
                out.push_str(&format!("=== {}\n", u.name));
                out.push_str(&unit::render(&u).expect("planned units render"));
            }
            Err(e) => out.push_str(&format!("=== container {:?}: {}: {}\n", c.name, e.reason, e.message)),
        }
    }
    out
}

#[test]
fn golden_units() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/units");
    let update = std::env::var_os("VKS_UPDATE_GOLDEN").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        cases += 1;
        let pod: Pod = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = render_pod(&pod);
        let golden = path.with_extension("units");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", golden.display()));
        }
        // Every golden unit is also one systemd loads without a warning.
        for unit in got.split("=== ").filter(|u| u.starts_with("vks.")) {
            let text = unit.split_once('\n').map_or("", |(_, t)| t);
            match model::parse_service(text.as_bytes()) {
                Ok(s) if s.warnings.is_empty() => {}
                other => failures.push(format!("{}: systemd would not load it cleanly: {other:?}", golden.display())),
            }
        }
    }
    assert!(cases >= 6, "expected the golden cases in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn corpus_case(id: &str) -> Case {
    cases::corpus().into_iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no corpus case {id}"))
}

/// The rendered unit of a corpus case that must round-trip, after checking the round trip.
fn round_trip(id: &str) -> String {
    let case = corpus_case(id);
    assert_eq!(case.expect, Expect::RoundTrip);
    match cases::check(&case) {
        Ok(Some((_, text))) => text,
        other => panic!("{id}: {other:?}"),
    }
}

/// The refusal message of a corpus case that must be refused.
fn refusal(id: &str) -> String {
    let case = corpus_case(id);
    assert!(matches!(case.expect, Expect::Refused(_)));
    cases::check(&case).unwrap_or_else(|e| panic!("{id}: {e}"));
    match cases::render(&case) {
        cases::Outcome::Refused(e) => format!("{}: {}", e.reason, e.message),
        cases::Outcome::Unit(..) => unreachable!(),
    }
}

#[test]
fn corpus_cases_round_trip_or_are_refused() {
    let corpus = cases::corpus();
    assert!(corpus.len() >= 40, "the corpus has {} cases", corpus.len());
    let mut ids = std::collections::HashSet::new();
    let failures: Vec<String> = corpus
        .iter()
        .inspect(|c| assert!(ids.insert(c.id.clone()), "duplicate corpus id {}", c.id))
        .filter_map(|c| cases::check(c).err().map(|e| format!("corpus case {}: {e}", c.id)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn representable_pods_round_trip_exactly(case in (0usize..1_000_000).prop_flat_map(cases::representable)) {
        if let Err(e) = cases::check(&case) {
            return Err(TestCaseError::fail(format!("{case:?}\n{e}")));
        }
    }

    #[test]
    fn hostile_pods_round_trip_or_are_refused_clearly(case in (0usize..1_000_000).prop_flat_map(cases::hostile)) {
        if let Err(e) = cases::check(&case) {
            return Err(TestCaseError::fail(format!("{case:?}\n{e}")));
        }
    }

    #[test]
    fn unit_names_never_panic(ns in ".*", pod in ".*", c in ".*") {
        let name = unit::name::unit_name(&ns, &pod, &c);
        if unit::name::validate(&ns, &pod, &c).is_ok() {
            prop_assert!(unit::name::is_valid_unit_name(&name), "{name:?}");
        }
    }
}

/// Issue 9, defect 1: a `workingDir` ending in a backslash continued the line, so systemd joined
/// the next directive into WorkingDirectory= and lost it.
#[test]
fn issue9_defect1_trailing_backslash_never_continues_a_line() {
    let text = round_trip("defect1-workdir-trailing-backslash");
    assert!(text.contains("\nWorkingDirectory=/tmp/vks-rt/trailing\\/\nEnvironment=\"AFTER=kept\"\n"), "{text}");
    round_trip("defect1-workdir-trailing-double-backslash");
    round_trip("defect1-workdir-trailing-space");
}

/// Issue 9, defect 2: the executable path was escaped like an argument (`$` doubled), and a path
/// systemd refuses ("special characters") became a broken unit instead of a pod error.
#[test]
fn issue9_defect2_executable_path_is_not_escaped_like_an_argument() {
    let text = round_trip("defect2-dollar-in-executable");
    assert!(text.contains("ExecStart=\"@/opt/vks-rt/a$b/vks-rt-rec\" \"/opt/vks-rt/a$$b/vks-rt-rec\""), "{text}");
    for id in ["defect2-backslash-in-executable", "defect2-quote-in-executable"] {
        let e = refusal(id);
        assert!(e.starts_with("CreateContainerError: container c: the command line (program \"/opt/"), "{e}");
    }
}

/// Issue 9, defect 3: a `workingDir` that is not normalized was refused by systemd; vks
/// normalizes it when the meaning is the same and refuses it clearly otherwise.
#[test]
fn issue9_defect3_working_directories_are_normalized_or_refused() {
    let text = round_trip("defect3-workdir-not-normalized");
    assert!(text.contains("\nWorkingDirectory=/tmp/vks-rt/n/x\n"), "{text}");
    let e = refusal("defect3-workdir-dotdot");
    assert_eq!(
        e,
        "CreateContainerError: container c: workingDir \"/tmp/../tmp\" has a '..' component, which systemd refuses (it only accepts normalized paths)"
    );
}

/// Issue 9, defect 5: names that are not DNS names made `unit_name` panic, and a newline in a
/// pod or namespace name reached Description= and [X-Kubernetes] as a new directive.
#[test]
fn issue9_defect5_names_are_validated_and_never_panic() {
    for id in ["defect5-newline-in-pod-name", "defect5-non-ascii-pod-name", "defect5-bracket-container"] {
        let e = refusal(id);
        assert!(e.starts_with("CreateContainerConfigError: pod "), "{e}");
    }
    let text = round_trip("defect5-longest-names");
    assert!(text.contains(&format!("Description=vks pod {}/", "n".repeat(63))), "{text}");
}

/// Issue 9, defect 7: a command line longer than systemd's line buffer failed to load ("No
/// buffer space available"); it is refused before anything is written.
#[test]
fn issue9_defect7_command_lines_longer_than_systemd_reads_are_refused() {
    let e = refusal("defect7-command-line-too-long");
    assert!(e.contains("needs a unit file line of 1100"), "{e}");
    assert!(e.contains("more than systemd's limit of 1048575 bytes"), "{e}");
    round_trip("defect7-command-line-just-fits");
    let e = refusal("defect7-environment-too-long");
    assert!(e.starts_with("CreateContainerError: container c: env \"BIG\" needs a unit file line"), "{e}");
}

/// The model reads what systemd 252 reads; these are the rules the e2e test checks against the
/// real systemd (see tests/e2e/unit_roundtrip.rs, which loads the same units).
#[test]
fn the_systemd_model_follows_systemd_252() {
    let parse = |s: &str| model::parse_service(s.as_bytes());
    let unit = |service: &str| format!("[Unit]\nDescription=x\n[Service]\nType=exec\n{service}");
    // A trailing backslash continues the line; the backslash becomes a space; comment lines in
    // between are skipped.
    let s = parse(&unit("WorkingDirectory=/tmp/a\\\n# c\nEnvironment=LOST=1\nExecStart=/bin/true\n")).unwrap();
    assert_eq!(s.working_directory.as_deref(), Some("/tmp/a Environment=LOST=1"));
    assert!(s.env.is_empty());
    // `$` in the executable path is literal; `$$` in an argument is `$`; `$X` alone is split.
    let s = parse(&unit("Environment=\"X=a b\"\nExecStart=@/opt/a$$b/r \"$$0\" $X \"${X}!\" $$X $UNSET\n")).unwrap();
    assert_eq!(s.path, "/opt/a$$b/r");
    assert_eq!(s.argv, [b"$0".to_vec(), b"a".to_vec(), b"b".to_vec(), b"a b!".to_vec(), b"$X".to_vec()]);
    // Paths systemd refuses.
    assert!(parse(&unit("ExecStart=\"@/opt/a\\\\b\" x\n")).is_err());
    assert!(parse(&unit("ExecStart=/bin/true\nWorkingDirectory=/tmp/../tmp\n")).is_err());
    assert_eq!(
        parse(&unit("ExecStart=/bin/true\nWorkingDirectory=//tmp/./x/\n")).unwrap().working_directory.as_deref(),
        Some("/tmp/x")
    );
    // Lines of LONG_LINE_MAX bytes or more fail the whole file.
    let long = format!("ExecStart=/bin/true {}\n", "x".repeat(model::LONG_LINE_MAX));
    assert!(parse(&unit(&long)).is_err());
    // Unknown specifiers fail, `%%` is `%`, C escapes and quotes.
    assert!(parse(&unit("ExecStart=/bin/true %z\n")).is_err());
    let s = parse(&unit("ExecStart=/bin/e 100%% 'a b' \\x41\\s\\101 \"\\u00e9\" \\; ;\n")).unwrap();
    assert_eq!(
        s.argv,
        [b"/bin/e".to_vec(), b"100%".to_vec(), b"a b".to_vec(), b"A A".to_vec(), "é".into(), b";".to_vec()]
    );
    // Environment values may hold control characters in 252; a bad name is dropped.
    let s = parse(&unit("ExecStart=/bin/true\nEnvironment=\"A=\\x01\\x1b\" B.C=1\n")).unwrap();
    assert_eq!(s.env, [(b"A".to_vec(), b"\x01\x1b".to_vec())]);
    assert_eq!(s.warnings.len(), 1);
    // A carriage return ends a line.
    let s = parse(&unit("ExecStart=/bin/true\nEnvironment=A=1\rEnvironment=B=2\n")).unwrap();
    assert_eq!(s.env.len(), 2);
}
