//! A vCPU's count of the page faults that dirty tracking causes, read from
//! KVM's binary statistics (`KVM_GET_STATS_FD`, which kvm-ioctls does not
//! wrap). With the dirty bitmap KVM cannot say which vCPU wrote a page, but
//! each first write to a re-armed page is one write-protection fault on the
//! vCPU that made it (`pf_fast` when KVM fixes it locklessly, `pf_fixed`
//! otherwise): the deltas of these counters attribute the dirty rate to
//! vCPUs, as the dirty ring does. Everything unsafe about it is in this file.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

const KVMIO: u32 = 0xae;
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// The counters summed.
const FAULT_STATS: [&str; 2] = ["pf_fast", "pf_fixed"];
/// Size of `struct kvm_stats_header` and of a descriptor before its name.
const HEADER_BYTES: usize = 24;
const DESC_FIXED_BYTES: usize = 16;

/// Open statistics of one vCPU and where its fault counters are.
pub struct FaultStats {
    file: File,
    offsets: Vec<u64>,
}

impl FaultStats {
    /// Opens `vcpu`'s statistics. `None` if the host has no binary stats or
    /// none of the counters (attribution then stays off).
    pub fn open(vcpu: &VcpuFd) -> Option<FaultStats> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor (or -1), which we own from here on.
        let fd = unsafe { ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a freshly created descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let offsets = find_offsets(&file)?;
        (!offsets.is_empty()).then_some(FaultStats { file, offsets })
    }

    /// The summed fault count now.
    pub fn read(&self) -> u64 {
        self.offsets
            .iter()
            .map(|&off| {
                let mut b = [0u8; 8];
                match self.file.read_exact_at(&mut b, off) {
                    Ok(()) => u64::from_ne_bytes(b),
                    Err(_) => 0,
                }
            })
            .sum()
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the header and descriptors; returns the data offsets of the counters.
fn find_offsets(file: &File) -> Option<Vec<u64>> {
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, 0).ok()?;
    let name_size = u32_at(&header, 4)? as usize;
    let num_desc = u32_at(&header, 8)? as usize;
    let desc_offset = u64::from(u32_at(&header, 16)?);
    let data_offset = u64::from(u32_at(&header, 20)?);
    if name_size == 0 || name_size > 4096 || num_desc > 65_536 {
        return None;
    }
    let desc_bytes = DESC_FIXED_BYTES + name_size;
    let mut descs = vec![0u8; desc_bytes * num_desc];
    file.read_exact_at(&mut descs, desc_offset).ok()?;
    let mut offsets = Vec::new();
    for d in descs.chunks_exact(desc_bytes) {
        let name = &d[DESC_FIXED_BYTES..];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        if FAULT_STATS.iter().any(|s| s.as_bytes() == name) {
            offsets.push(data_offset + u64::from(u32_at(d, 8)?));
        }
    }
    Some(offsets)
}
