//! Which bytes of a buffer have packed copies (`kernels::packed`), so that a write to a
//! weight after packing finds the copies it makes stale.
//!
//! The plugin keeps one `PackedCopies` per ggml buffer, keyed by byte offsets within the
//! buffer: `insert` when it packs a weight, `get` when a graph looks for the copy,
//! `invalidate` on every write into the buffer (set_tensor, memset_tensor, cpy_tensor),
//! `invalidate_all` on clear. An invalidated copy is handed back to be freed; the next
//! graph that needs it packs the new bytes again.

use std::ops::Range;

/// Packed copies `C` of disjoint byte ranges of one buffer.
pub struct PackedCopies<C> {
    /// Sorted by start. Ranges are disjoint (tensors of one buffer do not overlap; views
    /// are never packed), so their ends are sorted too.
    entries: Vec<(Range<usize>, C)>,
}

impl<C> Default for PackedCopies<C> {
    fn default() -> Self {
        PackedCopies { entries: Vec::new() }
    }
}

impl<C> PackedCopies<C> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The copy of the bytes starting at `start`, if one is current.
    pub fn get(&self, start: usize) -> Option<&C> {
        let i = self.entries.partition_point(|(r, _)| r.start < start);
        self.entries
            .get(i)
            .filter(|(r, _)| r.start == start)
            .map(|(_, c)| c)
    }

    /// Records the copy of `range`. Err gives the copy back if `range` overlaps one that
    /// is already current (the caller packs each weight once, under a lock).
    pub fn insert(&mut self, range: Range<usize>, copy: C) -> Result<(), C> {
        if range.is_empty() {
            return Err(copy);
        }
        let i = self.entries.partition_point(|(r, _)| r.start < range.start);
        let clear_before = i == 0 || self.entries[i - 1].0.end <= range.start;
        let clear_after = self.entries.get(i).is_none_or(|(r, _)| range.end <= r.start);
        if !(clear_before && clear_after) {
            return Err(copy);
        }
        self.entries.insert(i, (range, copy));
        Ok(())
    }

    /// Forgets every copy whose bytes overlap `written` and returns them (to be freed):
    /// the bytes they were packed from have changed.
    pub fn invalidate(&mut self, written: Range<usize>) -> Vec<C> {
        if written.is_empty() {
            return Vec::new();
        }
        // The first entry ending after the write's start, up to the first starting at or
        // after its end.
        let lo = self.entries.partition_point(|(r, _)| r.end <= written.start);
        let hi = lo + self.entries[lo..].partition_point(|(r, _)| r.start < written.end);
        self.entries.drain(lo..hi).map(|(_, c)| c).collect()
    }

    /// Forgets every copy (the whole buffer was written) and returns them.
    pub fn invalidate_all(&mut self) -> Vec<C> {
        self.entries.drain(..).map(|(_, c)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> PackedCopies<&'static str> {
        let mut p = PackedCopies::default();
        // Inserted out of order, with a gap between b and c.
        p.insert(100..200, "b").unwrap();
        p.insert(0..100, "a").unwrap();
        p.insert(300..400, "c").unwrap();
        p
    }

    #[test]
    fn copies_are_found_by_their_start_only() {
        let p = three();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(0), Some(&"a"));
        assert_eq!(p.get(100), Some(&"b"));
        assert_eq!(p.get(300), Some(&"c"));
        for start in [1, 99, 150, 200, 250, 399, 400] {
            assert_eq!(p.get(start), None, "start {start}");
        }
    }

    #[test]
    fn overlapping_or_empty_inserts_are_refused() {
        let mut p = three();
        for r in [0..100, 50..60, 90..110, 199..201, 250..301, 0..1000, 5..5] {
            assert!(p.insert(r.clone(), "x").is_err(), "{r:?}");
        }
        // Touching ends are not overlaps.
        p.insert(200..300, "gap").unwrap();
        p.insert(400..401, "end").unwrap();
        assert_eq!(p.get(200), Some(&"gap"));
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn a_write_drops_exactly_the_copies_it_overlaps() {
        let cases: &[(Range<usize>, &[&str])] = &[
            (0..1, &["a"]),
            (99..100, &["a"]),
            (99..101, &["a", "b"]),
            (100..101, &["b"]),
            (150..160, &["b"]),
            (199..350, &["b", "c"]),
            (200..300, &[]), // the gap
            (400..500, &[]), // past the end
            (10..10, &[]),   // empty write
            (0..1000, &["a", "b", "c"]),
        ];
        for (w, dropped) in cases {
            let mut p = three();
            let got = p.invalidate(w.clone());
            assert_eq!(&got, dropped, "write {w:?}");
            assert_eq!(p.len(), 3 - dropped.len(), "write {w:?}");
            for (start, name) in [(0, "a"), (100, "b"), (300, "c")] {
                let kept = p.get(start).copied();
                assert_eq!(kept.is_none(), dropped.contains(&name), "write {w:?}, copy {name}");
            }
            // A dropped copy can be made again from the new bytes.
            for (start, name) in [(0, "a"), (100, "b"), (300, "c")] {
                if dropped.contains(&name) {
                    p.insert(start..start + 100, name).unwrap();
                }
            }
            assert_eq!(p.len(), 3);
        }
    }

    #[test]
    fn clearing_the_buffer_drops_every_copy() {
        let mut p = three();
        let mut all = p.invalidate_all();
        all.sort();
        assert_eq!(all, ["a", "b", "c"]);
        assert!(p.is_empty() && p.get(0).is_none());
    }
}
