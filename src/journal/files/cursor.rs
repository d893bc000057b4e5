//! Walking one file's entries that match: the entry list of the rarest matched value, filtered by
//! the others.

use super::{JournalFile, OBJECT_ENTRY_ARRAY, Pos, count_bad, le32, le64};
use crate::journal::native::ReadError;

/// The matching entries of one file, in order: the entry list of the rarest matched value,
/// filtered by the others.
pub(super) struct FileCursor {
    pub(super) file: usize,
    /// Data objects every entry must refer to (besides the walked one).
    others: Vec<u64>,
    /// The walked list: its first entry, its next array, how many are left.
    first: Option<u64>,
    array: u64,
    array_items: Vec<u64>,
    array_at: usize,
    left: u64,
    /// Entry arrays that end before this time are skipped whole.
    since: Option<u64>,
    pub(super) peeked: Option<Pos>,
    pub(super) done: bool,
}

impl FileCursor {
    /// `None` when a matched value is not in the file (none of its entries can match).
    pub(super) fn new(
        file: usize,
        f: &mut JournalFile,
        matches: &[(String, String)],
        since: Option<u64>,
    ) -> Option<Self> {
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
            since,
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
            let items: Vec<u64> = if compact {
                items.chunks_exact(4).map(|c| u64::from(le32(c, 0))).collect()
            } else {
                items.chunks_exact(8).map(|c| le64(c, 0)).collect()
            };
            self.array = next;
            // With a `since`, an array whose last entry is older is skipped without reading its
            // entries (arrays double in size, so a long history costs a few reads), as sdjournal
            // and journalctl seek by time (both assume the clock did not go back).
            let valid = items.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            if let Some(since) = self.since
                && let Some(&last) = items[..valid].last()
                && last != 0
                && f.entry_order_if(last, &[])?.is_some_and(|(_, realtime)| realtime < since)
            {
                self.left -= valid as u64;
                continue;
            }
            self.array_items = items;
            self.array_at = 0;
        }
        Ok(None)
    }

    /// Moves `peeked` to the next matching entry, or sets `done`.
    /// An entry that cannot be read is counted in `bad` and skipped; a list that cannot be
    /// walked further ends the file (torn or truncated while read).
    pub(super) fn advance(&mut self, f: &mut JournalFile, bad: &mut usize) -> Result<(), ReadError> {
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
        let order = f.entry_order_if(e, &self.others)?;
        Ok(order.map(|(seqnum, realtime)| Pos { file: self.file, offset: e, seqnum, realtime }))
    }

    /// No more entries here: the file's buffers are given back (its entries still to be written
    /// read their objects again).
    fn finish(&mut self, f: &mut JournalFile) {
        self.done = true;
        f.release();
    }
}
