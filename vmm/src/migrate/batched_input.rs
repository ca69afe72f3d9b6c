//! The destination's end of a TCP migration stream, waking its reader once
//! per batch of page data instead of once per packet.
//!
//! While a page run's data is due (see [`migration::stream_input`]), the
//! reader raises the socket's receive low-water mark (`SO_RCVLOWAT`) to the
//! bytes due, at most [`BATCH`], and waits in `poll`, which Linux answers
//! only once that much is queued; it then reads what is queued without
//! blocking. Measured on the loopback, where the sending thread pays for
//! each wake-up: the destination's context switches per GiB fell by ~40 %
//! and the send rate rose by ~8 % (`docs/results.md`).
//!
//! The mark is safe only while the sender has committed to at least that
//! many bytes: Linux wakes a sleeping reader only once the mark is reached,
//! so a blocking read of a small frame under a raised mark would wait for
//! bytes that never come. Hence the mark is raised only in
//! [`StreamInput::read_due`], always to at most the bytes due, and a plain
//! read that finds nothing queued lowers it before it blocks. A Unix socket
//! is read plainly: its `poll` ignores the mark.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};

use migration::stream_input::StreamInput;
use migration::transport::Stream;

use super::socket_buffers::set_size_option;

/// Most bytes one wait gathers (half a page run).
const BATCH: usize = 512 << 10;

/// With fewer bytes due than this, a plain read: a batch this small saves
/// little.
const SMALL: usize = 64 << 10;

/// A migration stream read with a low-water mark while page data is due.
pub struct BatchedInput {
    stream: Stream,
    /// The mark now set on the socket (1 is the kernel's default).
    low_water: usize,
    /// False for a Unix socket, or once setting the mark failed.
    batching: bool,
}

impl BatchedInput {
    /// Reads `stream`, batching if it is TCP.
    pub fn new(stream: Stream) -> Self {
        let batching = matches!(stream, Stream::Tcp(_));
        BatchedInput {
            stream,
            low_water: 1,
            batching,
        }
    }

    fn set_low_water(&mut self, bytes: usize) -> io::Result<()> {
        set_size_option(&self.stream, libc::SO_RCVLOWAT, bytes)?;
        self.low_water = bytes;
        Ok(())
    }

    /// Reads what is queued without waiting: None if nothing is.
    fn read_queued(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is a live, writable buffer of exactly
            // `buf.len()` bytes for the duration of the call.
            let n = unsafe {
                libc::recv(
                    self.stream.as_fd().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// Waits until the socket is readable by its mark (or at its end, or in
    /// error), at most the stream's read timeout.
    fn wait_readable(&self) -> io::Result<()> {
        let timeout_ms = match self.stream.read_timeout() {
            Some(t) => libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX),
            None => -1,
        };
        let mut pfd = libc::pollfd {
            fd: self.stream.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one live pollfd, and the count says one.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            match rc {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no page data arrived within the read timeout",
                    ))
                }
                n if n > 0 => return Ok(()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl Read for BatchedInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.low_water > 1 {
            if let Some(n) = self.read_queued(buf)? {
                return Ok(n);
            }
            // About to block for bytes nobody promised: lower the mark first.
            self.set_low_water(1)?;
        }
        self.stream.read(buf)
    }
}

impl StreamInput for BatchedInput {
    fn read_due(&mut self, buf: &mut [u8], due: usize) -> io::Result<usize> {
        let want = due.min(BATCH);
        if !self.batching || want < SMALL || buf.is_empty() {
            return self.read(buf);
        }
        loop {
            if let Some(n) = self.read_queued(buf)? {
                return Ok(n);
            }
            if self.low_water != want {
                if let Err(e) = self.set_low_water(want) {
                    log::info!("migration socket: SO_RCVLOWAT not set ({e}); reading plainly");
                    self.batching = false;
                    return self.read(buf);
                }
            }
            self.wait_readable()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A connected pair: (writer, reader), the reader with a read timeout so
    /// a wait that never ends fails the test instead of hanging it.
    fn tcp_pair() -> (TcpStream, BatchedInput) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        (writer, BatchedInput::new(Stream::Tcp(reader)))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Reads `len` due bytes the way the receiver does: 64 KiB pieces.
    fn read_run(input: &mut BatchedInput, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        let mut at = 0;
        while at < len {
            let piece = (len - at).min(64 << 10);
            let n = input.read_due(&mut got[at..at + piece], len - at).unwrap();
            assert!(n > 0, "the stream ended at {at} of {len}");
            at += n;
        }
        got
    }

    #[test]
    fn due_data_arriving_in_small_writes_is_all_read() {
        let (mut writer, mut input) = tcp_pair();
        let data = pattern(1 << 20);
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            for chunk in sent.chunks(3000) {
                writer.write_all(chunk).unwrap();
            }
            writer
        });
        assert_eq!(read_run(&mut input, data.len()), data);
        drop(t.join().unwrap());
    }

    #[test]
    fn a_plain_read_after_a_raised_mark_gets_a_small_frame() {
        let (mut writer, mut input) = tcp_pair();
        let (go, wait) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            writer.write_all(&pattern(600 << 10)).unwrap();
            wait.recv().unwrap();
            writer.write_all(b"RoundEnd").unwrap();
            writer
        });
        assert_eq!(read_run(&mut input, 600 << 10), pattern(600 << 10));
        // The mark raised, as after a wait for page data, and nothing queued:
        // a plain read lowers the mark before it blocks (here until a short
        // timeout)...
        input.set_low_water(BATCH).unwrap();
        input
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut frame = [0u8; 8];
        let e = input.read(&mut frame).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        assert_eq!(input.low_water, 1);
        // ...so the 8 bytes that follow wake it.
        input
            .stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        go.send(()).unwrap();
        input.read_exact(&mut frame).unwrap();
        assert_eq!(&frame, b"RoundEnd");
        drop(t.join().unwrap());
    }

    #[test]
    fn the_stream_ending_while_data_is_due_reads_as_its_end() {
        let (mut writer, mut input) = tcp_pair();
        writer.write_all(&[1; 1000]).unwrap();
        drop(writer);
        let mut buf = vec![0u8; 64 << 10];
        assert_eq!(input.read_due(&mut buf, 1 << 20).unwrap(), 1000);
        assert_eq!(input.read_due(&mut buf, 1 << 20).unwrap(), 0);
    }

    #[test]
    fn a_wait_past_the_read_timeout_fails() {
        let (writer, mut input) = tcp_pair();
        input
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let e = input.read_due(&mut buf, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(writer);
    }

    #[test]
    fn a_unix_socket_is_read_plainly() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut input = BatchedInput::new(Stream::Unix(reader));
        writer.write_all(&[5; 100]).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        assert_eq!(input.read_due(&mut buf, 1 << 20).unwrap(), 100);
        assert_eq!(input.low_water, 1);
    }
}
