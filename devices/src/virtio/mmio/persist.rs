//! Save and restore of a virtio-mmio transport together with its device.

use std::error::Error as StdError;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{status_in_order, MmioTransport, KNOWN_STATUS};
use crate::state::{Persist, QueueStateSer};
use crate::virtio::{IrqTrigger, VirtioDevice, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use crate::GuestMemoryMmap;

/// The transport's registers, every queue, and the device's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: DeserializeOwned"))]
pub struct MmioTransportState<S> {
    /// Device status register.
    pub status: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_select: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the driver wrote an invalid queue setup since its last reset.
    pub queue_config_error: bool,
    /// Every queue: size, ready, addresses, next_avail/next_used.
    pub queues: Vec<QueueStateSer>,
    /// The device-specific state.
    pub device: S,
}

/// What [`MmioTransport::restore`] needs besides the state.
pub struct MmioTransportArgs<A> {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's own constructor arguments.
    pub device: A,
}

/// Why a transport state was refused.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The device refused its part of the state.
    #[error("device state refused")]
    Device(#[source] Box<dyn StdError + Send + Sync>),
    /// Status bits unknown or out of order.
    #[error("invalid device status {0:#x}")]
    Status(u32),
    /// Accepted features the device does not offer.
    #[error("accepted features {acked:#x} not offered by the device ({offered:#x})")]
    Features {
        /// Saved accepted features.
        acked: u64,
        /// What this device offers.
        offered: u64,
    },
    /// InterruptStatus with unknown bits.
    #[error("invalid interrupt status {0:#x}")]
    InterruptStatus(u32),
    /// A different number of queues than the device has.
    #[error("state has {saved} queues, the device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue state that does not validate.
    #[error("queue {index} is invalid: {reason}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Creating an `EventFd` failed.
    #[error("failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The device could not go live on the restored queues.
    #[error("failed to activate the restored device: {0}")]
    Activate(String),
}

impl<D> Persist for MmioTransport<D>
where
    D: VirtioDevice + Persist,
    D::Error: StdError + Send + Sync + 'static,
{
    type State = MmioTransportState<D::State>;
    type ConstructorArgs = MmioTransportArgs<D::ConstructorArgs>;
    type Error = MmioRestoreError;

    fn save(&self) -> Self::State {
        MmioTransportState {
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_select: self.queue_select,
            interrupt_status: self.irq.status(),
            config_generation: self.config_generation,
            queue_config_error: self.queue_config_error,
            queues: self
                .device
                .queues()
                .iter()
                .map(QueueStateSer::from)
                .collect(),
            device: self.device.save(),
        }
    }

    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error> {
        if state.status & !KNOWN_STATUS != 0 || !status_in_order(state.status) {
            return Err(MmioRestoreError::Status(state.status));
        }
        if state.interrupt_status & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG) != 0 {
            return Err(MmioRestoreError::InterruptStatus(state.interrupt_status));
        }
        let mut device = D::restore(args.device, &state.device)
            .map_err(|e| MmioRestoreError::Device(Box::new(e)))?;
        let offered = device.avail_features();
        if state.acked_features & !offered != 0 {
            return Err(MmioRestoreError::Features {
                acked: state.acked_features,
                offered,
            });
        }
        if state.queues.len() != device.queues().len() {
            return Err(MmioRestoreError::QueueCount {
                saved: state.queues.len(),
                device: device.queues().len(),
            });
        }
        for (index, (saved, q)) in state.queues.iter().zip(device.queues_mut()).enumerate() {
            if saved.max_size != q.max_size() {
                return Err(MmioRestoreError::Queue {
                    index,
                    reason: format!("max size {} != {}", saved.max_size, q.max_size()),
                });
            }
            *q = saved.into_queue().map_err(|e| MmioRestoreError::Queue {
                index,
                reason: e.to_string(),
            })?;
        }

        let queue_evts = (0..state.queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(MmioRestoreError::EventFd)?;
        let irq = IrqTrigger::new().map_err(MmioRestoreError::EventFd)?;
        irq.set_status(state.interrupt_status);
        let mut transport = MmioTransport {
            device,
            mem: args.mem,
            irq: Arc::new(irq),
            queue_evts,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            acked_features: state.acked_features,
            queue_select: state.queue_select,
            status: state.status,
            config_generation: state.config_generation,
            queue_config_error: state.queue_config_error,
        };
        let live = state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && state.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0;
        if live {
            transport.activate().map_err(MmioRestoreError::Activate)?;
        }
        if state.interrupt_status != 0 {
            // The guest may not have seen it yet: inject it again on the new irqfd.
            transport
                .irq
                .irqfd()
                .write(1)
                .map_err(MmioRestoreError::EventFd)?;
        }
        Ok(transport)
    }
}
