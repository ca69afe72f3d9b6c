//! Checks every written page of the working set against the generation
//! table. Runs while the dirtiers are parked (see [`crate::coord`]).

use crate::memory::{GenTable, PageSet};
use crate::page::{Damage, Reason};

/// The first damaged page found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPage {
    pub page: u64,
    pub expected_generation: u32,
    pub damage: Damage,
}

/// The outcome of one verification pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Pages checked (those written at least once).
    pub pages: u64,
    /// Pages damaged.
    pub bad: u64,
    pub first_bad: Option<BadPage>,
    /// Damaged pages per [`Reason`], in `Reason::ALL` order.
    pub by_reason: [u64; Reason::ALL.len()],
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.bad == 0
    }

    /// Counts item `index` (a page, or a disk block) as checked, and as bad
    /// if `result` says so.
    pub fn record(&mut self, index: u64, expected_generation: u32, result: Result<(), Damage>) {
        self.pages += 1;
        if let Err(damage) = result {
            self.bad += 1;
            let slot = Reason::ALL
                .iter()
                .position(|r| *r == damage.reason)
                .unwrap_or(0);
            self.by_reason[slot] += 1;
            self.first_bad.get_or_insert(BadPage {
                page: index,
                expected_generation,
                damage,
            });
        }
    }
}

/// Verifies every page whose table entry is not 0.
pub fn verify(pages: &PageSet<'_>, table: &GenTable<'_>) -> VerifyReport {
    let mut report = VerifyReport::default();
    for index in 0..pages.len().min(table.len()) {
        let expected = table.expected(index);
        if expected == 0 {
            continue;
        }
        report.record(
            index as u64,
            expected,
            pages.page(index).check(index as u64, expected),
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::tests::zeroed_pages;
    use crate::page::Corruption;
    use core::sync::atomic::AtomicU32;

    #[test]
    fn finds_and_names_the_damaged_pages() {
        let pages = zeroed_pages(8);
        let entries: Vec<AtomicU32> = (0..8).map(|_| AtomicU32::new(0)).collect();
        let set = PageSet::new(&pages);
        let table = GenTable::new(&entries);
        // Only pages 0..6 were ever written.
        for i in 0..6 {
            set.page(i).write_full(i as u64, 1);
            table.record(i, 1);
        }
        assert_eq!(
            verify(&set, &table),
            VerifyReport {
                pages: 6,
                ..Default::default()
            }
        );

        set.page(4).corrupt(4, Corruption::Zero);
        set.page(2).corrupt(2, Corruption::Torn);
        let r = verify(&set, &table);
        assert!(!r.ok());
        assert_eq!((r.pages, r.bad), (6, 2));
        let first = r.first_bad.unwrap();
        assert_eq!(
            (first.page, first.expected_generation, first.damage.reason),
            (2, 1, Reason::Torn)
        );
        assert_eq!(r.by_reason.iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_lost_table_update_is_ahead() {
        let pages = zeroed_pages(1);
        let entries = [AtomicU32::new(1)];
        let set = PageSet::new(&pages);
        set.page(0).write_full(0, 2);
        let r = verify(&set, &GenTable::new(&entries));
        assert_eq!(r.first_bad.unwrap().damage.reason, Reason::Ahead);
    }
}
