//! Save and restore of a net device: its identity and the frame waiting for an rx buffer.

use serde::{Deserialize, Serialize};

use super::tap::NetBackend;
use super::{Net, NetConfig, NetError, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::state::Persist;

/// A net device's own state (the transport saves the queues).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Device id, checked against the destination's configuration.
    pub id: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// A received frame (virtio_net_hdr included) not yet delivered; empty if none.
    pub pending_rx_frame: Vec<u8>,
}

/// What [`Net::restore`] needs besides the state.
pub struct NetArgs<B> {
    /// The destination's configuration of the interface.
    pub config: NetConfig,
    /// The open backend (`Tap::open(&config.tap)` in tern).
    pub backend: B,
}

impl<B: NetBackend> Persist for Net<B> {
    type State = NetState;
    type ConstructorArgs = NetArgs<B>;
    type Error = NetError;

    fn save(&self) -> NetState {
        NetState {
            id: self.config.id.clone(),
            mac: self.mac,
            pending_rx_frame: self.rx_frame[..self.rx_pending].to_vec(),
        }
    }

    fn restore(args: NetArgs<B>, state: &NetState) -> Result<Self, NetError> {
        if state.id != args.config.id {
            return Err(NetError::Mismatch(format!(
                "saved id {:?}, configured {:?}",
                state.id, args.config.id
            )));
        }
        if let Some(mac) = args.config.mac.filter(|m| *m != state.mac) {
            return Err(NetError::Mismatch(format!(
                "saved MAC {:02x?}, configured {mac:02x?}",
                state.mac
            )));
        }
        let len = state.pending_rx_frame.len();
        if len != 0 && (len <= VNET_HDR_LEN || len > MAX_FRAME_LEN) {
            return Err(NetError::PendingFrame(len));
        }
        let mut net = Net::build(args.config, state.mac, args.backend);
        net.rx_frame[..len].copy_from_slice(&state.pending_rx_frame);
        net.rx_pending = len;
        Ok(net)
    }
}
