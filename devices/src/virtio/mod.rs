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
