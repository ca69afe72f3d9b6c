//! Virtio devices on the virtio-mmio transport (virtio 1.x, split rings).

pub mod block;
pub mod chain;
mod device;
mod irq;
pub mod mmio;
pub mod net;
pub mod vsock;

pub use device::{ActivateContext, ActivateError, VirtioDevice, DEVICE_TOKEN_BASE};
pub use irq::{IrqTrigger, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
pub use mmio::{
    MmioTransport, MmioTransportArgs, MmioTransportState, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Feature bits every tern device offers: virtio 1.x, indirect descriptors, event index.
pub const COMMON_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// `n` queues of `max_size` entries. `max_size` is a compile-time constant of each device and
/// a valid queue size (a power of two up to 32768), so `Queue::new` cannot fail; a default queue
/// stands in should that ever change, keeping the count (devices index their queues).
pub(crate) fn new_queues(n: usize, max_size: u16) -> Vec<virtio_queue::Queue> {
    use virtio_queue::QueueT;
    (0..n)
        .map(|_| virtio_queue::Queue::new(max_size).unwrap_or_default())
        .collect()
}

/// What every device checks before it activates: it is not live yet, and the driver has set up
/// each of its queues (the first one not ready is named).
pub(crate) fn check_activation(
    already_active: bool,
    queues: &[virtio_queue::Queue],
) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    if already_active {
        return Err(ActivateError::AlreadyActive);
    }
    match queues.iter().position(|q| !q.ready()) {
        Some(index) => Err(ActivateError::QueueNotReady { index }),
        None => Ok(()),
    }
}

/// Whether feature `bit` is set in `features`.
pub(crate) fn has_feature(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// Copies the bytes of `config` at `offset` into `data`; out-of-range parts read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn activation_needs_an_inactive_device_and_every_queue_ready() {
        let mut queues = new_queues(3, 16);
        assert!(matches!(
            check_activation(false, &queues),
            Err(ActivateError::QueueNotReady { index: 0 })
        ));
        queues[0].set_ready(true);
        queues[2].set_ready(true);
        assert!(matches!(
            check_activation(false, &queues),
            Err(ActivateError::QueueNotReady { index: 1 })
        ));
        queues[1].set_ready(true);
        assert!(check_activation(false, &queues).is_ok());
        assert!(matches!(
            check_activation(true, &queues),
            Err(ActivateError::AlreadyActive)
        ));
    }
}
