//! The working set as the workloads see it: [`PageSet`] (pages, possibly in
//! several physical extents) and [`GenTable`] (the generation the guest last
//! wrote to each page, which is what the verifier compares against).

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::page::Page;

/// Most separate extents a working set may span (RAM below the MMIO hole,
/// above 4 GiB, ...).
pub const MAX_EXTENTS: usize = 8;

/// Pages numbered 0..len across up to [`MAX_EXTENTS`] slices.
pub struct PageSet<'a> {
    extents: [&'a [Page]; MAX_EXTENTS],
    count: usize,
    len: usize,
}

impl<'a> PageSet<'a> {
    pub const fn empty() -> Self {
        PageSet {
            extents: [&[]; MAX_EXTENTS],
            count: 0,
            len: 0,
        }
    }

    /// A set over one slice.
    pub fn new(pages: &'a [Page]) -> Self {
        let mut set = Self::empty();
        set.push(pages);
        set
    }

    /// Appends an extent; returns false (and adds nothing) when full.
    pub fn push(&mut self, pages: &'a [Page]) -> bool {
        if self.count == MAX_EXTENTS {
            return false;
        }
        self.extents[self.count] = pages;
        self.count += 1;
        self.len += pages.len();
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Page `index`.
    ///
    /// # Panics
    /// If `index >= len()` (the workloads only use indices below `len()`).
    pub fn page(&self, mut index: usize) -> &'a Page {
        for extent in &self.extents[..self.count] {
            if index < extent.len() {
                return &extent[index];
            }
            index -= extent.len();
        }
        panic!("page index out of range");
    }
}

/// Per page: the generation last written (0 = never), plus a frozen flag for
/// pages the `corrupt` command damaged, which the dirtier then leaves alone
/// so the damage stays until a verify finds it.
pub struct GenTable<'a> {
    entries: &'a [AtomicU32],
}

const FROZEN: u32 = 1 << 31;
/// Generations wrap from this back to 1 (0 means "never written").
pub const MAX_GENERATION: u32 = FROZEN - 1;

impl<'a> GenTable<'a> {
    pub fn new(entries: &'a [AtomicU32]) -> Self {
        GenTable { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The generation page `index` should hold (0: not written yet).
    pub fn expected(&self, index: usize) -> u32 {
        self.entries[index].load(Relaxed) & !FROZEN
    }

    /// The generation the next write of page `index` gives it, or `None` if
    /// the page is frozen.
    pub fn next(&self, index: usize) -> Option<u32> {
        let entry = self.entries[index].load(Relaxed);
        if entry & FROZEN != 0 {
            return None;
        }
        Some(if entry >= MAX_GENERATION {
            1
        } else {
            entry + 1
        })
    }

    /// Records that page `index` now holds `generation`.
    pub fn record(&self, index: usize, generation: u32) {
        self.entries[index].store(generation, Relaxed);
    }

    /// Stops the dirtier from writing page `index` again.
    pub fn freeze(&self, index: usize) {
        self.entries[index].fetch_or(FROZEN, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::tests::zeroed_pages;

    #[test]
    fn pages_are_numbered_across_extents() {
        let a = zeroed_pages(2);
        let b = zeroed_pages(3);
        let mut set = PageSet::new(&a);
        assert!(set.push(&b));
        assert_eq!(set.len(), 5);
        assert!(core::ptr::eq(set.page(1), &a[1]));
        assert!(core::ptr::eq(set.page(2), &b[0]));
        assert!(core::ptr::eq(set.page(4), &b[2]));
    }

    #[test]
    fn extents_are_bounded() {
        let a = zeroed_pages(1);
        let mut set = PageSet::empty();
        for _ in 0..MAX_EXTENTS {
            assert!(set.push(&a));
        }
        assert!(!set.push(&a));
        assert_eq!(set.len(), MAX_EXTENTS);
    }

    #[test]
    fn generations_advance_wrap_and_freeze() {
        let entries: Vec<AtomicU32> = (0..2).map(|_| AtomicU32::new(0)).collect();
        let t = GenTable::new(&entries);
        assert_eq!(t.next(0), Some(1));
        t.record(0, MAX_GENERATION);
        assert_eq!(t.next(0), Some(1));
        t.record(1, 5);
        t.freeze(1);
        assert_eq!(t.next(1), None);
        assert_eq!(t.expected(1), 5);
    }
}
