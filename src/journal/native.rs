//! `vks journal-read`: vks's own reader of the journal files, run as a child process for every
//! read of past lines (follows still use `journalctl -f`, see the logs' `hub.rs`).
//!
//! Why not journalctl: systemd 252's journalctl decompresses every compressed field with a
//! fresh zstd context and formats each entry field by field. The files journald writes by
//! default are read by [`super::files`] (50 MB of 1 KiB lines under journald's default
//! compression: 0.22 s of CPU, against 0.7 s with the `sdjournal` crate and 2.0 s with
//! journalctl on the test machine); other files by `sdjournal`. Why a child process: `sdjournal`
//! maps the files while journald still writes them (as journalctl does), and a file truncated
//! under a mapping raises SIGBUS; that, or any defect of a reader, must end a reader, never the
//! daemon.
//!
//! The output is journalctl's export format with the fields [`super::FIELDS`] and a cursor of
//! its own (`i=<seqnum>;t=<realtime>`, hex; no `s=`: the seqnum ID is not known here), parsed
//! by [`super::next_entry`] like journalctl's.

use std::io::Write;
use std::path::PathBuf;

/// Where journald keeps its files (volatile, then persistent), as journalctl reads them.
pub const DIRECTORIES: [&str; 2] = ["/run/log/journal", "/var/log/journal"];

/// Entries that fail to decode (a torn write at the end of a file being written) are skipped;
/// this many in one read end it with an error.
pub(super) const MAX_BAD_ENTRIES: usize = 1000;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `FIELD=value` matches, all of which must hold.
    pub matches: Vec<(String, String)>,
    /// Only entries at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Only the last N matching entries.
    pub tail: Option<u64>,
    /// Journal directories; none: [`DIRECTORIES`].
    pub directories: Vec<PathBuf>,
}

impl Request {
    /// The arguments of `vks journal-read` for this request.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(us) = self.since_us {
            a.push(format!("--since-us={us}"));
        }
        if let Some(n) = self.tail {
            a.push(format!("--tail={n}"));
        }
        for d in &self.directories {
            a.push(format!("--directory={}", d.display()));
        }
        // After `--`: a value may start with a dash.
        a.push("--".into());
        a.extend(self.matches.iter().map(|(k, v)| format!("{k}={v}")));
        a
    }
}

/// Writes one entry in journalctl's export format: `__CURSOR`, `__REALTIME_TIMESTAMP`, then each
/// field of `fields` present in the entry; `MESSAGE` and any value with a newline in the binary
/// form (`NAME\n`, little-endian u64 length, bytes, `\n`).
pub fn write_entry<'a>(
    out: &mut impl Write,
    seqnum: u64,
    realtime_us: u64,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> std::io::Result<()> {
    writeln!(out, "__CURSOR=i={seqnum:x};t={realtime_us:x}")?;
    writeln!(out, "__REALTIME_TIMESTAMP={realtime_us}")?;
    for (name, value) in fields {
        if name == "MESSAGE" || value.contains(&b'\n') {
            out.write_all(name.as_bytes())?;
            out.write_all(b"\n")?;
            out.write_all(&(value.len() as u64).to_le_bytes())?;
            out.write_all(value)?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(name.as_bytes())?;
            out.write_all(b"=")?;
            out.write_all(value)?;
            out.write_all(b"\n")?;
        }
    }
    out.write_all(b"\n")
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The journal could not be read.
    #[error("{0}")]
    Journal(String),
    /// The output could not be written (the reader of it may have left).
    #[error("writing: {0}")]
    Write(#[from] std::io::Error),
}

/// Reads what `r` asks for and writes it to `out`: with vks's fast reader ([`super::files`])
/// when every file qualifies, else with `sdjournal`.
pub fn read(r: &Request, out: &mut impl Write) -> Result<(), ReadError> {
    let dirs = directories(r);
    if dirs.is_empty() {
        return Ok(());
    }
    match super::files::read(r, &dirs, out)? {
        Ok(()) => Ok(()),
        Err(_unsupported) => read_general(r, &dirs, out),
    }
}

/// The existing directories `r` names, or the default ones.
fn directories(r: &Request) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> =
        if r.directories.is_empty() { DIRECTORIES.iter().map(PathBuf::from).collect() } else { r.directories.clone() };
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Reads what `r` asks for from `dirs` with the `sdjournal` crate (every file format it knows).
pub(super) fn read_general(r: &Request, dirs: &[PathBuf], out: &mut impl Write) -> Result<(), ReadError> {
    // Online files are mapped too (see the module's note on SIGBUS): journalctl does the same.
    // At most as many files as libsystemd opens (JOURNAL_FILES_MAX).
    let config = sdjournal::JournalConfig {
        allow_mmap_online: true,
        max_journal_files: 7168,
        ..sdjournal::JournalConfig::default()
    };
    let journal = match sdjournal::Journal::open_dirs_with_config(dirs, config) {
        Ok(j) => j,
        // No journal file yet: no lines (files that cannot be opened are skipped, as by journalctl).
        Err(sdjournal::SdJournalError::NotFound) => return Ok(()),
        Err(e) => return Err(ReadError::Journal(format!("opening the journal in {dirs:?}: {e}"))),
    };
    let mut q = journal.query();
    for (field, value) in &r.matches {
        q.match_exact(field, value.as_bytes());
    }
    if let Some(us) = r.since_us {
        q.since_realtime(us);
    }
    if let Some(n) = r.tail {
        q.reverse(true).limit(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let wanted: Vec<&str> = super::FIELDS.split(',').collect();
    let mut bad = 0;
    let mut tail = Vec::new();
    for item in q.iter().map_err(|e| ReadError::Journal(format!("reading the journal: {e}")))? {
        let e = match item {
            Ok(e) => e,
            Err(e) => {
                bad += 1;
                if bad >= MAX_BAD_ENTRIES {
                    return Err(ReadError::Journal(format!(
                        "reading the journal: {bad} entries could not be read, the last: {e}"
                    )));
                }
                continue;
            }
        };
        let fields = wanted.iter().filter_map(|f| e.get(f).map(|v| (*f, v)));
        if r.tail.is_some() {
            let mut buf = Vec::new();
            write_entry(&mut buf, e.seqnum(), e.realtime_usec(), fields)?;
            tail.push(buf);
        } else {
            write_entry(out, e.seqnum(), e.realtime_usec(), fields)?;
        }
    }
    for buf in tail.iter().rev() {
        out.write_all(buf)?;
    }
    Ok(out.flush()?)
}

/// `vks journal-read`: exit 0 when everything asked was written, 1 with the cause on stderr.
pub fn main(r: &Request) -> i32 {
    // Run as /proc/self/exe, it would show as `exe` in ps and top.
    let _ = nix::sys::prctl::set_name(c"vks-journal");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 << 10, stdout.lock());
    match read(r, &mut out) {
        Ok(()) => 0,
        // The reader of our output left (the client went away): not an error of ours.
        Err(ReadError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("vks journal-read: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_written_is_read_back_by_the_export_parser() {
        let mut buf = Vec::new();
        let fields: Vec<(&str, &[u8])> = vec![
            ("MESSAGE", b"hello\nworld = \xff"),
            ("VKS_POD_UID", b"u1"),
            ("_SYSTEMD_INVOCATION_ID", b"inv"),
            ("_SYSTEMD_UNIT", b"vks.ns.p.c.service"),
        ];
        write_entry(&mut buf, 0x2a, 1_714_557_600_123_456, fields.into_iter()).unwrap();
        let fields: Vec<(&str, &[u8])> = vec![("MESSAGE", b"partial"), ("_LINE_BREAK", b"line-max")];
        write_entry(&mut buf, 0x2b, 1_714_557_600_123_457, fields.into_iter()).unwrap();
        let mut r = &buf[..];
        let a = super::super::next_entry(&mut r).await.unwrap().unwrap();
        assert_eq!(a.message, b"hello\nworld = \xff");
        assert_eq!(a.realtime_us, 1_714_557_600_123_456);
        assert_eq!((a.pod_uid.as_deref(), a.invocation.as_deref()), (Some("u1"), Some("inv")));
        assert_eq!(a.unit.as_deref(), Some("vks.ns.p.c.service"));
        assert_eq!(a.seqnum(), Some(super::super::Seqnum { id: None, n: 0x2a }));
        assert!(a.ends_line);
        let b = super::super::next_entry(&mut r).await.unwrap().unwrap();
        assert!(!b.ends_line && b.is_after(&a.seqnum().unwrap()));
        assert_eq!(super::super::next_entry(&mut r).await.unwrap(), None);
    }

    #[test]
    fn a_missing_or_empty_journal_is_no_lines() {
        let empty = tempfile::tempdir().unwrap();
        for dir in [PathBuf::from("/nonexistent/journal"), empty.path().to_owned()] {
            let r = Request { matches: vec![], since_us: None, tail: None, directories: vec![dir] };
            let mut out = Vec::new();
            read(&r, &mut out).unwrap();
            assert!(out.is_empty());
        }
    }
}
