//! virtio 1.x over MMIO (modern devices only, version register 2), driven
//! by polling: the guest runs with interrupts off, so completions are found
//! by reading the used rings.
//!
//! - [`cmdline`]: the `virtio_mmio.device=SIZE@ADDR:IRQ` tokens that name the devices.
//! - [`transport`]: the register interface ([`transport::Transport`] is the
//!   only thing a platform implements) and the initialization sequence.
//! - [`queue`]: split virtqueues in guest memory.
//! - [`blk`], [`net`]: the two device drivers.
//!
//! Memory shared with the device (queues, request headers, buffers) is made
//! of atomics, so the drivers are safe Rust; a platform hands them memory
//! with its guest-physical address ([`Dma`]).

use core::sync::atomic::AtomicU64;

pub mod blk;
pub mod cmdline;
pub mod net;
pub mod queue;
pub mod transport;

/// Memory the device may access: `words` at guest-physical address `paddr`.
#[derive(Clone, Copy)]
pub struct Dma<'a> {
    pub words: &'a [AtomicU64],
    pub paddr: u64,
}

impl<'a> Dma<'a> {
    /// Bytes.
    pub fn len(&self) -> usize {
        self.words.len() * 8
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The part starting `bytes` in (a multiple of 8), `len` bytes long.
    pub fn slice(&self, bytes: usize, len: usize) -> Dma<'a> {
        Dma {
            words: &self.words[bytes / 8..(bytes + len).div_ceil(8)],
            paddr: self.paddr + bytes as u64,
        }
    }
}

/// Feature bits common to all devices.
pub const F_VERSION_1: u64 = 1 << 32;
