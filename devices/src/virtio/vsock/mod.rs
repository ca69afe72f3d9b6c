//! virtio-vsock with the host side on Unix sockets, as Firecracker does it:
//!
//! - the guest connects to port P: tern connects to the Unix socket `PATH_P`;
//! - a host program connects to `PATH`, writes `CONNECT P\n`; tern asks the guest for a
//!   connection to port P and, once the guest accepts, answers `OK <host port>\n`.
//!
//! Flow control is the virtio-vsock credit scheme: every packet carries the sender's receive
//! buffer size (`buf_alloc`) and how much of it has been consumed (`fwd_cnt`). Host data is
//! read only while the guest has credit; guest data beyond what the host socket accepts waits
//! in a per-connection buffer the guest's credit bounds. Errors reset the connection (RST).
//!
//! Host sockets cannot migrate: a restored device resets the transport (event queue) and
//! every connection it had.

mod connection;
mod device;
mod guest;
mod host;
mod packet;
mod persist;

pub use connection::ConnPhase;
pub use device::Vsock;
pub use packet::Header;
pub use persist::{ConnectionState, VsockState};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Queue size offered for the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Event queue index.
pub const EVENT_QUEUE: usize = 2;
/// Receive buffer each connection advertises to the guest.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload the device accepts in one packet.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Connections per device.
pub const MAX_CONNECTIONS: usize = 1024;

/// A vsock device as the user configured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host-side Unix socket path: tern listens here, and connects to `PATH_<port>`.
    pub uds_path: PathBuf,
}

/// Errors creating or restoring a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0–2 are reserved.
    #[error("guest CID {0} is reserved (must be 3 or more)")]
    ReservedCid(u64),
    /// Binding the host socket failed.
    #[error("failed to listen on {path}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Creating an eventfd failed.
    #[error("failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A saved state for a different guest.
    #[error("saved CID {saved} does not match the configured {configured}")]
    CidMismatch {
        /// In the state.
        saved: u64,
        /// Configured.
        configured: u64,
    },
    /// A saved connection table that cannot be.
    #[error("invalid saved connections: {0}")]
    Connections(String),
}

#[cfg(test)]
mod tests;
