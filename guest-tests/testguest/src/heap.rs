//! A bump allocator over the RAM right after the guest image: per-CPU
//! stacks and TSSs, page-directory pages, the generation table, and the few
//! shared structures the CPUs use. Nothing is ever freed.

use core::sync::atomic::{AtomicU32, AtomicU64};

use tern_workloads::bootdata::layout::Span;
use tern_workloads::page::Page;

pub const PAGE_SIZE: u64 = 4096;

pub struct Heap {
    start: u64,
    next: u64,
    end: u64,
}

impl Heap {
    /// # Safety
    /// `span` must be identity-mapped RAM that nothing else uses, now or
    /// later: everything handed out lives as long as the guest.
    pub unsafe fn new(span: Span) -> Heap {
        Heap {
            start: span.start,
            next: span.start,
            end: span.end,
        }
    }

    /// Bytes handed out so far (from the start of the heap).
    pub fn used(&self) -> u64 {
        self.next - self.start
    }

    fn take(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align.max(1))?;
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }

    /// Moves `value` into the heap.
    pub fn alloc<T>(&mut self, value: T) -> Option<&'static mut T> {
        let at = self.take(
            core::mem::size_of::<T>() as u64,
            core::mem::align_of::<T>() as u64,
        )?;
        let p = at as *mut T;
        // SAFETY: [at, at + size) is fresh, exclusively ours for good (new's
        // contract), suitably aligned, and not null (the heap is above 1 MiB).
        unsafe {
            p.write(value);
            Some(&mut *p)
        }
    }

    /// `size` zeroed bytes, page aligned; returns their address.
    pub fn zeroed(&mut self, size: u64) -> Option<u64> {
        let at = self.take(size, PAGE_SIZE)?;
        // SAFETY: fresh memory that is exclusively ours (new's contract).
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, size as usize) };
        Some(at)
    }

    /// A zeroed `[AtomicU32]` of `n` entries.
    pub fn zeroed_u32s(&mut self, n: usize) -> Option<&'static [AtomicU32]> {
        let at = self.zeroed(n as u64 * 4)?;
        // SAFETY: n zeroed, page-aligned u32s we own for good; zero is a
        // valid AtomicU32.
        Some(unsafe { core::slice::from_raw_parts(at as *const AtomicU32, n) })
    }

    /// A zeroed `[AtomicU64]` of `n` entries (device memory).
    pub fn zeroed_u64s(&mut self, n: usize) -> Option<&'static [AtomicU64]> {
        let at = self.zeroed(n as u64 * 8)?;
        // SAFETY: n zeroed, page-aligned u64s we own for good; zero is a
        // valid AtomicU64.
        Some(unsafe { core::slice::from_raw_parts(at as *const AtomicU64, n) })
    }

    /// A stack of `size` bytes; returns its top (16-byte aligned).
    pub fn stack(&mut self, size: u64) -> Option<u64> {
        Some(self.take(size, PAGE_SIZE)? + size)
    }
}

/// The pages of a working-set extent.
///
/// # Safety
/// `span` must be page-aligned, identity-mapped RAM that nothing else uses
/// for the rest of the guest's life.
pub unsafe fn pages(span: Span) -> &'static [Page] {
    // SAFETY: per the contract; any bit pattern is a valid `Page` (atomics).
    unsafe {
        core::slice::from_raw_parts(span.start as *const Page, (span.len() / PAGE_SIZE) as usize)
    }
}
