//! tern's emulated devices: a 16550 serial port, the i8042 reset line, and virtio-mmio block,
//! net and vsock devices, with the state ([`state::Persist`]) and non-blocking drain
//! ([`quiesce::Quiesce`]) contracts that live migration relies on.
//!
//! Nothing here talks to KVM: the vmm wires the devices' `EventFd`s to KVM (irqfd, ioeventfd),
//! dispatches PIO/MMIO exits through a [`bus::Bus`] and adds the devices to its event loop.

#![warn(missing_docs)]

pub mod bus;
pub mod legacy;
pub mod quiesce;
pub mod state;
pub mod virtio;

/// Guest memory as tern maps it: every region carries an [`vm_memory::bitmap::AtomicBitmap`], so
/// every write a device makes through vm-memory is recorded as a dirty page for migration (KVM's
/// dirty log only sees the vCPUs' writes).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

pub use bus::{Bus, BusDevice, BusError};
pub use quiesce::{Quiesce, QuiesceStatus};
pub use state::{DeviceSummary, Persist};

#[cfg(test)]
pub(crate) mod test_utils;
