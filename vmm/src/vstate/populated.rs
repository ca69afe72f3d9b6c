//! Which guest pages were never populated on this host, from
//! `/proc/self/pagemap`.
//!
//! Guest memory is a private anonymous mapping: a page that is neither
//! resident nor swapped out has never been written and reads as zero. The
//! bulk pass sends such pages as zero markers without reading them; reading
//! them would fault each one in (a page fault per 4 KiB, the largest cost of
//! migrating a mostly idle guest) only to find zeros.
//!
//! Racing writes are safe: the pass re-arms dirty tracking for a window
//! before it looks at the window's pages, so a page the guest writes after
//! being found empty here is logged dirty and sent again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const HOST_PAGE: u64 = 4096;

/// An open `/proc/self/pagemap`.
pub struct Pagemap {
    file: File,
    entries: Vec<u8>,
}

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open() -> io::Result<Self> {
        Ok(Pagemap {
            file: File::open("/proc/self/pagemap")?,
            entries: Vec::new(),
        })
    }

    /// For the `pages` 4 KiB pages from host address `host_addr` (page
    /// aligned), sets bit `i % 64` of `out[i / 64]` for each page that may hold
    /// data (resident or swapped out); clear bits are never-populated pages.
    /// `out` is resized to hold `pages` bits.
    pub fn populated(
        &mut self,
        host_addr: u64,
        pages: usize,
        out: &mut Vec<u64>,
    ) -> io::Result<()> {
        if host_addr % HOST_PAGE != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host address {host_addr:#x} is not page aligned"),
            ));
        }
        self.entries.resize(pages * 8, 0);
        self.file
            .read_exact_at(&mut self.entries, host_addr / HOST_PAGE * 8)?;
        out.clear();
        out.resize(pages.div_ceil(64), 0);
        for (i, e) in self.entries.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
            if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                out[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_written_pages_are_populated() {
        // A fresh anonymous mapping (smaller than a huge page, so written pages
        // are populated one by one): nothing populated until written.
        let pages = 200usize;
        let map = vm_memory::MmapRegion::<()>::new(pages * HOST_PAGE as usize).unwrap();
        let base = map.as_ptr() as u64;
        for &p in &[0usize, 3, 64, 130, 199] {
            // SAFETY: `p` is within the `pages`-page mapping just created, which
            // nothing else uses.
            unsafe { map.as_ptr().add(p * HOST_PAGE as usize).write_volatile(1) };
        }
        let mut pm = Pagemap::open().unwrap();
        let mut out = Vec::new();
        pm.populated(base, pages, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        let set: Vec<usize> = (0..pages)
            .filter(|&i| out[i / 64] & (1 << (i % 64)) != 0)
            .collect();
        assert_eq!(set, vec![0, 3, 64, 130, 199]);
        assert!(pm.populated(base + 1, 1, &mut out).is_err());
    }
}
