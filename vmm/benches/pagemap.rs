//! Finding never-populated guest pages: the `PAGEMAP_SCAN` ioctl against
//! reading `/proc/self/pagemap` entry by entry, over 1 GiB of anonymous memory
//! asked in the bulk pass's 16 MiB windows. Three layouts: every page written
//! (a busy guest: the scan's best case is one range per window), none
//! written (a fresh guest), and one page in 64 written (an idle guest's
//! scattered pages: many short ranges). Prints ms per GiB, the median of
//! several passes; never fails on the numbers.
//!
//! `cargo bench -p tern-vmm --bench pagemap`

use std::time::Instant;

use vmm::vstate::populated::{Pagemap, PagemapMethod};

const PAGE: usize = 4096;
const GIB: usize = 1 << 30;
/// The bulk pass's window: 64 bitmap words of 64 pages.
const WINDOW_PAGES: usize = 64 * 64;
const PASSES: usize = 7;

/// ms for one pass over `map` in windows, and the populated pages found.
fn pass(pm: &mut Pagemap, map: &vm_memory::MmapRegion<()>) -> (f64, u64) {
    let base = map.as_ptr() as u64;
    let mut out = Vec::new();
    let mut found = 0u64;
    let t = Instant::now();
    for w in (0..GIB / PAGE).step_by(WINDOW_PAGES) {
        pm.populated(base + (w * PAGE) as u64, WINDOW_PAGES, &mut out)
            .expect("pagemap");
        found += out.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
    }
    (t.elapsed().as_secs_f64() * 1e3, found)
}

fn main() {
    println!("| layout | read entries, ms/GiB | PAGEMAP_SCAN, ms/GiB | ratio |");
    println!("|---|---|---|---|");
    for (name, every) in [
        ("every page written", 1),
        ("one page in 64", 64),
        ("none written", 0),
    ] {
        let map = vm_memory::MmapRegion::<()>::new(GIB).expect("mmap 1 GiB");
        if every > 0 {
            for p in (0..GIB / PAGE).step_by(every) {
                // SAFETY: page `p` lies within the 1 GiB mapping just made,
                // which nothing else uses.
                unsafe { map.as_ptr().add(p * PAGE).write_volatile(1) };
            }
        }
        let expected = (GIB / PAGE).checked_div(every).unwrap_or(0) as u64;
        let mut medians = Vec::new();
        for method in [PagemapMethod::Read, PagemapMethod::Scan] {
            let mut pm = Pagemap::open_with(method).expect("open /proc/self/pagemap");
            let mut ms: Vec<f64> = (0..PASSES)
                .map(|_| {
                    let (ms, found) = pass(&mut pm, &map);
                    assert_eq!(found, expected, "{method:?} on {name}");
                    ms
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            medians.push(ms[PASSES / 2]);
        }
        println!(
            "| {name} | {:.2} | {:.2} | {:.1}x |",
            medians[0],
            medians[1],
            medians[0] / medians[1]
        );
    }
}
