//! Collecting the pages KVM saw the guest write, in whichever mode the VM
//! uses: per-vCPU dirty rings (pages attributed to the vCPU that wrote them)
//! or per-slot bitmaps with manual protection (re-armed in bounded chunks).
//! Harvested pages go into the migration's `DirtySet`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use kvm_ioctls::{VcpuFd, VmFd};
use migration::dirty::DirtySet;

use super::dirty_log::{self, DirtyLogError, DirtyRing};
use super::fault_stats::FaultStats;
use super::memory::MemSlot;
use super::vcpu::VcpuControl;
use super::vm::DirtyTracking;

/// The VM's dirty tracking state, shared by vCPU threads (dirty-ring-full
/// exits) and the migration thread.
pub struct DirtyTracker {
    tracking: DirtyTracking,
    slots: Vec<MemSlot>,
    rings: Vec<Mutex<Option<DirtyRing>>>,
    /// Per vCPU: its dirty-tracking fault counters (bitmap mode's attribution).
    faults: Vec<Mutex<Option<FaultStats>>>,
    sink: RwLock<Option<Arc<DirtySet>>>,
    /// Held across `KVM_RESET_DIRTY_RINGS`. KVM flushes TLBs only at the end
    /// of a reset call that re-protected something, after dropping its own
    /// lock: a concurrent call that found nothing left to reset could return
    /// (and its caller mark pages) while the guest can still write them
    /// through stale TLB entries. Serialising the calls closes that gap.
    reset_lock: Mutex<()>,
}

impl DirtyTracker {
    /// A tracker for `vcpus` vCPUs over `slots`.
    pub fn new(tracking: DirtyTracking, slots: Vec<MemSlot>, vcpus: usize) -> Self {
        DirtyTracker {
            tracking,
            slots,
            rings: (0..vcpus).map(|_| Mutex::new(None)).collect(),
            faults: (0..vcpus).map(|_| Mutex::new(None)).collect(),
            sink: RwLock::new(None),
            reset_lock: Mutex::new(()),
        }
    }

    /// The tracking mode.
    pub fn tracking(&self) -> DirtyTracking {
        self.tracking
    }

    /// The memory slots.
    pub fn slots(&self) -> &[MemSlot] {
        &self.slots
    }

    /// Maps vCPU `id`'s dirty ring (ring mode only; a no-op otherwise).
    pub fn attach_vcpu(
        &self,
        id: usize,
        fd: &VcpuFd,
        ring_bytes: Option<u32>,
    ) -> Result<(), DirtyLogError> {
        if let (Some(bytes), Some(slot)) = (ring_bytes, self.rings.get(id)) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(DirtyRing::map(fd, bytes)?);
        }
        if ring_bytes.is_none() {
            if let Some(slot) = self.faults.get(id) {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = FaultStats::open(fd);
            }
        }
        Ok(())
    }

    /// Bitmap mode: every vCPU's dirty-tracking fault count so far, if the
    /// host exposes it for all of them (see `fault_stats`).
    pub fn vcpu_fault_counts(&self) -> Option<Vec<u64>> {
        self.faults
            .iter()
            .map(|f| {
                f.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(FaultStats::read)
            })
            .collect()
    }

    /// Where harvested pages go from now on (`None`: they are dropped).
    pub fn set_sink(&self, sink: Option<Arc<DirtySet>>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    fn with_sink<R>(&self, f: impl FnOnce(Option<&DirtySet>) -> R) -> R {
        let guard = self.sink.read().unwrap_or_else(|e| e.into_inner());
        f(guard.as_deref())
    }

    /// Ring mode: harvests the rings of `vcpus` (by id, each with its control
    /// for counting), lets KVM re-protect the harvested pages
    /// (`KVM_RESET_DIRTY_RINGS`), and only then puts them in the sink.
    /// Returns the number of entries harvested.
    ///
    /// The order matters. A page harvested from a ring stays writable until
    /// the reset; if it reached the sink first, the sender could take it and
    /// read it, the guest write it again unlogged, and that write be lost.
    /// Marking after the reset means every read of a marked page happens
    /// while the page is protected, so any later write is logged again.
    /// Safe to call from any thread (vCPU threads on a ring-full exit, the
    /// migration thread); rings are locked one at a time.
    pub fn harvest_rings(
        &self,
        vm: &VmFd,
        vcpus: &[(usize, &VcpuControl)],
    ) -> Result<u64, DirtyLogError> {
        let mut pages: Vec<(u32, u64)> = Vec::new();
        for &(id, control) in vcpus {
            let Some(ring) = self.rings.get(id) else {
                continue;
            };
            let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            let Some(ring) = ring.as_mut() else {
                continue;
            };
            let n = ring.harvest(|slot, offset| pages.push((slot, offset)));
            control
                .counters
                .dirty_ring_pages
                .fetch_add(u64::from(n), Ordering::Relaxed);
        }
        let reset = {
            let _serialised = self.reset_lock.lock().unwrap_or_else(|e| e.into_inner());
            dirty_log::reset_dirty_rings(vm)
        };
        // Even if the reset failed, the pages are dirty: record them.
        self.with_sink(|sink| {
            if let Some(sink) = sink {
                for &(slot, offset) in &pages {
                    sink.mark(slot_index(slot), offset);
                }
            }
        });
        reset.map(|_| pages.len() as u64)
    }

    /// Bitmap mode: reads every slot's KVM bitmap (which manual protection
    /// leaves set until `clear_pages`) into the sink. Returns pages newly added.
    pub fn fetch_bitmaps(&self, vm: &VmFd) -> Result<u64, kvm_ioctls::Error> {
        let mut added = 0;
        for s in &self.slots {
            let bitmap = vm.get_dirty_log(s.slot, s.size as usize)?;
            added += self.with_sink(|sink| {
                sink.map_or(0, |sink| sink.mark_bitmap(slot_index(s.slot), &bitmap))
            });
        }
        Ok(added)
    }

    /// Bitmap mode: re-arms tracking of the pages in `bits` (bit i = page
    /// `first_page + i`, `first_page` a multiple of 64) of `slot`.
    pub fn clear_pages(
        &self,
        vm: &VmFd,
        slot: u32,
        first_page: u64,
        bits: &mut [u64],
    ) -> Result<(), DirtyLogError> {
        let Some(s) = self.slots.get(slot as usize) else {
            return Ok(());
        };
        let pages = (bits.len() as u64 * 64).min(s.pages().saturating_sub(first_page));
        if pages == 0 {
            return Ok(());
        }
        dirty_log::clear(vm, slot, first_page, bits, pages as u32)
    }
}

/// The dirty set's region for a KVM slot id as KVM reports it (address space
/// in the high 16 bits; tern uses address space 0 and slot ids 0, 1, ... in
/// region order).
fn slot_index(slot: u32) -> usize {
    (slot & 0xffff) as usize
}
