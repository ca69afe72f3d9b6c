//! Sending the dirty set: a time-bounded pass over it in windows of 64
//! bitmap words (4096 pages). In bitmap mode each window is re-armed with
//! `KVM_CLEAR_DIRTY_LOG` *before* its pages are read, so a write that lands
//! after the read is logged again; no single step holds KVM's MMU lock for
//! more than one window.
//!
//! Each page is copied into a one-page scratch buffer to be looked at (is it
//! zero? its checksum) and is then sent from guest memory itself, the whole
//! run in one `sendmsg` ([`super::guest_send`]). A page the guest writes in
//! between arrives damaged and is sent again: that write was logged, since the
//! window was re-armed before any of its pages were read.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use migration::dirty::{BitPositions, DirtySet};
use migration::protocol::messages::{MAX_RUN_PAGES, PAGE_SIZE};
use migration::sender::SourceSession;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::guest_send::GuestRanges;
use super::MigrationError;
use crate::machine::Machine;
use crate::vstate::populated::Pagemap;
use crate::vstate::vm::DirtyTracking;

/// Words per window: 64 × 64 pages = 16 MiB of guest memory.
const WINDOW_WORDS: usize = 64;

/// Where a pass over the dirty set is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    region: usize,
    word: usize,
}

impl Cursor {
    /// Pages of the set's address space the pass has walked past.
    pub fn pages_behind(&self, set: &DirtySet) -> u64 {
        let whole: u64 = (0..self.region.min(set.regions()))
            .map(|r| set.region_pages(r))
            .sum();
        let here = if self.region < set.regions() {
            (self.word as u64 * 64).min(set.region_pages(self.region))
        } else {
            0
        };
        whole + here
    }
}

/// Caps the send rate at `max_bandwidth` by sleeping when ahead.
pub struct Pacer {
    bytes_per_sec: Option<f64>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer for `bytes_per_sec` (None = no cap).
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Pacer {
            bytes_per_sec: bytes_per_sec.map(|b| b as f64),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Restarts the budget (after an idle gap, so it is not spent as a burst).
    pub fn restart(&mut self) {
        self.start = Instant::now();
        self.sent = 0;
    }

    /// Accounts `bytes` and sleeps as long as the cap requires.
    pub fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
        if let Some(rate) = self.bytes_per_sec {
            let due = Duration::from_secs_f64(self.sent as f64 / rate);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// Totals of what was sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendTotals {
    /// Pages with data.
    pub data_pages: u64,
    /// Zero pages (markers).
    pub zero_pages: u64,
    /// Time spent sending (reading, checksumming, writing, pacing).
    pub send_time: Duration,
}

/// Sends the dirty set page run by page run.
pub struct PageSender {
    words: Vec<u64>,
    /// Where never-populated pages are found, during the bulk pass only
    /// (None: every page is read). Pages dirtied later were written, so the
    /// pagemap has nothing to say about them; it is dropped after the first
    /// complete pass.
    pagemap: Option<Pagemap>,
    /// Per window: pages that may hold data (see [`Pagemap::populated`]).
    populated: Vec<u64>,
    /// One page, copied out of guest memory to be looked at.
    scratch: Vec<u8>,
    /// Per run: the guest memory its data pages are sent from.
    data: GuestRanges,
    /// What has been sent so far.
    pub totals: SendTotals,
    /// Debugging aid (`TERN_DEBUG_CHECK_SENT=1`): a hash of every page as
    /// last sent, per region, to compare with guest memory once the guest
    /// is paused and everything is sent.
    sent_hashes: Option<Vec<Vec<u64>>>,
}

impl PageSender {
    /// A sender with its buffers.
    pub fn new() -> Self {
        let pagemap = Pagemap::open()
            .map_err(|e| {
                log::info!("/proc/self/pagemap: {e}; every page will be read to find zero pages")
            })
            .ok();
        PageSender {
            words: Vec::with_capacity(WINDOW_WORDS),
            pagemap,
            populated: Vec::with_capacity(WINDOW_WORDS),
            scratch: vec![0; PAGE_SIZE],
            data: GuestRanges::default(),
            totals: SendTotals::default(),
            sent_hashes: None,
        }
    }

    /// Starts remembering a hash of every page sent (see [`PageSender::check_sent`]).
    pub fn remember_sent(&mut self, set: &DirtySet) {
        self.sent_hashes = Some(
            (0..set.regions())
                .map(|r| vec![0; set.region_pages(r) as usize])
                .collect(),
        );
    }

    /// With the guest paused and every dirty page sent: the pages whose
    /// memory differs from what was last sent (region, page), at most `limit`.
    /// A non-empty answer means a write escaped dirty tracking.
    pub fn check_sent(&self, machine: &Machine, limit: usize) -> Vec<(usize, u64)> {
        let Some(hashes) = &self.sent_hashes else {
            return Vec::new();
        };
        let slots = machine.dirty.slots();
        let mut page = vec![0u8; PAGE_SIZE];
        let mut bad = Vec::new();
        for (region, hashes) in hashes.iter().enumerate() {
            for (i, &h) in hashes.iter().enumerate() {
                let addr = GuestAddress(slots[region].guest_addr + (i * PAGE_SIZE) as u64);
                if machine.mem.read_slice(&mut page, addr).is_ok() && page_hash(&page) != h {
                    bad.push((region, i as u64));
                    if bad.len() >= limit {
                        return bad;
                    }
                }
            }
        }
        bad
    }

    /// Continues a pass from `cursor` until the set has been walked to its end
    /// (returns true) or `until` passes (false: call again with the same cursor).
    #[allow(clippy::too_many_arguments)]
    pub fn pass(
        &mut self,
        machine: &Machine,
        set: &DirtySet,
        session: &mut SourceSession,
        pacer: &mut Pacer,
        cursor: &mut Cursor,
        until: Instant,
        cancel: &AtomicBool,
    ) -> Result<bool, MigrationError> {
        let bitmap_mode = machine.vm.tracking == DirtyTracking::Bitmap;
        let slots = machine.dirty.slots();
        while cursor.region < set.regions() {
            let region = cursor.region;
            let nwords = set.words(region);
            let Some(first) = set.next_nonempty_word(region, cursor.word) else {
                cursor.region += 1;
                cursor.word = 0;
                continue;
            };
            if cancel.load(Ordering::Relaxed) {
                return Err(MigrationError::Cancelled);
            }
            let started = Instant::now();
            let end = (first + WINDOW_WORDS).min(nwords);
            self.words.clear();
            self.words
                .extend((first..end).map(|w| set.take_word(region, w)));
            if bitmap_mode {
                machine
                    .dirty
                    .clear_pages(
                        &machine.vm.fd,
                        slots[region].slot,
                        first as u64 * 64,
                        &mut self.words,
                    )
                    .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
            }
            // A page found never populated here and written later is logged
            // dirty: in bitmap mode the window was re-armed above; with the
            // ring, KVM logs the write that first maps the page.
            self.find_populated(slots[region].host_addr, first, end);
            let guest_base = slots[region].guest_addr;
            let words = std::mem::take(&mut self.words);
            let result =
                self.send_window(machine, session, pacer, region, first, &words, guest_base);
            self.words = words;
            result?;
            self.totals.send_time += started.elapsed();
            cursor.word = end;
            if Instant::now() >= until {
                return Ok(false);
            }
        }
        self.pagemap = None;
        Ok(true)
    }

    /// A whole pass over the set, without a deadline (the switchover's final
    /// copies).
    pub fn send_all(
        &mut self,
        machine: &Machine,
        set: &DirtySet,
        session: &mut SourceSession,
        pacer: &mut Pacer,
        cancel: &AtomicBool,
    ) -> Result<(), MigrationError> {
        let mut cursor = Cursor::default();
        let far = Instant::now() + Duration::from_secs(3600);
        while !self.pass(machine, set, session, pacer, &mut cursor, far, cancel)? {}
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn send_window(
        &mut self,
        machine: &Machine,
        session: &mut SourceSession,
        pacer: &mut Pacer,
        region: usize,
        first_word: usize,
        words: &[u64],
        guest_base: u64,
    ) -> Result<(), MigrationError> {
        let window_start = first_word as u64 * 64;
        let mut pages = BitPositions::new(words, window_start).peekable();
        while let Some(start) = pages.next() {
            let mut count = 1u64;
            while count < u64::from(MAX_RUN_PAGES) && pages.peek() == Some(&(start + count)) {
                pages.next();
                count += 1;
            }
            let mut run = session.begin_run(region as u32, start, count as u32)?;
            self.data.clear();
            // Without the pagemap every page is read.
            let read_all = self.pagemap.is_none();
            let mut hashes = self
                .sent_hashes
                .as_mut()
                .and_then(|h| h.get_mut(region))
                .and_then(|h| h.get_mut(start as usize..(start + count) as usize));
            let run_addr = GuestAddress(guest_base + start * PAGE_SIZE as u64);
            let run_memory = machine
                .mem
                .get_slice(run_addr, count as usize * PAGE_SIZE)
                .map_err(|e| {
                    MigrationError::Memory(format!("guest pages {:#x}+{count}: {e}", run_addr.0))
                })?;
            let run_pointer = run_memory.ptr_guard();
            let may_hold_data =
                |i: u64| read_all || populated(&self.populated, start + i - window_start);
            for i in 0..count {
                let addr = GuestAddress(run_addr.0 + i * PAGE_SIZE as u64);
                let with_data = if may_hold_data(i) {
                    if i + 1 < count && may_hold_data(i + 1) {
                        prefetch_page(run_pointer.as_ptr(), (i + 1) as usize * PAGE_SIZE);
                    }
                    let page = run_memory
                        .subslice(i as usize * PAGE_SIZE, PAGE_SIZE)
                        .map_err(|e| {
                            MigrationError::Memory(format!("guest page {:#x}: {e}", addr.0))
                        })?;
                    page.copy_to(&mut self.scratch[..]);
                    run.push_page(&self.scratch)
                } else {
                    // Never populated: zero, not read.
                    run.push_zero();
                    false
                };
                if with_data {
                    self.data.push(addr, PAGE_SIZE);
                }
                if let Some(h) = hashes.as_deref_mut() {
                    h[i as usize] = if with_data {
                        page_hash(&self.scratch)
                    } else {
                        0
                    };
                }
            }
            let before = session.bytes_sent();
            let (data, mem) = (&mut self.data, &machine.mem);
            let c = session.send_run_with(run, |stream, prefix, deadline| {
                data.write(stream.as_fd(), prefix, mem, deadline)
            })?;
            pacer.sent(session.bytes_sent() - before);
            self.totals.data_pages += u64::from(c.data);
            self.totals.zero_pages += u64::from(c.zero);
        }
        Ok(())
    }
}

impl PageSender {
    /// Finds which pages of words `first..end` of the region mapped at
    /// `host_addr` were ever populated; on any error every page counts as
    /// populated (read and tested).
    fn find_populated(&mut self, host_addr: u64, first: usize, end: usize) {
        let Some(pm) = self.pagemap.as_mut() else {
            return;
        };
        let from = host_addr + (first * 64 * PAGE_SIZE) as u64;
        if let Err(e) = pm.populated(from, (end - first) * 64, &mut self.populated) {
            log::info!("/proc/self/pagemap at {from:#x}: {e}; reading every page");
            self.pagemap = None;
        }
    }
}

/// Whether page `i` of a window may hold data, by the window's `populated`
/// bits (see [`Pagemap::populated`]); beyond them it may.
fn populated(populated: &[u64], i: u64) -> bool {
    populated
        .get((i / 64) as usize)
        .is_none_or(|w| w & (1 << (i % 64)) != 0)
}

/// Asks the CPU to start loading the page at `offset` bytes past `base`
/// into its cache while this one is looked at: the hardware prefetcher does
/// not cross into the next 4 KiB page by itself (measured: the copy and
/// checksum of a GiB takes 13 % less, `docs/results.md`).
fn prefetch_page(base: *const u8, offset: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..PAGE_SIZE).step_by(64) {
        let at = base.wrapping_add(offset + line);
        // SAFETY: a prefetch is only a hint: it reads nothing into the
        // program and cannot fault, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast()) };
    }
}

/// A cheap 64-bit hash of one page (FNV-style over words); 0 is the zero page.
fn page_hash(page: &[u8]) -> u64 {
    let mut h = 0u64;
    for w in page.chunks_exact(8) {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(17);
    }
    h
}

impl Default for PageSender {
    fn default() -> Self {
        Self::new()
    }
}
