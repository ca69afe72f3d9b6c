//! The device state contract: save a device to a plain serde value, rebuild it from one.
//!
//! A state arrives from another host over the network, so `restore` treats it as untrusted: every
//! field is validated and anything out of range is a typed error, never a panic (the model is
//! virtio-queue's `QueueState` and its validating `TryFrom`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// Save and restore of a device's full state. Deliberately has no default methods: every device
/// spells out what it saves.
pub trait Persist: Sized {
    /// The saved state: plain data, serialisable by any serde format.
    type State: Serialize + DeserializeOwned;
    /// What `restore` needs besides the state (guest memory, host resources such as a file or a
    /// tap name, output streams).
    type ConstructorArgs;
    /// Why a state was refused.
    type Error;

    /// Captures the device's full state. Does not change the device.
    fn save(&self) -> Self::State;

    /// Rebuilds a device from `state`, validating every field.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Serialisable mirror of virtio-queue's [`QueueState`]; untrusted until
/// [`QueueStateSer::into_queue`] validates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStateSer {
    /// Maximum size the device offers.
    pub max_size: u16,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// Whether VIRTIO_F_RING_EVENT_IDX is in use.
    pub event_idx_enabled: bool,
    /// Size the driver selected.
    pub size: u16,
    /// Whether the driver marked the queue ready.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
}

impl From<&Queue> for QueueStateSer {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        QueueStateSer {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueStateSer {
    /// Validates the state (sizes, alignment) and builds the queue.
    pub fn into_queue(self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// What a device is, as the migration handshake compares it between source and destination:
/// the guest-visible identity, not host details such as a file path or a tap name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceSummary {
    /// The 16550 serial port.
    Serial,
    /// The i8042 controller (reset line only).
    I8042,
    /// A virtio-blk disk.
    Block {
        /// Device id from the configuration.
        id: String,
        /// Whether the guest sees the disk as read-only.
        readonly: bool,
        /// Size in 512-byte sectors.
        capacity_sectors: u64,
    },
    /// A virtio-net interface.
    Net {
        /// Device id from the configuration.
        id: String,
        /// The guest's MAC address.
        mac: [u8; 6],
    },
    /// A virtio-vsock device.
    Vsock {
        /// Device id.
        id: String,
        /// The guest's context id.
        cid: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn queue_state_round_trip_and_validation() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.set_ready(true);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(1));
        q.set_next_avail(7);
        q.set_next_used(5);
        let s = QueueStateSer::from(&q);
        let json = serde_json::to_string(&s).unwrap();
        let back: QueueStateSer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.into_queue().unwrap(), q);

        for bad in [
            QueueStateSer { size: 3, ..s },
            QueueStateSer { size: 512, ..s },
            QueueStateSer { max_size: 0, ..s },
            QueueStateSer {
                desc_table: 0x1001,
                ..s
            },
            QueueStateSer {
                used_ring: 0x3002,
                ..s
            },
        ] {
            assert!(bad.into_queue().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn summary_serialises_with_a_type_tag() {
        let s = DeviceSummary::Net {
            id: "net0".into(),
            mac: [2, 0, 0, 0, 0, 1],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"type\":\"net\""), "{json}");
        assert_eq!(serde_json::from_str::<DeviceSummary>(&json).unwrap(), s);
    }
}
