//! What the disk workload writes: self-describing 4 KiB blocks and a header
//! block that lets a later boot know what the disk must hold.
//!
//! Every 512-byte sector of a data block carries its own header:
//!
//! ```text
//! word 0  BLOCK_MAGIC           word 3  generation | sector << 32
//! word 1  run id                word 4  checksum of the sector's other words
//! word 2  block number          words 5-63  a pattern of (run, block, generation, sector)
//! ```
//!
//! so a block read back can be told to be intact, never written (zero),
//! from another run or an older pass (stale), from a newer pass than
//! remembered (ahead), another block's (misplaced), corrupt, or torn: its
//! sectors from different writes. Block 0 is the [`Header`].

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::page::{mix, Damage, Reason};

pub const BLOCK_BYTES: usize = 4096;
pub const BLOCK_WORDS: usize = BLOCK_BYTES / 8;
const SECTOR_WORDS: usize = 64;
const SECTORS: usize = BLOCK_WORDS / SECTOR_WORDS;
const BLOCK_MAGIC: u64 = u64::from_be_bytes(*b"ternBLK1");
const HEADER_MAGIC: u64 = u64::from_be_bytes(*b"ternDHDR");
const HEADER_VERSION: u64 = 1;

fn sector_checksum(words: &[AtomicU64]) -> u64 {
    let folded = words
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 4)
        .fold(BLOCK_MAGIC, |acc, (_, w)| {
            acc.rotate_left(7) ^ w.load(Relaxed)
        });
    mix(folded)
}

fn pattern_seed(run_id: u64, block: u64, generation: u32, sector: usize) -> u64 {
    mix(run_id ^ mix(block ^ (u64::from(generation) << 20) ^ ((sector as u64) << 52)))
}

/// Writes block `block` of run `run_id` at `generation` into `words`.
pub fn fill_block(words: &[AtomicU64], run_id: u64, block: u64, generation: u32) {
    fill_sectors(words, run_id, block, generation, 0..SECTORS);
}

/// Writes only sectors `sectors` of the block (a torn block, for `corrupt`).
pub fn fill_sectors(
    words: &[AtomicU64],
    run_id: u64,
    block: u64,
    generation: u32,
    sectors: core::ops::Range<usize>,
) {
    for (s, sector) in words[..BLOCK_WORDS]
        .chunks(SECTOR_WORDS)
        .enumerate()
        .filter(|(s, _)| sectors.contains(s))
    {
        let seed = pattern_seed(run_id, block, generation, s);
        sector[0].store(BLOCK_MAGIC, Relaxed);
        sector[1].store(run_id, Relaxed);
        sector[2].store(block, Relaxed);
        sector[3].store(u64::from(generation) | ((s as u64) << 32), Relaxed);
        for (k, w) in sector.iter().enumerate().skip(5) {
            w.store(
                seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                Relaxed,
            );
        }
        sector[4].store(sector_checksum(sector), Relaxed);
    }
}

/// One sector's verdict: its generation if it is a valid sector of this
/// block and run, else why not.
fn check_sector(sector: &[AtomicU64], s: usize, run_id: u64, block: u64) -> Result<u32, Damage> {
    let damage = |reason| Damage {
        reason,
        found_generation: None,
        line: Some(s as u32),
        found_index: None,
    };
    let get = |i: usize| sector[i].load(Relaxed);
    if get(0) != BLOCK_MAGIC {
        let zero = sector.iter().all(|w| w.load(Relaxed) == 0);
        return Err(damage(if zero {
            Reason::Zeroed
        } else {
            Reason::BadMagic
        }));
    }
    if get(4) != sector_checksum(sector) {
        return Err(damage(Reason::BadChecksum));
    }
    let generation = get(3) as u32;
    if get(1) != run_id {
        return Err(Damage {
            found_generation: Some(generation),
            ..damage(Reason::Stale)
        });
    }
    if get(2) != block || (get(3) >> 32) as usize != s {
        return Err(Damage {
            found_index: Some(get(2)),
            found_generation: Some(generation),
            ..damage(Reason::Misplaced)
        });
    }
    let seed = pattern_seed(run_id, block, generation, s);
    if (5..SECTOR_WORDS).any(|k| get(k) != seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
        return Err(damage(Reason::BadChecksum));
    }
    Ok(generation)
}

/// Checks `words` hold block `block` of run `run_id` at `expected`.
/// `Damage::line` names the first bad sector.
pub fn check_block(
    words: &[AtomicU64],
    run_id: u64,
    block: u64,
    expected: u32,
) -> Result<(), Damage> {
    let mut found: Option<u32> = None;
    let mut zero_sectors = 0;
    for (s, sector) in words[..BLOCK_WORDS].chunks(SECTOR_WORDS).enumerate() {
        match check_sector(sector, s, run_id, block) {
            Ok(g) => match found {
                None => found = Some(g),
                Some(f) if f != g => {
                    return Err(Damage {
                        reason: Reason::Torn,
                        found_generation: Some(f),
                        line: Some(s as u32),
                        found_index: None,
                    })
                }
                Some(_) => {}
            },
            Err(d) if d.reason == Reason::Zeroed => zero_sectors += 1,
            Err(d) => return Err(d),
        }
    }
    let generation = match (found, zero_sectors) {
        (None, _) => {
            return Err(Damage {
                reason: Reason::Zeroed,
                found_generation: None,
                line: None,
                found_index: None,
            })
        }
        (Some(g), 0) => g,
        // Some sectors written, others still zero: half a write arrived.
        (Some(g), _) => {
            return Err(Damage {
                reason: Reason::Torn,
                found_generation: Some(g),
                line: None,
                found_index: None,
            })
        }
    };
    match generation.cmp(&expected) {
        core::cmp::Ordering::Equal => Ok(()),
        order => Err(Damage {
            reason: if order.is_lt() {
                Reason::Stale
            } else {
                Reason::Ahead
            },
            found_generation: Some(generation),
            line: None,
            found_index: None,
        }),
    }
}

/// Block 0: what the disk holds, so a later boot can verify it from the disk
/// alone. Blocks `1..cursor` hold `generation`, blocks `cursor..=blocks`
/// hold `generation - 1` (0: never written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub run_id: u64,
    /// Data blocks (1..=blocks).
    pub blocks: u64,
    pub generation: u32,
    pub cursor: u64,
    /// Writes that failed in the run: their blocks hold unknown content.
    pub errors: u64,
}

impl Header {
    pub fn write(&self, words: &[AtomicU64]) {
        let fields = [
            HEADER_MAGIC,
            HEADER_VERSION,
            self.run_id,
            self.blocks,
            self.generation.into(),
            self.cursor,
            self.errors,
        ];
        for (w, v) in words.iter().zip(fields) {
            w.store(v, Relaxed);
        }
        words[7].store(
            mix(fields.iter().fold(0, |a, f| a.rotate_left(9) ^ f)),
            Relaxed,
        );
        for w in &words[8..BLOCK_WORDS] {
            w.store(0, Relaxed);
        }
    }

    pub fn read(words: &[AtomicU64]) -> Option<Header> {
        let f: [u64; 8] = core::array::from_fn(|i| words[i].load(Relaxed));
        if f[0] != HEADER_MAGIC
            || f[1] != HEADER_VERSION
            || f[7] != mix(f[..7].iter().fold(0, |a, x| a.rotate_left(9) ^ x))
        {
            return None;
        }
        let header = Header {
            run_id: f[2],
            blocks: f[3],
            generation: u32::try_from(f[4]).ok()?,
            cursor: f[5],
            errors: f[6],
        };
        (header.cursor >= 1 && header.cursor <= header.blocks + 1).then_some(header)
    }

    /// The generation block `block` must hold (0: never written).
    pub fn expected(&self, block: u64) -> u32 {
        if block < self.cursor {
            self.generation
        } else {
            self.generation.saturating_sub(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Vec<AtomicU64> {
        (0..BLOCK_WORDS).map(|_| AtomicU64::new(0)).collect()
    }

    fn reason(words: &[AtomicU64], expected: u32) -> Reason {
        check_block(words, 7, 3, expected).unwrap_err().reason
    }

    #[test]
    fn blocks_verify_and_damage_is_named() {
        let b = block();
        assert_eq!(reason(&b, 1), Reason::Zeroed);
        fill_block(&b, 7, 3, 2);
        assert_eq!(check_block(&b, 7, 3, 2), Ok(()));
        assert_eq!(reason(&b, 3), Reason::Stale);
        assert_eq!(reason(&b, 1), Reason::Ahead);
        assert_eq!(
            check_block(&b, 8, 3, 2).unwrap_err().reason,
            Reason::Stale,
            "another run's block"
        );
        assert_eq!(check_block(&b, 7, 4, 2).unwrap_err().found_index, Some(3));
        b[100].store(1, Relaxed);
        assert_eq!(reason(&b, 2), Reason::BadChecksum);
    }

    #[test]
    fn torn_blocks_name_their_first_foreign_sector() {
        let (old, new) = (block(), block());
        fill_block(&old, 7, 3, 1);
        fill_block(&new, 7, 3, 2);
        for w in 0..3 * SECTOR_WORDS {
            new[w].store(old[w].load(Relaxed), Relaxed);
        }
        let d = check_block(&new, 7, 3, 2).unwrap_err();
        assert_eq!(
            (d.reason, d.line, d.found_generation),
            (Reason::Torn, Some(3), Some(1))
        );
        // Half written onto a blank disk.
        let half = block();
        fill_block(&half, 7, 3, 1);
        for w in &half[4 * SECTOR_WORDS..] {
            w.store(0, Relaxed);
        }
        assert_eq!(reason(&half, 1), Reason::Torn);
    }

    #[test]
    fn header_round_trip_and_expectations() {
        let b = block();
        let h = Header {
            run_id: 9,
            blocks: 100,
            generation: 3,
            cursor: 40,
            errors: 0,
        };
        h.write(&b);
        assert_eq!(Header::read(&b), Some(h));
        assert_eq!(
            (
                h.expected(1),
                h.expected(39),
                h.expected(40),
                h.expected(100)
            ),
            (3, 3, 2, 2)
        );
        let first = Header { generation: 1, ..h };
        assert_eq!(first.expected(40), 0, "never written in the first pass");
        b[5].store(101, Relaxed);
        assert_eq!(Header::read(&b), None, "checksum");
        let bad_cursor = Header { cursor: 102, ..h };
        bad_cursor.write(&b);
        assert_eq!(Header::read(&b), None);
        assert_eq!(Header::read(&block()), None);
    }
}
