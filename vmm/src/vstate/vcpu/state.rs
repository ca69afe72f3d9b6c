//! A vCPU's complete architectural state as KVM holds it, how it is saved and
//! restored for migration, and how a vCPU is configured to boot.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::arch::{cpuid, msr, regs};
use crate::vstate::kvmclock;

/// Errors configuring, saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A vCPU ioctl failed.
    #[error("vCPU {id}: cannot {what}")]
    Ioctl {
        /// vCPU index.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of an MSR list.
    #[error("vCPU {id}: KVM took {done} of {total} MSRs; MSR {failed:#x} was refused")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// How many were set or read.
        done: usize,
        /// How many were asked for.
        total: usize,
        /// The first one KVM refused.
        failed: u32,
    },
    /// Building a KVM list wrapper failed (too many entries).
    #[error("vCPU {id}: too many {what} entries")]
    TooMany {
        /// vCPU index.
        id: u8,
        /// Which list.
        what: &'static str,
    },
    /// Writing boot structures into guest memory failed.
    #[error(transparent)]
    Boot(#[from] regs::RegsError),
    /// The saved state does not fit this vCPU.
    #[error("vCPU {id}: saved state is invalid: {why}")]
    Invalid {
        /// vCPU index.
        id: u8,
        /// What is wrong.
        why: String,
    },
}

/// Everything KVM holds about one vCPU.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (= APIC ID).
    pub id: u8,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state in XSAVE layout, as 32-bit words.
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Run state (runnable, halted, waiting for SIPI, ...).
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Every MSR KVM lists that can be read, TSC and kvmclock included, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// TSC frequency in kHz.
    pub tsc_khz: Option<u32>,
    /// The host's real time (`kvmclock::realtime_ns`) at which the saved TSC
    /// (in `msrs`) was this vCPU's TSC: what the destination advances the TSC
    /// from. The source puts vCPU 0's in `GuestState::saved_at_realtime_ns`;
    /// it is not sent per vCPU.
    #[serde(skip)]
    pub tsc_read_at_realtime_ns: Option<u64>,
}

impl VcpuState {
    /// The saved value of MSR `index`.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.0 == index).map(|m| m.1)
    }
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish()
    }
}

const LVT0: usize = 0x350;
const LVT1: usize = 0x360;
const DELIVERY_MODE_EXTINT: u32 = 0x7;
const DELIVERY_MODE_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, val: u32) {
    for (i, byte) in val.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *byte as _;
    }
}

/// Boot-time configuration of one vCPU: CPUID, MSRs, LAPIC local interrupts,
/// and for the boot vCPU the entry registers.
pub struct BootSetup<'a, M> {
    /// KVM's supported CPUID.
    pub cpuid: &'a CpuId,
    /// Number of vCPUs.
    pub cpu_count: u8,
    /// Guest memory (for the boot GDT and page tables).
    pub mem: &'a M,
    /// Entry point and mode, used on the boot vCPU.
    pub entry: crate::arch::boot::BootEntry,
}

/// Configures vCPU `id` to boot.
pub fn configure_for_boot<M: vm_memory::GuestMemoryBackend>(
    fd: &VcpuFd,
    id: u8,
    setup: &BootSetup<'_, M>,
) -> Result<(), VcpuStateError> {
    let io = |what| move |source| VcpuStateError::Ioctl { id, what, source };
    fd.set_cpuid2(&cpuid::for_vcpu(setup.cpuid, id, setup.cpu_count))
        .map_err(io("set CPUID"))?;
    let boot_msrs = msr::boot_msrs();
    let n = fd.set_msrs(&boot_msrs).map_err(io("set boot MSRs"))?;
    if n != boot_msrs.as_slice().len() {
        return Err(VcpuStateError::Msrs {
            id,
            done: n,
            total: boot_msrs.as_slice().len(),
            failed: boot_msrs.as_slice()[n].index,
        });
    }
    let mut lapic = fd.get_lapic().map_err(io("read the LAPIC"))?;
    let lvt0 = lapic_reg(&lapic, LVT0);
    set_lapic_reg(
        &mut lapic,
        LVT0,
        (lvt0 & !0x700) | (DELIVERY_MODE_EXTINT << 8),
    );
    let lvt1 = lapic_reg(&lapic, LVT1);
    set_lapic_reg(&mut lapic, LVT1, (lvt1 & !0x700) | (DELIVERY_MODE_NMI << 8));
    fd.set_lapic(&lapic).map_err(io("set the LAPIC"))?;
    if id == 0 {
        let sregs = fd.get_sregs().map_err(io("read special registers"))?;
        let sregs = regs::boot_sregs(setup.mem, setup.entry.mode, sregs)?;
        fd.set_sregs(&sregs).map_err(io("set special registers"))?;
        fd.set_regs(&regs::boot_regs(setup.entry.mode, setup.entry.entry))
            .map_err(io("set registers"))?;
        fd.set_fpu(&regs::boot_fpu()).map_err(io("set the FPU"))?;
    }
    Ok(())
}

/// The MSR indices worth saving on this host: every one KVM lists that can
/// actually be read, in restore order.
pub fn saveable_msrs(kvm: &kvm_ioctls::Kvm, fd: &VcpuFd) -> Vec<u32> {
    let listed = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    let readable = listed
        .into_iter()
        .filter(|&index| read_msr(fd, 0, index).is_ok())
        .collect();
    msr::migration_order(readable)
}

/// Reads one MSR of vCPU `id`.
pub fn read_msr(fd: &VcpuFd, id: u8, index: u32) -> Result<u64, VcpuStateError> {
    let mut one = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .map_err(|_| VcpuStateError::TooMany { id, what: "MSR" })?;
    match fd.get_msrs(&mut one) {
        Ok(1) => Ok(one.as_slice()[0].data),
        Ok(_) => Err(VcpuStateError::Msrs {
            id,
            done: 0,
            total: 1,
            failed: index,
        }),
        Err(source) => Err(VcpuStateError::Ioctl {
            id,
            what: "read an MSR",
            source,
        }),
    }
}

/// Reads the complete state of vCPU `id`. The vCPU must be out of `KVM_RUN`
/// with its pending I/O completed.
pub fn save(
    fd: &VcpuFd,
    id: u8,
    msr_indices: &[u32],
    xsave_bytes: usize,
) -> Result<VcpuState, VcpuStateError> {
    let io = |what| move |source| VcpuStateError::Ioctl { id, what, source };
    let regs = fd.get_regs().map_err(io("read registers"))?;
    let sregs = fd.get_sregs().map_err(io("read special registers"))?;
    let xsave = if xsave_bytes > std::mem::size_of::<kvm_xsave>() {
        let words = xsave_bytes.div_ceil(4) - 1024;
        let mut x = Xsave::new(words).map_err(|_| VcpuStateError::TooMany { id, what: "XSAVE" })?;
        // SAFETY: `x` was sized from KVM_CAP_XSAVE2, as get_xsave2 requires.
        unsafe { fd.get_xsave2(&mut x) }.map_err(io("read XSAVE state"))?;
        let mut v = x.as_fam_struct_ref().xsave.region.to_vec();
        v.extend_from_slice(x.as_slice());
        v
    } else {
        fd.get_xsave()
            .map_err(io("read XSAVE state"))?
            .region
            .to_vec()
    };
    let xcrs = fd.get_xcrs().map_err(io("read XCRs"))?;
    let debugregs = fd.get_debug_regs().map_err(io("read debug registers"))?;
    let lapic = fd.get_lapic().map_err(io("read the LAPIC"))?;
    let mp_state = fd.get_mp_state().map_err(io("read the MP state"))?;
    let events = fd.get_vcpu_events().map_err(io("read vCPU events"))?;
    let entries: Vec<kvm_msr_entry> = msr_indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut list =
        Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany { id, what: "MSR" })?;
    let n = fd.get_msrs(&mut list).map_err(io("read MSRs"))?;
    if n != entries.len() {
        return Err(VcpuStateError::Msrs {
            id,
            done: n,
            total: entries.len(),
            failed: entries[n].index,
        });
    }
    let mut msrs: Vec<(u32, u64)> = list.as_slice().iter().map(|e| (e.index, e.data)).collect();
    // The TSC runs on while the vCPU is paused, so any reading of it is as good
    // a snapshot as the one in the list; this one is tied to the real time it
    // was read at, which the destination advances it from.
    let mut tsc_read_at_realtime_ns = None;
    if let Some(saved) = msrs.iter_mut().find(|m| m.0 == msr::MSR_IA32_TSC) {
        let (tsc, at) = kvmclock::tsc_at_realtime(
            || read_msr(fd, id, msr::MSR_IA32_TSC),
            kvmclock::realtime_ns,
        )?;
        saved.1 = tsc;
        tsc_read_at_realtime_ns = Some(at);
    }
    let tsc_khz = fd.get_tsc_khz().ok();
    Ok(VcpuState {
        id,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        mp_state,
        events,
        msrs,
        tsc_khz,
        tsc_read_at_realtime_ns,
    })
}

/// Loads `state` into vCPU `id` (CPUID must already be set).
pub fn restore(fd: &VcpuFd, id: u8, state: &VcpuState) -> Result<(), VcpuStateError> {
    let io = |what| move |source| VcpuStateError::Ioctl { id, what, source };
    if state.id != id {
        return Err(VcpuStateError::Invalid {
            id,
            why: format!("it belongs to vCPU {}", state.id),
        });
    }
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(io("set the TSC frequency"))?;
        }
    }
    fd.set_sregs(&state.sregs)
        .map_err(io("set special registers"))?;
    fd.set_regs(&state.regs).map_err(io("set registers"))?;
    let legacy_words = std::mem::size_of::<kvm_xsave>() / 4;
    if state.xsave.len() < legacy_words {
        return Err(VcpuStateError::Invalid {
            id,
            why: format!(
                "XSAVE area of {} words, at least {legacy_words} needed",
                state.xsave.len()
            ),
        });
    }
    if state.xsave.len() == legacy_words {
        let mut x = kvm_xsave::default();
        x.region.copy_from_slice(&state.xsave);
        // SAFETY: a complete legacy-sized kvm_xsave built from the saved words.
        unsafe { fd.set_xsave(&x) }.map_err(io("set XSAVE state"))?;
    } else {
        let extra = state.xsave.len() - legacy_words;
        let mut x = Xsave::new(extra).map_err(|_| VcpuStateError::TooMany { id, what: "XSAVE" })?;
        // SAFETY: we only write plain u32 data into the header's region array.
        unsafe { x.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(&state.xsave[..legacy_words]);
        x.as_mut_slice()
            .copy_from_slice(&state.xsave[legacy_words..]);
        // SAFETY: `x` holds the full XSAVE area saved with get_xsave2 on the source.
        unsafe { fd.set_xsave2(&x) }.map_err(io("set XSAVE state"))?;
    }
    fd.set_xcrs(&state.xcrs).map_err(io("set XCRs"))?;
    fd.set_lapic(&state.lapic).map_err(io("set the LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let list =
        Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany { id, what: "MSR" })?;
    let n = fd.set_msrs(&list).map_err(io("set MSRs"))?;
    if n != entries.len() {
        return Err(VcpuStateError::Msrs {
            id,
            done: n,
            total: entries.len(),
            failed: entries[n].index,
        });
    }
    fd.set_vcpu_events(&state.events)
        .map_err(io("set vCPU events"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(io("set the MP state"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(io("set debug registers"))?;
    Ok(())
}
