//! virtio-blk on a raw file: read, write, flush, get-id, write-zeroes and (advisory) discard.
//!
//! The event loop parses requests and hands them to a small pool of worker threads
//! (`tern-blk-N`); the vCPU and event-loop threads never wait on the disk. Contiguous reads (or
//! writes) taken from the queue in one pass go to a worker as one batch and one
//! `preadv`/`pwritev` straight between the file and guest memory (`merge`, `vectored`; reads are
//! marked in the dirty bitmap). Workers send finished batches back over a channel plus an
//! `EventFd`; the event loop writes each request's status and the used ring. The device counts what is in flight at every moment, which is what
//! [`crate::quiesce::Quiesce`] reports, and a [`BlockFaultHandle`] can delay or hold requests.

mod device;
mod fault;
mod merge;
mod persist;
mod request;
mod vectored;
mod worker;

pub use device::Block;
pub use fault::{BlockFault, BlockFaultHandle};
pub use persist::{BlockArgs, BlockState};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Worker threads when the configuration does not say.
pub const DEFAULT_WORKERS: usize = 4;

/// A disk as the user configured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    /// Device id (the guest reads it with VIRTIO_BLK_T_GET_ID, up to 20 bytes).
    pub id: String,
    /// Raw image file.
    pub path: PathBuf,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO; writes fail with VIRTIO_BLK_S_IOERR).
    pub readonly: bool,
}

/// Errors creating or restoring a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening the image failed.
    #[error("failed to open disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Creating an eventfd or a worker thread failed.
    #[error("failed to set up the block device's host resources")]
    Host(#[source] std::io::Error),
    /// A worker pool of size zero.
    #[error("the worker pool needs at least one thread")]
    NoWorkers,
    /// A saved state for a different disk.
    #[error("saved state does not match the disk: {0}")]
    Mismatch(String),
    /// A saved state with impossible in-flight requests.
    #[error("invalid in-flight requests in the saved state: {0}")]
    InFlight(String),
}

#[cfg(test)]
mod tests;
