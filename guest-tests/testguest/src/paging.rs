//! Mapping RAM above 4 GiB. The boot page tables (data.s) identity-map the
//! first 4 GiB in 2 MiB pages; each further GiB of RAM gets a page directory
//! from the heap and a PDPT entry. The tables are user accessible, so this
//! runs in ring 3, before any other CPU starts.

use tern_workloads::bootdata::layout::Span;

use crate::boot::{PT_LARGE_PAGE, PT_TABLE};
use crate::heap::Heap;

extern "C" {
    static mut tern_boot_pdpt: [u64; 512];
}

const GIB: u64 = 1 << 30;
const FIRST_HIGH_GIB: u64 = 4;
/// One PML4 entry, so one PDPT: 512 GiB.
const MAX_GIB: u64 = 512;

fn high_gibs(ram: &[Span]) -> impl Iterator<Item = u64> + '_ {
    ram.iter()
        .flat_map(|s| (s.start / GIB).max(FIRST_HIGH_GIB)..s.end.div_ceil(GIB))
}

/// Maps every GiB of `ram` above 4 GiB; returns the first address it could
/// not map (the PDPT's end or the heap running out), if any.
pub fn map_above_4g(ram: &[Span], heap: &mut Heap) -> Result<(), u64> {
    let pdpt = &raw mut tern_boot_pdpt;
    for gib in high_gibs(ram) {
        if gib >= MAX_GIB {
            return Err(gib * GIB);
        }
        // SAFETY: the PDPT is a static in our image; only this CPU runs, and
        // entries from 4 up are ours (zero until set here).
        if unsafe { (*pdpt)[gib as usize] } != 0 {
            continue;
        }
        let pd = heap.zeroed(4096).ok_or(gib * GIB)?;
        for i in 0..512u64 {
            let entry = (gib * GIB + (i << 21)) | PT_LARGE_PAGE;
            // SAFETY: `pd` is a fresh heap page; not yet reachable by the MMU.
            unsafe { (pd as *mut u64).add(i as usize).write(entry) };
        }
        // SAFETY: as above. The entry was not present, so no TLB entry can
        // be stale: no flush is needed.
        unsafe { (*pdpt)[gib as usize] = pd | PT_TABLE };
    }
    Ok(())
}
