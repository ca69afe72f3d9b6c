//! The virtio-vsock device and its Unix-socket host side.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{ConnKey, Connection};
use super::packet::*;
use super::{VsockConfig, VsockError, EVENT_QUEUE, MAX_PKT_PAYLOAD, QUEUE_SIZE, TX_QUEUE};
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::DeviceSummary;
use crate::virtio::chain::{collect_chain, Segment};
use crate::virtio::{
    check_activation, new_queues, ActivateContext, ActivateError, IrqTrigger, VirtioDevice,
    COMMON_FEATURES, DEVICE_TOKEN_BASE,
};
use crate::GuestMemoryMmap;

const TOKEN_LISTENER: u32 = DEVICE_TOKEN_BASE;
const TOKEN_STREAM: u32 = DEVICE_TOKEN_BASE + 1;
const TOKEN_KICK: u32 = DEVICE_TOKEN_BASE + 2;
/// RSTs for unknown connections waiting for rx buffers; beyond this they are dropped.
const MAX_PENDING_RSTS: usize = 1024;
/// Host-side ports for host-initiated connections start here.
pub(super) const FIRST_LOCAL_PORT: u32 = 1 << 30;

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub irq: Arc<IrqTrigger>,
}

/// A host connection that has not sent its `CONNECT <port>\n` line yet.
pub(super) struct Handshake {
    pub stream: UnixStream,
    pub line: Vec<u8>,
}

pub(super) enum FdOwner {
    Conn(ConnKey),
    Handshake,
}

/// A virtio-vsock device.
pub struct Vsock {
    pub(super) config: VsockConfig,
    pub(super) listener: UnixListener,
    pub(super) queues: Vec<Queue>,
    pub(super) active: Option<Active>,
    pub(super) conns: HashMap<ConnKey, Connection>,
    pub(super) fds: HashMap<RawFd, FdOwner>,
    pub(super) handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the guest, served round-robin.
    pub(super) rxq: VecDeque<ConnKey>,
    /// RSTs answering packets for unknown connections.
    pub(super) rsts: VecDeque<Header>,
    /// Streams to take off the event loop and close at the next chance.
    pub(super) doomed: Vec<UnixStream>,
    pub(super) kick_evt: EventFd,
    pub(super) next_local_port: u32,
    pub(super) bounce: Vec<u8>,
    pub(super) segs: Vec<Segment>,
    pub(super) quiescing: bool,
    /// A TRANSPORT_RESET event is owed to the guest (after a restore).
    pub(super) reset_event_pending: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("config", &self.config)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// Binds the host socket, replacing a stale socket file nobody listens on, or (`take_over`)
/// one a live process listens on.
fn listen(path: &Path, take_over: bool) -> Result<UnixListener, VsockError> {
    let err = |source| VsockError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if !take_over && UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::from(io::ErrorKind::AddrInUse)));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

impl Vsock {
    /// A device for guest `config.cid`, listening on `config.uds_path`; refuses a path another
    /// process listens on.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        Self::build(config, false)
    }

    /// A migration destination takes the path over even from a live listener: on a local
    /// migration the source still listens there until it hands the guest over.
    pub(super) fn build(config: VsockConfig, take_over: bool) -> Result<Self, VsockError> {
        if config.cid <= HOST_CID {
            return Err(VsockError::ReservedCid(config.cid));
        }
        let listener = listen(&config.uds_path, take_over)?;
        let queues = new_queues(3, QUEUE_SIZE);
        Ok(Vsock {
            config,
            listener,
            queues,
            active: None,
            conns: HashMap::new(),
            fds: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            doomed: Vec::new(),
            kick_evt: EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            next_local_port: FIRST_LOCAL_PORT,
            bounce: vec![0; MAX_PKT_PAYLOAD],
            segs: Vec::with_capacity(QUEUE_SIZE as usize),
            quiescing: false,
            reset_event_pending: false,
        })
    }

    /// The guest's context id.
    pub fn cid(&self) -> u64 {
        self.config.cid
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn kick(&self) {
        if let Err(e) = self.kick_evt.write(1) {
            log::error!("vsock: failed to kick the event loop: {e}");
        }
    }

    pub(super) fn schedule(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.request_credit_if_blocked();
            if !c.scheduled && c.has_rx_work() {
                c.scheduled = true;
                self.rxq.push_back(key);
            }
        }
    }

    /// Drops a connection; its stream leaves the event loop at the next `reap`.
    pub(super) fn kill(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            if let Some(s) = c.stream {
                self.fds.remove(&s.as_raw_fd());
                self.doomed.push(s);
            }
        }
    }

    /// Resets a connection: RST to the guest, then it is dropped.
    pub(super) fn reset_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.owed = Default::default();
            c.owed.rst = true;
            self.schedule(key);
        }
    }

    pub(super) fn reap(&mut self, ops: &mut EventOps) {
        for s in self.doomed.drain(..) {
            if let Err(e) = ops.remove(Events::empty(&s)) {
                log::debug!("vsock: stream was not on the event loop: {e}");
            }
        }
    }

    pub(super) fn watch(
        &mut self,
        ops: &mut EventOps,
        fd: RawFd,
        owner: FdOwner,
    ) -> io::Result<()> {
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        ops.add(Events::with_data_raw(fd, TOKEN_STREAM, set))
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.fds.insert(fd, owner);
        Ok(())
    }

    pub(super) fn reply_rst(&mut self, to: &Header) {
        if self.rsts.len() < MAX_PENDING_RSTS {
            self.rsts.push_back(Header {
                src_cid: HOST_CID,
                dst_cid: self.config.cid,
                src_port: to.dst_port,
                dst_port: to.src_port,
                type_: TYPE_STREAM,
                op: OP_RST,
                ..Default::default()
            });
        }
    }

    pub(super) fn walk(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16) -> bool {
        let q = &self.queues[queue];
        let table = GuestAddress(q.desc_table());
        collect_chain(
            mem,
            table,
            q.size(),
            head,
            QUEUE_SIZE as usize,
            &mut self.segs,
        )
        .map_err(|e| log::warn!("vsock: malformed chain {head} on queue {queue}: {e}"))
        .is_ok()
    }

    pub(super) fn add_used(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16, len: u32) {
        if let Err(e) = self.queues[queue].add_used(mem, head, len) {
            log::warn!("vsock: cannot return descriptor {head}: {e}");
        }
    }

    pub(super) fn signal(&mut self, queue: usize) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        match self.queues[queue].needs_notification(&active.mem) {
            Ok(true) => active.irq.signal_used(),
            Ok(false) => {}
            Err(e) => log::error!("vsock: cannot read the used event: {e}"),
        }
    }

    /// Pops the next chain, re-checking after re-enabling notifications.
    pub(super) fn pop(&mut self, mem: &GuestMemoryMmap, queue: usize) -> Option<u16> {
        let q = &mut self.queues[queue];
        if let Some(c) = q.pop_descriptor_chain(mem) {
            return Some(c.head_index());
        }
        match q.enable_notification(mem) {
            Ok(true) => {
                let head = q.pop_descriptor_chain(mem).map(|c| c.head_index());
                if head.is_some() {
                    let _ = q.disable_notification(mem);
                }
                head
            }
            _ => None,
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn avail_features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vsock: ignoring a config write at {offset:#x}");
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
        self.quiescing = false;
        self.reset_event_pending = false;
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key);
        }
        for (_, hs) in self.handshakes.drain() {
            self.doomed.push(hs.stream);
        }
        self.fds.clear();
        self.rxq.clear();
        self.rsts.clear();
        self.kick();
    }

    fn queue_notify(&mut self, index: usize, ops: &mut EventOps) {
        match index {
            TX_QUEUE => self.process_tx(ops),
            EVENT_QUEUE => self.send_reset_event(),
            _ => {}
        }
        self.process_rx();
        self.reap(ops);
    }

    fn init_events(&mut self, ops: &mut EventOps) {
        let listener = Events::with_data(&self.listener, TOKEN_LISTENER, EventSet::IN);
        let kick = Events::with_data(&self.kick_evt, TOKEN_KICK, EventSet::IN);
        for ev in [listener, kick] {
            if let Err(e) = ops.add(ev) {
                log::error!("vsock: failed to register with the event loop: {e}");
            }
        }
    }

    fn process_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_LISTENER => self.accept(ops),
            TOKEN_STREAM => self.stream_event(events.fd(), events.event_set()),
            TOKEN_KICK => {
                let _ = self.kick_evt.read();
                self.process_tx(ops);
                self.send_reset_event();
            }
            _ => {}
        }
        self.process_rx();
        self.reap(ops);
    }

    fn summary(&self) -> DeviceSummary {
        DeviceSummary::Vsock {
            id: "vsock".into(),
            cid: self.config.cid,
        }
    }
}

impl Quiesce for Vsock {
    fn try_quiesce(&mut self) -> QuiesceStatus {
        self.quiescing = true;
        let in_flight = self.conns.values().filter(|c| !c.tx_buf.is_empty()).count();
        match in_flight {
            0 => QuiesceStatus::Quiesced,
            n => QuiesceStatus::Busy {
                in_flight: n as u32,
            },
        }
    }

    fn resume_io(&mut self) {
        self.quiescing = false;
        self.kick();
    }

    fn set_queue_depth_limit(&mut self, _limit: Option<u16>) {}
}
