//! The migration stream's own throughput, without a VM: a source session
//! sends 1 GiB of non-zero "guest memory" (an ordinary buffer) as page runs
//! over loopback TCP to a destination `receive` that writes it into another
//! buffer, with every page checksummed and verified as in a real migration,
//! and the socket buffers tern's migration sockets ask for (4 MiB, where the
//! host allows). Alternated, in the same run, with plain loopback copies of the
//! same memory (1 MiB writes; reads of at most 64 KiB and of at most 1 MiB),
//! so the table says what the protocol and its threads cost over moving the
//! bytes at all, apart from anything KVM or tern's VM does.
//!
//! Between the two, the floor of protocol 1's design (a checksum over each
//! frame): the same memory copied 1 MiB at a time into a frame buffer from a
//! pool, CRC32 over it, written by a second thread; the receiver reads each
//! payload straight into memory, CRC32 over each piece as it arrives — and the
//! same with no checksum, which prices it.
//!
//! And the floor of protocol 2's shape, without its protocol: no copy and one
//! thread on the source. Each 1 MiB chunk's pages get a CRC32 each, computed
//! in place, and the CRCs and the memory itself go out in one `writev` from
//! the thread that computed them (the data still in its cache); the receiver
//! checks each page as soon as it is whole. Once with the kernel's socket
//! buffer sizing, once with 4 MiB buffers set on both ends, beside a plain
//! copy with the same buffers. Each line also shows the process's CPU time
//! per GiB (both ends).
//!
//! `cargo bench -p tern-migration --bench stream [-- RUNS [MIB]]`

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use migration::protocol::messages::{Hello, MemoryRange, MAX_RUN_PAGES, PAGE_SIZE};
use migration::receiver::{receive, DestinationHost};
use migration::sender::SourceSession;
use migration::transport::Stream;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Destination memory: one region, backed before the stream starts.
struct Memory {
    bytes: Vec<u8>,
}

impl DestinationHost for Memory {
    fn check(&mut self, _: &Hello) -> Result<(), String> {
        Ok(())
    }
    fn page_data(&mut self, _: u32, first_page: u64, count: u32) -> Result<&mut [u8], String> {
        let from = first_page as usize * PAGE_SIZE;
        let to = from + count as usize * PAGE_SIZE;
        self.bytes
            .get_mut(from..to)
            .ok_or_else(|| format!("pages {first_page}+{count} past the end"))
    }
    fn zero_pages(&mut self, _: u32, _: u64, _: u32, _: &[u8]) -> Result<(), String> {
        Err("the benchmark's memory has no zero pages".into())
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// `len` bytes, every page backed (written) before use.
fn backed(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v.iter_mut().step_by(PAGE_SIZE).for_each(|b| *b = 1);
    v
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1048576.0 / d.as_secs_f64()
}

/// CPU time of the whole process (every thread), user and system.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Socket buffer sizes: the kernel's own sizing, or this many bytes set on
/// both ends (the kernel doubles it, within `net.core.[rw]mem_max`).
#[derive(Clone, Copy)]
enum Buffers {
    Kernel,
    Set(i32),
}

/// Sets `option` (`SO_SNDBUF` or `SO_RCVBUF`) on `socket` as `buffers` says.
fn set_buffer(socket: &impl AsRawFd, option: libc::c_int, buffers: Buffers) {
    let Buffers::Set(bytes) = buffers else {
        return;
    };
    // SAFETY: `bytes` is a live c_int whose size is passed with it; the
    // socket is open for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({option}): {}",
        std::io::Error::last_os_error()
    );
}

/// A loopback listener (its receive buffer as `buffers` says; accepted
/// sockets inherit it) and its address.
fn listen(buffers: Buffers) -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    set_buffer(&listener, libc::SO_RCVBUF, buffers);
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// A rate (MiB/s) and the process CPU it took (ms per GiB).
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    cpu_ms_per_gib: f64,
}

/// Runs `f` (which moves `bytes`) and measures it.
fn measured(bytes: usize, f: impl FnOnce()) -> Measured {
    let cpu = process_cpu();
    let start = Instant::now();
    f();
    let wall = start.elapsed();
    Measured {
        rate: mib_per_s(bytes, wall),
        cpu_ms_per_gib: (process_cpu() - cpu).as_secs_f64() * 1e3
            / (bytes as f64 / (1u64 << 30) as f64),
    }
}

/// One migration stream of `source` into fresh backed memory: page data from
/// the first run to the destination's "resumed".
fn stream_once(source: &[u8], buffers: Buffers) -> Measured {
    let (listener, addr) = listen(buffers);
    let mut dest = Memory {
        bytes: backed(source.len()),
    };
    let receiver = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        receive(&s, &s, &mut dest).expect("receive");
        dest
    });
    let hello = Hello {
        tern_version: "bench".into(),
        page_size: PAGE_SIZE as u32,
        memory: vec![MemoryRange {
            guest_addr: 0,
            size: source.len() as u64,
        }],
        vcpus: 1,
        devices: vec![],
    };
    let out = TcpStream::connect(addr).expect("connect");
    set_buffer(&out, libc::SO_SNDBUF, buffers);
    let stream = Stream::Tcp(out);
    let mut session = SourceSession::start(stream, &hello, TIMEOUT).expect("handshake");
    let m = measured(source.len(), || {
        let run_bytes = MAX_RUN_PAGES as usize * PAGE_SIZE;
        for (i, pages) in source.chunks(run_bytes).enumerate() {
            session
                .send_run(0, (i * MAX_RUN_PAGES as usize) as u64, pages)
                .expect("send run");
        }
        session.end_round(0).expect("round end");
        session.send_state(b"state").expect("state");
        session.complete(TIMEOUT).expect("complete");
        session.commit(TIMEOUT).expect("commit");
    });
    let dest = receiver.join().expect("receiver thread");
    assert!(dest.bytes == source, "the destination's memory differs");
    m
}

/// Frame buffers in flight in [`floor_once`], as protocol 1's send queue had.
const FLOOR_POOL: usize = 4;

/// The floor of a checksummed design (see the module doc): `source` copied
/// into pooled 1 MiB frame buffers (CRC32 appended when `checksum`), written
/// by a second thread, read straight into fresh backed memory (CRC32 over
/// each piece, checked per frame).
fn floor_once(source: &[u8], checksum: bool) -> Measured {
    const FRAME: usize = 1 << 20;
    let (listener, addr) = listen(Buffers::Kernel);
    let mut dest = backed(source.len());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        for frame in dest.chunks_mut(FRAME) {
            let mut crc = crc32fast::Hasher::new();
            let mut at = 0;
            while at < frame.len() {
                let n = s.read(&mut frame[at..]).expect("read");
                assert!(n > 0, "the floor's stream ended early");
                if checksum {
                    crc.update(&frame[at..at + n]);
                }
                at += n;
            }
            let mut sum = [0u8; 4];
            s.read_exact(&mut sum).expect("read checksum");
            assert!(
                !checksum || crc.finalize() == u32::from_le_bytes(sum),
                "the floor's checksum differs"
            );
        }
        dest
    });
    let s = TcpStream::connect(addr).expect("connect");
    let m = measured(source.len(), || {
        let (jobs, queued) = std::sync::mpsc::sync_channel::<Vec<u8>>(FLOOR_POOL);
        let (give_back, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(FLOOR_POOL);
        for _ in 0..FLOOR_POOL {
            give_back.send(vec![0x5a; FRAME + 4]).expect("pool");
        }
        let mut out = s;
        let writer = std::thread::spawn(move || {
            for frame in queued {
                out.write_all(&frame).expect("write");
                let _ = give_back.try_send(frame);
            }
        });
        for chunk in source.chunks(FRAME) {
            let mut frame = free.recv().expect("a frame buffer");
            frame.truncate(chunk.len());
            frame.copy_from_slice(chunk);
            let sum = if checksum { crc32fast::hash(&frame) } else { 0 };
            frame.extend_from_slice(&sum.to_le_bytes());
            jobs.send(frame).expect("queue");
        }
        drop(jobs);
        writer.join().expect("writer thread");
    });
    let dest = reader.join().expect("reader thread");
    assert!(dest == source, "the floor's copy differs");
    m
}

/// The no-copy, one-thread floor (see the module doc): each 1 MiB chunk of
/// `source` goes as its pages' CRC32s, then the chunk itself, in one
/// `writev` straight from `source`; the receiver reads the CRCs, then the
/// chunk straight into fresh backed memory (pieces of at most 64 KiB),
/// checking each page as soon as it is whole.
fn per_page_once(source: &[u8], buffers: Buffers) -> Measured {
    const CHUNK: usize = 1 << 20;
    const PIECE: usize = 64 << 10;
    let (listener, addr) = listen(buffers);
    let mut dest = backed(source.len());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut sums = vec![0u8; CHUNK / PAGE_SIZE * 4];
        for chunk in dest.chunks_mut(CHUNK) {
            let sums = &mut sums[..chunk.len() / PAGE_SIZE * 4];
            s.read_exact(sums).expect("read the page checksums");
            let (mut at, mut checked) = (0, 0);
            while at < chunk.len() {
                let end = chunk.len().min(at + PIECE);
                let n = s.read(&mut chunk[at..end]).expect("read");
                assert!(n > 0, "the per-page floor's stream ended early");
                at += n;
                while checked + PAGE_SIZE <= at {
                    let page = checked / PAGE_SIZE;
                    let sum = u32::from_le_bytes(
                        sums[page * 4..page * 4 + 4].try_into().expect("4 bytes"),
                    );
                    assert_eq!(
                        crc32fast::hash(&chunk[checked..checked + PAGE_SIZE]),
                        sum,
                        "the per-page floor's page checksum differs"
                    );
                    checked += PAGE_SIZE;
                }
            }
        }
        dest
    });
    let mut out = TcpStream::connect(addr).expect("connect");
    set_buffer(&out, libc::SO_SNDBUF, buffers);
    let m = measured(source.len(), || {
        let mut sums = Vec::with_capacity(CHUNK / PAGE_SIZE * 4);
        for chunk in source.chunks(CHUNK) {
            sums.clear();
            for page in chunk.chunks(PAGE_SIZE) {
                sums.extend_from_slice(&crc32fast::hash(page).to_le_bytes());
            }
            let mut parts = [IoSlice::new(&sums), IoSlice::new(chunk)];
            let mut parts = &mut parts[..];
            while !parts.is_empty() {
                let n = out.write_vectored(parts).expect("writev");
                IoSlice::advance_slices(&mut parts, n);
            }
        }
    });
    let dest = reader.join().expect("reader thread");
    assert!(dest == source, "the per-page floor's copy differs");
    m
}

/// A plain loopback copy of `source` into fresh backed memory, written 1 MiB
/// at a time and read at most `read_piece` bytes at a time.
fn copy_once(source: &[u8], read_piece: usize, buffers: Buffers) -> Measured {
    let (listener, addr) = listen(buffers);
    let mut dest = backed(source.len());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut at = 0;
        while at < dest.len() {
            let end = dest.len().min(at + read_piece);
            match s.read(&mut dest[at..end]).expect("read") {
                0 => break,
                n => at += n,
            }
        }
        dest
    });
    let mut dest = None;
    let m = measured(source.len(), || {
        let mut s = TcpStream::connect(addr).expect("connect");
        set_buffer(&s, libc::SO_SNDBUF, buffers);
        for chunk in source.chunks(1 << 20) {
            s.write_all(chunk).expect("write");
        }
        drop(s);
        dest = Some(reader.join().expect("reader thread"));
    });
    assert!(dest.as_deref() == Some(source), "the copy differs");
    m
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of a column of measurements: (MiB/s, CPU ms per GiB).
fn medians(v: &[Measured]) -> (f64, f64) {
    (
        median(&mut v.iter().map(|m| m.rate).collect::<Vec<_>>()),
        median(&mut v.iter().map(|m| m.cpu_ms_per_gib).collect::<Vec<_>>()),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(5).max(1);
    let mib = args.get(1).copied().unwrap_or(1024).max(1);
    let source: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8 + 1).collect();
    let lines = [
        "migration stream (protocol 2), 4 MiB socket buffers",
        "protocol 1's floor: pooled frames, two threads",
        "floor without the checksum",
        "no copy: CRC32 per page, one thread, writev",
        "no copy, 4 MiB socket buffers",
        "plain copy, reads of at most 64 KiB",
        "plain copy, reads of at most 1 MiB",
        "plain copy, 64 KiB reads, 4 MiB socket buffers",
    ];
    let mut got: [Vec<Measured>; 8] = Default::default();
    let big = Buffers::Set(4 << 20);
    // Per round, each shape against the plain copy with the same socket
    // buffers: the stream and the no-copy floor with 4 MiB buffers against
    // the copy with them; the other two against that round's faster plain
    // copy with the kernel's.
    let (mut stream_ratio, mut floor_ratio) = (vec![], vec![]);
    let (mut no_copy_ratio, mut no_copy_big_ratio) = (vec![], vec![]);
    for _ in 0..runs {
        let round = [
            stream_once(&source, big),
            floor_once(&source, true),
            floor_once(&source, false),
            per_page_once(&source, Buffers::Kernel),
            per_page_once(&source, big),
            copy_once(&source, 64 << 10, Buffers::Kernel),
            copy_once(&source, 1 << 20, Buffers::Kernel),
            copy_once(&source, 64 << 10, big),
        ];
        let copy = round[5].rate.max(round[6].rate);
        stream_ratio.push(round[0].rate / round[7].rate * 100.0);
        floor_ratio.push(round[1].rate / copy * 100.0);
        no_copy_ratio.push(round[3].rate / copy * 100.0);
        no_copy_big_ratio.push(round[4].rate / round[7].rate * 100.0);
        for (column, m) in got.iter_mut().zip(round) {
            column.push(m);
        }
    }
    println!("{mib} MiB over loopback TCP, memory to backed memory, median of {runs}:");
    for (line, column) in lines.iter().zip(&got) {
        let (rate, cpu) = medians(column);
        println!("  {line:<52} {rate:>6.0} MiB/s  {cpu:>4.0} ms CPU/GiB");
    }
    println!(
        "  stream / plain copy, both with 4 MiB socket buffers  {:>6.1} %",
        median(&mut stream_ratio)
    );
    println!(
        "  protocol 1's floor / faster plain copy               {:>6.1} %",
        median(&mut floor_ratio)
    );
    println!(
        "  no-copy floor / that round's faster plain copy       {:>6.1} %",
        median(&mut no_copy_ratio)
    );
    println!(
        "  the same, both with 4 MiB socket buffers             {:>6.1} %",
        median(&mut no_copy_big_ratio)
    );
}
