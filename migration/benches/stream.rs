//! The migration stream's own throughput, without a VM: a source session
//! sends 1 GiB of non-zero "guest memory" (an ordinary buffer) as page runs
//! over loopback TCP to a destination `receive` that writes it into another
//! buffer, with every frame built, checksummed and verified as in a real
//! migration. Alternated, in the same run, with plain loopback copies of the
//! same memory (1 MiB writes; reads of at most 64 KiB and of at most 1 MiB),
//! so the table says what the protocol and its threads cost over moving the
//! bytes at all, apart from anything KVM or tern's VM does.
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

/// One migration stream of `source` into fresh backed memory; MiB/s of page
/// data from the first run to the destination's "resumed".
fn stream_once(source: &[u8]) -> f64 {
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
    let start = Instant::now();
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
    let rate = mib_per_s(source.len(), start.elapsed());
    let dest = receiver.join().expect("receiver thread");
    assert!(dest.bytes == source, "the destination's memory differs");
    rate
}

/// A plain loopback copy of `source` into fresh backed memory, written 1 MiB
/// at a time and read at most `read_piece` bytes at a time.
fn copy_once(source: &[u8], read_piece: usize) -> f64 {
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
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    for chunk in source.chunks(1 << 20) {
        s.write_all(chunk).expect("write");
    }
    drop(s);
    let dest = reader.join().expect("reader thread");
    let rate = mib_per_s(source.len(), start.elapsed());
    assert!(dest == source, "the copy differs");
    rate
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let (mut stream, mut copy64k, mut copy1m, mut ratio) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let s = stream_once(&source);
        let c64 = copy_once(&source, 64 << 10);
        let c1m = copy_once(&source, 1 << 20);
        ratio.push(s / c64.max(c1m) * 100.0);
        stream.push(s);
        copy64k.push(c64);
        copy1m.push(c1m);
    }
    println!("{mib} MiB over loopback TCP, memory to backed memory, median of {runs}:");
    println!(
        "  migration stream (runs, checksums, two threads)   {:>6.0} MiB/s",
        median(&mut stream)
    );
    println!(
        "  plain copy, reads of at most 64 KiB               {:>6.0} MiB/s",
        median(&mut copy64k)
    );
    println!(
        "  plain copy, reads of at most 1 MiB                {:>6.0} MiB/s",
        median(&mut copy1m)
    );
    println!(
        "  stream / that round's faster copy                 {:>6.1} %",
        median(&mut ratio)
    );
}
