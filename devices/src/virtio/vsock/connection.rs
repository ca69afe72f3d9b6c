//! One vsock stream connection: its host socket, its state and both directions' credit.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use super::packet::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN,
};
use super::CONN_BUF_ALLOC;

/// (host-side port, guest-side port).
pub(super) type ConnKey = (u32, u32);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnPhase {
    /// Host-initiated: REQUEST sent (or to send) to the guest, waiting for its RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// Restored from another host: no host socket, to be reset.
    Orphan,
}

/// Control packets a connection owes the guest, sent in this priority order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Owed {
    pub rst: bool,
    pub request: bool,
    pub response: bool,
    pub shutdown: u32,
    pub credit_request: bool,
    pub credit_update: bool,
}

impl Owed {
    /// The most urgent owed op, if any (SHUTDOWN comes with its flags).
    pub fn next(&self) -> Option<(u16, u32)> {
        if self.rst {
            Some((OP_RST, 0))
        } else if self.request {
            Some((OP_REQUEST, 0))
        } else if self.response {
            Some((OP_RESPONSE, 0))
        } else if self.credit_update {
            Some((OP_CREDIT_UPDATE, 0))
        } else if self.credit_request {
            Some((OP_CREDIT_REQUEST, 0))
        } else if self.shutdown != 0 {
            Some((OP_SHUTDOWN, self.shutdown))
        } else {
            None
        }
    }

    /// Marks `op` as sent.
    pub fn clear(&mut self, op: u16) {
        match op {
            OP_RST => self.rst = false,
            OP_REQUEST => self.request = false,
            OP_RESPONSE => self.response = false,
            OP_CREDIT_UPDATE => self.credit_update = false,
            OP_CREDIT_REQUEST => self.credit_request = false,
            OP_SHUTDOWN => self.shutdown = 0,
            _ => {}
        }
    }
}

/// A connection.
pub(super) struct Connection {
    pub stream: Option<UnixStream>,
    pub phase: ConnPhase,
    pub owed: Owed,
    /// Bytes from the guest written to the host socket.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer and how much of it it consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Guest data the host socket has not taken yet.
    pub tx_buf: VecDeque<u8>,
    /// The host socket may have data (edge-triggered: cleared on `WouldBlock`).
    pub host_readable: bool,
    /// The host closed its sending side; SHUTDOWN(SEND) goes to the guest.
    pub host_eof: bool,
    /// SHUTDOWN flags received from the guest.
    pub peer_shutdown: u32,
    /// In the rx scheduling queue.
    pub scheduled: bool,
    /// A CREDIT_REQUEST went out and the guest has not updated its credit since.
    pub credit_requested: bool,
}

impl Connection {
    pub fn new(stream: Option<UnixStream>, phase: ConnPhase) -> Self {
        Connection {
            stream,
            phase,
            owed: Owed::default(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_buf: VecDeque::new(),
            host_readable: false,
            host_eof: false,
            peer_shutdown: 0,
            scheduled: false,
            credit_requested: false,
        }
    }

    /// Records the credit the guest announced in a packet header.
    pub fn peer_credit_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        self.credit_requested = false;
    }

    /// Host data waits but the guest has no credit: ask it once for an update (Linux sends
    /// them unprompted; this is the safety net against a stall).
    pub fn request_credit_if_blocked(&mut self) {
        if self.phase == ConnPhase::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_credit() == 0
            && !self.credit_requested
        {
            self.owed.credit_request = true;
            self.credit_requested = true;
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest should hear about our freed buffer space: once its view of our free
    /// space falls below half the buffer.
    pub fn credit_update_due(&self) -> bool {
        let unreported = (self.fwd_cnt - self.fwd_cnt_sent).0;
        let received = unreported as usize + self.tx_buf.len();
        unreported > 0 && received >= (CONN_BUF_ALLOC / 2) as usize
    }

    /// Whether host data can go to the guest now.
    pub fn can_send_data(&self) -> bool {
        self.phase == ConnPhase::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & super::packet::SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has something for the guest.
    pub fn has_rx_work(&self) -> bool {
        self.owed.next().is_some() || self.can_send_data()
    }

    /// Reads host data into `buf`. `Ok(0)` is end of stream.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.as_mut() {
            Some(s) => s.read(buf),
            None => Ok(0),
        }
    }

    /// Writes guest data to the host, buffering what the socket does not take. Returns the
    /// bytes that reached the socket.
    pub fn write_host(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        if self.tx_buf.is_empty() {
            if let Some(s) = self.stream.as_mut() {
                written = match s.write(data) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
            }
        }
        self.tx_buf.extend(&data[written..]);
        self.fwd_cnt += Wrapping(written as u32);
        Ok(written)
    }

    /// Writes buffered guest data to the host until it blocks. Returns the bytes written.
    pub fn flush_host(&mut self) -> io::Result<usize> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(0);
        };
        let mut total = 0;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match s.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.fwd_cnt += Wrapping(total as u32);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_arithmetic_wraps() {
        let mut c = Connection::new(None, ConnPhase::Established);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = Wrapping(u32::MAX - 99);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 499);
        assert_eq!(c.peer_credit(), 600);
        c.peer_fwd_cnt = Wrapping(5); // a guest claiming more than it was sent
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.credit_update_due());
        c.fwd_cnt = Wrapping(CONN_BUF_ALLOC / 2);
        assert!(c.credit_update_due());
    }

    #[test]
    fn owed_ops_come_in_priority_order() {
        let mut o = Owed {
            response: true,
            credit_update: true,
            shutdown: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        while let Some((op, flags)) = o.next() {
            seen.push((op, flags));
            o.clear(op);
        }
        assert_eq!(
            seen,
            vec![(OP_RESPONSE, 0), (OP_CREDIT_UPDATE, 0), (OP_SHUTDOWN, 2)]
        );
    }
}
