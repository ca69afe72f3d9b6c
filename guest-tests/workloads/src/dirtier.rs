//! The memory dirtier: one per busy CPU, each owning a disjoint slice of the
//! working set, so no two CPUs ever write the same page.

use crate::memory::{GenTable, PageSet};
use crate::pacer::Pacer;
use crate::params::Pattern;
use crate::rng::Rng;

/// The pages `0..total` shared among `workers`: worker `rank`'s slice.
pub fn slice_of(total: usize, workers: usize, rank: usize) -> core::ops::Range<usize> {
    let workers = workers.max(1);
    (total * rank / workers)..(total * (rank + 1) / workers)
}

/// Writes generation 1 to every page of `slice`: the working set's first
/// touch, before the measured run starts.
pub fn fill(pages: &PageSet<'_>, table: &GenTable<'_>, slice: core::ops::Range<usize>) {
    for index in slice {
        pages.page(index).write_full(index as u64, 1);
        table.record(index, 1);
    }
}

pub struct Dirtier {
    first: usize,
    len: usize,
    pattern: Pattern,
    cursor: usize,
    rng: Rng,
    pacer: Option<Pacer>,
}

impl Dirtier {
    /// A dirtier over `pages`; `pacer` of `None` means as fast as possible.
    pub fn new(
        pages: core::ops::Range<usize>,
        pattern: Pattern,
        seed: u64,
        pacer: Option<Pacer>,
    ) -> Self {
        let rng = Rng::new(seed, pages.start as u64);
        Dirtier {
            first: pages.start,
            len: pages.len(),
            pattern,
            cursor: 0,
            rng,
            pacer,
        }
    }

    fn next_index(&mut self) -> usize {
        let offset = match self.pattern {
            Pattern::Seq | Pattern::Burst => {
                let c = self.cursor;
                self.cursor = if c + 1 == self.len { 0 } else { c + 1 };
                c
            }
            Pattern::Random => self.rng.below(self.len as u64) as usize,
            Pattern::HotCold => {
                // 90 % of the writes into the first 10 % of the slice.
                let hot = (self.len / 10).max(1);
                if self.len == hot || self.rng.below(10) < 9 {
                    self.rng.below(hot as u64) as usize
                } else {
                    hot + self.rng.below((self.len - hot) as u64) as usize
                }
            }
        };
        self.first + offset
    }

    /// One loop iteration's share of dirtying: writes the next page if the
    /// rate allows at `now`. Returns whether a page was written.
    pub fn step(&mut self, now: u64, pages: &PageSet<'_>, table: &GenTable<'_>) -> bool {
        if self.len == 0 || self.pacer.as_mut().is_some_and(|p| !p.take(now)) {
            return false;
        }
        let index = self.next_index();
        let Some(generation) = table.next(index) else {
            return false; // frozen by `corrupt`: leave the damage in place
        };
        let page = pages.page(index);
        if self.pattern == Pattern::Burst {
            page.write_header(index as u64, generation, page.body_generation());
        } else {
            page.write_full(index as u64, generation);
        }
        table.record(index, generation);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::tests::zeroed_pages;
    use crate::verify::verify;
    use core::sync::atomic::AtomicU32;

    #[test]
    fn slices_partition_the_set() {
        let slices: Vec<_> = (0..3).map(|r| slice_of(10, 3, r)).collect();
        assert_eq!(slices, [0..3, 3..6, 6..10]);
        assert_eq!(slice_of(5, 0, 0), 0..5);
    }

    fn run(pattern: Pattern, steps: usize) -> (Vec<u32>, bool) {
        let pages = zeroed_pages(20);
        let entries: Vec<AtomicU32> = (0..20).map(|_| AtomicU32::new(0)).collect();
        let (set, table) = (PageSet::new(&pages), GenTable::new(&entries));
        fill(&set, &table, 0..20);
        let mut d = Dirtier::new(0..20, pattern, 3, None);
        for _ in 0..steps {
            assert!(d.step(0, &set, &table));
        }
        let gens = (0..20).map(|i| table.expected(i)).collect();
        (gens, verify(&set, &table).ok())
    }

    #[test]
    fn every_pattern_leaves_a_verifiable_set() {
        for p in [
            Pattern::Seq,
            Pattern::Random,
            Pattern::HotCold,
            Pattern::Burst,
        ] {
            let (gens, ok) = run(p, 200);
            assert!(ok, "{p:?}");
            assert_eq!(
                gens.iter().map(|g| u64::from(g - 1)).sum::<u64>(),
                200,
                "{p:?}"
            );
        }
    }

    #[test]
    fn seq_sweeps_evenly() {
        let (gens, _) = run(Pattern::Seq, 40);
        assert!(gens.iter().all(|&g| g == 3));
    }

    #[test]
    fn hotcold_favours_the_hot_tenth() {
        let (gens, _) = run(Pattern::HotCold, 10_000);
        let hot: u32 = gens[..2].iter().map(|g| g - 1).sum();
        assert!((8700..=9300).contains(&hot), "hot writes {hot}");
    }

    #[test]
    fn frozen_pages_are_skipped_and_the_rate_is_paced() {
        let pages = zeroed_pages(1);
        let entries = [AtomicU32::new(0)];
        let (set, table) = (PageSet::new(&pages), GenTable::new(&entries));
        fill(&set, &table, 0..1);
        let mut d = Dirtier::new(0..1, Pattern::Seq, 1, Some(Pacer::new(1, 1, 1000, 0)));
        assert!(d.step(0, &set, &table));
        assert!(!d.step(10, &set, &table), "one page per 1000 ticks");
        table.freeze(0);
        assert!(!d.step(1000, &set, &table));
        assert_eq!(table.expected(0), 2);
    }
}
