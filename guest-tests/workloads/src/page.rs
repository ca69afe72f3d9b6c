//! The self-describing page format the dirtier writes and the verifier checks.
//!
//! A page is 64 cache lines. Line 0 is the header; word 0 of every other
//! line is a stamp:
//!
//! ```text
//! line 0   word 0  MAGIC ("ternPAGE")
//!          word 1  page index in the working set
//!          word 2  generation (bits 0-31) | body generation (bits 32-63)
//!          word 3  checksum of words 0-2
//! line n   word 0  stamp(index, body generation, n)          n = 1..63
//! ```
//!
//! A full write stamps every line and sets both generations to the new
//! one; a header write (the `burst` pattern) bumps only the generation and
//! keeps the body. So a page found after a migration can be told apart as
//! intact, zeroed, foreign (another page's content: misplaced), corrupt
//! header, stale/ahead of the guest's table, or torn (a line from another
//! write than the header says), down to the line.
//!
//! Pages are `[AtomicU64]` so several CPUs can share the working set in safe
//! Rust; relaxed atomic loads and stores compile to plain moves.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::names::named_enum;

pub const PAGE_SIZE: usize = 4096;
const WORDS: usize = PAGE_SIZE / 8;
const LINE_WORDS: usize = 8;
const LINES: usize = WORDS / LINE_WORDS;
const MAGIC: u64 = u64::from_be_bytes(*b"ternPAGE");

/// One 4 KiB page of the working set.
#[repr(C, align(4096))]
pub struct Page {
    words: [AtomicU64; WORDS],
}

/// The splitmix64 finalizer: a cheap bijective hash.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn body_seed(index: u64, body_generation: u32) -> u64 {
    mix(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(body_generation) << 1) ^ MAGIC)
}

fn stamp(seed: u64, line: usize) -> u64 {
    seed ^ (line as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)
}

fn checksum(index: u64, generations: u64) -> u64 {
    mix(MAGIC ^ mix(index ^ mix(generations)))
}

named_enum! {
    /// Why a page failed verification.
    pub enum Reason {
        /// Header and stamps all zero: the page's content never arrived.
        Zeroed = "zeroed",
        /// Neither zero nor a page header: overwritten by something else.
        BadMagic = "bad_magic",
        /// A valid header of another page.
        Misplaced = "misplaced",
        /// The header's checksum does not match it.
        BadChecksum = "bad_checksum",
        /// An older generation than the guest last wrote.
        Stale = "stale",
        /// A newer generation than the guest's table records (the table's
        /// page is the stale one).
        Ahead = "ahead",
        /// A line stamped by another write than the header describes.
        Torn = "torn",
    }
}

/// The verdict on one damaged page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    pub reason: Reason,
    /// The generation in the page's header, when it has a readable one.
    pub found_generation: Option<u32>,
    /// For `torn`: the first line whose stamp is wrong. For `misplaced`:
    /// unused (see `found_index`).
    pub line: Option<u32>,
    /// For `misplaced`: the index the header claims.
    pub found_index: Option<u64>,
}

named_enum! {
    /// Ways the `corrupt` command damages a page, one per verifier verdict
    /// worth proving.
    pub enum Corruption {
        Torn = "torn",
        Zero = "zero",
        Stale = "stale",
        Misplaced = "misplaced",
    }
}

impl Page {
    fn set(&self, word: usize, value: u64) {
        self.words[word].store(value, Relaxed);
    }

    fn get(&self, word: usize) -> u64 {
        self.words[word].load(Relaxed)
    }

    /// Writes every line: generation and body generation become `generation`.
    pub fn write_full(&self, index: u64, generation: u32) {
        let seed = body_seed(index, generation);
        for line in 1..LINES {
            self.set(line * LINE_WORDS, stamp(seed, line));
        }
        self.write_header(index, generation, generation);
    }

    /// Writes only the header line (one cache line): the body stays as the
    /// last full write left it.
    pub fn write_header(&self, index: u64, generation: u32, body_generation: u32) {
        let generations = u64::from(generation) | (u64::from(body_generation) << 32);
        self.set(0, MAGIC);
        self.set(1, index);
        self.set(2, generations);
        self.set(3, checksum(index, generations));
    }

    /// The body generation recorded in the header (what a header-only write
    /// must keep).
    pub fn body_generation(&self) -> u32 {
        (self.get(2) >> 32) as u32
    }

    /// Checks the page holds page `index` at generation `expected`.
    pub fn check(&self, index: u64, expected: u32) -> Result<(), Damage> {
        let damage = |reason, found_generation| Damage {
            reason,
            found_generation,
            line: None,
            found_index: None,
        };
        let magic = self.get(0);
        if magic != MAGIC {
            let all_zero = magic == 0
                && (1..4).all(|w| self.get(w) == 0)
                && (1..LINES).all(|l| self.get(l * LINE_WORDS) == 0);
            return Err(damage(
                if all_zero {
                    Reason::Zeroed
                } else {
                    Reason::BadMagic
                },
                None,
            ));
        }
        let (found_index, generations) = (self.get(1), self.get(2));
        if self.get(3) != checksum(found_index, generations) {
            return Err(damage(Reason::BadChecksum, None));
        }
        let generation = generations as u32;
        if found_index != index {
            return Err(Damage {
                found_index: Some(found_index),
                ..damage(Reason::Misplaced, Some(generation))
            });
        }
        if generation != expected {
            let reason = if generation < expected {
                Reason::Stale
            } else {
                Reason::Ahead
            };
            return Err(damage(reason, Some(generation)));
        }
        let seed = body_seed(index, (generations >> 32) as u32);
        match (1..LINES).find(|&l| self.get(l * LINE_WORDS) != stamp(seed, l)) {
            Some(line) => Err(Damage {
                line: Some(line as u32),
                ..damage(Reason::Torn, Some(generation))
            }),
            None => Ok(()),
        }
    }

    /// Damages the page the way `how` says, behind the guest's back (its
    /// generation table is not told).
    pub fn corrupt(&self, index: u64, how: Corruption) {
        match how {
            Corruption::Torn => self.set(17 * LINE_WORDS, !self.get(17 * LINE_WORDS)),
            Corruption::Zero => {
                for w in &self.words {
                    w.store(0, Relaxed);
                }
            }
            Corruption::Stale => {
                let generation = self.get(2) as u32;
                self.write_full(index, generation.wrapping_sub(1));
            }
            Corruption::Misplaced => {
                let generations = self.get(2);
                self.write_header(
                    index.wrapping_add(1),
                    generations as u32,
                    (generations >> 32) as u32,
                );
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn zeroed_pages(n: usize) -> Vec<Page> {
        (0..n)
            .map(|_| Page {
                words: core::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect()
    }

    #[test]
    fn page_is_exactly_one_page() {
        assert_eq!(core::mem::size_of::<Page>(), PAGE_SIZE);
        assert_eq!(core::mem::align_of::<Page>(), PAGE_SIZE);
    }

    #[test]
    fn full_and_header_writes_verify() {
        let p = &zeroed_pages(1)[0];
        p.write_full(42, 1);
        assert_eq!(p.check(42, 1), Ok(()));
        p.write_header(42, 2, p.body_generation());
        assert_eq!(p.check(42, 2), Ok(()));
        assert_eq!(p.body_generation(), 1);
        p.write_full(42, 3);
        assert_eq!(p.check(42, 3), Ok(()));
    }

    fn reason(p: &Page, index: u64, expected: u32) -> Reason {
        p.check(index, expected).unwrap_err().reason
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let pages = zeroed_pages(2);
        let p = &pages[0];
        assert_eq!(reason(p, 0, 1), Reason::Zeroed);
        p.write_full(0, 5);
        assert_eq!(
            p.check(0, 6).unwrap_err(),
            Damage {
                reason: Reason::Stale,
                found_generation: Some(5),
                line: None,
                found_index: None
            }
        );
        assert_eq!(reason(p, 0, 4), Reason::Ahead);
        // A copy of another page's content.
        pages[1].write_full(1, 5);
        for w in 0..WORDS {
            p.set(w, pages[1].get(w));
        }
        assert_eq!(p.check(0, 5).unwrap_err().found_index, Some(1));
        p.write_full(0, 5);
        p.set(2, p.get(2) + 1);
        assert_eq!(reason(p, 0, 5), Reason::BadChecksum);
        p.set(0, 0x1234);
        assert_eq!(reason(p, 0, 5), Reason::BadMagic);
    }

    #[test]
    fn a_line_from_another_write_is_torn_and_located() {
        let pages = zeroed_pages(2);
        pages[0].write_full(7, 3);
        pages[1].write_full(7, 4);
        // Header and early lines from generation 4, the rest from 3.
        for w in 0..(30 * LINE_WORDS) {
            pages[0].set(w, pages[1].get(w));
        }
        let d = pages[0].check(7, 4).unwrap_err();
        assert_eq!(
            (d.reason, d.line, d.found_generation),
            (Reason::Torn, Some(30), Some(4))
        );
    }

    #[test]
    fn corruptions_give_their_verdicts() {
        let p = &zeroed_pages(1)[0];
        for (how, expect) in [
            (Corruption::Torn, Reason::Torn),
            (Corruption::Zero, Reason::Zeroed),
            (Corruption::Stale, Reason::Stale),
            (Corruption::Misplaced, Reason::Misplaced),
        ] {
            p.write_full(9, 2);
            p.corrupt(9, how);
            assert_eq!(reason(p, 9, 2), expect, "{how:?}");
        }
    }

    #[test]
    fn stamps_differ_between_generations_indices_and_lines() {
        let a = body_seed(1, 1);
        assert_ne!(a, body_seed(1, 2));
        assert_ne!(a, body_seed(2, 1));
        assert_ne!(stamp(a, 1), stamp(a, 2));
    }
}
