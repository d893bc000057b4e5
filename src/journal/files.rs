//! vks's fast reader of journal files, for the common case: the files journald writes by default
//! since systemd 246 (keyed hashes; compact or regular; fields compressed with zstd, or not at
//! all). [`native::read`](super::native::read) uses it when every file qualifies and falls back
//! to the `sdjournal` crate otherwise (xz or lz4 files, or the older unkeyed hash).
//!
//! Why a reader of our own: `sdjournal` decodes every field of every entry and decompresses with
//! `ruzstd`. For 50 MB of 1 KiB lines under journald's default compression that is 0.7 s of CPU
//! — the largest part of a `kubectl logs` catch-up on a small node, where kubectl, the API
//! server and the reader share the cores. This reader looks up the matched values in the file's
//! hash table, walks the entry list of the rarest one, keeps the name and value of every shared
//! field object it has seen (all but the line itself are shared between a container's entries),
//! and decompresses only `MESSAGE`, with one reused libzstd context.
//!
//! The files are read with `pread` through a few cached windows, not mapped: a file that
//! journald truncates or rotates under the reader gives a short read (an entry skipped, or the
//! end of that file), never a SIGBUS. Every offset and size read from a file is checked against
//! what was read before it is used.
//!
//! The format: systemd's `docs/JOURNAL_FILE_FORMAT.md`. The output is checked against
//! `sdjournal`'s on journal files journald wrote (`tests/testdata/journal/`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::native::{MAX_BAD_ENTRIES, ReadError, Request, write_entry};
use cursor::FileCursor;

const SIGNATURE: &[u8; 8] = b"LPKSHHRH";
const INCOMPATIBLE_XZ: u32 = 1 << 0;
const INCOMPATIBLE_LZ4: u32 = 1 << 1;
const INCOMPATIBLE_KEYED_HASH: u32 = 1 << 2;
const INCOMPATIBLE_ZSTD: u32 = 1 << 3;
const INCOMPATIBLE_COMPACT: u32 = 1 << 4;
const INCOMPATIBLE_KNOWN: u32 =
    INCOMPATIBLE_XZ | INCOMPATIBLE_LZ4 | INCOMPATIBLE_KEYED_HASH | INCOMPATIBLE_ZSTD | INCOMPATIBLE_COMPACT;

const OBJECT_DATA: u8 = 1;
const OBJECT_ENTRY: u8 = 3;
const OBJECT_DATA_HASH_TABLE: u8 = 4;
const OBJECT_ENTRY_ARRAY: u8 = 6;
const COMPRESSED_XZ: u8 = 1 << 0;
const COMPRESSED_LZ4: u8 = 1 << 1;
const COMPRESSED_ZSTD: u8 = 1 << 2;

/// The part of the file header this reader uses (up to `n_entries`).
const HEADER_MIN: usize = 160;
/// The largest object read whole (journald's own limit for a field is far below it).
const OBJECT_MAX: u64 = 256 << 20;
/// The largest decompressed field.
const FIELD_MAX: usize = 64 << 20;
/// Shared field objects remembered per file before the memory is given back.
const CACHE_MAX: usize = 1 << 17;
/// Read windows per file, and their size.
const WINDOWS: usize = 4;
const WINDOW: usize = 128 << 10;

/// Why the fast reader does not take a read.
#[derive(Debug)]
pub struct Unsupported(#[allow(dead_code)] pub String);

/// Reads what `r` asks for from the journal files under `dirs` and writes it to `out`, or says
/// (before writing anything) that a file needs the general reader.
pub fn read(r: &Request, dirs: &[PathBuf], out: &mut impl Write) -> Result<Result<(), Unsupported>, ReadError> {
    if r.matches.is_empty() {
        // vks always matches a container; a read of everything is the general reader's.
        return Ok(Err(Unsupported("no match".into())));
    }
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for path in discover(dirs) {
        // Files that cannot be opened or are not journal files are skipped, as by journalctl.
        let Ok(f) = JournalFile::open(&path) else { continue };
        if let Some(why) = f.unsupported() {
            return Ok(Err(Unsupported(format!("{}: {why}", path.display()))));
        }
        if seen.insert(f.file_id) {
            files.push(f);
        }
    }
    let wanted: Vec<&str> = super::FIELDS.split(',').collect();
    let mut cursors = Vec::new();
    for (i, f) in files.iter_mut().enumerate() {
        match FileCursor::new(i, f, &r.matches, r.since_us) {
            Some(c) => cursors.push(c),
            // Nothing to read here: only the open file stays (a few hundred of them at most).
            None => f.release(),
        }
    }
    let mut zstd =
        zstd::bulk::Decompressor::new().map_err(|e| ReadError::Journal(format!("starting the zstd decoder: {e}")))?;
    let tail = r.tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut last: VecDeque<Pos> = VecDeque::new();
    let mut bad = 0;
    // The wanted fields of the entry being written, reused.
    let mut fields: Vec<Option<Rc<[u8]>>> = vec![None; wanted.len()];
    while let Some(pos) = next_in_order(&mut files, &mut cursors, r.since_us, &mut bad)? {
        match tail {
            Some(0) => break,
            Some(n) => {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(pos);
            }
            None => {
                if let Err(e) = emit(&mut files[pos.file], pos, &wanted, &mut fields, &mut zstd, out)? {
                    count_bad(&mut bad, &e)?;
                }
            }
        }
    }
    for pos in last {
        if let Err(e) = emit(&mut files[pos.file], pos, &wanted, &mut fields, &mut zstd, out)? {
            count_bad(&mut bad, &e)?;
        }
    }
    out.flush()?;
    Ok(Ok(()))
}

fn count_bad(bad: &mut usize, e: &str) -> Result<(), ReadError> {
    *bad += 1;
    if *bad >= MAX_BAD_ENTRIES {
        return Err(ReadError::Journal(format!("reading the journal: {bad} entries could not be read, the last: {e}")));
    }
    Ok(())
}

/// `*.journal` files in each directory and in its machine-ID subdirectories, as journalctl
/// and `sdjournal` find them.
fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let is_journal = |p: &Path| p.extension().is_some_and(|e| e == "journal") && p.is_file();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if is_journal(&p) {
                found.push(p);
            } else if p.is_dir()
                && e.file_name().to_str().is_some_and(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                let Ok(sub) = std::fs::read_dir(&p) else { continue };
                found.extend(sub.flatten().map(|e| e.path()).filter(|p| is_journal(p)));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Where an entry is, and how it orders.
#[derive(Debug, Clone, Copy)]
struct Pos {
    file: usize,
    offset: u64,
    seqnum: u64,
    realtime: u64,
}

/// The next entry of all files in the journal's order (seqnum within one seqnum space, else
/// time), at or after `since`.
fn next_in_order(
    files: &mut [JournalFile],
    cursors: &mut [FileCursor],
    since: Option<u64>,
    bad: &mut usize,
) -> Result<Option<Pos>, ReadError> {
    loop {
        let mut best: Option<usize> = None;
        for i in 0..cursors.len() {
            if cursors[i].peeked.is_none() && !cursors[i].done {
                let f = &mut files[cursors[i].file];
                cursors[i].advance(f, bad)?;
            }
            let Some(p) = cursors[i].peeked else { continue };
            let before = match best.and_then(|b| cursors[b].peeked) {
                None => true,
                Some(q) => {
                    if files[p.file].seqnum_id == files[q.file].seqnum_id {
                        (p.seqnum, p.realtime) < (q.seqnum, q.realtime)
                    } else {
                        (p.realtime, p.seqnum) < (q.realtime, q.seqnum)
                    }
                }
            };
            if before {
                best = Some(i);
            }
        }
        let Some(b) = best else { return Ok(None) };
        let Some(p) = cursors[b].peeked.take() else { return Ok(None) };
        if since.is_some_and(|s| p.realtime < s) {
            continue;
        }
        return Ok(Some(p));
    }
}

/// Writes the entry at `pos`; `Ok(Err(..))` when it could not be read (skipped).
fn emit(
    f: &mut JournalFile,
    pos: Pos,
    wanted: &[&str],
    fields: &mut [Option<Rc<[u8]>>],
    zstd: &mut zstd::bulk::Decompressor<'static>,
    out: &mut impl Write,
) -> Result<Result<(), String>, ReadError> {
    fields.fill(None);
    let items = match f.entry_items(pos.offset) {
        Ok(items) => items,
        Err(e) => return Ok(Err(e)),
    };
    for item in items {
        let known = match f.field_of(item, wanted, zstd) {
            Ok(k) => k,
            Err(e) => return Ok(Err(format!("{}: {e}", f.path.display()))),
        };
        if let Known::Wanted(i, value) = known
            && fields[i].is_none()
        {
            fields[i] = Some(value);
        }
    }
    let present = wanted.iter().zip(fields.iter()).filter_map(|(n, v)| v.as_deref().map(|v| (*n, v)));
    write_entry(out, pos.seqnum, pos.realtime, present)?;
    Ok(Ok(()))
}

/// What a data object holds, for this reader.
#[derive(Clone)]
enum Known {
    /// A field not asked for.
    Other,
    /// The field `wanted[.0]` with this value.
    Wanted(usize, Rc<[u8]>),
}

/// One journal file.
struct JournalFile {
    path: PathBuf,
    file: File,
    len: u64,
    incompatible: u32,
    file_id: [u8; 16],
    seqnum_id: [u8; 16],
    data_hash_table: (u64, u64),
    windows: Vec<(u64, Vec<u8>)>,
    next_window: usize,
    /// Field objects seen (all but MESSAGE): offset → what they hold.
    cache: HashMap<u64, Known>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

impl JournalFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut header = vec![0u8; HEADER_MIN];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != SIGNATURE {
            return Err(std::io::Error::other("not a journal file"));
        }
        let id = |at: usize| -> [u8; 16] { header[at..at + 16].try_into().unwrap_or([0; 16]) };
        Ok(JournalFile {
            path: path.to_owned(),
            file,
            len,
            incompatible: le32(&header, 12),
            file_id: id(24),
            seqnum_id: id(72),
            data_hash_table: (le64(&header, 104), le64(&header, 112)),
            windows: Vec::new(),
            next_window: 0,
            cache: HashMap::new(),
        })
    }

    /// Why the general reader must read this file, if it must.
    fn unsupported(&self) -> Option<String> {
        let f = self.incompatible;
        if f & !INCOMPATIBLE_KNOWN != 0 {
            Some(format!("unknown incompatible flags {f:#x}"))
        } else if f & (INCOMPATIBLE_XZ | INCOMPATIBLE_LZ4) != 0 {
            Some("xz or lz4 fields".into())
        } else if f & INCOMPATIBLE_KEYED_HASH == 0 {
            Some("unkeyed (Jenkins) hash".into())
        } else {
            None
        }
    }

    /// Gives back the read windows and the field cache.
    fn release(&mut self) {
        self.windows = Vec::new();
        self.next_window = 0;
        self.cache = HashMap::new();
    }

    fn compact(&self) -> bool {
        self.incompatible & INCOMPATIBLE_COMPACT != 0
    }

    /// `len` bytes at `offset`, through the window cache.
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8], String> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(format!("{}: offset {offset}+{len} is past the end", self.path.display()));
        }
        let hit = self
            .windows
            .iter()
            .position(|(start, buf)| offset >= *start && offset + len as u64 <= *start + buf.len() as u64);
        let i = match hit {
            Some(i) => i,
            None => {
                let start = offset & !4095;
                let want = (WINDOW as u64).max(offset - start + len as u64).min(self.len - start);
                let mut buf = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
                let n = read_full_at(&self.file, &mut buf, start)
                    .map_err(|e| format!("{}: reading at {start}: {e}", self.path.display()))?;
                buf.truncate(n);
                if (n as u64) < offset - start + len as u64 {
                    return Err(format!("{}: short read at {offset} (truncated?)", self.path.display()));
                }
                if self.windows.len() < WINDOWS {
                    self.windows.push((start, buf));
                    self.windows.len() - 1
                } else {
                    let i = self.next_window;
                    self.next_window = (self.next_window + 1) % WINDOWS;
                    self.windows[i] = (start, buf);
                    i
                }
            }
        };
        let (start, buf) = &self.windows[i];
        let at = usize::try_from(offset - start).unwrap_or(usize::MAX);
        buf.get(at..at + len).ok_or_else(|| "window out of range".to_string())
    }

    /// The object at `offset` of type `kind`, whole.
    fn object(&mut self, offset: u64, kind: u8) -> Result<&[u8], String> {
        if offset == 0 || !offset.is_multiple_of(8) {
            return Err(format!("{}: bad object offset {offset}", self.path.display()));
        }
        let h = self.bytes(offset, 16)?;
        let (t, size) = (h[0], le64(h, 8));
        if t != kind || !(16..=OBJECT_MAX).contains(&size) {
            return Err(format!(
                "{}: object at {offset}: type {t} size {size}, expected type {kind}",
                self.path.display()
            ));
        }
        self.bytes(offset, size as usize)
    }

    /// The data object holding exactly `payload` (`FIELD=value`), by the file's hash table.
    fn find_data(&mut self, payload: &[u8]) -> Result<Option<u64>, String> {
        let (table, size) = self.data_hash_table;
        let buckets = size / 16;
        if table < 16 || buckets == 0 {
            return Ok(None);
        }
        let mut h = siphasher::sip::SipHasher24::new_with_key(&self.file_id);
        h.write(payload);
        let hash = h.finish();
        // The table is an object; its offset in the header points past the object header.
        let t = self.bytes(table - 16, 16)?;
        if t[0] != OBJECT_DATA_HASH_TABLE || le64(t, 8) < size + 16 {
            return Err(format!("{}: no data hash table at {}", self.path.display(), table - 16));
        }
        let bucket = self.bytes(table + (hash % buckets) * 16, 16)?;
        let mut at = le64(bucket, 0);
        let mut steps = 0;
        let payload_at = if self.compact() { 72 } else { 64 };
        while at != 0 {
            steps += 1;
            if steps > 1_000_000 {
                return Err(format!("{}: hash chain loops", self.path.display()));
            }
            let o = self.object(at, OBJECT_DATA)?;
            let next = le64(o, 24);
            if le64(o, 16) == hash
                && o.get(payload_at..) == Some(payload)
                && o[1] & (COMPRESSED_XZ | COMPRESSED_LZ4 | COMPRESSED_ZSTD) == 0
            {
                return Ok(Some(at));
            }
            at = next;
        }
        Ok(None)
    }

    /// The offsets of a data object's entries: its first, and the rest from its entry arrays.
    fn data_entries(&mut self, data: u64) -> Result<(u64, u64, u64), String> {
        let o = self.object(data, OBJECT_DATA)?;
        // (entry_offset, entry_array_offset, n_entries)
        Ok((le64(o, 40), le64(o, 48), le64(o, 56)))
    }

    /// The data object offsets an entry refers to.
    fn entry_items(&mut self, entry: u64) -> Result<Vec<u64>, String> {
        let compact = self.compact();
        let o = self.object(entry, OBJECT_ENTRY)?;
        Ok(items_of(o, compact).collect())
    }

    /// The entry's seqnum and time when it refers to every data object of `all`, from one read
    /// of the entry and without collecting its items.
    fn entry_order_if(&mut self, entry: u64, all: &[u64]) -> Result<Option<(u64, u64)>, String> {
        let compact = self.compact();
        let o = self.object(entry, OBJECT_ENTRY)?;
        let has = |d: &u64| items_of(o, compact).any(|i| i == *d);
        Ok(all.iter().all(has).then(|| (le64(o, 16), le64(o, 24))))
    }

    /// What the data object at `offset` holds (remembered unless it is `MESSAGE`).
    fn field_of(
        &mut self,
        offset: u64,
        wanted: &[&str],
        zstd: &mut zstd::bulk::Decompressor<'static>,
    ) -> Result<Known, String> {
        if let Some(k) = self.cache.get(&offset) {
            return Ok(k.clone());
        }
        let payload_at = if self.compact() { 72 } else { 64 };
        // Errors name the offset; the caller adds the file.
        let o = self.object(offset, OBJECT_DATA)?;
        let flags = o[1];
        let raw = o.get(payload_at..).unwrap_or_default();
        let plain;
        let payload: &[u8] = if flags & COMPRESSED_ZSTD != 0 {
            let size = zstd::zstd_safe::get_frame_content_size(raw)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= FIELD_MAX)
                .ok_or_else(|| format!("zstd field at {offset} without a usable size"))?;
            plain = zstd.decompress(raw, size).map_err(|e| format!("zstd field at {offset}: {e}"))?;
            &plain
        } else if flags & (COMPRESSED_XZ | COMPRESSED_LZ4) != 0 {
            // Not in a file that passed `unsupported`.
            return Err(format!("xz or lz4 field at {offset}"));
        } else {
            raw
        };
        let eq = payload.iter().position(|&b| b == b'=').ok_or_else(|| format!("field at {offset} has no '='"))?;
        let name = &payload[..eq];
        let is_message = name == b"MESSAGE";
        let known = match wanted.iter().position(|w| w.as_bytes() == name) {
            Some(i) => Known::Wanted(i, Rc::from(&payload[eq + 1..])),
            None => Known::Other,
        };
        if !is_message {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(offset, known.clone());
        }
        Ok(known)
    }
}

/// The data object offsets of an entry object.
fn items_of(entry: &[u8], compact: bool) -> impl Iterator<Item = u64> + '_ {
    let items = entry.get(64..).unwrap_or_default();
    let (size, read): (usize, fn(&[u8]) -> u64) =
        if compact { (4, |c| u64::from(le32(c, 0))) } else { (16, |c| le64(c, 0)) };
    items.chunks_exact(size).map(read)
}

/// `pread` until `buf` is full or the end of the file.
fn read_full_at(f: &File, buf: &mut [u8], mut at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                at += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

mod cursor;
#[cfg(test)]
mod tests;
