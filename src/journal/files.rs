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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::native::{MAX_BAD_ENTRIES, ReadError, Request, write_entry};

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
    let mut seen = std::collections::HashSet::new();
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
        match FileCursor::new(i, f, &r.matches) {
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
    let mut fields = Fields::new(wanted.len());
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

/// The wanted fields of one entry.
struct Fields {
    values: Vec<Option<Rc<[u8]>>>,
}

impl Fields {
    fn new(n: usize) -> Self {
        Fields { values: vec![None; n] }
    }
}

/// Writes the entry at `pos`; `Ok(Err(..))` when it could not be read (skipped).
fn emit(
    f: &mut JournalFile,
    pos: Pos,
    wanted: &[&str],
    fields: &mut Fields,
    zstd: &mut zstd::bulk::Decompressor<'static>,
    out: &mut impl Write,
) -> Result<Result<(), String>, ReadError> {
    for v in &mut fields.values {
        *v = None;
    }
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
            && fields.values[i].is_none()
        {
            fields.values[i] = Some(value);
        }
    }
    let present = wanted.iter().zip(&fields.values).filter_map(|(n, v)| v.as_deref().map(|v| (*n, v)));
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
        let items = o.get(64..).unwrap_or_default();
        Ok(if compact {
            items.chunks_exact(4).map(|c| u64::from(le32(c, 0))).collect()
        } else {
            items.chunks_exact(16).map(|c| le64(c, 0)).collect()
        })
    }

    /// The entry's seqnum and time.
    fn entry_order(&mut self, entry: u64) -> Result<(u64, u64), String> {
        let o = self.object(entry, OBJECT_ENTRY)?;
        Ok((le64(o, 16), le64(o, 24)))
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

/// The matching entries of one file, in order: the entry list of the rarest matched value,
/// filtered by the others.
struct FileCursor {
    file: usize,
    /// Data objects every entry must refer to (besides the walked one).
    others: Vec<u64>,
    /// The walked list: its first entry, its next array, how many are left.
    first: Option<u64>,
    array: u64,
    array_items: Vec<u64>,
    array_at: usize,
    left: u64,
    peeked: Option<Pos>,
    done: bool,
}

impl FileCursor {
    /// `None` when a matched value is not in the file (none of its entries can match).
    fn new(file: usize, f: &mut JournalFile, matches: &[(String, String)]) -> Option<Self> {
        let mut datas = Vec::new();
        for (k, v) in matches {
            let payload = [k.as_bytes(), b"=", v.as_bytes()].concat();
            match f.find_data(&payload) {
                Ok(Some(d)) => datas.push(d),
                // A file that cannot be searched is skipped, as unreadable files are.
                Ok(None) | Err(_) => return None,
            }
        }
        let mut lists = Vec::new();
        for d in &datas {
            match f.data_entries(*d) {
                Ok(l) => lists.push((*d, l)),
                Err(_) => return None,
            }
        }
        let rarest = (0..lists.len()).min_by_key(|&i| lists[i].1.2)?;
        let (walked, (first, array, n)) = lists[rarest];
        let others = datas.into_iter().filter(|&d| d != walked).collect();
        Some(FileCursor {
            file,
            others,
            first: (n > 0 && first != 0).then_some(first),
            array,
            array_items: Vec::new(),
            array_at: 0,
            left: n.saturating_sub(1),
            peeked: None,
            done: n == 0,
        })
    }

    /// The next entry offset of the walked list.
    fn next_offset(&mut self, f: &mut JournalFile) -> Result<Option<u64>, String> {
        if let Some(e) = self.first.take() {
            return Ok(Some(e));
        }
        while self.left > 0 {
            if self.array_at < self.array_items.len() {
                let e = self.array_items[self.array_at];
                self.array_at += 1;
                if e == 0 {
                    // Not filled in yet: journald is still writing this list.
                    self.left = 0;
                    return Ok(None);
                }
                self.left -= 1;
                return Ok(Some(e));
            }
            if self.array == 0 {
                return Ok(None);
            }
            let compact = f.compact();
            let o = f.object(self.array, OBJECT_ENTRY_ARRAY)?;
            let next = le64(o, 16);
            let items = o.get(24..).unwrap_or_default();
            self.array_items = if compact {
                items.chunks_exact(4).map(|c| u64::from(le32(c, 0))).collect()
            } else {
                items.chunks_exact(8).map(|c| le64(c, 0)).collect()
            };
            self.array_at = 0;
            self.array = next;
        }
        Ok(None)
    }

    /// Moves `peeked` to the next matching entry, or sets `done`.
    /// An entry that cannot be read is counted in `bad` and skipped; a list that cannot be
    /// walked further ends the file (torn or truncated while read).
    fn advance(&mut self, f: &mut JournalFile, bad: &mut usize) -> Result<(), ReadError> {
        loop {
            let e = match self.next_offset(f) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.finish(f);
                    return Ok(());
                }
                Err(err) => {
                    self.finish(f);
                    return count_bad(bad, &err);
                }
            };
            match self.check(f, e) {
                Ok(Some(p)) => {
                    self.peeked = Some(p);
                    return Ok(());
                }
                Ok(None) => {}
                Err(err) => count_bad(bad, &err)?,
            }
        }
    }

    /// The entry at `e` if it has every matched value.
    fn check(&self, f: &mut JournalFile, e: u64) -> Result<Option<Pos>, String> {
        if !self.others.is_empty() {
            let items = f.entry_items(e)?;
            if !self.others.iter().all(|d| items.contains(d)) {
                return Ok(None);
            }
        }
        let (seqnum, realtime) = f.entry_order(e)?;
        Ok(Some(Pos { file: self.file, offset: e, seqnum, realtime }))
    }

    /// No more entries here: the file's buffers are given back (its entries still to be written
    /// read their objects again).
    fn finish(&mut self, f: &mut JournalFile) {
        self.done = true;
        f.release();
    }
}

#[cfg(test)]
mod tests {
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
}
