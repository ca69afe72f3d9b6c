//! The guest side of vsock: packets from the tx queue, packets into the rx queue, the event
//! queue.

use std::io;
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use event_manager::EventOps;
use virtio_queue::{QueueOwnedT, QueueT};

use super::connection::{ConnKey, ConnPhase, Connection};
use super::device::{FdOwner, Vsock};
use super::packet::*;
use super::{CONN_BUF_ALLOC, EVENT_QUEUE, MAX_CONNECTIONS, MAX_PKT_PAYLOAD, RX_QUEUE, TX_QUEUE};
use crate::virtio::chain::{read_readable, total_len, write_writable};
use crate::GuestMemoryMmap;

impl Vsock {
    // ---- guest to host -------------------------------------------------------------------

    pub(super) fn process_tx(&mut self, ops: &mut EventOps) {
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
        c.peer_credit_update(h.buf_alloc, h.fwd_cnt);
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
    pub(super) fn finish_shutdown(&mut self, key: ConnKey) -> bool {
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
        c.peer_credit_update(h.buf_alloc, h.fwd_cnt);
        c.owed.response = true;
        c.host_readable = true;
        self.conns.insert(key, c);
        self.schedule(key);
    }

    // ---- host to guest -------------------------------------------------------------------

    pub(super) fn process_rx(&mut self) {
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
            // A buffer must hold a header and at least one byte of payload; anything else is
            // given back empty (so a run of useless buffers cannot stall the loop).
            if !self.walk(&mem, RX_QUEUE, head)
                || self.segs.iter().any(|s| !s.writable)
                || total_len(&self.segs, true) <= HDR_LEN as u64
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

    pub(super) fn send_reset_event(&mut self) {
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
