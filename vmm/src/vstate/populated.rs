//! Which guest pages were never populated on this host, from
//! `/proc/self/pagemap`.
//!
//! Guest memory is a private anonymous mapping: a page that is neither
//! resident nor swapped out has never been written and reads as zero. The
//! bulk pass sends such pages as zero markers without reading them; reading
//! them would fault each one in (a page fault per 4 KiB, the largest cost of
//! migrating a mostly idle guest) only to find zeros.
//!
//! The answer comes from the `PAGEMAP_SCAN` ioctl (Linux 6.7) where the
//! kernel has it: it hands back the populated stretches as address ranges,
//! a few per window, instead of an 8-byte entry per page to copy out and
//! decode. On older kernels the pagemap file is read entry by entry.
//!
//! Racing writes are safe: the pass re-arms dirty tracking for a window
//! before it looks at the window's pages, so a page the guest writes after
//! being found empty here is logged dirty and sent again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_iowr_nr;

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const HOST_PAGE: u64 = 4096;

/// `PAGEMAP_SCAN` page categories (include/uapi/linux/fs.h).
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` (include/uapi/linux/fs.h): `[start, end)` and its categories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

ioctl_iowr_nr!(PAGEMAP_SCAN, b'f' as u32, 16, PmScanArg);

/// Ranges asked for per `PAGEMAP_SCAN` call; a window with more populated
/// stretches than this takes more calls.
const SCAN_RANGES: usize = 64;

/// How the pagemap is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagemapMethod {
    /// The `PAGEMAP_SCAN` ioctl: populated ranges.
    Scan,
    /// `read` of one 8-byte entry per page.
    Read,
}

/// An open `/proc/self/pagemap`.
pub struct Pagemap {
    file: File,
    method: PagemapMethod,
    entries: Vec<u8>,
    ranges: Vec<PageRegion>,
}

impl Pagemap {
    /// Opens this process's pagemap, with `PAGEMAP_SCAN` if the kernel has it.
    pub fn open() -> io::Result<Self> {
        let mut pm = Self::open_with(PagemapMethod::Scan)?;
        // An empty range: the kernel either knows the ioctl or says ENOTTY
        // (older than 6.7) or EINVAL.
        if pm.scan(0, 0, &mut Vec::new()).is_err() {
            pm.method = PagemapMethod::Read;
        }
        Ok(pm)
    }

    /// Opens this process's pagemap to be asked with `method`.
    pub fn open_with(method: PagemapMethod) -> io::Result<Self> {
        Ok(Pagemap {
            file: File::open("/proc/self/pagemap")?,
            method,
            entries: Vec::new(),
            ranges: vec![PageRegion::default(); SCAN_RANGES],
        })
    }

    /// How this pagemap is asked.
    pub fn method(&self) -> PagemapMethod {
        self.method
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
        out.clear();
        out.resize(pages.div_ceil(64), 0);
        match self.method {
            PagemapMethod::Scan => self.scan(host_addr, pages, out),
            PagemapMethod::Read => self.read(host_addr, pages, out),
        }
    }

    fn scan(&mut self, host_addr: u64, pages: usize, out: &mut [u64]) -> io::Result<()> {
        let end = host_addr + pages as u64 * HOST_PAGE;
        let mut from = host_addr;
        loop {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: from,
                end,
                vec: self.ranges.as_mut_ptr() as u64,
                vec_len: self.ranges.len() as u64,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..Default::default()
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes its `walk_end` and
            // at most `vec_len` entries of `vec`, which points at
            // `self.ranges`, alive and not otherwise borrowed for the call. It
            // only reads this process's page tables for [start, end).
            let n = unsafe { ioctl_with_mut_ref(&self.file, PAGEMAP_SCAN(), &mut arg) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let filled = (n as usize).min(self.ranges.len());
            for r in &self.ranges[..filled] {
                let first = r.start.clamp(host_addr, end);
                let last = r.end.clamp(host_addr, end);
                set_bits(
                    out,
                    ((first - host_addr) / HOST_PAGE) as usize,
                    ((last - host_addr) / HOST_PAGE) as usize,
                );
            }
            if arg.walk_end >= end {
                return Ok(());
            }
            if arg.walk_end <= from {
                // No progress (never seen): give up rather than spin.
                return Err(io::Error::other(format!(
                    "PAGEMAP_SCAN stopped at {:#x} of {from:#x}..{end:#x}",
                    arg.walk_end
                )));
            }
            from = arg.walk_end;
        }
    }

    fn read(&mut self, host_addr: u64, pages: usize, out: &mut [u64]) -> io::Result<()> {
        self.entries.resize(pages * 8, 0);
        self.file
            .read_exact_at(&mut self.entries, host_addr / HOST_PAGE * 8)?;
        for (i, e) in self.entries.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
            if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                out[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(())
    }
}

/// Sets bits `from..to` of `words`.
fn set_bits(words: &mut [u64], from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let bit = i % 64;
        let n = (64 - bit).min(to - i);
        let mask = if n == 64 {
            !0
        } else {
            ((1u64 << n) - 1) << bit
        };
        words[i / 64] |= mask;
        i += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh anonymous mapping of `pages` pages (smaller than a huge page,
    /// so written pages are populated one by one) with `written` written.
    fn mapping(pages: usize, written: &[usize]) -> vm_memory::MmapRegion<()> {
        let map = vm_memory::MmapRegion::<()>::new(pages * HOST_PAGE as usize).unwrap();
        for &p in written {
            assert!(p < pages);
            // SAFETY: `p` is within the `pages`-page mapping just created, which
            // nothing else uses.
            unsafe { map.as_ptr().add(p * HOST_PAGE as usize).write_volatile(1) };
        }
        map
    }

    fn populated_pages(pm: &mut Pagemap, base: u64, pages: usize) -> Vec<usize> {
        let mut out = Vec::new();
        pm.populated(base, pages, &mut out).unwrap();
        assert_eq!(out.len(), pages.div_ceil(64));
        (0..pages)
            .filter(|&i| out[i / 64] & (1 << (i % 64)) != 0)
            .collect()
    }

    #[test]
    fn only_written_pages_are_populated_either_way() {
        let written = [0usize, 3, 64, 65, 66, 130, 199];
        let map = mapping(200, &written);
        let base = map.as_ptr() as u64;
        for method in [PagemapMethod::Scan, PagemapMethod::Read] {
            let mut pm = Pagemap::open_with(method).unwrap();
            assert_eq!(populated_pages(&mut pm, base, 200), written, "{method:?}");
            // A window that starts and ends inside the mapping.
            assert_eq!(
                populated_pages(&mut pm, base + 3 * HOST_PAGE, 63),
                [0, 61, 62],
                "{method:?}"
            );
            assert!(pm.populated(base + 1, 1, &mut Vec::new()).is_err());
        }
    }

    /// The running kernel's (major, minor) version.
    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    #[test]
    fn the_scan_is_used_where_the_kernel_has_it() {
        let expected = if kernel_version() >= (6, 7) {
            PagemapMethod::Scan
        } else {
            PagemapMethod::Read
        };
        assert_eq!(Pagemap::open().unwrap().method(), expected);
    }

    #[test]
    fn more_stretches_than_one_call_returns_are_all_found() {
        // Every other page: 3 × SCAN_RANGES separate stretches.
        let pages = 6 * SCAN_RANGES;
        let written: Vec<usize> = (0..pages).step_by(2).collect();
        let map = mapping(pages, &written);
        let mut pm = Pagemap::open_with(PagemapMethod::Scan).unwrap();
        assert_eq!(
            populated_pages(&mut pm, map.as_ptr() as u64, pages),
            written
        );
    }

    #[test]
    fn bit_ranges_cross_words() {
        let mut w = vec![0u64; 3];
        set_bits(&mut w, 60, 130);
        assert_eq!(w, [0xf << 60, !0, 0b11]);
        set_bits(&mut w, 5, 5);
        assert_eq!(w[0], 0xf << 60);
        let mut w = vec![0u64; 1];
        set_bits(&mut w, 0, 64);
        assert_eq!(w, [!0]);
    }
}
