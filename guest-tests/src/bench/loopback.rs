//! The machine's loopback TCP throughput, measured with a plain copy: one
//! thread writes, the other reads.
//!
//! The writer sends either one non-zero 1 MiB buffer over and over (a stream's
//! ceiling: everything stays in the cache) or, front to back, a non-zero
//! mapping as long as the copy, as a migration source reads guest memory.
//! The reader reads into one reused buffer, into fresh memory as long as the
//! copy (every page touched for the first time, as a migration destination's
//! without `--prefault`: the copy pays the host's page faults and zeroing
//! too), or into memory as long as the copy that was backed before the copy
//! started (a `--prefault` destination). Memory to memory is the least any
//! migration of that much memory costs on the machine: the copy's bytes come
//! from and go to main memory instead of the cache.
//!
//! Writes are 1 MiB; reads ask for at most [`READ_PIECE`]: on the development
//! host a reader that asks for 1 MiB at a time copies 15–25 % slower (it holds
//! the socket through long copies and returns the window late), and the
//! reference should be the best a plain copy does.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use migration::thread_cpu;

use crate::error::{Error, Result};

/// The most one read asks for.
pub const READ_PIECE: usize = 64 << 10;

/// A measured copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub seconds: f64,
    /// CPU the writing thread used over the copy, s (None: the host cannot tell).
    pub writer_cpu_s: Option<f64>,
    /// CPU the reading thread used, from its accept to the end of the stream, s.
    pub reader_cpu_s: Option<f64>,
}

impl Throughput {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.seconds.max(1e-9)
    }
}

/// Where the writer takes what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// One non-zero 1 MiB buffer, sent over and over.
    Reused,
    /// A mapping of the whole copy's size, filled with non-zero bytes
    /// before the copy starts, sent front to back.
    Memory,
}

/// Where the reader puts what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// One buffer, read into over and over.
    Reused,
    /// A new anonymous mapping of the whole copy's size (4 KiB pages, as
    /// tern's guest RAM), filled front to back.
    FreshMemory,
    /// As `FreshMemory`, but every page backed before the copy starts.
    PrefaultedMemory,
}

/// Copies `bytes` from `source` over a loopback TCP connection into `sink`;
/// mappings are filled or backed before the clock starts.
pub fn measure_copy(bytes: u64, source: Source, sink: Sink) -> Result<Throughput> {
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
    // The reader's memory, made (and for `PrefaultedMemory` backed) before
    // the clock starts.
    let mut memory = match sink {
        Sink::Reused => None,
        Sink::FreshMemory => Some(FreshMapping::new(len).map_err(io("mmap"))?),
        Sink::PrefaultedMemory => {
            let mut m = FreshMapping::new(len).map_err(io("mmap"))?;
            m.as_mut_slice()
                .iter_mut()
                .step_by(4096)
                .for_each(|b| *b = 1);
            Some(m)
        }
    };
    // The reader hands its memory back, so that unmapping it is not timed.
    let reader = std::thread::spawn(move || {
        let received = read_all(&listener, memory.as_mut());
        (received, memory)
    });
    const CHUNK: usize = 1 << 20;
    let fill = |buf: &mut [u8]| {
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 + 1)
    };
    let source_memory = match source {
        Source::Reused => {
            let mut chunk = vec![0u8; CHUNK];
            fill(&mut chunk);
            SourceBytes::Chunk(chunk)
        }
        Source::Memory => {
            let mut m = FreshMapping::new(len).map_err(io("mmap"))?;
            fill(m.as_mut_slice());
            SourceBytes::Mapping(m)
        }
    };
    let start = Instant::now();
    let writer_cpu = thread_cpu::this_thread();
    let mut s = TcpStream::connect(addr).map_err(io("connect"))?;
    let mut at = 0usize;
    while at < len {
        let n = (len - at).min(CHUNK);
        let piece = match &source_memory {
            SourceBytes::Chunk(chunk) => &chunk[..n],
            SourceBytes::Mapping(m) => &m.as_slice()[at..at + n],
        };
        s.write_all(piece).map_err(io("write"))?;
        at += n;
    }
    drop(s);
    let writer_cpu_s = thread_cpu::since(writer_cpu).map(|d| d.as_secs_f64());
    let (received, memory) = reader.join().map_err(|_| {
        Error::io(
            "loopback benchmark",
            std::io::Error::other("reader panicked"),
        )
    })?;
    let seconds = start.elapsed().as_secs_f64();
    drop(memory);
    let (bytes, reader_cpu_s) = received.map_err(io("read"))?;
    Ok(Throughput {
        bytes,
        seconds,
        writer_cpu_s,
        reader_cpu_s,
    })
}

/// Accepts one connection on `listener` and reads it to its end: into
/// `memory` front to back (anything past it drained), or with no memory into
/// one reused buffer, [`READ_PIECE`] bytes at most at a time. Returns the
/// bytes read and the CPU this thread used from the accept on, s.
fn read_all(
    listener: &TcpListener,
    memory: Option<&mut FreshMapping>,
) -> std::io::Result<(u64, Option<f64>)> {
    let (s, _) = listener.accept()?;
    let before = thread_cpu::this_thread();
    let total = read_stream(s, memory)?;
    Ok((total, thread_cpu::since(before).map(|d| d.as_secs_f64())))
}

/// Reads `s` to its end as [`read_all`] describes.
fn read_stream(mut s: TcpStream, memory: Option<&mut FreshMapping>) -> std::io::Result<u64> {
    let mut total = 0u64;
    match memory {
        None => {
            let mut buf = vec![0u8; READ_PIECE];
            loop {
                match s.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        }
        Some(mem) => {
            let buf = mem.as_mut_slice();
            let mut at = 0;
            while at < buf.len() {
                let end = buf.len().min(at + READ_PIECE);
                match s.read(&mut buf[at..end])? {
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
}

/// What the writer sends from.
enum SourceBytes {
    Chunk(Vec<u8>),
    Mapping(FreshMapping),
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

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes owned by `self`, which
        // nothing writes while it is borrowed shared here.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
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
        for source in [Source::Reused, Source::Memory] {
            for sink in [Sink::Reused, Sink::FreshMemory, Sink::PrefaultedMemory] {
                let t = measure_copy((8 << 20) + 4096, source, sink).unwrap();
                assert_eq!(t.bytes, (8 << 20) + 4096, "{source:?} to {sink:?}");
                assert!(t.mib_per_s() > 0.0);
            }
        }
    }
}
