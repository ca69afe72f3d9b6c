//! Opening `/dev/kvm` and asking what the host offers.

use std::path::Path;

use kvm_bindings::{
    KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
};
use kvm_ioctls::{Cap, Kvm};

/// The KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";
/// Present when `/dev/kvm` is provided by the Pagetable-based VM module.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Errors opening KVM or finding a capability tern needs.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open {KVM_PATH}: {hint}")]
    Open {
        /// What to do about it.
        hint: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The node does not answer like KVM.
    #[error("{KVM_PATH} is not a KVM device (KVM_GET_API_VERSION did not answer 12)")]
    NotKvm,
    /// The host's KVM lacks something tern cannot work without.
    #[error("the host's KVM lacks {0}")]
    MissingCapability(&'static str),
}

/// The host's KVM and the features tern cares about.
pub struct KvmHost {
    /// The `/dev/kvm` handle.
    pub kvm: Kvm,
    /// The host's KVM is `kvm_pvm` (guest ring 0 emulated, user-mode SYSCALL broken).
    pub is_pvm: bool,
    /// Largest dirty ring in bytes (0 when the host has none).
    pub dirty_ring_max_bytes: u32,
    /// The dirty-ring capability to enable (the acquire/release variant when offered).
    pub dirty_ring_cap: Option<u32>,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` flags the host supports (0 when absent).
    pub manual_protect_flags: u32,
}

impl KvmHost {
    /// Opens `/dev/kvm` and checks the capabilities tern requires.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|source| KvmError::Open {
            hint: match source.errno() {
                libc::ENOENT => "no such device; is the kvm module loaded?",
                libc::EACCES | libc::EPERM => {
                    "permission denied; run as root or join the kvm group"
                }
                _ => "KVM is unusable on this host",
            },
            source,
        })?;
        if kvm.get_api_version() != 12 {
            return Err(KvmError::NotKvm);
        }
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
            (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
            (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
            (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let acq_rel = kvm.check_extension_raw(KVM_CAP_DIRTY_LOG_RING_ACQ_REL.into());
        let plain = kvm.check_extension_raw(KVM_CAP_DIRTY_LOG_RING.into());
        let (dirty_ring_cap, dirty_ring_max_bytes) = if acq_rel > 0 {
            (Some(KVM_CAP_DIRTY_LOG_RING_ACQ_REL), acq_rel as u32)
        } else if plain > 0 {
            (Some(KVM_CAP_DIRTY_LOG_RING), plain as u32)
        } else {
            (None, 0)
        };
        let manual = kvm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into());
        Ok(KvmHost {
            kvm,
            is_pvm: Path::new(PVM_MODULE).exists(),
            dirty_ring_max_bytes,
            dirty_ring_cap,
            manual_protect_flags: manual.max(0) as u32,
        })
    }
}

/// Whether this host's `/dev/kvm` is `kvm_pvm`, without opening it.
pub fn host_is_pvm() -> bool {
    Path::new(PVM_MODULE).exists()
}
