//! The device side of a virtio device, as the transport drives it.

use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::Queue;

use super::IrqTrigger;
use crate::state::DeviceSummary;
use crate::GuestMemoryMmap;

/// Event-manager data tokens below this value belong to the transport (one per queue); a
/// device registers its own fds with tokens at or above it.
pub const DEVICE_TOKEN_BASE: u32 = 0x100;

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Clone)]
pub struct ActivateContext {
    /// Guest memory (regions carry the dirty bitmap).
    pub mem: GuestMemoryMmap,
    /// The interrupt to raise when a used ring is updated.
    pub irq: Arc<IrqTrigger>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device refused to go live.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready.
    #[error("queue {index} is not ready")]
    QueueNotReady {
        /// Queue index.
        index: usize,
    },
    /// The device is already live.
    #[error("device is already activated")]
    AlreadyActive,
    /// A host resource failed (thread, file, socket).
    #[error("host resource failure")]
    Io(#[source] std::io::Error),
    /// Restored device-specific state does not match the queues.
    #[error("restored state does not fit the queues: {0}")]
    BadState(String),
}

/// A virtio device behind a transport.
///
/// The device owns its queues (created with their maximum sizes); the transport programs them
/// from the driver's register writes through [`VirtioDevice::queues_mut`] and, once the driver
/// sets DRIVER_OK and everything validates, calls [`VirtioDevice::activate`]. From then on the
/// event loop delivers queue notifications ([`VirtioDevice::queue_notify`]) and the device's
/// own fds ([`VirtioDevice::process_event`]). Nothing here may panic on guest input.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 net, 2 block, 19 vsock).
    fn device_type(&self) -> u32;
    /// The feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// The device's queues.
    fn queues(&self) -> &[Queue];
    /// The device's queues, for the transport to program.
    fn queues_mut(&mut self) -> &mut [Queue];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Goes live on the programmed queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Whether the device is live.
    fn is_activated(&self) -> bool;
    /// Returns to the pre-activation state (driver reset). Requests still running on host
    /// threads finish but no longer touch the (reset) queues.
    fn reset(&mut self);
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: usize, ops: &mut EventOps);
    /// Registers the device's own fds with the event loop (tokens >= [`DEVICE_TOKEN_BASE`]).
    fn init_events(&mut self, ops: &mut EventOps);
    /// One of the device's own fds is ready.
    fn process_event(&mut self, events: Events, ops: &mut EventOps);
    /// The device's identity for the migration handshake.
    fn summary(&self) -> DeviceSummary;
}
