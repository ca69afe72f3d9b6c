//! The virtio-mmio transport, version 2 (virtio 1.x "modern") only.
//!
//! The register state machine validates everything the driver writes: a queue size that is not
//! a power of two or exceeds the maximum, misaligned ring addresses, rings outside guest memory,
//! features the device never offered, status bits out of order. A bad queue or feature setup
//! means the device refuses to go live (DEVICE_NEEDS_RESET, or FEATURES_OK not taken); nothing
//! the driver writes can panic the vmm.
//!
//! Notifications: one `EventFd` per queue, which the vmm registers as a KVM ioeventfd on
//! QueueNotify with datamatch = queue index; a plain MMIO write to QueueNotify (no ioeventfd)
//! writes the same `EventFd`. Interrupts: an [`IrqTrigger`] (InterruptStatus + irqfd).

mod persist;

pub use persist::{MmioRestoreError, MmioTransportArgs, MmioTransportState};

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    has_feature, ActivateContext, IrqTrigger, VirtioDevice, DEVICE_TOKEN_BASE,
    VIRTIO_MMIO_INT_CONFIG,
};
use crate::bus::BusDevice;
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::DeviceSummary;
use crate::GuestMemoryMmap;

/// Size of one device's MMIO window (registers at 0x000–0x0ff, config space from 0x100).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window: where the vmm registers each queue's ioeventfd
/// (4-byte writes, datamatch = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// "virt", little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// tern's vendor id: "TERN", little-endian.
pub const VENDOR_ID: u32 = 0x4e52_4554;

const CONFIG_SPACE_START: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Status bits a driver or a saved state may hold.
pub(crate) const KNOWN_STATUS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_NEEDS_RESET
    | VIRTIO_CONFIG_S_FAILED;

/// Whether `status` has its init bits in order (each implies the ones before it).
pub(crate) fn status_in_order(status: u32) -> bool {
    let chain = [
        (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
        (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
        (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
    ];
    chain
        .iter()
        .all(|&(bit, needs)| status & bit == 0 || status & needs != 0)
}

/// A virtio device on the virtio-mmio transport: the vmm inserts it on the MMIO bus
/// ([`MMIO_WINDOW_SIZE`] bytes) and adds it to the event loop, both as `Arc<Mutex<_>>`.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_select: u32,
    status: u32,
    config_generation: u32,
    /// The driver wrote an invalid queue size or address since the last reset.
    queue_config_error: bool,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`, creating its irqfd and one notification `EventFd` per queue.
    pub fn new(device: D, mem: GuestMemoryMmap) -> io::Result<Self> {
        let queue_evts = (0..device.queues().len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            irq: Arc::new(IrqTrigger::new()?),
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            queue_config_error: false,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (fault hooks, tests).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// One notification `EventFd` per queue, in queue order: register each as a KVM ioeventfd
    /// on `base + 0x50` (QueueNotify), 4 bytes, datamatch = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt's irqfd: register it with KVM on the device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        self.irq.irqfd()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is live.
    pub fn is_activated(&self) -> bool {
        self.device.is_activated()
    }

    /// The device's identity for the migration handshake.
    pub fn summary(&self) -> DeviceSummary {
        self.device.summary()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let sel = usize::try_from(self.queue_select).ok()?;
        self.device.queues_mut().get_mut(sel)
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.queue_field(|q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.queue_field(|q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: a length of all ones says "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn queue_field(&self, f: impl Fn(&Queue) -> u32) -> u32 {
        usize::try_from(self.queue_select)
            .ok()
            .and_then(|sel| self.device.queues().get(sel))
            .map_or(0, f)
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => log::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        if !negotiating {
            log::warn!("virtio-mmio: driver features written outside negotiation");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | value,
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (value << 32),
            sel => log::warn!("virtio-mmio: driver features select {sel} out of range"),
        }
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        let setting_up = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0;
        if !setting_up {
            log::warn!("virtio-mmio: queue register {offset:#x} written outside queue setup");
            return;
        }
        let Some(q) = self.selected_queue() else {
            log::warn!("virtio-mmio: queue register written for a queue that does not exist");
            return;
        };
        if offset == VIRTIO_MMIO_QUEUE_READY {
            q.set_ready(value == 1);
            return;
        }
        if q.ready() {
            log::warn!("virtio-mmio: queue register {offset:#x} written while the queue is ready");
            return;
        }
        let low = |addr: u64| GuestAddress((addr & !0xffff_ffff) | u64::from(value));
        let high = |addr: u64| GuestAddress((addr & 0xffff_ffff) | (u64::from(value) << 32));
        let result = match offset {
            VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| q.try_set_size(size)),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.try_set_desc_table_address(low(q.desc_table())),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.try_set_desc_table_address(high(q.desc_table())),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.try_set_avail_ring_address(low(q.avail_ring())),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.try_set_avail_ring_address(high(q.avail_ring())),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.try_set_used_ring_address(low(q.used_ring())),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.try_set_used_ring_address(high(q.used_ring())),
            _ => Ok(()),
        };
        if let Err(e) = result {
            log::warn!("virtio-mmio: invalid queue setup ({offset:#x} = {value:#x}): {e}");
            self.queue_config_error = true;
        }
    }

    fn notify(&self, value: u32) {
        if !self.device.is_activated() {
            return;
        }
        match usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: failed to forward a queue notification: {e}");
                }
            }
            None => log::warn!("virtio-mmio: notify for queue {value} that does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (a reset is the only way back) and never sets
        // NEEDS_RESET itself.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let current = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & current != current || value & !KNOWN_STATUS != 0 || !status_in_order(value) {
            log::warn!(
                "virtio-mmio: invalid status transition {:#x} -> {value:#x}",
                self.status
            );
            return;
        }
        let new = value & !current;
        let mut status = value | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            log::warn!(
                "virtio-mmio: refusing features {:#x} (offered {:#x})",
                self.acked_features,
                self.device.avail_features()
            );
            status &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        }
        self.status = status;
        let go_live = new & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0;
        if go_live {
            if let Err(e) = self.activate() {
                log::error!("virtio-mmio: device refused to go live: {e}");
                self.needs_reset();
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        self.acked_features & !offered == 0 && has_feature(self.acked_features, VIRTIO_F_VERSION_1)
    }

    /// Validates the queues and activates the device; on success kicks every queue once so
    /// whatever the driver queued before DRIVER_OK is seen.
    pub(crate) fn activate(&mut self) -> Result<(), String> {
        if self.queue_config_error {
            return Err("the driver wrote an invalid queue setup".into());
        }
        let event_idx = has_feature(self.acked_features, VIRTIO_RING_F_EVENT_IDX);
        let mem = self.mem.clone();
        for (i, q) in self.device.queues_mut().iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&mem) {
                return Err(format!("queue {i} does not fit in guest memory"));
            }
            q.set_event_idx(event_idx);
        }
        let ctx = ActivateContext {
            mem,
            irq: self.irq.clone(),
            acked_features: self.acked_features,
        };
        self.device.activate(ctx).map_err(|e| e.to_string())?;
        self.kick_queues();
        Ok(())
    }

    pub(crate) fn kick_queues(&self) {
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("virtio-mmio: failed to kick a queue: {e}");
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(e) = self.irq.trigger(VIRTIO_MMIO_INT_CONFIG) {
                log::error!("virtio-mmio: failed to signal DEVICE_NEEDS_RESET: {e}");
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in self.device.queues_mut() {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.status = 0;
        self.queue_config_error = false;
        self.irq.set_status(0);
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_START {
            self.device.read_config(offset - CONFIG_SPACE_START, data);
            return;
        }
        match (data.len(), u32::try_from(offset)) {
            (4, Ok(off)) if off % 4 == 0 => {
                data.copy_from_slice(&self.read_register(off).to_le_bytes())
            }
            _ => {
                log::warn!(
                    "virtio-mmio: bad register read at {offset:#x}, {} bytes",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_START {
            self.device.write_config(offset - CONFIG_SPACE_START, data);
            return;
        }
        match (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            (Ok(bytes), Ok(off)) if off % 4 == 0 => {
                self.write_register(off, u32::from_le_bytes(bytes))
            }
            _ => log::warn!(
                "virtio-mmio: bad register write at {offset:#x}, {} bytes",
                data.len()
            ),
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioTransport<D> {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio-mmio: failed to watch queue {i}: {e}");
            }
        }
        self.device.init_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        if token >= DEVICE_TOKEN_BASE {
            self.device.process_event(events, ops);
            return;
        }
        let index = token as usize;
        if let Some(evt) = self.queue_evts.get(index) {
            // Several notifications collapse into one pass over the queue.
            let _ = evt.read();
            if self.device.is_activated() {
                self.device.queue_notify(index, ops);
            }
        }
    }
}

impl<D: VirtioDevice + Quiesce> Quiesce for MmioTransport<D> {
    fn try_quiesce(&mut self) -> QuiesceStatus {
        self.device.try_quiesce()
    }

    fn resume_io(&mut self) {
        self.device.resume_io();
    }

    fn set_queue_depth_limit(&mut self, limit: Option<u16>) {
        self.device.set_queue_depth_limit(limit);
    }

    fn drains_before_pause(&self) -> bool {
        self.device.drains_before_pause()
    }
}

#[cfg(test)]
mod tests;
