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

/// Copies `bytes` into `words` starting at byte `offset` (little endian,
/// as the device sees memory).
pub fn write_bytes(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    use core::sync::atomic::Ordering::Relaxed;
    let mut i = 0;
    while i < bytes.len() {
        let at = offset + i;
        let (word, shift) = (at / 8, at % 8);
        let n = (8 - shift).min(bytes.len() - i);
        let mut value = words[word].load(Relaxed).to_le_bytes();
        value[shift..shift + n].copy_from_slice(&bytes[i..i + n]);
        words[word].store(u64::from_le_bytes(value), Relaxed);
        i += n;
    }
}

/// Copies bytes from `words`, starting at byte `offset`, into `out`.
pub fn read_bytes(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
    use core::sync::atomic::Ordering::Relaxed;
    let mut i = 0;
    while i < out.len() {
        let at = offset + i;
        let (word, shift) = (at / 8, at % 8);
        let n = (8 - shift).min(out.len() - i);
        out[i..i + n].copy_from_slice(&words[word].load(Relaxed).to_le_bytes()[shift..shift + n]);
        i += n;
    }
}

/// Feature bits common to all devices.
pub const F_VERSION_1: u64 = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_and_out_of_words_at_any_offset() {
        let words: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(u64::MAX)).collect();
        let data: Vec<u8> = (1..=19).collect();
        write_bytes(&words, 5, &data);
        let mut back = [0u8; 19];
        read_bytes(&words, 5, &mut back);
        assert_eq!(&back[..], &data[..]);
        let mut all = [0u8; 32];
        read_bytes(&words, 0, &mut all);
        assert_eq!(&all[..5], &[0xff; 5], "bytes before are untouched");
        assert_eq!(&all[24..], &[0xff; 8], "and after");
        let d = Dma {
            words: &words,
            paddr: 0x1000,
        };
        assert_eq!(
            (d.slice(8, 16).paddr, d.slice(8, 16).words.len(), d.len()),
            (0x1008, 2, 32)
        );
    }
}
