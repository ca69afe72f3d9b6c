//! Harvesting dirty pages into the migration's `DirtySet`: KVM's log (dirty
//! rings or bitmaps) and vm-memory's bitmap of tern's own writes (virtio DMA).

use std::sync::atomic::Ordering;

use migration::dirty::DirtySet;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::GuestMemoryBackend;

use super::MigrationError;
use crate::machine::Machine;
use crate::vstate::vcpu::VcpuControl;
use crate::vstate::vm::DirtyTracking;

/// Counters at the previous harvest, to report what each interval added.
pub struct Harvester {
    last_added: u64,
    last_per_vcpu: Option<Vec<u64>>,
}

/// What one harvest interval saw.
#[derive(Clone, Debug, Default)]
pub struct Harvested {
    /// Pages newly added to the set since the previous harvest (all sources,
    /// including pages vCPU threads harvested themselves on ring-full exits).
    pub added: u64,
    /// Pages each vCPU dirtied since the previous harvest: ring entries, or
    /// with the bitmap its dirty-tracking faults (`None` if the host cannot tell).
    pub per_vcpu: Option<Vec<u64>>,
}

impl Harvester {
    /// Starts counting from the current totals.
    pub fn new(machine: &Machine, set: &DirtySet) -> Self {
        Harvester {
            last_added: set.added_total(),
            last_per_vcpu: per_vcpu_totals(machine),
        }
    }

    /// Collects everything dirtied since the last call into `set`.
    pub fn harvest(
        &mut self,
        machine: &Machine,
        set: &DirtySet,
    ) -> Result<Harvested, MigrationError> {
        let ring = matches!(machine.vm.tracking, DirtyTracking::Ring { .. });
        if ring {
            harvest_all_rings(machine)?;
        } else {
            machine
                .dirty
                .fetch_bitmaps(&machine.vm.fd)
                .map_err(|e| MigrationError::DirtyLog(format!("KVM_GET_DIRTY_LOG failed: {e}")))?;
        }
        merge_vmm_writes(machine, set);
        let added_total = set.added_total();
        let added = added_total - self.last_added;
        self.last_added = added_total;
        let now = per_vcpu_totals(machine);
        let per_vcpu = match (&now, &self.last_per_vcpu) {
            (Some(now), Some(last)) => Some(
                now.iter()
                    .zip(last)
                    .map(|(n, l)| n.saturating_sub(*l))
                    .collect(),
            ),
            _ => None,
        };
        self.last_per_vcpu = now;
        Ok(Harvested { added, per_vcpu })
    }
}

/// Ring mode: harvests every vCPU's ring into the sink (re-protecting the
/// pages first; see `DirtyTracker::harvest_rings`).
pub fn harvest_all_rings(machine: &Machine) -> Result<u64, MigrationError> {
    let vcpus: Vec<(usize, &VcpuControl)> = machine
        .controls
        .iter()
        .enumerate()
        .map(|(i, c)| (i, &**c))
        .collect();
    machine
        .dirty
        .harvest_rings(&machine.vm.fd, &vcpus)
        .map_err(|e| MigrationError::DirtyLog(e.to_string()))
}

/// Per-vCPU running totals of dirtied pages: ring entries harvested, or with
/// the bitmap the vCPUs' dirty-tracking faults.
pub fn per_vcpu_totals(machine: &Machine) -> Option<Vec<u64>> {
    match machine.vm.tracking {
        DirtyTracking::Ring { .. } => Some(
            machine
                .controls
                .iter()
                .map(|c| c.counters.dirty_ring_pages.load(Ordering::Relaxed))
                .collect(),
        ),
        DirtyTracking::Bitmap => machine.dirty.vcpu_fault_counts(),
    }
}

/// ORs the pages tern itself wrote (vm-memory's bitmap) into `set`, clearing them.
pub fn merge_vmm_writes(machine: &Machine, set: &DirtySet) {
    for (i, region) in machine.mem.iter().enumerate() {
        let bitmap: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
        let words = bitmap.get_and_reset();
        set.mark_bitmap(i, &words);
    }
}

/// Clears vm-memory's bitmap without recording (at the start of a migration:
/// the bulk pass sends everything anyway).
pub fn reset_vmm_writes(machine: &Machine) {
    for region in machine.mem.iter() {
        std::ops::Deref::deref(region).bitmap().reset();
    }
}
