//! Round-trip cases of the pod -> unit path, shared by the property test (tests/units.rs) and the
//! real-systemd test (tests/e2e/unit_roundtrip.rs).
//!
//! A case says what the process must receive (argv, environment, working directory) or that the
//! pod must be refused. It is turned into a pod that asks for exactly that (every `$` written as
//! `$$`, Kubernetes' escape, so `$(VAR)` expansion gives the values back), planned and rendered
//! by vks's real code, and the unit is read back by the systemd model (`model.rs`).
//! The corpus of interesting cases is tests/testdata/unit-roundtrip/corpus.yaml.

#![allow(dead_code)]

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use vks::reason::WaitingReason;
use vks::unit::{self, ContainerKind, ImageInfo, NodeContext, SpecError, UnitSpec};

use super::model;

/// The recorder program's name when a case runs it by a bare name (found in PATH).
pub const RECORDER: &str = "vks-rt-rec";
/// Where a bare [`RECORDER`] is found.
pub const RECORDER_IN_PATH: &str = "/usr/local/bin/vks-rt-rec";

/// A string of the corpus: plain, or repeated (for very long values).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Text {
    /// As written.
    Plain(String),
    /// `prefix` + `repeat` × `times`.
    Repeat {
        /// Repeated part.
        repeat: String,
        /// How often.
        times: usize,
        /// Before it.
        #[serde(default)]
        prefix: String,
    },
}

impl Text {
    fn get(&self) -> String {
        match self {
            Text::Plain(s) => s.clone(),
            Text::Repeat { repeat, times, prefix } => format!("{prefix}{}", repeat.repeat(*times)),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
struct CorpusEnv {
    name: Text,
    value: Text,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CorpusCase {
    id: String,
    #[serde(default)]
    why: String,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    pod: Option<Text>,
    #[serde(default)]
    container: Option<Text>,
    argv: Vec<Text>,
    #[serde(default)]
    env: Vec<CorpusEnv>,
    #[serde(default)]
    working_dir: Option<Text>,
    #[serde(default)]
    refused: Option<String>,
}

/// What a case must come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The process receives exactly what the case says.
    RoundTrip,
    /// vks refuses the pod with a message containing this.
    Refused(String),
    /// Either (random hostile input): refused with a clear reason, or an exact round trip.
    Either,
}

/// One case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Name of the case (corpus id or `random-N`).
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// argv as the process must see it; argv\[0\] is also the command (an absolute path or the
    /// bare [`RECORDER`]).
    pub argv: Vec<String>,
    /// The container's environment, in order, names unique.
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// What must happen.
    pub expect: Expect,
}

impl Case {
    /// The program file the case runs.
    pub fn exe(&self) -> String {
        let a0 = self.argv.first().cloned().unwrap_or_default();
        if a0.contains('/') { a0 } else { format!("/usr/local/bin/{a0}") }
    }

    /// The pod asking for this case.
    pub fn pod(&self) -> Pod {
        let esc = |s: &str| s.replace('$', "$$");
        let env: Vec<serde_json::Value> =
            self.env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": esc(v)})).collect();
        let mut container = serde_json::json!({
            "name": self.container,
            "image": self.exe(),
            "command": self.argv.first().map(|a| vec![esc(a)]).unwrap_or_default(),
            "args": self.argv.iter().skip(1).map(|a| esc(a)).collect::<Vec<_>>(),
            "env": env,
        });
        if let Some(w) = &self.working_dir {
            container["workingDir"] = w.clone().into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": self.pod, "namespace": self.namespace, "uid": format!("uid-{}", self.id)},
            "spec": {"nodeName": "node-1", "restartPolicy": "Never", "containers": [container]}
        }))
        .expect("case pod")
    }
}

/// The corpus of interesting cases.
pub fn corpus() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/unit-roundtrip/corpus.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<CorpusCase> = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cases
        .into_iter()
        .map(|c| Case {
            namespace: c.namespace.map_or_else(|| "rt".into(), |t| t.get()),
            pod: c.pod.map_or_else(|| c.id.clone(), |t| t.get()),
            container: c.container.map_or_else(|| "c".into(), |t| t.get()),
            argv: c.argv.iter().map(Text::get).collect(),
            env: c.env.iter().map(|e| (e.name.get(), e.value.get())).collect(),
            working_dir: c.working_dir.map(|t| t.get()),
            expect: c.refused.map_or(Expect::RoundTrip, Expect::Refused),
            id: {
                let _ = c.why;
                c.id
            },
        })
        .collect()
}

/// What vks made of a case.
pub enum Outcome {
    /// Refused.
    Refused(SpecError),
    /// The unit (name, text) and its plan.
    Unit(Box<UnitSpec>, String),
}

/// Plans and renders the case with vks's real code.
pub fn render(case: &Case) -> Outcome {
    let pod = case.pod();
    let spec = pod.spec.as_ref().expect("spec");
    let (c, kind) = unit::pod_containers(spec)[0];
    assert_eq!(kind, ContainerKind::App);
    let image = ImageInfo { entrypoint: vec![case.exe()], image_id: "file://rt".into(), ..ImageInfo::default() };
    // The round trip is about values, not sandboxing: without the hardening profile, whose
    // PrivateTmp= would hide the cases' working directories under /tmp.
    let mut node = NodeContext::new("node-1", "192.0.2.10");
    node.policy.hardening = false;
    let exe = case.exe();
    let is_executable = |p: &str| p == exe || p == RECORDER_IN_PATH;
    match unit::plan(&pod, c, kind, &image, &node, &unit::ContainerData::default(), is_executable) {
        Err(e) => Outcome::Refused(e),
        Ok(plan) => {
            let text = unit::render(&plan).expect("a planned unit renders");
            Outcome::Unit(Box::new(plan), text)
        }
    }
}

/// What the process must receive: (program, argv, env, cwd).
pub struct Wanted {
    /// The program, as systemd simplifies the path.
    pub exe: String,
    /// argv.
    pub argv: Vec<Vec<u8>>,
    /// The environment the pod defines.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The working directory (normalized), if set.
    pub cwd: Option<String>,
}

/// What the case asks for.
pub fn wanted(case: &Case) -> Wanted {
    Wanted {
        exe: model::path_simplify(&case.exe()),
        argv: case.argv.iter().map(|a| a.clone().into_bytes()).collect(),
        env: case.env.iter().map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes())).collect(),
        cwd: case.working_dir.as_deref().filter(|w| !w.is_empty()).map(model::path_simplify),
    }
}

/// Checks one case end to end through the model: `Ok(Some(unit))` when it must be loaded (name,
/// text), `Ok(None)` when vks refused it as it should, `Err` with what went wrong.
pub fn check(case: &Case) -> Result<Option<(String, String)>, String> {
    match (render(case), &case.expect) {
        (Outcome::Refused(e), Expect::Refused(want)) => {
            clear_refusal(&e)?;
            if e.message.contains(want.as_str()) {
                Ok(None)
            } else {
                Err(format!("refused, but not for {want:?}: {}: {}", e.reason, e.message))
            }
        }
        (Outcome::Refused(e), Expect::Either) => clear_refusal(&e).map(|()| None),
        (Outcome::Refused(e), Expect::RoundTrip) => Err(format!("refused: {}: {}", e.reason, e.message)),
        (Outcome::Unit(_, text), Expect::Refused(want)) => Err(format!("not refused ({want:?}); unit:\n{text}")),
        (Outcome::Unit(plan, text), _) => {
            check_unit(case, &plan, &text).map_err(|e| format!("{e}\n--- unit:\n{text}"))?;
            Ok(Some((plan.name.clone(), text)))
        }
    }
}

fn clear_refusal(e: &SpecError) -> Result<(), String> {
    let ok = matches!(e.reason, WaitingReason::CreateContainerError | WaitingReason::CreateContainerConfigError)
        && (e.message.starts_with("container ") || e.message.starts_with("pod "))
        && !e.message.contains(['\n', '\r']);
    if ok { Ok(()) } else { Err(format!("unclear refusal: {}: {:?}", e.reason, e.message)) }
}

fn check_unit(case: &Case, plan: &UnitSpec, text: &str) -> Result<(), String> {
    if !unit::name::is_valid_unit_name(&plan.name) {
        return Err(format!("invalid unit name {:?}", plan.name));
    }
    let svc = model::parse_service(text.as_bytes()).map_err(|e| format!("systemd would refuse the unit: {e:?}"))?;
    let want = wanted(case);
    let mut problems = Vec::new();
    if !svc.warnings.is_empty() {
        problems.push(format!("systemd warnings: {:?}", svc.warnings));
    }
    if svc.path != want.exe {
        problems.push(format!("program {:?}, want {:?}", svc.path, want.exe));
    }
    if svc.argv != want.argv {
        problems.push(format!("argv {:?}, want {:?}", lossy(&svc.argv), lossy(&want.argv)));
    }
    if svc.env != want.env {
        problems.push(format!("env {:?}, want {:?}", svc.env, want.env));
    }
    if svc.working_directory != want.cwd {
        problems.push(format!("working directory {:?}, want {:?}", svc.working_directory, want.cwd));
    }
    let description = format!("vks pod {}/{} container {}", case.namespace, case.pod, case.container);
    if svc.description.as_deref() != Some(description.as_str()) {
        problems.push(format!("Description {:?}", svc.description));
    }
    let mut keys: Vec<String> = svc.keys.iter().filter(|(s, _)| s == "Service").map(|(_, k)| k.clone()).collect();
    keys.sort();
    let mut want_keys: Vec<String> = [
        "Type",
        "ExecStart",
        "RemainAfterExit",
        "Restart",
        "KillMode",
        "KillSignal",
        "SendSIGKILL",
        "TimeoutStopSec",
        "StandardInput",
        "StandardOutput",
        "StandardError",
        "SyslogIdentifier",
        "LogExtraFields",
        "LogExtraFields",
        "CPUAccounting",
        "MemoryAccounting",
        "TasksAccounting",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(case.env.iter().map(|_| "Environment".to_owned()))
    .chain(want.cwd.iter().map(|_| "WorkingDirectory".to_owned()))
    // Resources and confinement: settings vks decides, none from the pod's values.
    .chain(plan.confinement.keys())
    .collect();
    want_keys.sort();
    if keys != want_keys {
        problems.push(format!("[Service] directives {keys:?}, want {want_keys:?}"));
    }
    let meta = unit::UnitMeta::parse(text);
    if meta.as_ref() != Some(&plan.meta)
        || (plan.meta.namespace.as_str(), plan.meta.pod.as_str(), plan.meta.container.as_str())
            != (case.namespace.as_str(), case.pod.as_str(), case.container.as_str())
    {
        problems.push(format!("[X-Kubernetes] reads back as {meta:?}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

fn lossy(v: &[Vec<u8>]) -> Vec<String> {
    v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

// --- Random cases -------------------------------------------------------------------------

/// Characters that mean something to systemd, to shells, to Kubernetes or to YAML, and some that
/// mean nothing.
const HOSTILE: &[&str] = &[
    "\\", "\"", "'", "$", "{", "}", "(", ")", "%", ";", " ", "\t", "\n", "\r", "#", "=", "[", "]", "@", "-", ":", "+",
    "!", "~", "*", "\u{1}", "\u{1b}", "\u{7f}", "é", "☃", "日本", "\u{2028}", "\u{feff}", "\u{85}", "a", "b", "n", "x",
    "0", "7", "/", ".", "$(", "${", "$$", "%n", "%%", "\\\\", "\\n", "\\x41", "\\;", "\\\n",
];

/// A string of hostile pieces, sometimes long, sometimes any Unicode; no NUL.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(prop::sample::select(HOSTILE), 0..24).prop_map(|v| v.concat()),
        2 => any::<String>().prop_map(|s| s.replace('\0', "")),
        1 => (prop::sample::select(HOSTILE), 100usize..4000).prop_map(|(s, n)| s.repeat(n)),
    ]
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,12}".prop_filter("not a name systemd or the test sets", |n| {
        !matches!(n.as_str(), "PATH" | "INVOCATION_ID" | "JOURNAL_STREAM" | "SYSTEMD_EXEC_PID" | "LANG")
    })
}

/// A path component: hostile but no control character, `/` or `..`; sometimes empty or `.`.
fn component() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        "\\", "\"", "'", "$", "{", "}", "%", ";", " ", "#", "=", "[", "@", "-", "é", "☃", "\u{2028}", "a", "b", "x",
        "0", ".", "$(", "%n", "%%", "\\\\",
    ];
    prop_oneof![
        8 => prop::collection::vec(prop::sample::select(PIECES), 1..8)
            .prop_map(|v| v.concat())
            .prop_filter("not ..", |c| c != ".."),
        1 => Just(String::new()),
        1 => Just(".".to_owned()),
    ]
}

fn working_dir() -> impl Strategy<Value = Option<String>> {
    let dir = (prop::collection::vec(component(), 1..4), any::<bool>()).prop_map(|(parts, slash)| {
        let mut p = format!("/tmp/vks-rt/{}", parts.join("/"));
        if slash {
            p.push('/');
        }
        p
    });
    prop_oneof![1 => Just(None), 3 => dir.prop_map(Some)]
}

fn exe_path() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(RECORDER.to_owned()),
        1 => Just(RECORDER_IN_PATH.to_owned()),
        3 => component()
            .prop_filter("a directory name", |c| !c.is_empty() && c != "." && !c.contains(['"', '\'', '\\']))
            .prop_map(|c| format!("/opt/vks-rt/{c}/{RECORDER}")),
    ]
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?"
}

/// Cases that must round-trip exactly: argv, env and working directories systemd can carry.
pub fn representable(n: usize) -> impl Strategy<Value = Case> {
    (
        exe_path(),
        prop::collection::vec(text(), 0..6),
        prop::collection::btree_map(env_name(), text(), 0..5),
        working_dir(),
        dns_label(),
        prop::collection::vec(dns_label(), 1..3),
        dns_label(),
    )
        .prop_map(move |(exe, args, env, wd, ns, pod, c)| Case {
            id: format!("random-{n}"),
            namespace: ns,
            pod: format!("r{n}.{}", pod.join(".")),
            container: c,
            argv: std::iter::once(exe).chain(args).collect(),
            env: env.into_iter().collect(),
            working_dir: wd,
            expect: Expect::RoundTrip,
        })
}

/// Anything, names included: refused with a clear reason, or an exact round trip.
pub fn hostile(n: usize) -> impl Strategy<Value = Case> {
    let name = prop_oneof![3 => dns_label(), 1 => text()];
    let any_env_name = prop_oneof![3 => env_name(), 1 => text()];
    let exe = prop_oneof![3 => exe_path(), 1 => text().prop_map(|t| format!("/opt/{t}/x"))];
    let value = prop_oneof![9 => text(), 1 => text().prop_map(|t| format!("{t}\0{t}"))];
    let wd = prop_oneof![3 => working_dir(), 1 => text().prop_map(Some)];
    (
        exe,
        prop::collection::vec(value.clone(), 0..5),
        prop::collection::vec((any_env_name, value), 0..4),
        wd,
        name.clone(),
        name.clone(),
        name,
    )
        .prop_map(move |(exe, args, env, wd, ns, pod, c)| {
            let mut seen = std::collections::HashSet::new();
            Case {
                id: format!("hostile-{n}"),
                namespace: ns,
                pod,
                container: c,
                argv: std::iter::once(exe).chain(args).collect(),
                env: env.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect(),
                working_dir: wd,
                expect: Expect::Either,
            }
        })
}

/// `count` cases of `strategy` (numbered from `first`) from a fixed seed, for the
/// real-systemd test.
pub fn seeded<S: Strategy<Value = Case>>(
    count: usize,
    seed: u64,
    first: usize,
    strategy: impl Fn(usize) -> S,
) -> Vec<Case> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    (first..first + count).map(|i| strategy(i).new_tree(&mut runner).expect("a case").current()).collect()
}
