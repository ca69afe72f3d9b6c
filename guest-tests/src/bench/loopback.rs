//! The machine's loopback TCP throughput, measured with a plain copy: one
//! thread writes a non-zero 1 MiB buffer over and over, the other reads,
//! either into one reused buffer (the ceiling for a stream) or into fresh
//! memory as long as the copy, as a migration destination must (every page
//! it receives is a page it touches for the first time, so the copy pays
//! the host's page faults and page zeroing too).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use crate::error::{Error, Result};

/// A measured copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub seconds: f64,
}

impl Throughput {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.seconds.max(1e-9)
    }
}

/// Where the reader puts what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// One 1 MiB buffer, read into over and over.
    Reused,
    /// A new anonymous mapping of the whole copy's size (4 KiB pages, as
    /// tern's guest RAM), filled front to back.
    FreshMemory,
}

/// Copies `bytes` over a loopback TCP connection.
pub fn measure(bytes: u64) -> Result<Throughput> {
    measure_into(bytes, Sink::Reused)
}

/// Copies `bytes` over a loopback TCP connection into `sink`.
pub fn measure_into(bytes: u64, sink: Sink) -> Result<Throughput> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(format!("loopback benchmark: {what}"), e)
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let addr = listener.local_addr().map_err(io("local_addr"))?;
    let len = usize::try_from(bytes).map_err(|_| {
        Error::io(
            "loopback benchmark",
            std::io::Error::other("copy larger than the address space"),
        )
    })?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut total = 0u64;
        match sink {
            Sink::Reused => {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match s.read(&mut buf)? {
                        0 => return Ok(total),
                        n => total += n as u64,
                    }
                }
            }
            Sink::FreshMemory => {
                let mut mem = FreshMapping::new(len)?;
                let buf = mem.as_mut_slice();
                let mut at = 0;
                while at < buf.len() {
                    match s.read(&mut buf[at..])? {
                        0 => break,
                        n => at += n,
                    }
                }
                // Anything past the mapping is drained, not kept.
                let mut rest = [0u8; 4096];
                total = at as u64;
                loop {
                    match s.read(&mut rest)? {
                        0 => return Ok(total),
                        n => total += n as u64,
                    }
                }
            }
        }
    });
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(io("connect"))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).map_err(io("write"))?;
        left -= n as u64;
    }
    drop(s);
    let received = reader
        .join()
        .map_err(|_| {
            Error::io(
                "loopback benchmark",
                std::io::Error::other("reader panicked"),
            )
        })?
        .map_err(io("read"))?;
    Ok(Throughput {
        bytes: received,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// An anonymous private mapping, unmapped on drop.
struct FreshMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to another
// thread moves the only access to it.
unsafe impl Send for FreshMapping {}

impl FreshMapping {
    fn new(len: usize) -> std::io::Result<Self> {
        let len = len.max(1);
        // SAFETY: a new anonymous mapping, at an address the kernel picks;
        // nothing else is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FreshMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` readable, writable bytes (zero until
        // written), owned by `self` and borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for FreshMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_everything() {
        for sink in [Sink::Reused, Sink::FreshMemory] {
            let t = measure_into(8 << 20, sink).unwrap();
            assert_eq!(t.bytes, 8 << 20, "{sink:?}");
            assert!(t.mib_per_s() > 0.0);
        }
    }
}
