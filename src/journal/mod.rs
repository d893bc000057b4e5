//! Reading containers' lines from the journal, for `kubectl logs` (the kubelet API) and
//! termination messages (`pods::termination`).
//!
//! Past lines are read by vks's own reader of the journal files ([`native`], `vks
//! journal-read` run as a child); following new lines is `journalctl -f`. Both write
//! journalctl's export format (binary-safe), parsed here into [`Entry`] values. Facts of systemd
//! 252 this relies on (checked on a test node): `-f` alone starts with the last 10 entries (`-n
//! all` starts with all); `--cursor` is inclusive, `--after-cursor` is not; and a *filtered*
//! `-f` started before any entry carried the matched value misses entries (so following goes
//! through an unfiltered reader, see the logs' `hub.rs`).

mod files;
pub mod native;

use std::process::Stdio;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, ChildStdout, Command};

/// The fields asked from journalctl besides those export always writes (`__CURSOR`,
/// `__REALTIME_TIMESTAMP`, `__MONOTONIC_TIMESTAMP`, `_BOOT_ID`).
pub const FIELDS: &str = "MESSAGE,_LINE_BREAK,VKS_POD_UID,VKS_CONTAINER,_SYSTEMD_INVOCATION_ID,_SYSTEMD_UNIT";

/// The largest field value accepted from journalctl (journald's LineMax is 48 KiB by default).
const MAX_FIELD: u64 = 64 << 20;

/// One journal entry, as much of it as the logs need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Where it is in the journal: journalctl's cursor (`s=<seqnum id>;i=<seqnum>;...`) or
    /// [`native`]'s (`i=<seqnum>;t=<realtime>`).
    pub cursor: String,
    /// When journald received it, µs since the epoch.
    pub realtime_us: u64,
    /// The line, without its newline.
    pub message: Vec<u8>,
    /// False when journald marked the entry as not ending a line (`_LINE_BREAK`).
    pub ends_line: bool,
    /// `VKS_POD_UID`.
    pub pod_uid: Option<String>,
    /// `VKS_CONTAINER`.
    pub container: Option<String>,
    /// `_SYSTEMD_INVOCATION_ID`.
    pub invocation: Option<String>,
    /// `_SYSTEMD_UNIT`.
    pub unit: Option<String>,
}

/// A position in the journal, for ordering entries seen by two readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seqnum {
    /// The sequence number space (`s=`); numbers compare only within one. `None` from vks's
    /// own reader, which does not know it: its numbers are compared as if in the same space
    /// (journald keeps one space across rotations and restarts; it starts a new one only with a
    /// new, empty journal).
    pub id: Option<String>,
    /// The number (`i=`).
    pub n: u64,
}

impl Entry {
    /// The entry's sequence number, from its cursor.
    pub fn seqnum(&self) -> Option<Seqnum> {
        let mut id = None;
        let mut n = None;
        for part in self.cursor.split(';') {
            if let Some(v) = part.strip_prefix("s=") {
                id = Some(v.to_owned());
            } else if let Some(v) = part.strip_prefix("i=") {
                n = u64::from_str_radix(v, 16).ok();
            }
        }
        Some(Seqnum { id, n: n? })
    }

    /// Whether this entry comes after `other` (true when they cannot be compared: a new
    /// sequence number space is newer).
    pub fn is_after(&self, other: &Seqnum) -> bool {
        match self.seqnum() {
            Some(s) if s.id == other.id || s.id.is_none() || other.id.is_none() => s.n > other.n,
            _ => true,
        }
    }
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads the next entry of an export-format output (journalctl's or [`native`]'s); `None` at
/// the end.
pub async fn next_entry<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Entry>> {
    let mut e = Entry { ends_line: true, ..Entry::default() };
    let mut line = Vec::with_capacity(256);
    let mut any = false;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return if any { Err(bad("the journal reader's output ended inside an entry".into())) } else { Ok(None) };
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.is_empty() {
            if any {
                return Ok(Some(e));
            }
            continue;
        }
        any = true;
        let (name, value) = match line.iter().position(|b| *b == b'=') {
            Some(eq) => (line[..eq].to_vec(), line[eq + 1..].to_vec()),
            None => {
                // A binary field: NAME\n, little-endian u64 size, the bytes, \n.
                let mut size = [0u8; 8];
                r.read_exact(&mut size).await?;
                let size = u64::from_le_bytes(size);
                if size > MAX_FIELD {
                    return Err(bad(format!("journal field of {size} bytes")));
                }
                let mut value = vec![0u8; size as usize];
                r.read_exact(&mut value).await?;
                let mut nl = [0u8; 1];
                r.read_exact(&mut nl).await?;
                (line.clone(), value)
            }
        };
        let text = || String::from_utf8_lossy(&value).into_owned();
        match name.as_slice() {
            b"__CURSOR" => e.cursor = text(),
            b"__REALTIME_TIMESTAMP" => e.realtime_us = text().parse().unwrap_or(0),
            b"MESSAGE" => e.message = value,
            b"_LINE_BREAK" => e.ends_line = false,
            b"VKS_POD_UID" => e.pod_uid = Some(text()),
            b"VKS_CONTAINER" => e.container = Some(text()),
            b"_SYSTEMD_INVOCATION_ID" => e.invocation = Some(text()),
            b"_SYSTEMD_UNIT" => e.unit = Some(text()),
            _ => {}
        }
    }
}

/// One run of a container, as its lines are found in the journal.
///
/// journald stamps a line with the run's `_SYSTEMD_INVOCATION_ID` only while systemd still
/// publishes the unit's invocation (`/run/systemd/units/invocation:<unit>`, removed when the unit
/// stops): the last lines of a run that ends quickly are often read by journald after that, and
/// come without it (seen on systemd 252). They still carry `_SYSTEMD_UNIT` (journald takes it
/// from the stream when the process is gone), and usually `VKS_POD_UID`. Such a line belongs to
/// the run whose window holds its time: from the run's start to the next run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The container's unit.
    pub unit: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The run's InvocationID.
    pub invocation: String,
    /// When the run started, µs since the epoch (0: unknown; lines without an invocation ID
    /// then need the pod UID).
    pub started_us: u64,
    /// When the next run started (the end of the window), if one did.
    pub until_us: Option<u64>,
}

impl Run {
    /// Whether `e` is a line of this run.
    pub fn owns(&self, e: &Entry) -> bool {
        match &e.invocation {
            Some(i) => *i == self.invocation,
            None => {
                let uid_ok = match e.pod_uid.as_deref() {
                    Some(u) => u == self.pod_uid,
                    None => self.started_us > 0,
                };
                uid_ok
                    && e.unit.as_deref().is_none_or(|u| u == self.unit)
                    && e.realtime_us >= self.started_us
                    && self.until_us.is_none_or(|u| e.realtime_us < u)
            }
        }
    }

    /// The query of a run that ended: every line of the unit from the run's start (or `since`,
    /// when later), to be filtered with [`Run::owns`].
    pub fn query(&self, since_us: Option<u64>) -> Query {
        let since = since_us.unwrap_or(0).max(self.started_us);
        Query {
            matches: vec![("_SYSTEMD_UNIT", self.unit.clone())],
            since_us: (since > 0).then_some(since),
            start: Start::Beginning,
            follow: false,
        }
    }

    /// The last `n` lines of a run that ended, without reading all of it: the last `n` lines
    /// stamped with the invocation ID, then only the unit's entries after the last of them
    /// (the late, unstamped lines), filtered.
    pub async fn tail(&self, n: usize) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let stamped = Query {
            matches: vec![("_SYSTEMD_UNIT", self.unit.clone()), ("_SYSTEMD_INVOCATION_ID", self.invocation.clone())],
            since_us: None,
            start: Start::Tail(n as u64),
            follow: false,
        };
        let mut reader = stamped.spawn()?;
        while let Some(e) = reader.next().await? {
            out.push(e);
        }
        let last = out.last().and_then(|e| Some((e.seqnum()?, e.realtime_us)));
        let late = match &last {
            Some((_, t)) => Query { since_us: Some(*t), ..self.query(None) },
            None => self.query(None),
        };
        let mut reader = late.spawn()?;
        while let Some(e) = reader.next().await? {
            if e.invocation.is_none() && self.owns(&e) && last.as_ref().is_none_or(|(s, _)| e.is_after(s)) {
                out.push(e);
            }
        }
        let cut = out.len().saturating_sub(n);
        out.drain(..cut);
        Ok(out)
    }
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At the beginning (or at `since`).
    Beginning,
    /// The last N matching entries.
    Tail(u64),
    /// At this cursor, inclusive.
    At(String),
    /// After this cursor.
    After(String),
}

/// One read of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `FIELD=value` matches, all of which must hold.
    pub matches: Vec<(&'static str, String)>,
    /// Only entries at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Where to start.
    pub start: Start,
    /// Keep reading new entries.
    pub follow: bool,
}

impl Query {
    /// journalctl's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> =
            ["--no-pager", "-q", "-o", "export", "--output-fields", FIELDS].into_iter().map(String::from).collect();
        if let Some(us) = self.since_us {
            a.push(format!("--since=@{}.{:06}", us / 1_000_000, us % 1_000_000));
        }
        match &self.start {
            Start::Beginning => {
                if self.follow {
                    a.extend(["-n".into(), "all".into()]);
                }
            }
            Start::Tail(n) => a.extend(["-n".into(), n.to_string()]),
            Start::At(c) => a.push(format!("--cursor={c}")),
            Start::After(c) => a.push(format!("--after-cursor={c}")),
        }
        if self.follow {
            a.push("-f".into());
        }
        for (k, v) in &self.matches {
            a.push(format!("{k}={v}"));
        }
        a
    }

    /// What vks's own reader is asked for this query; `None` when it needs journalctl (a
    /// follow, or a start at a cursor).
    pub fn native(&self) -> Option<native::Request> {
        let tail = match self.start {
            _ if self.follow => return None,
            Start::Beginning => None,
            Start::Tail(n) => Some(n),
            Start::At(_) | Start::After(_) => return None,
        };
        Some(native::Request {
            matches: self.matches.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            since_us: self.since_us,
            tail,
            directories: Vec::new(),
        })
    }

    /// Starts the reader: vks's own (`/proc/self/exe journal-read`) for past lines, journalctl
    /// for follows. It is killed when the returned [`Reader`] is dropped.
    pub fn spawn(&self) -> std::io::Result<Reader> {
        let (program, mut command) = match self.native() {
            Some(r) => {
                // /proc/self/exe: this very binary, also after an upgrade replaced the file.
                let mut c = Command::new("/proc/self/exe");
                c.arg("journal-read").args(r.args());
                ("vks journal-read", c)
            }
            None => {
                let mut c = Command::new("journalctl");
                c.args(self.args());
                ("journalctl", c)
            }
        };
        let mut child = command
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| bad(format!("{program} has no stdout")))?;
        Ok(Reader { program, child, out: tokio::io::BufReader::with_capacity(256 << 10, stdout) })
    }
}

/// A running reader (vks's own or journalctl).
pub struct Reader {
    program: &'static str,
    child: Child,
    /// Its output.
    pub out: tokio::io::BufReader<ChildStdout>,
}

impl Reader {
    /// The next entry; `None` when the reader ended (an error if it failed).
    pub async fn next(&mut self) -> std::io::Result<Option<Entry>> {
        match next_entry(&mut self.out).await? {
            Some(e) => Ok(Some(e)),
            None => {
                let status = self.child.wait().await?;
                if status.success() {
                    return Ok(None);
                }
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = (&mut stderr).take(4096).read_to_string(&mut err).await;
                }
                Err(bad(format!("{} failed ({status}): {}", self.program, err.trim())))
            }
        }
    }

    /// Whether more output is already buffered (the next entry may be read without waiting).
    pub fn has_buffered(&self) -> bool {
        !self.out.buffer().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Vec<u8> {
        let mut v = b"__CURSOR=s=abc;i=1f;b=x;m=1;t=2;x=3\n__REALTIME_TIMESTAMP=1714557600123456\n\
              _BOOT_ID=b\nMESSAGE=hello = world\nVKS_POD_UID=u1\nVKS_CONTAINER=app\n\
              _SYSTEMD_INVOCATION_ID=inv1\n_SYSTEMD_UNIT=vks.ns.p.app.service\n\n"
            .to_vec();
        v.extend_from_slice(b"__CURSOR=s=abc;i=20;b=x\n__REALTIME_TIMESTAMP=1714557600123457\nMESSAGE\n");
        v.extend_from_slice(&4u64.to_le_bytes());
        v.extend_from_slice(b"a\nb\xff\n\n");
        v.extend_from_slice(b"__CURSOR=s=abc;i=21;b=x\nMESSAGE=tail\n_LINE_BREAK=eof\n\n");
        v
    }

    #[tokio::test]
    async fn parses_text_and_binary_fields() {
        let data = export();
        let mut r = &data[..];
        let a = next_entry(&mut r).await.unwrap().unwrap();
        assert_eq!(a.message, b"hello = world");
        assert_eq!(a.realtime_us, 1_714_557_600_123_456);
        assert_eq!(
            (a.pod_uid.as_deref(), a.container.as_deref(), a.invocation.as_deref()),
            (Some("u1"), Some("app"), Some("inv1"))
        );
        assert_eq!(a.unit.as_deref(), Some("vks.ns.p.app.service"));
        assert!(a.ends_line);
        assert_eq!(a.seqnum(), Some(Seqnum { id: Some("abc".into()), n: 0x1f }));
        let b = next_entry(&mut r).await.unwrap().unwrap();
        assert_eq!(b.message, b"a\nb\xff");
        assert!(b.is_after(&a.seqnum().unwrap()));
        assert!(!a.is_after(&b.seqnum().unwrap()));
        let c = next_entry(&mut r).await.unwrap().unwrap();
        assert!(!c.ends_line);
        assert_eq!(next_entry(&mut r).await.unwrap(), None);
        let cut = &data[..40];
        assert!(next_entry(&mut &cut[..]).await.is_err());
    }

    #[test]
    fn lines_without_an_invocation_id_belong_to_the_run_whose_window_holds_them() {
        let run = Run {
            unit: "vks.ns.p.c.service".into(),
            pod_uid: "u1".into(),
            invocation: "inv2".into(),
            started_us: 1000,
            until_us: Some(2000),
        };
        let e = |inv: Option<&str>, uid: Option<&str>, t: u64| Entry {
            realtime_us: t,
            invocation: inv.map(str::to_owned),
            pod_uid: uid.map(str::to_owned),
            unit: Some("vks.ns.p.c.service".into()),
            ..Entry::default()
        };
        assert!(run.owns(&e(Some("inv2"), Some("u1"), 5000)), "its own invocation, whenever read");
        assert!(!run.owns(&e(Some("inv1"), Some("u1"), 1500)), "another run's");
        assert!(run.owns(&e(None, Some("u1"), 1500)), "a late line in the window");
        assert!(run.owns(&e(None, None, 1500)), "without the pod's fields (unit collected)");
        assert!(!run.owns(&e(None, Some("u0"), 1500)), "an earlier pod of the same name");
        assert!(!run.owns(&e(None, Some("u1"), 999)), "before the run");
        assert!(!run.owns(&e(None, Some("u1"), 2000)), "the next run's");
        let unknown = Run { started_us: 0, until_us: None, ..run.clone() };
        assert!(unknown.owns(&e(None, Some("u1"), 5)) && !unknown.owns(&e(None, None, 5)));
        let q = run.query(Some(1500)).args().join(" ");
        assert!(q.ends_with("--since=@0.001500 _SYSTEMD_UNIT=vks.ns.p.c.service"), "{q}");
        assert!(run.query(None).args().join(" ").contains("--since=@0.001000 "));
    }

    #[test]
    fn past_lines_are_read_natively_and_follows_by_journalctl() {
        let q = Query {
            matches: vec![("VKS_POD_UID", "u1".into())],
            since_us: Some(7),
            start: Start::Tail(3),
            follow: false,
        };
        let r = q.native().unwrap();
        assert_eq!((r.matches, r.since_us, r.tail), (vec![("VKS_POD_UID".into(), "u1".into())], Some(7), Some(3)));
        assert_eq!(Query { start: Start::Beginning, ..q.clone() }.native().unwrap().tail, None);
        assert_eq!(Query { follow: true, ..q.clone() }.native(), None);
        assert_eq!(Query { start: Start::After("s=1;i=2".into()), ..q }.native(), None);
        // vks's reader has no seqnum ID: its numbers compare with journalctl's by number.
        let native = Entry { cursor: "i=10;t=5".into(), ..Entry::default() };
        let ours = native.seqnum().unwrap();
        assert_eq!(ours, Seqnum { id: None, n: 0x10 });
        let followed = Entry { cursor: "s=abc;i=11;b=x".into(), ..Entry::default() };
        assert!(followed.is_after(&ours));
        assert!(!native.is_after(&followed.seqnum().unwrap()));
        let other_space = Entry { cursor: "s=def;i=1".into(), ..Entry::default() };
        assert!(other_space.is_after(&followed.seqnum().unwrap()), "a new space is newer");
    }

    #[test]
    fn builds_journalctl_arguments() {
        let q = Query {
            matches: vec![("VKS_POD_UID", "u1".into()), ("_SYSTEMD_INVOCATION_ID", "inv".into())],
            since_us: Some(1_714_557_600_000_042),
            start: Start::Beginning,
            follow: false,
        };
        let a = q.args().join(" ");
        assert!(a.ends_with("--since=@1714557600.000042 VKS_POD_UID=u1 _SYSTEMD_INVOCATION_ID=inv"), "{a}");
        assert!(a.starts_with("--no-pager -q -o export --output-fields MESSAGE,"), "{a}");
        let f = Query { follow: true, since_us: None, ..q.clone() }.args().join(" ");
        assert!(f.contains("-n all -f VKS_POD_UID=u1"), "{f}");
        let t = Query { start: Start::Tail(5), since_us: None, ..q.clone() }.args().join(" ");
        assert!(t.contains("-n 5 VKS_POD_UID"), "{t}");
        let c = Query { start: Start::At("s=1;i=2".into()), since_us: None, follow: true, ..q }.args().join(" ");
        assert!(c.contains("--cursor=s=1;i=2 -f"), "{c}");
    }
}
