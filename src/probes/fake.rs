//! A [`Prober`] for tests: each action (an exec command by its words joined with blanks, other
//! actions by [`Action::describe`]) answers as scripted, after an optional delay on tokio's
//! (pausable) clock, and every run is recorded with its wall-clock time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Action, Outcome, Prober, Target};
use crate::clock::Clock;

/// How a scripted action answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Passes, or fails with this message.
    pub result: Result<(), String>,
    /// Takes this long (a probe whose delay exceeds its timeout fails with a timeout).
    pub delay: Duration,
}

impl Script {
    /// Passes at once.
    pub fn pass() -> Script {
        Script { result: Ok(()), delay: Duration::ZERO }
    }

    /// Fails at once with `message`.
    pub fn fail(message: &str) -> Script {
        Script { result: Err(message.to_owned()), delay: Duration::ZERO }
    }

    /// The same, after `d`.
    pub fn after(mut self, d: Duration) -> Script {
        self.delay = d;
        self
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The action's key.
    pub key: String,
    /// The container.
    pub container: String,
    /// When it started.
    pub at: SystemTime,
}

/// The fake prober.
#[derive(Debug, Default)]
pub struct FakeProber {
    scripts: Mutex<HashMap<String, Script>>,
    runs: Mutex<Vec<Run>>,
    clock: Clock,
}

/// The key of an action.
pub fn key(action: &Action) -> String {
    match action {
        Action::Exec(cmd) => cmd.join(" "),
        other => other.describe(),
    }
}

impl FakeProber {
    /// A fake recording times from `clock`.
    pub fn new(clock: Clock) -> FakeProber {
        FakeProber { clock, ..FakeProber::default() }
    }

    /// From now on the action with key `key` answers as `script` (default: passes at once).
    pub fn set(&self, key: &str, script: Script) {
        self.scripts.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), script);
    }

    /// Every run so far.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When the action with key `key` ran, in seconds since `start`.
    pub fn times(&self, key: &str, start: SystemTime) -> Vec<u64> {
        self.runs()
            .into_iter()
            .filter(|r| r.key == key)
            .map(|r| r.at.duration_since(start).unwrap_or_default().as_secs())
            .collect()
    }

    fn begin(&self, target: &Target, action: &Action) -> Script {
        let key = key(action);
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).push(Run {
            key: key.clone(),
            container: target.container.clone(),
            at: self.clock.wall(),
        });
        self.scripts.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned().unwrap_or_else(Script::pass)
    }
}

#[async_trait]
impl Prober for FakeProber {
    async fn probe(&self, target: &Target, action: &Action, timeout: Duration) -> Outcome {
        let s = self.begin(target, action);
        if s.delay > timeout {
            tokio::time::sleep(timeout).await;
            return Outcome::Failure(format!("{} timed out", key(action)));
        }
        tokio::time::sleep(s.delay).await;
        match s.result {
            Ok(()) => Outcome::Success(String::new()),
            Err(m) => Outcome::Failure(m),
        }
    }

    async fn handle(&self, target: &Target, action: &Action) -> Result<(), String> {
        let s = self.begin(target, action);
        if let Action::Sleep(d) = action {
            tokio::time::sleep(*d).await;
        }
        tokio::time::sleep(s.delay).await;
        s.result
    }
}
