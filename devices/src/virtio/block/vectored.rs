//! One `preadv`/`pwritev` between the image and a list of guest memory segments: a request's
//! data, or several contiguous requests' data merged into one transfer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryBackend;

use crate::virtio::chain::Segment;
use crate::GuestMemoryMmap;

/// iovecs per system call (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Image to guest memory.
    Read,
    /// Guest memory to image.
    Write,
}

/// Reusable scratch for [`transfer`]; lives on one worker thread (its pointers are not `Send`).
#[derive(Default)]
pub(crate) struct IoVecs {
    iov: Vec<libc::iovec>,
}

fn memory_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("guest memory: {e}"))
}

/// Moves `segments` (in order, as one byte stream) to or from the image at `offset`, retrying
/// partial transfers. Reads mark the guest memory they wrote dirty, all of it even on error (a
/// partial read may have written any of it), so migration sends it again.
pub(crate) fn transfer<'a>(
    file: &File,
    offset: u64,
    mem: &GuestMemoryMmap,
    segments: impl Iterator<Item = &'a Segment>,
    dir: Direction,
    scratch: &mut IoVecs,
) -> io::Result<()> {
    scratch.iov.clear();
    // The slices are kept to mark reads dirty afterwards; their pointer guards keep each
    // mapping alive until the call is done (a no-op for plain mmap; required by vm-memory's
    // contract). The mutable kind for both directions: one type, and a write only reads
    // through it.
    let mut slices = Vec::new();
    let mut guards = Vec::new();
    let mut total = 0u64;
    for seg in segments {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.map_err(memory_error)?;
            let guard = slice.ptr_guard_mut();
            scratch.iov.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: slice.len(),
            });
            total += slice.len() as u64;
            guards.push(guard);
            slices.push(slice);
        }
    }
    let result = run(file, offset, &mut scratch.iov, dir);
    if dir == Direction::Read {
        // Device writes are invisible to KVM's dirty log.
        for slice in &slices {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
    drop(guards);
    match result {
        Ok(moved) if moved == total => Ok(()),
        Ok(moved) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            match dir {
                Direction::Read => {
                    format!("{moved} of {total} bytes read at offset {offset}: the image ended")
                }
                Direction::Write => {
                    format!("{moved} of {total} bytes written at offset {offset}: no progress")
                }
            },
        )),
        Err(e) => Err(e),
    }
}

/// Issues the calls until every iovec is done or the file ends; returns the bytes moved.
fn run(file: &File, offset: u64, iov: &mut [libc::iovec], dir: Direction) -> io::Result<u64> {
    let fd = file.as_raw_fd();
    let mut done = 0u64;
    let mut first = 0;
    while first < iov.len() {
        let window = &iov[first..iov.len().min(first + IOV_MAX)];
        let at = libc::off_t::try_from(offset + done)
            .map_err(|_| io::Error::other("offset beyond what the host can address"))?;
        // SAFETY: every iovec points into a live guest memory mapping (its slice's guard is held
        // by the caller) and is exactly as long as that slice; the window holds at most
        // IOV_MAX of them. The guest may access the same memory concurrently, as it may during
        // any device DMA; the kernel copies bytes and makes no assumption about their stability.
        let n = unsafe {
            match dir {
                Direction::Read => {
                    libc::preadv(fd, window.as_ptr(), window.len() as libc::c_int, at)
                }
                Direction::Write => {
                    libc::pwritev(fd, window.as_ptr(), window.len() as libc::c_int, at)
                }
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break; // End of file (reads) or nothing accepted (writes): the caller reports it.
        }
        let mut n = n as usize;
        done += n as u64;
        // Skip what was moved: whole iovecs, then part of the next.
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if n > 0 {
            let v = &mut iov[first];
            // SAFETY: n < v.iov_len, so the advanced pointer stays inside the same slice.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
        }
    }
    Ok(done)
}
