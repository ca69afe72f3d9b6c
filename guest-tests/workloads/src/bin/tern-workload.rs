//! tern-workload: the test guest's workloads as a Linux program.
//!
//! Runs the same dirtier, stall meter and verifier as the ring-3 test guest
//! (all from `tern_workloads::run`), on worker threads instead of vCPUs,
//! over an anonymous memory region, and prints the same `tern-guest:` event
//! lines on stdout; commands are read from stdin. Parameters are the guest's:
//! `tern.ws=64` or `--ws=64` arguments, or, with no arguments, the
//! `tern.*` tokens of /proc/cmdline (so it can be a Linux guest's /init).
//! `reboot` ends the program.

use std::alloc::{alloc_zeroed, Layout};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_workloads::coord::Coordinator;
use tern_workloads::event::{ClockSource, CpuSource, ErrorKind, MemSource, Ready};
use tern_workloads::memory::{GenTable, PageSet};
use tern_workloads::page::{Page, PAGE_SIZE};
use tern_workloads::params::{Config, CpuSet, Workload};
use tern_workloads::platform::Platform;
use tern_workloads::run::{emit, emit_error, Run};

struct LinuxPlatform {
    start: Instant,
    boot_tsc: u64,
    tsc_hz: u64,
    input: Mutex<VecDeque<u8>>,
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is allowed in user mode on Linux.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Platform for LinuxPlatform {
    fn tsc(&self) -> u64 {
        rdtsc()
    }

    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    fn boot_tsc(&self) -> u64 {
        self.boot_tsc
    }

    fn clock_ns(&self, _cpu: usize) -> Option<u64> {
        Some(self.start.elapsed().as_nanos() as u64)
    }

    fn write_line(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        // Nothing sensible to do if stdout is gone; the host sees silence.
        let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
    }

    fn read_input(&self, buf: &mut [u8]) -> usize {
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        let n = buf.len().min(input.len());
        for (slot, byte) in buf.iter_mut().zip(input.drain(..n)) {
            *slot = byte;
        }
        n
    }

    fn reboot(&self) -> ! {
        std::process::exit(0)
    }

    fn idle_until(&self, _cpu: usize, deadline: u64) {
        let ticks = deadline.saturating_sub(rdtsc());
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(self.tsc_hz.max(1));
        std::thread::sleep(Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64));
    }

    fn fault(&self) {}
}

/// The TSC frequency, measured against CLOCK_MONOTONIC over 100 ms.
fn calibrate_tsc() -> u64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(100));
    let (t1, c1) = (Instant::now(), rdtsc());
    ((c1 - c0) as u128 * 1_000_000_000 / (t1 - t0).as_nanos().max(1)) as u64
}

/// `--key=value` arguments as `tern.key=value` tokens; no arguments: the
/// kernel command line.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    }
    args.iter()
        .map(|a| match a.strip_prefix("--") {
            Some(rest) => format!("tern.{rest}"),
            None => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mem_total_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) >> 10
}

/// A zeroed, page-aligned region of `pages` pages that lives for good
/// (glibc serves an allocation this size with its own anonymous mmap).
fn working_set(pages: usize) -> Option<&'static [Page]> {
    if pages == 0 {
        return Some(&[]);
    }
    let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).ok()?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    // SAFETY: `p` (if not null) is a fresh zeroed allocation of `pages`
    // pages, never freed; zero is a valid `Page` (atomics).
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const Page, pages) })
}

fn main() {
    let boot_tsc = rdtsc();
    let start = Instant::now();
    let platform: &'static LinuxPlatform = Box::leak(Box::new(LinuxPlatform {
        start,
        boot_tsc,
        tsc_hz: calibrate_tsc(),
        input: Mutex::new(VecDeque::new()),
    }));
    let cmdline = command_line();
    let config = match Config::parse(&cmdline) {
        Ok(c) => c,
        Err(e) => {
            emit_error(platform, ErrorKind::Param, format_args!("{e}"));
            std::process::exit(2);
        }
    };
    if matches!(config.workload, Workload::Disk | Workload::Net) {
        let name = config.workload.name();
        emit_error(
            platform,
            ErrorKind::Param,
            format_args!("tern.test={name}: the device workloads run only in the test guest"),
        );
        std::process::exit(2);
    }
    let threads = config
        .threads
        .map(|t| t as usize)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .min(CpuSet::MAX);
    let busy = config.busy_cpus(CpuSet::all_below(threads));
    let ws_bytes = match (config.workload, busy.count()) {
        (Workload::Dirtier, 1..) => u64::from(config.ws_mib) << 20,
        _ => 0,
    };
    let pages = (ws_bytes / PAGE_SIZE as u64) as usize;
    let Some(region) = working_set(pages) else {
        emit_error(
            platform,
            ErrorKind::Memory,
            format_args!("cannot allocate {} MiB", ws_bytes >> 20),
        );
        std::process::exit(2);
    };
    let table: &'static [AtomicU32] = Box::leak((0..pages).map(|_| AtomicU32::new(0)).collect());
    let coord: &'static Coordinator = Box::leak(Box::new(Coordinator::new(
        (busy.count() - usize::from(busy.contains(0))) as u32,
    )));
    let run: &'static Run<'static, LinuxPlatform> = Box::leak(Box::new(Run {
        platform,
        config,
        pages: PageSet::new(region),
        table: GenTable::new(table),
        coord,
        busy,
    }));

    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut input = platform.input.lock().unwrap_or_else(|e| e.into_inner());
            input.extend(line.bytes().chain([b'\n']));
        }
    });
    for cpu in busy.iter().filter(|&c| c != 0) {
        std::thread::spawn(move || run.worker(cpu));
    }
    emit(
        platform,
        &Ready {
            workload: config.workload,
            cpus: threads as u32,
            cpus_source: CpuSource::Threads,
            busy,
            mem_mib: mem_total_mib(),
            mem_source: MemSource::Host,
            ws_mib: (ws_bytes >> 20) as u32,
            rate: config.rate,
            pattern: config.pattern,
            tick_ms: config.tick_ms,
            gap_us: config.gap_us,
            clock: ClockSource::Monotonic,
            tsc_hz: platform.tsc_hz,
            boot_us: start.elapsed().as_micros() as u64,
        },
    );
    run.controller(0)
}
