//! The pod -> unit path against a REAL systemd 252 (issue 9): units rendered by vks's real code
//! for the corpus (tests/testdata/unit-roundtrip/corpus.yaml) and a few hundred seeded random
//! cases are loaded into one bare test node and started; a tiny recorder program writes what it
//! really received (program, working directory, argv, environment) and the test compares it
//! byte for byte with what the pod asked for. Cases vks refuses never reach systemd.
//!
//! The same run checks the test-side model of systemd's parser (tests/units/model.rs, used by
//! the property test in tests/units.rs) against the real one: hand-written units exercising
//! each parsing rule the model encodes are loaded too, and the real outcome must be the model's.
//!
//! Needs no cluster: the node is booted without vks (`Node::bare`).

#[path = "../units/cases.rs"]
mod cases;
#[path = "../units/model.rs"]
mod model;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::support::{Node, check, wait_for};

/// Seeded random cases loaded besides the corpus: representable ones (must round-trip) and
/// hostile ones (refused by vks, or round-trip).
const RANDOM_CASES: usize = 300;
const HOSTILE_CASES: usize = 150;
const SEED: u64 = 0x00c0_ffee_0009;
const REC: &str = cases::RECORDER_IN_PATH;
const OUT: &str = "/run/vks-rt";

/// The recorder: writes, NUL-separated, readlink(/proc/self/exe), getcwd(), argc, argv,
/// envc, environ to /run/vks-rt/<its unit name> (taken from its cgroup), then exits 0.
const RECORDER_C: &str = r#"
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
static void put(FILE *f, const char *s) { fwrite(s, 1, strlen(s) + 1, f); }
int main(int argc, char **argv) {
    char cg[8192], buf[PATH_MAX], tmp[PATH_MAX], out[PATH_MAX];
    FILE *c = fopen("/proc/self/cgroup", "r");
    if (!c || !fgets(cg, sizeof cg, c)) return 90;
    cg[strcspn(cg, "\n")] = 0;
    const char *unit = strrchr(cg, '/');
    if (!unit) return 91;
    snprintf(out, sizeof out, "/run/vks-rt/%s", unit + 1);
    snprintf(tmp, sizeof tmp, "/run/vks-rt/.tmp-%d", (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return 92;
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    buf[n < 0 ? 0 : n] = 0;
    put(f, buf);
    if (!getcwd(buf, sizeof buf)) buf[0] = 0;
    put(f, buf);
    fprintf(f, "%d", argc); fputc(0, f);
    for (int i = 0; i < argc; i++) put(f, argv[i]);
    int envc = 0;
    for (char **e = environ; *e; e++) envc++;
    fprintf(f, "%d", envc); fputc(0, f);
    for (char **e = environ; *e; e++) put(f, *e);
    if (fclose(f) != 0) return 93;
    return rename(tmp, out) == 0 ? 0 : 94;
}
"#;

/// What a process received.
#[derive(Debug)]
struct Received {
    exe: String,
    cwd: String,
    argv: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
}

fn parse_record(data: &[u8]) -> Option<Received> {
    let mut fields = data.split(|&b| b == 0);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let exe = text(fields.next()?);
    let cwd = text(fields.next()?);
    let argc: usize = text(fields.next()?).parse().ok()?;
    let argv: Vec<Vec<u8>> = (0..argc).map(|_| fields.next().map(<[u8]>::to_vec)).collect::<Option<_>>()?;
    let envc: usize = text(fields.next()?).parse().ok()?;
    let env = (0..envc)
        .map(|_| {
            let e = fields.next()?;
            let eq = e.iter().position(|&b| b == b'=')?;
            Some((e[..eq].to_vec(), e[eq + 1..].to_vec()))
        })
        .collect::<Option<_>>()?;
    Some(Received { exe, cwd, argv, env })
}

/// What the test expects a unit's process to receive.
struct Expected {
    exe: String,
    cwd: Option<String>,
    argv: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Compares what a process received with what was expected; `extra_ok` are the names systemd
/// itself adds to every service's environment.
fn compare(got: &Received, want: &Expected, extra_ok: &BTreeSet<Vec<u8>>) -> Vec<String> {
    let mut problems = Vec::new();
    let lossy = |v: &[Vec<u8>]| v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>();
    if got.exe != want.exe {
        problems.push(format!("program {:?}, want {:?}", got.exe, want.exe));
    }
    let want_cwd = want.cwd.clone().unwrap_or_else(|| "/".into());
    if got.cwd != want_cwd {
        problems.push(format!("cwd {:?}, want {want_cwd:?}", got.cwd));
    }
    if got.argv != want.argv {
        problems.push(format!("argv {:?}, want {:?}", lossy(&got.argv), lossy(&want.argv)));
    }
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for (k, _) in &got.env {
        *seen.entry(k.as_slice()).or_default() += 1;
    }
    for (k, v) in &want.env {
        match got.env.iter().find(|(gk, _)| gk == k) {
            Some((_, gv)) if gv == v && seen.get(k.as_slice()) == Some(&1) => {}
            other => problems.push(format!(
                "env {:?} = {:?}, want {:?}",
                String::from_utf8_lossy(k),
                other.map(|(_, gv)| String::from_utf8_lossy(gv).into_owned()),
                String::from_utf8_lossy(v)
            )),
        }
    }
    for (k, _) in &got.env {
        if !want.env.iter().any(|(wk, _)| wk == k) && !extra_ok.contains(k) {
            problems.push(format!("unexpected env {:?}", String::from_utf8_lossy(k)));
        }
    }
    problems
}

/// Hand-written units checking the model's rules against the real parser (`{REC}` is the
/// recorder, `{CAL}` a directory for the case).
fn calibration_units() -> Vec<(&'static str, String)> {
    let long = "x".repeat(model::LONG_LINE_MAX);
    [
        ("baseline", "ExecStart=@{REC} rec\n".to_owned()),
        ("continuation", "ExecStart=@{REC} rec\nWorkingDirectory={CAL}/a\\\nEnvironment=LOST=1\n".to_owned()),
        ("continuation-comment", "ExecStart=@{REC} rec\nEnvironment=\"A=1\" \\\n# comment\n  \"B=2\"\n".to_owned()),
        ("dollar-in-path", "ExecStart=@{CAL}/a$$b/vks-rt-rec rec\n".to_owned()),
        (
            "dollar-in-args",
            "Environment=\"X=a b\"\nExecStart=@{REC} rec \"$$0\" $X \"${X}!\" $$X $UNSET \"${X:-d}\"\n".to_owned(),
        ),
        ("backslash-in-path", "ExecStart=\"@{CAL}/a\\\\b/vks-rt-rec\" rec\n".to_owned()),
        ("dotdot", "ExecStart=@{REC} rec\nWorkingDirectory=/tmp/../tmp\n".to_owned()),
        ("not-normalized", "ExecStart=@{REC} rec\nWorkingDirectory=//tmp/vks-rt/./cal/not-normalized/\n".to_owned()),
        ("long-line", format!("ExecStart=@{{REC}} rec {long}\n")),
        ("unknown-specifier", "ExecStart=@{REC} rec %z\n".to_owned()),
        (
            "escapes",
            "ExecStart=@{REC} rec 100%% 'a b' \\x41\\s\\101 \"\\u00e9\" \\; \"\\x01\\x7f\" \\q \";\" a\\\"b\n"
                .to_owned(),
        ),
        ("env-control", "ExecStart=@{REC} rec\nEnvironment=\"A=\\x01\\x1b\\r\" B.C=1 \"D=%%\"\n".to_owned()),
        ("cr-ends-a-line", "ExecStart=@{REC} rec\nEnvironment=A=1\rEnvironment=B=2\n".to_owned()),
        ("two-commands", "ExecStart=@{REC} rec ; /bin/true\n".to_owned()),
        ("trailing-space-trimmed", "ExecStart=@{REC} rec\nWorkingDirectory={CAL}/t \n".to_owned()),
    ]
    .into_iter()
    .map(|(id, body)| {
        let body = body.replace("{REC}", REC).replace("{CAL}", &format!("/tmp/vks-rt/cal/{id}"));
        (id, format!("[Unit]\nDescription=model check {id}\n[Service]\nType=exec\nRemainAfterExit=yes\n{body}"))
    })
    .collect()
}

/// Writes `content` at `path` inside the node (creating directories).
fn put(root: &Path, path: &str, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let full = root.join(path.trim_start_matches('/'));
    if let Some(dir) = full.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    std::fs::write(&full, content).unwrap_or_else(|e| panic!("writing {}: {e}", full.display()));
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, path: &str) {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&full).unwrap_or_else(|e| panic!("creating {}: {e}", full.display()));
}

#[tokio::test]
#[ignore = "needs a systemd test node (tests/run)"]
async fn units_rendered_by_vks_give_processes_exactly_what_the_pod_asked_for() {
    let started = Instant::now();
    // The cases, checked through the model first (as the property test does).
    let mut all = cases::corpus();
    let corpus_len = all.len();
    all.extend(cases::seeded(RANDOM_CASES, SEED, 0, cases::representable));
    // Hostile programs with a `..` component are left out: the test installs each program
    // through the node's /proc/PID/root, and must not write outside the node.
    let hostile = cases::seeded(HOSTILE_CASES, SEED + 1, RANDOM_CASES, cases::hostile);
    all.extend(hostile.into_iter().filter(|c| !c.exe().split('/').any(|p| p == "..")));
    let mut units: Vec<(cases::Case, String, String)> = Vec::new();
    let mut refused = 0;
    for case in &all {
        match cases::check(case) {
            Ok(Some((name, text))) => units.push((case.clone(), name, text)),
            Ok(None) => refused += 1,
            Err(e) => panic!("case {}: {e}", case.id),
        }
    }
    let names: BTreeSet<&str> = units.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names.len(), units.len(), "unit names are unique");

    // The recorder, built here.
    let dir = std::env::temp_dir().join(format!("vks-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rec.c"), RECORDER_C).unwrap();
    let rec_bin = dir.join("rec");
    check(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&rec_bin).arg(dir.join("rec.c")));
    let rec = std::fs::read(&rec_bin).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let node = Node::bare("unit-roundtrip");
    let root = node.root();
    mkdir(&root, OUT);
    put(&root, REC, &rec, 0o755);
    for (case, _, _) in &units {
        put(&root, &case.exe(), &rec, 0o755);
        if let Some(cwd) = cases::wanted(case).cwd {
            mkdir(&root, &cwd);
        }
    }
    // Calibration units: the model's prediction decides which files they need.
    let calibration: Vec<(String, String, Result<model::Service, model::Refused>)> = calibration_units()
        .into_iter()
        .map(|(id, text)| {
            let predicted = model::parse_service(text.as_bytes());
            (format!("vks-rt-cal-{id}.service"), text, predicted)
        })
        .collect();
    for (_, _, predicted) in &calibration {
        if let Ok(s) = predicted {
            put(&root, &s.path, &rec, 0o755);
            if let Some(cwd) = &s.working_directory {
                mkdir(&root, cwd);
            }
        }
    }
    for (_, name, text) in &units {
        put(&root, &format!("/run/systemd/system/{name}"), text.as_bytes(), 0o644);
    }
    for (name, text, _) in &calibration {
        put(&root, &format!("/run/systemd/system/{name}"), text.as_bytes(), 0o644);
    }
    node.exec(&["systemctl", "daemon-reload"]);

    // Refused by the model: the real systemd refuses to load them too.
    let mut startable: Vec<String> = units.iter().map(|(_, n, _)| n.clone()).collect();
    for (name, _, predicted) in &calibration {
        let load = node.unit_prop(name, "LoadState");
        match predicted {
            Err(why) => assert_ne!(load, "loaded", "{name}: the model refuses it ({why:?}) but systemd loaded it"),
            Ok(_) => {
                assert_eq!(load, "loaded", "{name}: the model accepts it but systemd does not");
                startable.push(name.clone());
            }
        }
    }
    for chunk in startable.chunks(100) {
        let mut args = vec!["systemctl", "start", "--no-block"];
        args.extend(chunk.iter().map(String::as_str));
        node.exec(&args);
    }
    let out_dir = root.join(OUT.trim_start_matches('/'));
    wait_for("every unit's process to record what it received", Duration::from_secs(120), async || {
        let missing: Vec<&String> = startable.iter().filter(|n| !out_dir.join(n).exists()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let first = missing[0];
        let state = ["LoadState", "ActiveState", "Result", "ExecMainStatus"].map(|p| node.unit_prop(first, p));
        Err(format!("{} missing, e.g. {first}: {state:?}", missing.len()))
    })
    .await;
    let record = |name: &str| {
        let data = std::fs::read(out_dir.join(name)).unwrap();
        parse_record(&data).unwrap_or_else(|| panic!("{name}: unreadable record"))
    };

    // What systemd adds to every environment, from the baseline unit.
    let baseline = record("vks-rt-cal-baseline.service");
    let extra_ok: BTreeSet<Vec<u8>> = baseline.env.iter().map(|(k, _)| k.clone()).collect();
    let mut failures = Vec::new();
    for (name, _, predicted) in &calibration {
        let Ok(s) = predicted else { continue };
        let want = Expected {
            exe: s.path.clone(),
            cwd: s.working_directory.clone(),
            argv: s.argv.clone(),
            env: s.env.clone(),
        };
        let problems = compare(&record(name), &want, &extra_ok);
        if !problems.is_empty() {
            failures.push(format!(
                "model check {name}: the model's prediction differs from systemd:\n{}",
                problems.join("\n")
            ));
        }
    }
    for (case, name, _) in &units {
        let w = cases::wanted(case);
        let want = Expected { exe: w.exe, cwd: w.cwd, argv: w.argv, env: w.env };
        let problems = compare(&record(name), &want, &extra_ok);
        if !problems.is_empty() {
            failures.push(format!("case {} ({name}):\n{}", case.id, problems.join("\n")));
        }
    }
    eprintln!(
        "unit round trip: {} corpus + {} random cases, {} units loaded and compared, {refused} refused by vks, \
         {} model checks, {:.1}s",
        corpus_len,
        all.len() - corpus_len,
        units.len(),
        calibration.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        units.len() + calibration.len(),
        failures.join("\n\n")
    );
}
