//! Compact sets of 1Flow user ids, and the diff between two of them.
//!
//! A cohort can hold two million members, so ids never live as one heap string each:
//! an [`IdSet`] is one byte arena plus one offset per id, sorted and deduplicated, and
//! the diff of two sets is a single merge pass over both.

use std::cmp::Ordering;

/// The longest id 1Flow accepts, in bytes. Longer ids are skipped before they reach a set.
pub const MAX_ID_BYTES: usize = 1024;

/// A sorted set of distinct ids stored in one arena.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    bytes: Vec<u8>,
    /// `ends[i]` is the end offset of id `i` in `bytes`; id `i` starts at `ends[i - 1]`.
    ends: Vec<u32>,
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdSet({} ids, {} bytes)", self.len(), self.bytes.len())
    }
}

impl IdSet {
    /// The number of ids in the set.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the set holds no id.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id at position `index` in sort order.
    ///
    /// # Panics
    ///
    /// When `index` is out of bounds.
    pub fn get(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.bytes[start..self.ends[index] as usize]
    }

    /// The ids in sort order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.search(id).is_ok()
    }

    fn search(&self, id: &[u8]) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.get(mid).cmp(id) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    /// Bytes held by the arena and the index, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4
    }

    /// Builds a set from ids in any order, with duplicates.
    pub fn from_ids<'a>(ids: impl IntoIterator<Item = &'a [u8]>) -> IdSet {
        let mut builder = IdSetBuilder::default();
        for id in ids {
            builder.push(id);
        }
        builder.finish()
    }

    /// The ids of `self` minus those of `removed`, plus those of `added`.
    ///
    /// This is how an acknowledged set advances when batches are confirmed.
    pub fn apply(&self, added: &IdSet, removed: &IdSet) -> IdSet {
        let mut out = SortedWriter::with_capacity(
            self.bytes.len() + added.bytes.len(),
            self.len() + added.len(),
        );
        let mut kept = self.iter().filter(|id| !removed.contains(id)).peekable();
        let mut new = added.iter().peekable();
        loop {
            let next = match (kept.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => kept.next(),
                (None, Some(_)) => new.next(),
                (Some(a), Some(b)) => match a.cmp(b) {
                    Ordering::Less => kept.next(),
                    Ordering::Greater => new.next(),
                    Ordering::Equal => {
                        new.next();
                        kept.next()
                    }
                },
            };
            out.push(next.expect("peeked"));
        }
        out.finish()
    }

    /// Splits the set into encoded chunks of at most `ids_per_chunk` ids, for storage.
    pub fn encode_chunks(&self, ids_per_chunk: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let ids_per_chunk = ids_per_chunk.max(1);
        (0..self.len()).step_by(ids_per_chunk).map(move |first| {
            let last = (first + ids_per_chunk).min(self.len());
            encode((first..last).map(|i| self.get(i)))
        })
    }
}

/// Encodes ids as a sequence of (u16 little-endian length, bytes) records.
///
/// Every id must be at most [`MAX_ID_BYTES`] long.
pub fn encode<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        debug_assert!(id.len() <= MAX_ID_BYTES);
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
    }
    out
}

/// The encoded record was cut short: stored state is damaged.
#[derive(Debug, thiserror::Error)]
#[error("encoded id list is truncated at byte {offset}")]
pub struct DecodeError {
    offset: usize,
}

/// Decodes what [`encode`] wrote, calling `each` per id.
///
/// # Errors
///
/// When the buffer ends inside a record.
pub fn decode(mut buf: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), DecodeError> {
    let total = buf.len();
    while !buf.is_empty() {
        let offset = total - buf.len();
        let (len, rest) = buf.split_at_checked(2).ok_or(DecodeError { offset })?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let (id, rest) = rest.split_at_checked(len).ok_or(DecodeError { offset })?;
        each(id);
        buf = rest;
    }
    Ok(())
}

/// Collects ids in any order; [`IdSetBuilder::finish`] sorts and deduplicates them.
#[derive(Default)]
pub struct IdSetBuilder {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl IdSetBuilder {
    /// A builder with room for about `ids` ids of `bytes` bytes in all.
    pub fn with_capacity(ids: usize, bytes: usize) -> IdSetBuilder {
        IdSetBuilder {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(ids),
        }
    }

    /// Adds one id. Duplicates are removed by [`IdSetBuilder::finish`].
    pub fn push(&mut self, id: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(id);
        self.spans.push((start, id.len() as u32));
    }

    /// Ids pushed so far, duplicates included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Adds every id of an encoded buffer.
    ///
    /// # Errors
    ///
    /// When the buffer is damaged.
    pub fn extend_encoded(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        decode(buf, |id| self.push(id))
    }

    /// Sorts, removes duplicates and packs the ids into a set.
    pub fn finish(self) -> IdSet {
        let IdSetBuilder { bytes, mut spans } = self;
        let slice = |&(start, len): &(u32, u32)| &bytes[start as usize..(start + len) as usize];

        let sorted = spans.windows(2).all(|w| slice(&w[0]) < slice(&w[1]));
        if sorted {
            let mut ends = Vec::with_capacity(spans.len());
            let mut end = 0u32;
            for (start, len) in &spans {
                debug_assert_eq!(*start, end);
                end += len;
                ends.push(end);
            }
            return IdSet { bytes, ends };
        }

        sort_spans(&bytes, &mut spans);
        let mut out = SortedWriter::with_capacity(bytes.len(), spans.len());
        let mut previous: Option<&[u8]> = None;
        for span in &spans {
            let id = slice(span);
            if previous != Some(id) {
                out.push(id);
                previous = Some(id);
            }
        }
        out.finish()
    }
}

/// Sorts spans by the bytes they point at, on two threads when the input is large.
fn sort_spans(bytes: &[u8], spans: &mut [(u32, u32)]) {
    let slice = |&(start, len): &(u32, u32)| &bytes[start as usize..(start + len) as usize];
    let compare = |a: &(u32, u32), b: &(u32, u32)| slice(a).cmp(slice(b));
    if spans.len() < 100_000 {
        spans.sort_unstable_by(compare);
        return;
    }

    let middle = spans.len() / 2;
    let (left, right) = spans.split_at_mut(middle);
    std::thread::scope(|scope| {
        scope.spawn(|| left.sort_unstable_by(compare));
        right.sort_unstable_by(compare);
    });
    let mut merged = Vec::with_capacity(spans.len());
    let (mut i, mut j) = (0, middle);
    while i < middle && j < spans.len() {
        if compare(&spans[i], &spans[j]) != Ordering::Greater {
            merged.push(spans[i]);
            i += 1;
        } else {
            merged.push(spans[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&spans[i..middle]);
    merged.extend_from_slice(&spans[j..]);
    spans.copy_from_slice(&merged);
}

/// Appends ids that arrive already sorted and distinct.
struct SortedWriter {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl SortedWriter {
    fn with_capacity(bytes: usize, ids: usize) -> SortedWriter {
        SortedWriter {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(ids),
        }
    }

    fn push(&mut self, id: &[u8]) {
        self.bytes.extend_from_slice(id);
        self.ends.push(self.bytes.len() as u32);
    }

    fn finish(mut self) -> IdSet {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
        IdSet {
            bytes: self.bytes,
            ends: self.ends,
        }
    }
}

/// Who joined and who left: positions into the current and the acknowledged sets.
#[derive(Debug, Default)]
pub struct Diff {
    /// Positions in the current set of ids that are not acknowledged.
    pub adds: Vec<u32>,
    /// Positions in the acknowledged set of ids that are no longer current.
    pub removes: Vec<u32>,
}

/// Compares the current members with the acknowledged ones in one merge pass.
pub fn diff(current: &IdSet, acknowledged: &IdSet) -> Diff {
    let mut out = Diff::default();
    let (mut i, mut j) = (0, 0);
    while i < current.len() && j < acknowledged.len() {
        match current.get(i).cmp(acknowledged.get(j)) {
            Ordering::Less => {
                out.adds.push(i as u32);
                i += 1;
            }
            Ordering::Greater => {
                out.removes.push(j as u32);
                j += 1;
            }
            Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out.adds.extend((i..current.len()).map(|i| i as u32));
    out.removes
        .extend((j..acknowledged.len()).map(|j| j as u32));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> IdSet {
        IdSet::from_ids(ids.iter().map(|s| s.as_bytes()))
    }

    fn strings(set: &IdSet) -> Vec<String> {
        set.iter()
            .map(|id| String::from_utf8(id.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn builder_sorts_and_deduplicates() {
        let s = set(&["b", "a", "c", "a", "b"]);
        assert_eq!(strings(&s), ["a", "b", "c"]);
        assert!(s.contains(b"b"));
        assert!(!s.contains(b"d"));
    }

    #[test]
    fn large_input_sorts_on_two_threads() {
        let ids: Vec<String> = (0..250_000u32)
            .rev()
            .map(|i| format!("u{}", i % 200_000))
            .collect();
        let s = IdSet::from_ids(ids.iter().map(|s| s.as_bytes()));
        assert_eq!(s.len(), 200_000);
        assert!(s.iter().zip(s.iter().skip(1)).all(|(a, b)| a < b));
    }

    #[test]
    fn diff_finds_joined_and_left() {
        let current = set(&["a", "c", "d", "f"]);
        let acked = set(&["a", "b", "d", "e"]);
        let d = diff(&current, &acked);
        let adds: Vec<_> = d.adds.iter().map(|&i| current.get(i as usize)).collect();
        let removes: Vec<_> = d.removes.iter().map(|&i| acked.get(i as usize)).collect();
        assert_eq!(adds, [b"c".as_slice(), b"f"]);
        assert_eq!(removes, [b"b".as_slice(), b"e"]);
    }

    #[test]
    fn apply_advances_a_set() {
        let acked = set(&["a", "b", "d"]);
        let next = acked.apply(&set(&["c", "e", "a"]), &set(&["b", "z"]));
        assert_eq!(strings(&next), ["a", "c", "d", "e"]);
    }

    #[test]
    fn chunks_round_trip() {
        let s = set(&["x", "", "yy", "zzz", "w"]);
        let mut builder = IdSetBuilder::default();
        for chunk in s.encode_chunks(2) {
            builder.extend_encoded(&chunk).unwrap();
        }
        assert_eq!(builder.finish(), s);
    }

    #[test]
    fn truncated_encoding_is_an_error() {
        let mut buf = encode([b"hello".as_slice()].into_iter());
        buf.pop();
        assert!(decode(&buf, |_| {}).is_err());
    }
}
