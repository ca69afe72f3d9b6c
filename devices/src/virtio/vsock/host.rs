//! The host side of vsock: the listening socket, the `CONNECT <port>` handshake, and
//! readiness of the connections' Unix sockets.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet};

use super::connection::{ConnPhase, Connection};
use super::device::{FdOwner, Handshake, Vsock, FIRST_LOCAL_PORT};
use super::MAX_CONNECTIONS;

/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

impl Vsock {
    // ---- host sockets --------------------------------------------------------------------

    pub(super) fn accept(&mut self, ops: &mut EventOps) {
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

    pub(super) fn stream_event(&mut self, fd: RawFd, set: EventSet) {
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

/// `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    line.trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()
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
