//! Save and restore of a block device.
//!
//! Requests in flight at save time are recorded by their descriptor head; the restored device
//! submits them again when it goes live (QEMU does the same), so a state saved while `Busy`
//! still loses nothing.

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError, QUEUE_SIZE};
use crate::state::Persist;

/// A block device's own state (the transport saves the queue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Device id, checked against the destination's configuration.
    pub id: String,
    /// Read-only flag, checked likewise.
    pub readonly: bool,
    /// Disk size in sectors, checked against the destination's image.
    pub capacity_sectors: u64,
    /// Descriptor heads of the requests in flight, in submission order.
    pub in_flight: Vec<u16>,
}

/// What [`Block::restore`] needs besides the state.
#[derive(Clone, Debug)]
pub struct BlockArgs {
    /// The destination's configuration of the disk.
    pub config: BlockConfig,
    /// Worker threads.
    pub workers: usize,
}

impl Persist for Block {
    type State = BlockState;
    type ConstructorArgs = BlockArgs;
    type Error = BlockError;

    fn save(&self) -> BlockState {
        let mut in_flight = self.in_flight.clone();
        in_flight.extend_from_slice(&self.resubmit);
        BlockState {
            id: self.config.id.clone(),
            readonly: self.config.readonly,
            capacity_sectors: self.capacity_sectors,
            in_flight,
        }
    }

    fn restore(args: BlockArgs, state: &BlockState) -> Result<Self, BlockError> {
        if state.in_flight.len() > usize::from(QUEUE_SIZE) {
            return Err(BlockError::InFlight(format!(
                "{} requests in flight, more than the queue holds",
                state.in_flight.len()
            )));
        }
        if let Some(h) = state.in_flight.iter().find(|&&h| h >= QUEUE_SIZE) {
            return Err(BlockError::InFlight(format!(
                "descriptor head {h} out of range"
            )));
        }
        if state.id != args.config.id || state.readonly != args.config.readonly {
            return Err(BlockError::Mismatch(format!(
                "saved id {:?} readonly {}, configured id {:?} readonly {}",
                state.id, state.readonly, args.config.id, args.config.readonly
            )));
        }
        let mut block = Block::with_workers(args.config, args.workers)?;
        if block.capacity_sectors != state.capacity_sectors {
            return Err(BlockError::Mismatch(format!(
                "saved capacity {} sectors, image has {}",
                state.capacity_sectors, block.capacity_sectors
            )));
        }
        block.resubmit = state.in_flight.clone();
        Ok(block)
    }
}
