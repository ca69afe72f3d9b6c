//! The KVM dirty-tracking ioctls kvm-ioctls does not wrap: enabling manual
//! protection, `KVM_CLEAR_DIRTY_LOG`, and the per-vCPU dirty ring (mapping,
//! harvesting, `KVM_RESET_DIRTY_RINGS`). Everything unsafe about dirty
//! tracking lives in this one file.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_enable_cap, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

const KVMIO: u32 = 0xae;
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// The entry was written by KVM and not yet harvested.
const KVM_DIRTY_GFN_F_DIRTY: u32 = 1;
/// The entry was harvested; KVM may reuse it after `KVM_RESET_DIRTY_RINGS`.
const KVM_DIRTY_GFN_F_RESET: u32 = 2;

/// Errors from the dirty-tracking ioctls.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    /// Enabling a capability failed.
    #[error("cannot enable {what}")]
    EnableCap {
        /// Which capability.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_CLEAR_DIRTY_LOG` failed.
    #[error("KVM_CLEAR_DIRTY_LOG on slot {slot} pages {first_page}+{num_pages} failed")]
    Clear {
        /// Slot.
        slot: u32,
        /// First page of the range.
        first_page: u64,
        /// Pages in the range.
        num_pages: u32,
        /// The errno.
        #[source]
        source: errno::Error,
    },
    /// `KVM_RESET_DIRTY_RINGS` failed.
    #[error("KVM_RESET_DIRTY_RINGS failed")]
    Reset(#[source] errno::Error),
    /// Mapping a vCPU's dirty ring failed.
    #[error("cannot map the dirty ring of a vCPU")]
    Map(#[source] std::io::Error),
}

/// Enables `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `INITIALLY_SET`: turning
/// logging on marks every page dirty without write-protecting anything, and
/// pages are protected chunk by chunk as `clear` re-arms them.
pub fn enable_manual_protect(vm: &VmFd, host_flags: u32) -> Result<(), DirtyLogError> {
    let wanted = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(wanted & host_flags);
    vm.enable_cap(&cap)
        .map_err(|source| DirtyLogError::EnableCap {
            what: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
            source,
        })
}

/// Enables the per-vCPU dirty ring with `bytes` per ring. Must happen before
/// any vCPU is created.
pub fn enable_dirty_ring(vm: &VmFd, cap_number: u32, bytes: u32) -> Result<(), DirtyLogError> {
    let mut cap = kvm_enable_cap {
        cap: cap_number,
        ..Default::default()
    };
    cap.args[0] = u64::from(bytes);
    vm.enable_cap(&cap)
        .map_err(|source| DirtyLogError::EnableCap {
            what: "the KVM dirty ring",
            source,
        })
}

/// Re-arms dirty tracking for the pages of `slot` whose bits are set in
/// `bitmap`, starting at `first_page` (a multiple of 64). KVM write-protects
/// them again and clears their bits in its own log.
pub fn clear(
    vm: &VmFd,
    slot: u32,
    first_page: u64,
    bitmap: &mut [u64],
    num_pages: u32,
) -> Result<(), DirtyLogError> {
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    debug_assert!(bitmap.len() * 64 >= num_pages as usize);
    // SAFETY: `arg` is a valid kvm_clear_dirty_log whose bitmap pointer covers
    // `num_pages` bits of a live buffer; KVM only reads it. The return value is checked.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret < 0 {
        return Err(DirtyLogError::Clear {
            slot,
            first_page,
            num_pages,
            source: errno::Error::last(),
        });
    }
    Ok(())
}

/// Makes KVM re-protect every ring entry marked harvested, on every vCPU.
/// Returns how many entries were reset.
pub fn reset_dirty_rings(vm: &VmFd) -> Result<u32, DirtyLogError> {
    // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument and only touches KVM's
    // own state and the rings it mapped for us. The return value is checked.
    let ret = unsafe { ioctl(vm, KVM_RESET_DIRTY_RINGS()) };
    if ret < 0 {
        return Err(DirtyLogError::Reset(errno::Error::last()));
    }
    Ok(ret as u32)
}

/// One vCPU's dirty ring, mapped from its file descriptor.
pub struct DirtyRing {
    entries: NonNull<kvm_dirty_gfn>,
    len: u32,
    /// Next entry to look at (free-running; the index into the ring is `fetch % len`).
    fetch: u32,
    map_bytes: usize,
}

// SAFETY: the mapping is shared memory owned by this struct alone (one per
// vCPU); all access goes through `&mut self`, and entries are read and written
// with atomic operations because KVM writes them concurrently.
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Maps the dirty ring of `vcpu`, `bytes` long (the size given to `enable_dirty_ring`).
    pub fn map(vcpu: &VcpuFd, bytes: u32) -> Result<Self, DirtyLogError> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
        let offset = i64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page;
        // SAFETY: mapping a KVM vCPU fd at the dirty-log offset is the documented way
        // to reach the ring; we check the result and own the mapping until Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(DirtyLogError::Map(std::io::Error::last_os_error()));
        }
        let entries = NonNull::new(addr.cast::<kvm_dirty_gfn>())
            .ok_or_else(|| DirtyLogError::Map(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        Ok(DirtyRing {
            entries,
            len: bytes / std::mem::size_of::<kvm_dirty_gfn>() as u32,
            fetch: 0,
            map_bytes: bytes as usize,
        })
    }

    fn flags(&self, i: u32) -> &AtomicU32 {
        let idx = (i % self.len) as usize;
        // SAFETY: idx < len, so the entry is inside the mapping; `flags` is the
        // first u32 of the entry, 4-byte aligned, and only accessed atomically.
        unsafe {
            AtomicU32::from_ptr(std::ptr::addr_of_mut!(
                (*self.entries.as_ptr().add(idx)).flags
            ))
        }
    }

    /// Collects every entry KVM has published since the last harvest, calling
    /// `page(slot, page_offset)` for each, and marks them for reset. Returns the count.
    pub fn harvest(&mut self, mut page: impl FnMut(u32, u64)) -> u32 {
        let mut n = 0;
        loop {
            let flags = self.flags(self.fetch);
            if flags.load(Ordering::Acquire) & KVM_DIRTY_GFN_F_DIRTY == 0 {
                break;
            }
            let idx = (self.fetch % self.len) as usize;
            // SAFETY: idx < len; KVM finished writing the entry before publishing
            // the DIRTY flag we just observed with acquire ordering.
            let (slot, offset) = unsafe {
                let e = self.entries.as_ptr().add(idx);
                (
                    std::ptr::read_volatile(&(*e).slot),
                    std::ptr::read_volatile(&(*e).offset),
                )
            };
            page(slot, offset);
            flags.store(KVM_DIRTY_GFN_F_RESET, Ordering::Release);
            self.fetch = self.fetch.wrapping_add(1);
            n += 1;
        }
        n
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `map`.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.map_bytes);
        }
    }
}
