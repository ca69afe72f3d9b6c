//! The virtio-net device.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::tap::{NetBackend, Tap};
use super::{
    random_mac, NetConfig, NetError, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::DeviceSummary;
use crate::virtio::chain::{collect_chain, read_readable, total_len, write_writable, Segment};
use crate::virtio::{
    check_activation, new_queues, ActivateContext, ActivateError, IrqTrigger, VirtioDevice,
    COMMON_FEATURES, DEVICE_TOKEN_BASE,
};
use crate::GuestMemoryMmap;

const TOKEN_TAP: u32 = DEVICE_TOKEN_BASE;
/// mac[6] + status u16.
const CONFIG_LEN: usize = 8;
/// Most descriptors a frame may use.
const MAX_SEGMENTS: usize = QUEUE_SIZE as usize;

struct Active {
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
}

/// A virtio-net device on a [`NetBackend`] (a [`Tap`] in tern).
pub struct Net<B: NetBackend = Tap> {
    pub(super) config: NetConfig,
    pub(super) mac: [u8; 6],
    backend: B,
    config_space: [u8; CONFIG_LEN],
    queues: Vec<Queue>,
    active: Option<Active>,
    segs: Vec<Segment>,
    /// A frame read from the backend, waiting for an rx buffer: its bytes are
    /// `rx_frame[..rx_pending]`.
    pub(super) rx_frame: Vec<u8>,
    pub(super) rx_pending: usize,
    tx_frame: Vec<u8>,
    quiescing: bool,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("rx_pending", &self.rx_pending)
            .finish_non_exhaustive()
    }
}

impl Net<Tap> {
    /// Opens the configured tap and builds the device on it.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap)?;
        Net::with_backend(config, tap)
    }
}

impl<B: NetBackend> Net<B> {
    /// Builds the device on an already open backend.
    pub fn with_backend(config: NetConfig, backend: B) -> Result<Self, NetError> {
        let mac = match config.mac {
            Some(mac) => mac,
            None => random_mac()?,
        };
        Ok(Self::build(config, mac, backend))
    }

    pub(super) fn build(config: NetConfig, mac: [u8; 6], backend: B) -> Self {
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..6].copy_from_slice(&mac);
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        let queues = new_queues(2, QUEUE_SIZE);
        Net {
            config,
            mac,
            backend,
            config_space,
            queues,
            active: None,
            segs: Vec::with_capacity(MAX_SEGMENTS),
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            tx_frame: vec![0; MAX_FRAME_LEN],
            quiescing: false,
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Sends a RARP announcement from the guest's MAC on the backend (see
    /// [`rarp_announcement`](super::rarp_announcement)), so the network learns
    /// where the guest now is.
    pub fn announce(&mut self) -> std::io::Result<()> {
        let mut frame = [0u8; VNET_HDR_LEN + 60];
        frame[VNET_HDR_LEN..].copy_from_slice(&super::rarp_announcement(self.mac));
        self.backend.send_frame(&frame).map(|_| ())
    }

    fn walk(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16) -> bool {
        let q = &self.queues[queue];
        let table = GuestAddress(q.desc_table());
        match collect_chain(mem, table, q.size(), head, MAX_SEGMENTS, &mut self.segs) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("net: dropping malformed chain {head} on queue {queue}: {e}");
                false
            }
        }
    }

    fn add_used(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16, len: u32) {
        if let Err(e) = self.queues[queue].add_used(mem, head, len) {
            log::warn!("net: cannot return descriptor {head}: {e}");
        }
    }

    fn signal(&mut self, queue: usize) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        match self.queues[queue].needs_notification(&active.mem) {
            Ok(true) => active.irq.signal_used(),
            Ok(false) => {}
            Err(e) => log::error!("net: cannot read the used event: {e}"),
        }
    }

    /// Pops the next chain of `queue`, re-checking once after re-enabling notifications so no
    /// buffer the guest adds meanwhile goes unseen.
    fn pop(&mut self, mem: &GuestMemoryMmap, queue: usize) -> Option<u16> {
        let q = &mut self.queues[queue];
        if let Some(chain) = q.pop_descriptor_chain(mem) {
            return Some(chain.head_index());
        }
        match q.enable_notification(mem) {
            Ok(true) => {
                let head = q.pop_descriptor_chain(mem).map(|c| c.head_index());
                if head.is_some() {
                    let _ = q.disable_notification(mem);
                }
                head
            }
            Ok(false) => None,
            Err(e) => {
                log::error!("net: cannot access queue {queue}: {e}");
                None
            }
        }
    }

    /// Moves frames from the backend to rx buffers until either runs out. While quiescing only
    /// the frame already read is delivered.
    fn process_rx(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used = false;
        loop {
            if self.rx_pending == 0 {
                if self.quiescing {
                    break;
                }
                match self.backend.recv_frame(&mut self.rx_frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_pending = n,
                    Ok(n) => {
                        log::warn!("net: dropping a {n}-byte frame from the backend");
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("net: backend read failed: {e}");
                        break;
                    }
                }
                // Only what was negotiated (nothing): no checksum or GSO flags, one buffer.
                self.rx_frame[..VNET_HDR_LEN].fill(0);
                self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            }
            let Some(head) = self.pop(&mem, RX_QUEUE) else {
                break; // No rx buffer: stop reading until the guest posts some.
            };
            if !self.walk(&mem, RX_QUEUE, head) || self.segs.iter().any(|s| !s.writable) {
                // Malformed: give the buffer back empty, keep the frame for the next one.
                self.add_used(&mem, RX_QUEUE, head, 0);
                used = true;
                continue;
            }
            let frame = &self.rx_frame[..self.rx_pending];
            let room = total_len(&self.segs, true);
            if (frame.len() as u64) > room {
                log::warn!(
                    "net: dropping a {}-byte frame, rx buffer holds {room}",
                    frame.len()
                );
                self.rx_pending = 0;
                self.add_used(&mem, RX_QUEUE, head, 0);
                used = true;
                continue;
            }
            let len = match write_writable(&mem, &self.segs, 0, frame) {
                Ok(n) => n as u32,
                Err(e) => {
                    log::warn!("net: cannot write an rx buffer: {e}");
                    0
                }
            };
            self.rx_pending = 0;
            self.add_used(&mem, RX_QUEUE, head, len);
            used = true;
        }
        if used {
            self.signal(RX_QUEUE);
        }
    }

    /// Sends every frame the guest queued.
    fn process_tx(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        if self.quiescing {
            return;
        }
        if let Err(e) = self.queues[TX_QUEUE].disable_notification(&mem) {
            log::error!("net: cannot access the tx queue: {e}");
        }
        let mut used = false;
        while let Some(head) = self.pop(&mem, TX_QUEUE) {
            used = true;
            if self.walk(&mem, TX_QUEUE, head) {
                self.transmit(&mem, head);
            }
            self.add_used(&mem, TX_QUEUE, head, 0);
        }
        if used {
            self.signal(TX_QUEUE);
        }
    }

    fn transmit(&mut self, mem: &GuestMemoryMmap, head: u16) {
        if self.segs.iter().any(|s| s.writable) {
            log::warn!("net: tx chain {head} has device-writable buffers");
            return;
        }
        let len = total_len(&self.segs, false) as usize;
        if len <= VNET_HDR_LEN || len > MAX_FRAME_LEN {
            log::warn!("net: tx chain {head} of {len} bytes is not a frame");
            return;
        }
        let frame = &mut self.tx_frame[..len];
        if let Err(e) = read_readable(mem, &self.segs, 0, frame) {
            log::warn!("net: cannot read tx chain {head}: {e}");
            return;
        }
        // Nothing was negotiated, so whatever the guest put in the header is dropped.
        frame[..VNET_HDR_LEN].fill(0);
        match self.backend.send_frame(frame) {
            Ok(n) if n == len => {}
            Ok(n) => log::warn!("net: backend took {n} of {len} bytes"),
            Err(e) => log::warn!("net: dropping a frame the backend refused: {e}"),
        }
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn avail_features(&self) -> u64 {
        COMMON_FEATURES | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("net: ignoring a config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_activation(self.active.is_some(), &self.queues)?;
        self.active = Some(Active {
            mem: ctx.mem,
            irq: ctx.irq,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = 0;
        self.quiescing = false;
    }

    fn queue_notify(&mut self, index: usize, _ops: &mut EventOps) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn init_events(&mut self, ops: &mut EventOps) {
        let fd = self.backend.as_raw_fd();
        let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_TAP, set)) {
            log::error!("net: failed to watch the backend: {e}");
        }
    }

    fn process_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_TAP {
            self.process_rx();
        }
    }

    fn summary(&self) -> DeviceSummary {
        DeviceSummary::Net {
            id: self.config.id.clone(),
            mac: self.mac,
        }
    }
}

impl<B: NetBackend> Quiesce for Net<B> {
    fn try_quiesce(&mut self) -> QuiesceStatus {
        self.quiescing = true;
        // Deliver the frame already read if the guest has a buffer for it.
        self.process_rx();
        match self.rx_pending {
            0 => QuiesceStatus::Quiesced,
            _ => QuiesceStatus::Busy { in_flight: 1 },
        }
    }

    fn resume_io(&mut self) {
        self.quiescing = false;
        self.process_tx();
        self.process_rx();
    }

    fn set_queue_depth_limit(&mut self, _limit: Option<u16>) {}

    /// Transmits complete at once and the frame read ahead is saved with the device.
    fn drains_before_pause(&self) -> bool {
        false
    }
}
