//! Everything besides memory that a migration carries: vCPUs, KVM's VM-wide
//! state and the devices, encoded as one postcard blob.

use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::device_manager::DevicesState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// The non-memory state of a paused guest.
#[derive(Debug, Serialize, Deserialize)]
pub struct GuestState {
    /// vCPUs, by index.
    #[serde(deserialize_with = "bounded_vcpus")]
    pub vcpus: Vec<VcpuState>,
    /// PIC, IOAPIC, PIT, KVM clock.
    pub vm: VmState,
    /// Devices.
    pub devices: DevicesState,
    /// The source's real time (ns since the epoch) at which vCPU 0's saved TSC
    /// was its TSC: the destination advances the guest's TSCs and clock by the
    /// time since. (A source that could not tie the two: when it saved.)
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

/// Most vCPUs a state blob may describe (their ids are `u8`).
pub const MAX_VCPUS: usize = 256;

fn bounded_vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VcpuState>, D::Error> {
    bounded_vec(d, MAX_VCPUS)
}

/// Deserializes a sequence of at most `max` elements, refusing a longer one
/// before allocating for it. For sequences of KVM structures: kvm-bindings
/// decodes each from as little as one byte (it zero-pads a short byte
/// string), so a 4 MiB state blob of uncapped `Vec<kvm_irqchip>` or
/// `Vec<VcpuState>` decodes to gigabytes (520 and ~2,100 bytes per input byte
/// or eleven).
pub(crate) fn bounded_vec<'de, D, T>(d: D, max: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(usize, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of at most {} elements", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if let Some(n) = seq.size_hint().filter(|&n| n > self.0) {
                return Err(A::Error::invalid_length(n, &self));
            }
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(x) = seq.next_element()? {
                if v.len() == self.0 {
                    return Err(A::Error::invalid_length(v.len() + 1, &self));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded(max, std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `vcpus` minimal vCPUs (each eleven bytes: every KVM
    /// structure an empty byte string) and `chips` empty irqchips.
    fn blob(vcpus: usize, chips: usize) -> Vec<u8> {
        let mut b = postcard::to_allocvec(&(vcpus as u64)).unwrap();
        for _ in 0..vcpus {
            // id, regs, sregs, xsave (len 0), xcrs, debugregs, lapic, mp_state, events, msrs (len 0), tsc_khz None
            b.extend_from_slice(&[0; 11]);
        }
        b.extend(postcard::to_allocvec(&(chips as u64)).unwrap());
        b.extend(std::iter::repeat_n(0u8, chips));
        b.extend_from_slice(&[0, 0]); // pit, clock
        b.extend_from_slice(&[0; 10]); // serial: 9 registers, empty FIFO
        b.extend_from_slice(&[0, 0]); // no virtio devices, saved_at 0
        b
    }

    #[test]
    fn ordinary_counts_decode() {
        let gs = GuestState::decode(&blob(64, 3)).unwrap();
        assert_eq!((gs.vcpus.len(), gs.vm.irqchips.len()), (64, 3));
        let gs = GuestState::decode(&blob(MAX_VCPUS, 0)).unwrap();
        assert_eq!(gs.vcpus.len(), MAX_VCPUS);
    }

    /// Found by `fuzz/` (target guest_state): a few KiB of state decoded to
    /// megabytes (4,693 bytes to 2.3 MB), a 4 MiB State message to gigabytes.
    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // The same blobs as above, one element past each bound.
        assert!(GuestState::decode(&blob(2, 4)).is_err());
        assert!(GuestState::decode(&blob(MAX_VCPUS + 1, 3)).is_err());
        assert!(GuestState::decode(&blob(0, 100_000)).is_err());
        assert!(GuestState::decode(&blob(10_000, 3)).is_err());
        // A count far past the data is refused from the count alone.
        let mut b = postcard::to_allocvec(&(u32::MAX as u64)).unwrap();
        b.push(0);
        assert!(GuestState::decode(&b).is_err());
    }
}
