//! Everything besides memory that a migration carries: vCPUs, KVM's VM-wide
//! state and the devices, encoded as one postcard blob.

use serde::{Deserialize, Serialize};

use crate::device_manager::DevicesState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// The non-memory state of a paused guest.
#[derive(Debug, Serialize, Deserialize)]
pub struct GuestState {
    /// vCPUs, by index.
    pub vcpus: Vec<VcpuState>,
    /// PIC, IOAPIC, PIT, KVM clock.
    pub vm: VmState,
    /// Devices.
    pub devices: DevicesState,
    /// The source's real time when the vCPUs were saved, ns since the epoch:
    /// the destination advances the guest's clocks by the time since.
    pub saved_at_realtime_ns: u64,
}

impl GuestState {
    /// Encodes for the wire.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(self).map_err(|e| format!("cannot encode the guest state: {e}"))
    }

    /// Decodes from the wire (untrusted: every part is validated again when restored).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode the guest state: {e}"))
    }
}
