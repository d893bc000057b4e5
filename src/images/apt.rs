//! The boundary to apt and dpkg: [`PackageManager`], its real implementation [`Apt`] (the only
//! code that runs apt-get, dpkg-query and dpkg-deb) and an in-memory fake for tests.
//!
//! apt-get runs non-interactively with `POLICYRCD` pointing at a script that denies every
//! action, so a package's maintainer scripts cannot start its daemon (policyrcd-script-zg2's
//! /usr/sbin/policy-rc.d runs the script named by `POLICYRCD`). It waits for the dpkg lock up to
//! `images.lock_timeout` instead of failing when unattended-upgrades holds it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;

/// An apt or dpkg failure, with the line apt itself printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AptError {
    /// apt's own error line (e.g. `E: Unable to locate package foo`), or what failed.
    pub message: String,
    /// The package or version is unknown to apt (an update might help).
    pub not_found: bool,
}

impl AptError {
    fn other(message: String) -> AptError {
        AptError { message, not_found: false }
    }
}

/// The operations vks needs from the package system.
#[async_trait]
pub trait PackageManager: Send + Sync + 'static {
    /// The installed version of `package`, `None` when it is not installed.
    async fn installed(&self, package: &str) -> Result<Option<String>, AptError>;
    /// Installs or upgrades `target`: `name`, `name=version`, or the path of a .deb file.
    async fn install(&self, target: &str, allow_downgrades: bool) -> Result<(), AptError>;
    /// `apt-get update`.
    async fn update(&self) -> Result<(), AptError>;
    /// The systemd service files `package` ships.
    async fn unit_files(&self, package: &str) -> Result<Vec<String>, AptError>;
    /// `Package` and `Version` of a .deb file.
    async fn deb_fields(&self, deb: &Path) -> Result<(String, String), AptError>;
}

/// apt-get, dpkg-query and dpkg-deb on this machine.
#[derive(Debug, Clone)]
pub struct Apt {
    /// The deny-everything policy-rc.d script.
    pub policy_rc_d: PathBuf,
    /// Deadline of one apt-get run.
    pub timeout: Duration,
    /// How long to wait for the dpkg lock.
    pub lock_timeout: Duration,
}

/// The first `E:` line of apt's output, else its last non-empty line.
pub fn apt_error_line(output: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with("E: "))
        .or_else(|| output.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("apt-get failed without a message")
        .trim()
        .to_owned()
}

fn looks_not_found(line: &str) -> bool {
    line.contains("Unable to locate package")
        || line.contains("has no installation candidate")
        || (line.contains("Version '") && line.contains("was not found"))
}

impl Apt {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .env("POLICYRCD", &self.policy_rc_d)
            .env("LC_ALL", "C.UTF-8")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, mut cmd: Command, what: &str) -> Result<String, AptError> {
        let out = match tokio::time::timeout(self.timeout + self.lock_timeout, cmd.output()).await {
            Err(_) => {
                return Err(AptError::other(format!(
                    "{what} did not finish within {}s",
                    (self.timeout + self.lock_timeout).as_secs()
                )));
            }
            Ok(Err(e)) => return Err(AptError::other(format!("{what}: cannot run: {e}"))),
            Ok(Ok(o)) => o,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let line = apt_error_line(&all);
        Err(AptError { not_found: looks_not_found(&line), message: line })
    }

    fn apt_get(&self) -> Command {
        let mut c = self.command("apt-get");
        c.arg("-q")
            .arg("-o")
            .arg(format!("DPkg::Lock::Timeout={}", self.lock_timeout.as_secs()))
            .arg("-o")
            .arg("Dpkg::Options::=--force-confdef")
            .arg("-o")
            .arg("Dpkg::Options::=--force-confold");
        c
    }
}

#[async_trait]
impl PackageManager for Apt {
    async fn installed(&self, package: &str) -> Result<Option<String>, AptError> {
        let mut c = self.command("dpkg-query");
        c.args(["-W", "-f", "${db:Status-Status} ${Version}", "--", package]);
        match self.run(c, "dpkg-query").await {
            Ok(out) => Ok(out.strip_prefix("installed ").map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())),
            // dpkg-query exits 1 for a package it never heard of.
            Err(_) => Ok(None),
        }
    }

    async fn install(&self, target: &str, allow_downgrades: bool) -> Result<(), AptError> {
        let mut c = self.apt_get();
        c.args(["install", "-y", "--no-install-recommends"]);
        if allow_downgrades {
            c.arg("--allow-downgrades");
        }
        c.arg("--").arg(target);
        self.run(c, &format!("apt-get install {target}")).await.map(drop)
    }

    async fn update(&self) -> Result<(), AptError> {
        let mut c = self.apt_get();
        c.arg("update");
        self.run(c, "apt-get update").await.map(drop)
    }

    async fn unit_files(&self, package: &str) -> Result<Vec<String>, AptError> {
        let mut c = self.command("dpkg-query");
        c.args(["-L", "--", package]);
        let out = self.run(c, "dpkg-query -L").await?;
        Ok(out
            .lines()
            .filter(|l| {
                let dir = l.rsplit_once('/').map_or("", |(d, _)| d);
                (dir == "/lib/systemd/system" || dir == "/usr/lib/systemd/system")
                    && l.ends_with(".service")
                    && !l.contains('@')
            })
            .map(str::to_owned)
            .collect())
    }

    async fn deb_fields(&self, deb: &Path) -> Result<(String, String), AptError> {
        let mut c = self.command("dpkg-deb");
        c.arg("-f").arg(deb).args(["Package", "Version"]);
        let out = self.run(c, "dpkg-deb -f").await?;
        let field =
            |name: &str| out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()));
        match (field("Package"), field("Version")) {
            (Some(p), Some(v)) if !p.is_empty() => Ok((p, v)),
            _ => Err(AptError::other(format!("{} is not a Debian package (no Package/Version fields)", deb.display()))),
        }
    }
}

/// An in-memory package system for tests: packages that "exist" in the repository, and what is
/// installed.
#[derive(Debug, Default)]
pub struct FakeApt {
    state: std::sync::Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    /// name → (candidate versions, unit files)
    repo: std::collections::BTreeMap<String, (Vec<String>, Vec<String>)>,
    installed: std::collections::BTreeMap<String, String>,
    calls: Vec<String>,
    install_time: std::time::Duration,
}

impl FakeApt {
    /// Makes `name` installable at `versions` (the last is the candidate).
    pub fn publish(&self, name: &str, versions: &[&str], units: &[&str]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.repo.insert(
            name.to_owned(),
            (versions.iter().map(|v| (*v).to_owned()).collect(), units.iter().map(|u| (*u).to_owned()).collect()),
        );
    }

    /// Marks `name` installed at `version`.
    pub fn preinstall(&self, name: &str, version: &str) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).installed.insert(name.to_owned(), version.to_owned());
    }

    /// Makes every install take `d` (to let requests overlap).
    pub fn set_install_time(&self, d: std::time::Duration) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).install_time = d;
    }

    /// Calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).calls.clone()
    }
}

#[async_trait]
impl PackageManager for FakeApt {
    async fn installed(&self, package: &str) -> Result<Option<String>, AptError> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).installed.get(package).cloned())
    }

    async fn install(&self, target: &str, _allow_downgrades: bool) -> Result<(), AptError> {
        let delay = self.state.lock().unwrap_or_else(|e| e.into_inner()).install_time;
        tokio::time::sleep(delay).await;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.calls.push(format!("install {target}"));
        let (name, version) = target.split_once('=').map_or((target, None), |(n, v)| (n, Some(v)));
        let Some((versions, _)) = s.repo.get(name) else {
            return Err(AptError { message: format!("E: Unable to locate package {name}"), not_found: true });
        };
        let v = match version {
            Some(v) if versions.iter().any(|x| x == v) => v.to_owned(),
            Some(v) => {
                return Err(AptError {
                    message: format!("E: Version '{v}' for '{name}' was not found"),
                    not_found: true,
                });
            }
            None => versions.last().cloned().unwrap_or_default(),
        };
        s.installed.insert(name.to_owned(), v);
        Ok(())
    }

    async fn update(&self) -> Result<(), AptError> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).calls.push("update".to_owned());
        Ok(())
    }

    async fn unit_files(&self, package: &str) -> Result<Vec<String>, AptError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .repo
            .get(package)
            .map(|r| r.1.clone())
            .unwrap_or_default())
    }

    async fn deb_fields(&self, deb: &Path) -> Result<(String, String), AptError> {
        Err(AptError::other(format!("{}: the fake has no .deb files", deb.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_error_lines() {
        let out = "Reading package lists...\nBuilding dependency tree...\nE: Unable to locate package nope\n";
        assert_eq!(apt_error_line(out), "E: Unable to locate package nope");
        assert!(looks_not_found(&apt_error_line(out)));
        let v = "E: Version '9.9' for 'uptimed' was not found";
        assert!(looks_not_found(v));
        let dl = "Err:1 http://127.0.0.1:1/x x 1.0\nE: Failed to fetch http://127.0.0.1:1/x.deb  Connection refused\n";
        assert!(apt_error_line(dl).starts_with("E: Failed to fetch"));
        assert!(!looks_not_found(&apt_error_line(dl)));
        assert_eq!(apt_error_line("only this"), "only this");
    }
}
