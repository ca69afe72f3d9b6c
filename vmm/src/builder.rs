//! Assembling a VM from a validated configuration: KVM, guest memory, memory
//! slots, dirty tracking, vCPU fds configured for boot (or left for a
//! migration to restore).

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, VcpuFd};

use crate::arch::boot::{self, BootEntry, BootError, BootSpec};
use crate::vstate::dirty_log::DirtyLogError;
use crate::vstate::dirty_tracker::DirtyTracker;
use crate::vstate::kvm::KvmHost;
use crate::vstate::memory::{create_guest_memory, GuestMemoryMmap, MemoryError};
use crate::vstate::vcpu::state::{self, BootSetup, VcpuStateError};
use crate::vstate::vcpu::{Target, VcpuControl};
use crate::vstate::vm::{DirtyTrackingChoice, Vm, VmError};

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The KVM VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Creating a vCPU failed.
    #[error("cannot create vCPU {id}")]
    CreateVcpu {
        /// vCPU index.
        id: u8,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM's CPUID list could not be read.
    #[error("cannot read the CPUID KVM supports")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// Mapping a dirty ring failed.
    #[error(transparent)]
    DirtyRing(#[from] DirtyLogError),
    /// Loading the kernel failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Configuring a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
}

/// A VM with its vCPUs created but not yet running.
pub struct VmParts {
    /// Everything but the vCPU fds.
    pub machine: MachineParts,
    /// vCPU fds, by index.
    pub vcpu_fds: Vec<VcpuFd>,
}

/// The parts of a VM a `Machine` keeps.
pub struct MachineParts {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The KVM VM.
    pub vm: Arc<Vm>,
    /// vCPU control blocks, by index.
    pub controls: Vec<Arc<VcpuControl>>,
    /// Dirty tracking.
    pub dirty: Arc<DirtyTracker>,
    /// KVM's supported CPUID.
    pub cpuid: CpuId,
    /// MSRs a migration saves.
    pub msr_indices: Vec<u32>,
    /// XSAVE area size in bytes.
    pub xsave_bytes: usize,
}

/// Creates memory, the VM and `cpus` vCPUs.
pub fn create(
    host: &KvmHost,
    mem_bytes: u64,
    cpus: u8,
    tracking: DirtyTrackingChoice,
) -> Result<VmParts, BuildError> {
    let mem = create_guest_memory(mem_bytes)?;
    let vm = Vm::new(host, &mem, tracking)?;
    let dirty = Arc::new(DirtyTracker::new(
        vm.tracking,
        vm.memory.slots().to_vec(),
        cpus as usize,
    ));
    let mut vcpu_fds = Vec::with_capacity(cpus as usize);
    for id in 0..cpus {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| BuildError::CreateVcpu { id, source })?;
        dirty.attach_vcpu(id as usize, &fd, vm.ring_bytes())?;
        vcpu_fds.push(fd);
    }
    let cpuid = host
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let msr_indices = state::saveable_msrs(&host.kvm, &vcpu_fds[0]);
    let legacy = std::mem::size_of::<kvm_bindings::kvm_xsave>();
    let xsave_bytes = (vm.fd.check_extension_int(Cap::Xsave2).max(0) as usize).max(legacy);
    Ok(VmParts {
        machine: MachineParts {
            mem,
            vm: Arc::new(vm),
            controls: (0..cpus)
                .map(|_| Arc::new(VcpuControl::new(Target::Run)))
                .collect(),
            dirty,
            cpuid,
            msr_indices,
            xsave_bytes,
        },
        vcpu_fds,
    })
}

/// Loads the kernel and configures every vCPU to boot it.
pub fn load_and_configure(parts: &VmParts, spec: &BootSpec<'_>) -> Result<BootEntry, BuildError> {
    let entry = boot::load(&parts.machine.mem, spec)?;
    let setup = BootSetup {
        cpuid: &parts.machine.cpuid,
        cpu_count: parts.vcpu_fds.len() as u8,
        mem: &parts.machine.mem,
        entry,
    };
    for (i, fd) in parts.vcpu_fds.iter().enumerate() {
        state::configure_for_boot(fd, i as u8, &setup)?;
    }
    Ok(entry)
}
