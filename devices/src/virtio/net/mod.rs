//! virtio-net on a tap interface: one rx and one tx queue, the MAC in config space, no
//! offloads. The virtio_net_hdr is handled for what is negotiated (nothing): headers from the
//! guest are replaced by a clean one before they reach the tap, and headers from the tap are
//! rewritten (no flags, no GSO, num_buffers 1) before they reach the guest.
//!
//! RX reads at most one frame ahead: when the guest has no rx buffer the frame waits and the
//! tap is not read again until the guest posts buffers (rx queue notification).

mod announce;
mod device;
mod persist;
mod tap;

pub use announce::rarp_announcement;
pub use device::Net;
pub use persist::{NetArgs, NetState};
pub use tap::{NetBackend, Tap};

use serde::{Deserialize, Serialize};

/// Size of `virtio_net_hdr_v1` (virtio 1.x always carries num_buffers).
pub const VNET_HDR_LEN: usize = 12;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame (header included) the device moves: a 64 KiB packet plus Ethernet and VLAN
/// headers.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65550;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// A network interface as the user configured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Device id.
    pub id: String,
    /// Name of the host tap interface.
    pub tap: String,
    /// The guest's MAC; a random locally administered one if not given.
    pub mac: Option<[u8; 6]>,
}

/// Errors creating or restoring a net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not a valid interface name.
    #[error("invalid tap name {0:?}")]
    TapName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("failed to open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    /// A tap ioctl failed.
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] std::io::Error),
    /// Reading random bytes for a MAC failed.
    #[error("failed to generate a MAC address")]
    Random(#[source] std::io::Error),
    /// A saved state for a different interface.
    #[error("saved state does not match the configuration: {0}")]
    Mismatch(String),
    /// A saved pending frame that cannot be one.
    #[error("saved pending frame of {0} bytes is invalid")]
    PendingFrame(usize),
}

/// A random, unicast, locally administered MAC.
pub fn random_mac() -> Result<[u8; 6], NetError> {
    use std::io::Read;
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(NetError::Random)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests;
