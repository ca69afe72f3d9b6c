//! The migration stream's own throughput, without a VM: a source session
//! sends 1 GiB of non-zero "guest memory" (an ordinary buffer) as page runs
//! over loopback TCP to a destination `receive` that writes it into another
//! buffer, with every frame built, checksummed and verified as in a real
//! migration. Alternated, in the same run, with plain loopback copies of the
//! same memory (1 MiB writes; reads of at most 64 KiB and of at most 1 MiB),
//! so the table says what the protocol and its threads cost over moving the
//! bytes at all, apart from anything KVM or tern's VM does.
//!
//! Between the two, the floor of any design that checksums page data: the
//! same memory copied 1 MiB at a time into a frame buffer from a pool, CRC32
//! over it, written by a second thread; the receiver reads each payload
//! straight into memory, CRC32 over each piece as it arrives — tern's shape
//! without its protocol — and the same with no checksum, which prices it.
//! Each line also shows the process's CPU time per GiB (both ends).
//!
//! `cargo bench -p tern-migration --bench stream [-- RUNS [MIB]]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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
fn stream_once(source: &[u8]) -> Measured {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
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
    let stream = Stream::Tcp(TcpStream::connect(addr).expect("connect"));
    let mut session = SourceSession::start(stream, &hello, TIMEOUT).expect("handshake");
    let m = measured(source.len(), || {
        let run_bytes = MAX_RUN_PAGES as usize * PAGE_SIZE;
        for (i, pages) in source.chunks(run_bytes).enumerate() {
            let count = (pages.len() / PAGE_SIZE) as u32;
            let mut run = session
                .begin_run(0, (i * MAX_RUN_PAGES as usize) as u64, count)
                .expect("begin run");
            run.pages_mut().copy_from_slice(pages);
            session.send_run_frame(run, &[]).expect("send run");
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

/// Frame buffers in flight in [`floor_once`], as tern's send queue has.
const FLOOR_POOL: usize = 4;

/// The floor of a checksummed design (see the module doc): `source` copied
/// into pooled 1 MiB frame buffers (CRC32 appended when `checksum`), written
/// by a second thread, read straight into fresh backed memory (CRC32 over
/// each piece, checked per frame).
fn floor_once(source: &[u8], checksum: bool) -> Measured {
    const FRAME: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
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

/// A plain loopback copy of `source` into fresh backed memory, written 1 MiB
/// at a time and read at most `read_piece` bytes at a time.
fn copy_once(source: &[u8], read_piece: usize) -> Measured {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
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
        "migration stream (runs, checksums, two threads)",
        "floor: pooled frames, CRC32 both ends, two threads",
        "floor without the checksum",
        "plain copy, reads of at most 64 KiB",
        "plain copy, reads of at most 1 MiB",
    ];
    let mut got: [Vec<Measured>; 5] = Default::default();
    // Per round, against that round's faster plain copy: the stream, the floor.
    let (mut stream_ratio, mut floor_ratio) = (vec![], vec![]);
    for _ in 0..runs {
        let round = [
            stream_once(&source),
            floor_once(&source, true),
            floor_once(&source, false),
            copy_once(&source, 64 << 10),
            copy_once(&source, 1 << 20),
        ];
        let copy = round[3].rate.max(round[4].rate);
        stream_ratio.push(round[0].rate / copy * 100.0);
        floor_ratio.push(round[1].rate / copy * 100.0);
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
        "  stream / that round's faster plain copy              {:>6.1} %",
        median(&mut stream_ratio)
    );
    println!(
        "  floor / that round's faster plain copy               {:>6.1} %",
        median(&mut floor_ratio)
    );
}
