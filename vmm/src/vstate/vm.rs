//! The KVM VM: in-kernel irqchip and PIT, memory slots, dirty-tracking mode,
//! and the VM-wide state a migration carries (PIC, IOAPIC, PIT, KVM clock).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, VmFd};
use serde::{Deserialize, Serialize};

use super::dirty_log::{self, DirtyLogError};
use super::kvm::KvmHost;
use super::memory::{GuestMemoryMmap, KvmMemory, MemoryError};
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create a KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// A VM-level setup ioctl failed.
    #[error("cannot {what}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Dirty-tracking setup failed.
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
    /// Memory registration failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A dirty-tracking mode the host does not offer was asked for.
    #[error("dirty tracking '{0}' is not available on this host")]
    TrackingUnavailable(&'static str),
}

/// How KVM reports the pages a guest writes during a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirtyTracking {
    /// Per-vCPU dirty rings (`KVM_CAP_DIRTY_LOG_RING`): pages attributed to the vCPU that wrote them.
    Ring {
        /// Ring size in entries.
        entries: u32,
    },
    /// Per-slot bitmaps with manual protection (`KVM_CLEAR_DIRTY_LOG` in chunks).
    Bitmap,
}

/// What the user asked for (`--dirty-tracking`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirtyTrackingChoice {
    /// The ring when the host has it (except on kvm_pvm, where it loses writes), else the bitmap.
    #[default]
    Auto,
    /// The per-vCPU dirty ring (fails when the host lacks it).
    Ring,
    /// The bitmap with manual protection.
    Bitmap,
}

/// Default dirty ring: 4096 entries of 16 bytes per vCPU (as QEMU suggests).
pub const DEFAULT_RING_ENTRIES: u32 = 4096;

/// The VM file descriptor and what was configured on it.
pub struct Vm {
    /// The KVM VM.
    pub fd: VmFd,
    /// How dirty pages are tracked.
    pub tracking: DirtyTracking,
    /// The registered memory.
    pub memory: KvmMemory,
}

impl Vm {
    /// Creates the VM with irqchip and PIT, chooses the dirty-tracking mode and
    /// registers `mem`. vCPUs are created afterwards.
    pub fn new(
        host: &KvmHost,
        mem: &GuestMemoryMmap,
        choice: DirtyTrackingChoice,
    ) -> Result<Self, VmError> {
        let fd = host.kvm.create_vm().map_err(VmError::Create)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(setup("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(setup("set the identity map address"))?;
        fd.create_irq_chip()
            .map_err(setup("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(setup("create the in-kernel PIT"))?;

        let ring_bytes =
            DEFAULT_RING_ENTRIES * std::mem::size_of::<kvm_bindings::kvm_dirty_gfn>() as u32;
        let ring_ok = host.dirty_ring_cap.is_some() && host.dirty_ring_max_bytes >= ring_bytes;
        let use_ring = match choice {
            DirtyTrackingChoice::Ring if !ring_ok => {
                return Err(VmError::TrackingUnavailable("ring"))
            }
            DirtyTrackingChoice::Ring => true,
            DirtyTrackingChoice::Bitmap => false,
            // On kvm_pvm the dirty ring loses writes: with the guest paused
            // at switchover, pages differed from what was last sent in 2 of 3
            // `hot-cold` runs (TERN_DEBUG_CHECK_SENT), never with the bitmap.
            // The bitmap plus per-vCPU fault counters (`fault_stats`) gives
            // the same attribution there. `--dirty-tracking ring` still forces it.
            DirtyTrackingChoice::Auto => ring_ok && !host.is_pvm,
        };
        let tracking = match host.dirty_ring_cap {
            Some(cap) if use_ring => {
                dirty_log::enable_dirty_ring(&fd, cap, ring_bytes)?;
                DirtyTracking::Ring {
                    entries: DEFAULT_RING_ENTRIES,
                }
            }
            _ => {
                if host.manual_protect_flags == 0 {
                    return Err(VmError::TrackingUnavailable(
                        "bitmap with manual protection",
                    ));
                }
                dirty_log::enable_manual_protect(&fd, host.manual_protect_flags)?;
                DirtyTracking::Bitmap
            }
        };
        let memory = KvmMemory::register(&fd, mem)?;
        Ok(Vm {
            fd,
            tracking,
            memory,
        })
    }

    /// Ring size in bytes, when the dirty ring is in use.
    pub fn ring_bytes(&self) -> Option<u32> {
        match self.tracking {
            DirtyTracking::Ring { entries } => {
                Some(entries * std::mem::size_of::<kvm_bindings::kvm_dirty_gfn>() as u32)
            }
            DirtyTracking::Bitmap => None,
        }
    }

    /// Saves the in-kernel PIC, IOAPIC, PIT and the KVM clock. The vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let setup = |what| move |source| VmError::Setup { what, source };
        let mut chips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(setup("read the irqchip state"))?;
            chips.push(chip);
        }
        let pit = self.fd.get_pit2().map_err(setup("read the PIT state"))?;
        let mut clock = self.fd.get_clock().map_err(setup("read the KVM clock"))?;
        // Only the clock value travels; flags describing the source host do not.
        clock.flags &= !KVM_CLOCK_TSC_STABLE;
        Ok(VmState {
            irqchips: chips,
            pit,
            clock,
        })
    }

    /// Restores the irqchips and the PIT `save_state` saved, before any vCPU
    /// runs. The clock is set separately (`set_clock_ns_as_of`), once the vCPUs'
    /// TSCs are restored, because it is computed from them.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        let setup = |what| move |source| VmError::Setup { what, source };
        for chip in &state.irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(setup("restore the irqchip state"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(setup("restore the PIT state"))?;
        Ok(())
    }

    /// Sets the KVM clock (kvmclock) to `ns` as of the host's real time
    /// `at_realtime_ns` (`kvmclock::realtime_ns`): advanced by the real
    /// time since, so that the time this call takes to come does not put the
    /// clock behind. KVM does the advancing itself where it can
    /// (`KVM_CLOCK_REALTIME`, Linux 5.16), at the instant it sets the clock;
    /// elsewhere tern does, just before the call.
    pub fn set_clock_ns_as_of(&self, ns: u64, at_realtime_ns: u64) -> Result<(), VmError> {
        let kvm_advances =
            self.fd.check_extension_int(Cap::AdjustClock) as u32 & KVM_CLOCK_REALTIME != 0;
        let clock = if kvm_advances {
            kvm_clock_data {
                clock: ns,
                flags: KVM_CLOCK_REALTIME,
                realtime: at_realtime_ns,
                ..Default::default()
            }
        } else {
            kvm_clock_data {
                clock: ns
                    .saturating_add(super::kvmclock::realtime_ns().saturating_sub(at_realtime_ns)),
                ..Default::default()
            }
        };
        self.fd.set_clock(&clock).map_err(|source| VmError::Setup {
            what: "restore the KVM clock",
            source,
        })
    }
}

/// VM-wide device state kept by KVM.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    #[serde(deserialize_with = "bounded_irqchips")]
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock (ns) as the guest saw it at vCPU 0's saved TSC
    /// (`kvmclock::guest_clock_at_first_tsc`), or `KVM_GET_CLOCK`'s value
    /// (`kvmclock::CarriedClock`).
    pub clock: kvm_clock_data,
}

/// At most the three saved chips: an uncapped count would let a state blob
/// decode to gigabytes (see `migrate::guest_state::bounded_vec`).
fn bounded_irqchips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<kvm_irqchip>, D::Error> {
    crate::migrate::guest_state::bounded_vec(d, 3)
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("irqchips", &self.irqchips.len())
            .field("clock_ns", &self.clock.clock)
            .finish()
    }
}
