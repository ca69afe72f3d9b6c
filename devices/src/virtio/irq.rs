//! The virtio-mmio interrupt: the InterruptStatus register plus an irqfd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// InterruptStatus bit: the configuration space changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Shared by a transport and its device: the device raises, the driver acknowledges through the
/// transport. The vmm registers [`IrqTrigger::irqfd`] with KVM on the device's GSI.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irqfd: EventFd,
}

impl IrqTrigger {
    /// A trigger with a fresh irqfd and nothing pending.
    pub fn new() -> io::Result<Self> {
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Sets `bits` in InterruptStatus and injects the interrupt.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Raises the used-ring interrupt, logging (not failing) if the irqfd write fails.
    pub fn signal_used(&self) {
        if let Err(e) = self.trigger(VIRTIO_MMIO_INT_VRING) {
            log::error!("virtio: failed to signal the guest: {e}");
        }
    }

    /// The current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Replaces InterruptStatus (restore, reset).
    pub(crate) fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
