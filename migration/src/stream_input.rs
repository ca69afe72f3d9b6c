//! What the destination reads a migration stream from: any byte source, told
//! when the reader will certainly want more than it asks for.
//!
//! A page run's data is read in pieces (each page is checked while it is
//! still in cache), but the run's control frame already said how many bytes
//! follow. A socket that knows this can let that much queue up before it
//! wakes the reading thread, instead of waking it for every packet (on the
//! loopback the *sending* thread pays for each wake-up; `docs/results.md`).

use std::io::{self, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

/// A byte source for the receiver.
pub trait StreamInput: Read {
    /// Reads at least one byte into `buf` (0 only at the end of the stream),
    /// like [`Read::read`], where the sender has committed to `due` more
    /// bytes (at least `buf.len()`): an implementation may wait until a
    /// large part of them has arrived. The default reads at once.
    fn read_due(&mut self, buf: &mut [u8], due: usize) -> io::Result<usize> {
        let _ = due;
        self.read(buf)
    }
}

impl StreamInput for &[u8] {}
impl StreamInput for &TcpStream {}
impl StreamInput for &UnixStream {}

impl<R: StreamInput> StreamInput for BufReader<R> {
    /// Bytes already buffered come first; past them the read goes straight
    /// to the source, with `due`, and bypasses the buffer.
    fn read_due(&mut self, buf: &mut [u8], due: usize) -> io::Result<usize> {
        if self.buffer().is_empty() {
            self.get_mut().read_due(buf, due)
        } else {
            self.read(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per call and records each `due`.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
        dues: Vec<usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    impl StreamInput for Trickle<'_> {
        fn read_due(&mut self, buf: &mut [u8], due: usize) -> io::Result<usize> {
            self.dues.push(due);
            self.read(buf)
        }
    }

    #[test]
    fn a_buffered_reader_serves_its_buffer_first_then_passes_due_on() {
        let bytes: Vec<u8> = (0..100u8).collect();
        let source = Trickle {
            bytes: &bytes,
            step: 30,
            dues: Vec::new(),
        };
        let mut r = BufReader::with_capacity(16, source);
        let mut head = [0u8; 4];
        r.read_exact(&mut head).unwrap(); // fills the 16-byte buffer
        assert_eq!(head, [0, 1, 2, 3]);
        let mut data = [0u8; 50];
        // 12 bytes are buffered: they come first, without asking the source.
        assert_eq!(r.read_due(&mut data, 96).unwrap(), 12);
        assert!(r.get_ref().dues.is_empty());
        // Then the source itself, told how much is due.
        assert_eq!(r.read_due(&mut data[12..], 84).unwrap(), 30);
        assert_eq!(r.get_ref().dues, [84]);
        assert_eq!(&data[..42], &bytes[4..46]);
    }

    #[test]
    fn the_default_reads_at_once() {
        let mut r: &[u8] = &[7, 8, 9];
        let mut buf = [0u8; 8];
        assert_eq!(r.read_due(&mut buf, 1 << 20).unwrap(), 3);
        assert_eq!(r.read_due(&mut buf, 1).unwrap(), 0);
    }
}
