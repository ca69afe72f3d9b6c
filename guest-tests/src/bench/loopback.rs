//! The machine's loopback TCP throughput, measured with a plain copy: one
//! thread writes a non-zero 1 MiB buffer over and over, the other reads and
//! discards. It is the ceiling for a migration stream on this machine.

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

/// Copies `bytes` over a loopback TCP connection.
pub fn measure(bytes: u64) -> Result<Throughput> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(format!("loopback benchmark: {what}"), e)
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let addr = listener.local_addr().map_err(io("local_addr"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
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

#[cfg(test)]
mod tests {
    #[test]
    fn copies_everything() {
        let t = super::measure(8 << 20).unwrap();
        assert_eq!(t.bytes, 8 << 20);
        assert!(t.mib_per_s() > 0.0);
    }
}
