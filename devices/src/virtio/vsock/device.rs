//! The virtio-vsock device and its Unix-socket host side.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{ConnKey, ConnPhase, Connection};
use super::packet::*;
use super::{
    VsockConfig, VsockError, CONN_BUF_ALLOC, EVENT_QUEUE, MAX_CONNECTIONS, MAX_PKT_PAYLOAD,
    QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::DeviceSummary;
use crate::virtio::chain::{collect_chain, read_readable, total_len, write_writable, Segment};
use crate::virtio::{
    ActivateContext, ActivateError, IrqTrigger, VirtioDevice, COMMON_FEATURES, DEVICE_TOKEN_BASE,
};
use crate::GuestMemoryMmap;

const TOKEN_LISTENER: u32 = DEVICE_TOKEN_BASE;
const TOKEN_STREAM: u32 = DEVICE_TOKEN_BASE + 1;
const TOKEN_KICK: u32 = DEVICE_TOKEN_BASE + 2;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// RSTs for unknown connections waiting for rx buffers; beyond this they are dropped.
const MAX_PENDING_RSTS: usize = 1024;
/// Host-side ports for host-initiated connections start here.
pub(super) const FIRST_LOCAL_PORT: u32 = 1 << 30;

struct Active {
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
}

/// A host connection that has not sent its `CONNECT <port>\n` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

enum FdOwner {
    Conn(ConnKey),
    Handshake,
}

/// A virtio-vsock device.
pub struct Vsock {
    pub(super) config: VsockConfig,
    listener: UnixListener,
    queues: Vec<Queue>,
    active: Option<Active>,
    pub(super) conns: HashMap<ConnKey, Connection>,
    fds: HashMap<RawFd, FdOwner>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the guest, served round-robin.
    rxq: VecDeque<ConnKey>,
    /// RSTs answering packets for unknown connections.
    rsts: VecDeque<Header>,
    /// Streams to take off the event loop and close at the next chance.
    doomed: Vec<UnixStream>,
    kick_evt: EventFd,
    pub(super) next_local_port: u32,
    bounce: Vec<u8>,
    segs: Vec<Segment>,
    quiescing: bool,
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

/// Binds the host socket, replacing a stale socket file nobody listens on.
fn listen(path: &Path) -> Result<UnixListener, VsockError> {
    let err = |source| VsockError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::from(io::ErrorKind::AddrInUse)));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

impl Vsock {
    /// A device for guest `config.cid`, listening on `config.uds_path`.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if config.cid <= HOST_CID {
            return Err(VsockError::ReservedCid(config.cid));
        }
        let listener = listen(&config.uds_path)?;
        let queues = (0..3).filter_map(|_| Queue::new(QUEUE_SIZE).ok()).collect();
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

    fn kick(&self) {
        if let Err(e) = self.kick_evt.write(1) {
            log::error!("vsock: failed to kick the event loop: {e}");
        }
    }

    pub(super) fn schedule(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.scheduled && c.has_rx_work() {
                c.scheduled = true;
                self.rxq.push_back(key);
            }
        }
    }

    /// Drops a connection; its stream leaves the event loop at the next `reap`.
    fn kill(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            if let Some(s) = c.stream {
                self.fds.remove(&s.as_raw_fd());
                self.doomed.push(s);
            }
        }
    }

    /// Resets a connection: RST to the guest, then it is dropped.
    fn reset_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.owed = Default::default();
            c.owed.rst = true;
            self.schedule(key);
        }
    }

    fn reap(&mut self, ops: &mut EventOps) {
        for s in self.doomed.drain(..) {
            if let Err(e) = ops.remove(Events::empty(&s)) {
                log::debug!("vsock: stream was not on the event loop: {e}");
            }
        }
    }

    fn watch(&mut self, ops: &mut EventOps, fd: RawFd, owner: FdOwner) -> io::Result<()> {
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        ops.add(Events::with_data_raw(fd, TOKEN_STREAM, set))
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.fds.insert(fd, owner);
        Ok(())
    }

    fn reply_rst(&mut self, to: &Header) {
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

    fn walk(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16) -> bool {
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

    fn add_used(&mut self, mem: &GuestMemoryMmap, queue: usize, head: u16, len: u32) {
        if let Err(e) = self.queues[queue].add_used(mem, head, len) {
            log::warn!("vsock: cannot return descriptor {head}: {e}");
        }
    }

    fn signal(&mut self, queue: usize) {
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
    fn pop(&mut self, mem: &GuestMemoryMmap, queue: usize) -> Option<u16> {
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

    // ---- guest to host -------------------------------------------------------------------

    fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        if self.quiescing {
            return;
        }
        let _ = self.queues[TX_QUEUE].disable_notification(&mem);
        let mut used = false;
        while let Some(head) = self.pop(&mem, TX_QUEUE) {
            used = true;
            if self.walk(&mem, TX_QUEUE, head) {
                self.tx_packet(&mem, ops);
            }
            self.add_used(&mem, TX_QUEUE, head, 0);
        }
        if used {
            self.signal(TX_QUEUE);
        }
    }

    /// Handles the packet in `self.segs`.
    fn tx_packet(&mut self, mem: &GuestMemoryMmap, ops: &mut EventOps) {
        let mut raw = [0u8; HDR_LEN];
        if self.segs.iter().any(|s| s.writable)
            || read_readable(mem, &self.segs, 0, &mut raw).ok() != Some(HDR_LEN)
        {
            log::warn!("vsock: dropping a tx packet without a readable header");
            return;
        }
        let h = Header::decode(&raw);
        let len = h.len as usize;
        let available = total_len(&self.segs, false) as usize - HDR_LEN;
        let valid = h.src_cid == self.config.cid
            && h.dst_cid == HOST_CID
            && h.type_ == TYPE_STREAM
            && len <= available
            && len <= MAX_PKT_PAYLOAD;
        if !valid {
            log::warn!("vsock: invalid tx packet {h:?}");
            if h.op != OP_RST {
                self.reply_rst(&h);
            }
            return;
        }
        let mut payload = std::mem::take(&mut self.bounce);
        if h.op == OP_RW
            && len > 0
            && read_readable(mem, &self.segs, HDR_LEN, &mut payload[..len]).ok() != Some(len)
        {
            self.bounce = payload;
            self.reply_rst(&h);
            return;
        }
        let data = if h.op == OP_RW {
            &payload[..len]
        } else {
            &[][..]
        };
        self.guest_packet(&h, data, ops);
        self.bounce = payload;
    }

    fn guest_packet(&mut self, h: &Header, data: &[u8], ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            self.guest_connect(h, ops);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.reply_rst(h);
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match h.op {
            OP_RST => {
                self.kill(key);
                return;
            }
            OP_RESPONSE if c.phase == ConnPhase::LocalInit => {
                c.phase = ConnPhase::Established;
                c.host_readable = true;
                let ok = format!("OK {}\n", key.0);
                if c.write_host(ok.as_bytes()).is_err() {
                    self.reset_conn(key);
                    return;
                }
            }
            OP_RW if c.phase == ConnPhase::Established && c.peer_shutdown & SHUTDOWN_SEND == 0 => {
                if c.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
                    log::warn!("vsock: guest overran its credit on {key:?}");
                    self.reset_conn(key);
                    return;
                }
                if c.write_host(data).is_err() {
                    self.reset_conn(key);
                    return;
                }
                c.owed.credit_update |= c.credit_update_due();
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.owed.credit_update = true,
            OP_SHUTDOWN => {
                c.peer_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.finish_shutdown(key) {
                    return;
                }
            }
            _ => {
                self.reset_conn(key);
                return;
            }
        }
        self.schedule(key);
    }

    /// Acts on the guest's SHUTDOWN once the host has all its data; returns whether the
    /// connection is being reset.
    fn finish_shutdown(&mut self, key: ConnKey) -> bool {
        let Some(c) = self.conns.get_mut(&key) else {
            return true;
        };
        if !c.tx_buf.is_empty() {
            return false;
        }
        if c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.reset_conn(key);
            return true;
        }
        if c.peer_shutdown & SHUTDOWN_SEND != 0 {
            if let Some(s) = c.stream.as_ref() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        false
    }

    fn guest_connect(&mut self, h: &Header, ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.reply_rst(h);
            return;
        }
        let path = format!("{}_{}", self.config.uds_path.display(), h.dst_port);
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                log::debug!("vsock: nobody listens on {path}");
                self.reply_rst(h);
                return;
            }
        };
        if let Err(e) = self.watch(ops, stream.as_raw_fd(), FdOwner::Conn(key)) {
            log::error!("vsock: cannot watch {path}: {e}");
            self.reply_rst(h);
            return;
        }
        let mut c = Connection::new(Some(stream), ConnPhase::Established);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        c.owed.response = true;
        c.host_readable = true;
        self.conns.insert(key, c);
        self.schedule(key);
    }

    // ---- host to guest -------------------------------------------------------------------

    fn process_rx(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        if self.quiescing {
            return;
        }
        let mut used = false;
        while !(self.rsts.is_empty() && self.rxq.is_empty()) {
            let Some(head) = self.pop(&mem, RX_QUEUE) else {
                break;
            };
            if !self.walk(&mem, RX_QUEUE, head)
                || self.segs.iter().any(|s| !s.writable)
                || total_len(&self.segs, true) < HDR_LEN as u64
            {
                self.add_used(&mem, RX_QUEUE, head, 0);
                used = true;
                continue;
            }
            let room = (total_len(&self.segs, true) as usize - HDR_LEN).min(MAX_PKT_PAYLOAD);
            let packet = match self.rsts.pop_front() {
                Some(h) => Some((h, 0)),
                None => self.next_conn_packet(room),
            };
            let Some((h, len)) = packet else {
                self.queues[RX_QUEUE].go_to_previous_position();
                continue;
            };
            let wrote = write_writable(&mem, &self.segs, 0, &h.encode())
                .and_then(|_| write_writable(&mem, &self.segs, HDR_LEN, &self.bounce[..len]));
            if let Err(e) = wrote {
                log::warn!("vsock: cannot write an rx buffer: {e}");
            }
            self.add_used(&mem, RX_QUEUE, head, (HDR_LEN + len) as u32);
            used = true;
        }
        if used {
            self.signal(RX_QUEUE);
        }
    }

    /// The next packet from the scheduled connections, payload in `self.bounce`.
    fn next_conn_packet(&mut self, room: usize) -> Option<(Header, usize)> {
        let key = self.rxq.pop_front()?;
        let cid = self.config.cid;
        let c = self.conns.get_mut(&key)?;
        c.scheduled = false;
        let mut packet = None;
        if let Some((op, flags)) = c.owed.next() {
            c.owed.clear(op);
            c.fwd_cnt_sent = c.fwd_cnt;
            let h = conn_header(cid, key, c, op, flags, 0);
            packet = Some((h, 0));
            if op == OP_RST {
                self.kill(key);
                return packet;
            }
        } else if c.can_send_data() {
            let max = room.min(c.peer_credit() as usize);
            match c.read_host(&mut self.bounce[..max]) {
                Ok(0) => {
                    c.host_eof = true;
                    c.owed.shutdown |= SHUTDOWN_SEND;
                }
                Ok(n) => {
                    c.rx_cnt += Wrapping(n as u32);
                    c.fwd_cnt_sent = c.fwd_cnt;
                    let h = conn_header(cid, key, c, OP_RW, 0, n as u32);
                    packet = Some((h, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.host_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host read failed on {key:?}: {e}");
                    self.reset_conn(key);
                }
            }
        }
        self.schedule(key);
        packet
    }

    fn send_reset_event(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        if !self.reset_event_pending {
            return;
        }
        let Some(head) = self.pop(&mem, EVENT_QUEUE) else {
            return;
        };
        let mut len = 0;
        if self.walk(&mem, EVENT_QUEUE, head) {
            if let Ok(4) = write_writable(&mem, &self.segs, 0, &EVENT_TRANSPORT_RESET.to_le_bytes())
            {
                len = 4;
                self.reset_event_pending = false;
            }
        }
        self.add_used(&mem, EVENT_QUEUE, head, len);
        self.signal(EVENT_QUEUE);
    }

    // ---- host sockets --------------------------------------------------------------------

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() + self.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // Dropping it closes it.
                    }
                    let fd = stream.as_raw_fd();
                    if self.watch(ops, fd, FdOwner::Handshake).is_ok() {
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                        self.handshake(fd);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("vsock: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time (never past it).
    fn handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&hs.line)),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let Ok(Some(peer_port)) = outcome else {
            self.fds.remove(&fd);
            self.doomed.push(hs.stream);
            return;
        };
        let key = (self.allocate_port(peer_port), peer_port);
        let mut c = Connection::new(Some(hs.stream), ConnPhase::LocalInit);
        c.owed.request = true;
        self.conns.insert(key, c);
        self.fds.insert(fd, FdOwner::Conn(key));
        self.schedule(key);
    }

    fn allocate_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn stream_event(&mut self, fd: RawFd, set: EventSet) {
        let key = match self.fds.get(&fd) {
            Some(FdOwner::Handshake) => return self.handshake(fd),
            Some(FdOwner::Conn(key)) => *key,
            None => return,
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.host_readable = true;
        }
        if set.contains(EventSet::OUT) && !c.tx_buf.is_empty() {
            match c.flush_host() {
                Ok(_) => {
                    c.owed.credit_update |= c.credit_update_due();
                    if self.finish_shutdown(key) {
                        return;
                    }
                }
                Err(_) => {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        self.schedule(key);
    }
}

/// A packet header from the host side of connection `key`.
fn conn_header(cid: u64, key: ConnKey, c: &Connection, op: u16, flags: u32, len: u32) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: cid,
        src_port: key.0,
        dst_port: key.1,
        len,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: CONN_BUF_ALLOC,
        fwd_cnt: c.fwd_cnt.0,
    }
}

/// `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    line.trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()
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
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if let Some(index) = self.queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady { index });
        }
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

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"\xff"), None);
    }
}
