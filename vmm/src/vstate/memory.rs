//! Guest RAM: anonymous mappings tracked by vm-memory's AtomicBitmap (every
//! write tern makes is logged there), registered with KVM as memory slots whose
//! dirty logging can be switched on and off.

use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

/// Guest memory with a dirty bitmap for writes tern makes itself (the same type
/// as `devices::GuestMemoryMmap`).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map that much memory.
    #[error("cannot allocate {bytes} bytes of guest memory")]
    Allocate {
        /// Requested size.
        bytes: u64,
        /// The vm-memory error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The host could not back guest memory up front (`--prefault`).
    #[error("--prefault: cannot back {bytes} bytes of guest memory at {guest_addr:#x}")]
    Prefault {
        /// Guest physical start of the region.
        guest_addr: u64,
        /// Its size.
        bytes: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} ({size} bytes at {guest_addr:#x})")]
    SetSlot {
        /// Slot number.
        slot: u32,
        /// Guest physical address.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One KVM memory slot backing one vm-memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSlot {
    /// KVM slot number.
    pub slot: u32,
    /// Guest physical start.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the mapping.
    pub host_addr: u64,
}

impl MemSlot {
    /// Number of 4 KiB pages in the slot.
    pub fn pages(&self) -> u64 {
        self.size / 4096
    }
}

/// Maps `mem_bytes` of guest RAM laid out for x86 (see `arch::layout`).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        bytes: mem_bytes,
        source,
    })
}

/// Backs every page of `mem` now (`--prefault`), writing nothing: the
/// kernel faults each page in as if written (MADV_POPULATE_WRITE, Linux
/// 5.14); on an older kernel each page is touched instead.
pub fn prefault(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let slice = region
            .as_volatile_slice()
            .map_err(|e| MemoryError::Prefault {
                guest_addr: region.start_addr().raw_value(),
                bytes: region.len(),
                source: std::io::Error::other(e.to_string()),
            })?;
        // SAFETY: the range is exactly one live anonymous mapping of guest
        // RAM that `mem` owns, not yet in use by any vCPU or device;
        // populating it changes no byte of it.
        let rc = unsafe {
            libc::madvise(
                slice.ptr_guard_mut().as_ptr().cast(),
                slice.len(),
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(MemoryError::Prefault {
                guest_addr: region.start_addr().raw_value(),
                bytes: region.len(),
                source: err,
            });
        }
        // No MADV_POPULATE_WRITE: read and write back one byte per page
        // (the guest has not started; the value stays what it was).
        for offset in (0..slice.len()).step_by(4096) {
            let byte: u8 = slice.read_obj(offset).unwrap_or(0);
            let _ = slice.write_obj(byte, offset);
        }
    }
    Ok(())
}

/// The slots of `mem`, numbered from 0 in address order.
pub fn slots_of(mem: &GuestMemoryMmap) -> Vec<MemSlot> {
    mem.iter()
        .enumerate()
        .map(|(i, region)| MemSlot {
            slot: i as u32,
            guest_addr: region.start_addr().raw_value(),
            size: region.len(),
            // The region is a live mapping of exactly `len` bytes: its start is mapped.
            host_addr: region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map(|p| p as u64)
                .unwrap_or(0),
        })
        .collect()
}

/// The KVM side of guest memory: the registered slots and their current flags.
pub struct KvmMemory {
    slots: Vec<MemSlot>,
    flags: AtomicU32,
}

impl KvmMemory {
    /// Registers every region of `mem` with KVM, dirty logging off.
    pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Self, MemoryError> {
        let me = KvmMemory {
            slots: slots_of(mem),
            flags: AtomicU32::new(0),
        };
        me.set_flags(vm, 0)?;
        Ok(me)
    }

    /// The registered slots.
    pub fn slots(&self) -> &[MemSlot] {
        &self.slots
    }

    /// Turns KVM dirty logging on or off for every slot.
    pub fn set_dirty_logging(&self, vm: &VmFd, on: bool) -> Result<(), MemoryError> {
        self.set_flags(vm, if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
    }

    /// Whether dirty logging is currently on.
    pub fn dirty_logging(&self) -> bool {
        self.flags.load(Ordering::Acquire) & KVM_MEM_LOG_DIRTY_PAGES != 0
    }

    fn set_flags(&self, vm: &VmFd, flags: u32) -> Result<(), MemoryError> {
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                flags,
                guest_phys_addr: s.guest_addr,
                memory_size: s.size,
                userspace_addr: s.host_addr,
            };
            // SAFETY: `userspace_addr` is the start of a live anonymous mapping of
            // `memory_size` bytes owned by the GuestMemoryMmap, which outlives the
            // VM (the VM is dropped first; see `Vm`'s field order).
            unsafe { vm.set_user_memory_region(region) }.map_err(|source| {
                MemoryError::SetSlot {
                    slot: s.slot,
                    guest_addr: s.guest_addr,
                    size: s.size,
                    source,
                }
            })?;
        }
        self.flags.store(flags, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `len` bytes at `addr` that are resident.
    fn resident_pages(addr: u64, len: usize) -> usize {
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `addr..addr+len` is a live mapping of the caller's; mincore
        // only writes `vec`, one byte per page.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn prefault_backs_every_page_and_changes_none() {
        let mem = create_guest_memory(8 << 20).unwrap();
        mem.write_obj(0xfeed_u32, GuestAddress(0x1234)).unwrap();
        let slot = slots_of(&mem)[0];
        let before = resident_pages(slot.host_addr, slot.size as usize);
        assert!(
            before < slot.pages() as usize,
            "fresh memory is not all resident"
        );
        prefault(&mem).unwrap();
        assert_eq!(
            resident_pages(slot.host_addr, slot.size as usize),
            slot.pages() as usize
        );
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1234)).unwrap(), 0xfeed);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x70_0000)).unwrap(), 0);
    }
}
