//! A concurrent set of dirty guest pages, one bitmap per memory region.
//!
//! Producers (KVM's dirty ring, harvested by vCPU threads or the migration
//! thread; KVM's bitmap; vm-memory's bitmap of tern's own writes) `mark`
//! pages; the sender `take`s them word by word before reading the pages. The
//! number of pages in the set is maintained on every insert and removal, so
//! asking "how much is left" costs nothing however large the guest.

use std::sync::atomic::{AtomicU64, Ordering};

/// The size of one memory region, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionLayout {
    /// Number of pages in the region.
    pub pages: u64,
}

struct RegionBits {
    pages: u64,
    words: Vec<AtomicU64>,
}

/// Dirty pages per region, with an exact running count.
pub struct DirtySet {
    regions: Vec<RegionBits>,
    count: AtomicU64,
    /// Pages ever newly added (monotonic): the dirty-set growth over any interval.
    added_total: AtomicU64,
}

impl DirtySet {
    /// An empty set for regions of the given sizes.
    pub fn new(layout: &[RegionLayout]) -> Self {
        DirtySet {
            regions: layout
                .iter()
                .map(|r| RegionBits {
                    pages: r.pages,
                    words: (0..r.pages.div_ceil(64))
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                })
                .collect(),
            count: AtomicU64::new(0),
            added_total: AtomicU64::new(0),
        }
    }

    /// Pages newly added since the set was created (never decreases).
    pub fn added_total(&self) -> u64 {
        self.added_total.load(Ordering::Acquire)
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    /// Number of 64-page words of region `region` (0 for an unknown region).
    pub fn words(&self, region: usize) -> usize {
        self.regions.get(region).map_or(0, |r| r.words.len())
    }

    /// Pages in region `region` (0 for an unknown region).
    pub fn region_pages(&self, region: usize) -> u64 {
        self.regions.get(region).map_or(0, |r| r.pages)
    }

    /// Pages currently in the set.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Adds one page. Returns whether it was newly added. Pages outside the
    /// region are ignored (a bad index from a producer must not panic).
    pub fn mark(&self, region: usize, page: u64) -> bool {
        let Some(r) = self.regions.get(region) else {
            return false;
        };
        if page >= r.pages {
            return false;
        }
        let bit = 1u64 << (page % 64);
        let old = r.words[(page / 64) as usize].fetch_or(bit, Ordering::AcqRel);
        let new = old & bit == 0;
        if new {
            self.count.fetch_add(1, Ordering::AcqRel);
            self.added_total.fetch_add(1, Ordering::AcqRel);
        }
        new
    }

    /// ORs `bits` into word `word` of `region` (bit i = page word*64+i).
    /// Returns how many pages were newly added.
    pub fn mark_word(&self, region: usize, word: usize, bits: u64) -> u32 {
        if bits == 0 {
            return 0;
        }
        let Some(r) = self.regions.get(region) else {
            return 0;
        };
        let Some(w) = r.words.get(word) else {
            return 0;
        };
        let bits = bits & valid_mask(r.pages, word);
        let old = w.fetch_or(bits, Ordering::AcqRel);
        let added = (bits & !old).count_ones();
        if added > 0 {
            self.count.fetch_add(u64::from(added), Ordering::AcqRel);
            self.added_total
                .fetch_add(u64::from(added), Ordering::AcqRel);
        }
        added
    }

    /// ORs a whole bitmap for `region` into the set, starting at word 0.
    /// Returns how many pages were newly added.
    pub fn mark_bitmap(&self, region: usize, bitmap: &[u64]) -> u64 {
        bitmap
            .iter()
            .enumerate()
            .map(|(i, &bits)| u64::from(self.mark_word(region, i, bits)))
            .sum()
    }

    /// Adds every page of every region.
    pub fn mark_all(&self) -> u64 {
        (0..self.regions.len())
            .map(|r| {
                (0..self.regions[r].words.len())
                    .map(|w| u64::from(self.mark_word(r, w, u64::MAX)))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Removes and returns word `word` of `region`.
    pub fn take_word(&self, region: usize, word: usize) -> u64 {
        let Some(w) = self.regions.get(region).and_then(|r| r.words.get(word)) else {
            return 0;
        };
        if w.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let bits = w.swap(0, Ordering::AcqRel);
        if bits != 0 {
            self.count
                .fetch_sub(u64::from(bits.count_ones()), Ordering::AcqRel);
        }
        bits
    }

    /// The first word at or after `from` in `region` with a page in it.
    pub fn next_nonempty_word(&self, region: usize, from: usize) -> Option<usize> {
        let r = self.regions.get(region)?;
        r.words
            .get(from..)?
            .iter()
            .position(|w| w.load(Ordering::Relaxed) != 0)
            .map(|i| from + i)
    }

    /// Empties the set.
    pub fn clear(&self) {
        for r in &self.regions {
            for w in &r.words {
                let bits = w.swap(0, Ordering::AcqRel);
                if bits != 0 {
                    self.count
                        .fetch_sub(u64::from(bits.count_ones()), Ordering::AcqRel);
                }
            }
        }
    }
}

/// The bits of word `word` that name real pages of a region of `pages` pages.
fn valid_mask(pages: u64, word: usize) -> u64 {
    let first = word as u64 * 64;
    if first + 64 <= pages {
        u64::MAX
    } else if first >= pages {
        0
    } else {
        (1u64 << (pages - first)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> DirtySet {
        DirtySet::new(&[RegionLayout { pages: 130 }, RegionLayout { pages: 64 }])
    }

    #[test]
    fn count_follows_marks_and_takes() {
        let s = set();
        assert!(s.mark(0, 5));
        assert!(!s.mark(0, 5));
        assert_eq!(s.mark_word(0, 0, 0b1110_0000), 2);
        assert_eq!(s.count(), 3);
        assert_eq!(s.take_word(0, 0), 0b1110_0000);
        assert_eq!(s.count(), 0);
        assert_eq!(s.take_word(0, 0), 0);
        assert_eq!(s.added_total(), 3);
    }

    #[test]
    fn out_of_range_pages_are_ignored() {
        let s = set();
        assert!(!s.mark(0, 130));
        assert!(!s.mark(7, 0));
        assert_eq!(
            s.mark_word(0, 2, u64::MAX),
            2,
            "only pages 128 and 129 exist"
        );
        assert_eq!(s.mark_word(0, 9, 1), 0);
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn mark_all_then_clear() {
        let s = set();
        assert_eq!(s.mark_all(), 194);
        assert_eq!(s.count(), 194);
        s.clear();
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn next_nonempty_word_skips_empty_words() {
        let s = set();
        s.mark(0, 129);
        assert_eq!(s.next_nonempty_word(0, 0), Some(2));
        assert_eq!(s.next_nonempty_word(0, 3), None);
        assert_eq!(s.next_nonempty_word(1, 0), None);
    }

    #[test]
    fn concurrent_marks_count_exactly() {
        let s = std::sync::Arc::new(DirtySet::new(&[RegionLayout { pages: 1 << 16 }]));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    // Overlapping ranges: every page is marked by two threads.
                    for p in (t * (1 << 14))..(t * (1 << 14) + (1 << 15)) {
                        s.mark(0, p % (1 << 16));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.count(), 1 << 16);
    }
}
