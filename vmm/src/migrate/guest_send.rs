//! Writing guest pages to the migration stream straight from guest memory:
//! one `sendmsg` gathers the bytes that must go first (the run's control
//! frame) and the guest memory ranges, so no page is copied in user space.
//! The guest keeps running and may write a page while the kernel copies it;
//! the page's checksum, computed earlier, then fails on the destination, and
//! the page, dirtied by that write, is sent again (see the protocol's page
//! runs).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use vm_memory::volatile_memory::PtrGuard;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::vstate::memory::GuestMemoryMmap;

/// Most iovecs one call takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Guest memory ranges to send, kept between runs.
#[derive(Default)]
pub struct GuestRanges {
    ranges: Vec<(GuestAddress, usize)>,
    iov: Vec<libc::iovec>,
    /// Keep each mapping alive while the kernel reads it (a no-op for plain
    /// mmap; vm-memory's contract). Emptied around every write.
    guards: Vec<PtrGuard>,
}

impl GuestRanges {
    /// Forgets the ranges.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Adds `len` bytes at `addr`, merged with the last range if they follow it.
    pub fn push(&mut self, addr: GuestAddress, len: usize) {
        match self.ranges.last_mut() {
            Some((at, n)) if at.0 + *n as u64 == addr.0 => *n += len,
            _ => self.ranges.push((addr, len)),
        }
    }

    /// Writes `prefix`, then every range of `mem`, in order, all of them, to
    /// the stream socket `fd`; past `deadline` a partial write ends it with
    /// `TimedOut` (a single call blocks at most for the socket's own write
    /// timeout).
    pub fn write(
        &mut self,
        fd: BorrowedFd<'_>,
        prefix: &[u8],
        mem: &GuestMemoryMmap,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        self.iov.clear();
        self.guards.clear();
        self.iov.push(libc::iovec {
            iov_base: prefix.as_ptr() as *mut libc::c_void,
            iov_len: prefix.len(),
        });
        for &(addr, len) in &self.ranges {
            for slice in mem.get_slices(addr, len) {
                let slice = slice
                    .map_err(|e| io::Error::other(format!("guest memory at {:#x}: {e}", addr.0)))?;
                let guard = slice.ptr_guard();
                self.iov.push(libc::iovec {
                    iov_base: guard.as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                });
                self.guards.push(guard);
            }
        }
        let result = send_all(fd, &mut self.iov, deadline);
        self.guards.clear();
        result
    }
}

/// Sends every byte `iov` points at, retrying partial sends until `deadline`.
fn send_all(
    fd: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    deadline: Option<Instant>,
) -> io::Result<()> {
    let mut first = 0;
    while first < iov.len() {
        if iov[first].iov_len == 0 {
            first += 1;
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let end = iov.len().min(first + IOV_MAX);
        let window = &mut iov[first..end];
        // SAFETY: an all-zero msghdr is valid (no name, no control data); the
        // iovec fields are set just below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = window.as_mut_ptr();
        msg.msg_iovlen = window.len();
        // SAFETY: every iovec points at memory that stays valid for the call:
        // the caller's prefix, or a guest memory mapping whose guard the
        // caller holds, each exactly as long as its iovec says; the window
        // holds at most IOV_MAX of them. The guest may write that memory
        // concurrently; the kernel only copies the bytes. MSG_NOSIGNAL: a
        // closed peer is an EPIPE error, not a signal.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = n as usize;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let v = &mut iov[first];
            let step = n.min(v.iov_len);
            // Still inside the buffer the iovec describes.
            v.iov_base = (v.iov_base as usize + step) as *mut libc::c_void;
            v.iov_len -= step;
            n -= step;
            if v.iov_len == 0 {
                first += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use vm_memory::Bytes;

    #[test]
    fn ranges_merge_and_go_after_the_prefix_whole_even_through_a_small_buffer() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
        mem.write_slice(&data, GuestAddress(4096)).unwrap();
        let mut r = GuestRanges::default();
        r.push(GuestAddress(4096), 1 << 20);
        r.push(GuestAddress(4096 + (1 << 20)), 1 << 20);
        r.push(GuestAddress(4096 + (2 << 20) + 8192), 4096);
        assert_eq!(r.ranges.len(), 2, "the first two merged");
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        r.write(a.as_fd(), b"head", &mem, None).unwrap();
        drop(a);
        let got = reader.join().unwrap();
        let want = [
            &b"head"[..],
            &data[..2 << 20],
            &data[(2 << 20) + 8192..(2 << 20) + 8192 + 4096],
        ]
        .concat();
        assert!(got == want, "{} bytes, {} wanted", got.len(), want.len());
    }

    #[test]
    fn a_peer_that_reads_nothing_ends_the_write_by_the_deadline() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_write_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let mut r = GuestRanges::default();
        r.push(GuestAddress(0), 8 << 20);
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_millis(100);
        let e = r.write(a.as_fd(), b"", &mem, Some(deadline)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_range_outside_guest_memory_is_an_error_and_a_closed_peer_too() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = GuestRanges::default();
        r.push(GuestAddress(1 << 20), 4096);
        assert!(r.write(a.as_fd(), b"", &mem, None).is_err());
        r.clear();
        r.push(GuestAddress(0), 4096);
        drop(b);
        let e = r.write(a.as_fd(), b"x", &mem, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
