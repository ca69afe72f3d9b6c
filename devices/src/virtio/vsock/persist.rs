//! Save and restore of a vsock device.
//!
//! Connections are saved with their ports and credit counters, but their host sockets stay on
//! the source host. A restored device therefore resets them: it sends the guest a
//! TRANSPORT_RESET event and an RST for each, as the virtio spec intends after migration.

use std::collections::HashSet;
use std::num::Wrapping;

use serde::{Deserialize, Serialize};

use super::connection::{ConnPhase, Connection};
use super::device::FIRST_LOCAL_PORT;
use super::{Vsock, VsockConfig, VsockError, MAX_CONNECTIONS};
use crate::state::Persist;

/// One connection as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Handshake or established.
    pub phase: ConnPhase,
    /// Guest bytes forwarded to the host.
    pub fwd_cnt: u32,
    /// Host bytes sent to the guest.
    pub rx_cnt: u32,
    /// The guest's receive buffer.
    pub peer_buf_alloc: u32,
    /// The guest's consumed count.
    pub peer_fwd_cnt: u32,
}

/// A vsock device's own state (the transport saves the queues).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub cid: u64,
    /// Next host-side port for host-initiated connections.
    pub next_local_port: u32,
    /// Connections, sorted by ports.
    pub connections: Vec<ConnectionState>,
}

impl Persist for Vsock {
    type State = VsockState;
    type ConstructorArgs = VsockConfig;
    type Error = VsockError;

    fn save(&self) -> VsockState {
        let mut connections: Vec<ConnectionState> = self
            .conns
            .iter()
            .map(|(&(local_port, peer_port), c)| ConnectionState {
                local_port,
                peer_port,
                phase: c.phase,
                fwd_cnt: c.fwd_cnt.0,
                rx_cnt: c.rx_cnt.0,
                peer_buf_alloc: c.peer_buf_alloc,
                peer_fwd_cnt: c.peer_fwd_cnt.0,
            })
            .collect();
        connections.sort_by_key(|c| (c.local_port, c.peer_port));
        VsockState {
            cid: self.config.cid,
            next_local_port: self.next_local_port,
            connections,
        }
    }

    fn restore(config: VsockConfig, state: &VsockState) -> Result<Self, VsockError> {
        if state.cid != config.cid {
            return Err(VsockError::CidMismatch {
                saved: state.cid,
                configured: config.cid,
            });
        }
        if state.connections.len() > MAX_CONNECTIONS {
            return Err(VsockError::Connections(format!(
                "{} connections, at most {MAX_CONNECTIONS}",
                state.connections.len()
            )));
        }
        if state.next_local_port < FIRST_LOCAL_PORT {
            return Err(VsockError::Connections(format!(
                "next host port {} below {FIRST_LOCAL_PORT}",
                state.next_local_port
            )));
        }
        let mut seen = HashSet::new();
        for c in &state.connections {
            if !seen.insert((c.local_port, c.peer_port)) {
                return Err(VsockError::Connections(format!(
                    "duplicate connection {}:{}",
                    c.local_port, c.peer_port
                )));
            }
        }
        let mut vsock = Vsock::build(config, true)?;
        vsock.next_local_port = state.next_local_port;
        for s in &state.connections {
            let mut c = Connection::new(None, s.phase);
            c.fwd_cnt = Wrapping(s.fwd_cnt);
            c.fwd_cnt_sent = c.fwd_cnt;
            c.rx_cnt = Wrapping(s.rx_cnt);
            c.peer_buf_alloc = s.peer_buf_alloc;
            c.peer_fwd_cnt = Wrapping(s.peer_fwd_cnt);
            c.owed.rst = true;
            let key = (s.local_port, s.peer_port);
            vsock.conns.insert(key, c);
            vsock.schedule(key);
        }
        vsock.reset_event_pending = true;
        Ok(vsock)
    }
}
