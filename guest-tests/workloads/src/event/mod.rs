//! The events the guest prints, one per line on the serial console (or
//! stdout for the Linux program):
//!
//! ```text
//! tern-guest: {"event":"<name>", ...fields}
//! ```
//!
//! Each event is a struct here with a writer ([`EventBody`], no_std) and,
//! with the `std` feature, a reader ([`parse_line`]) that gives the same
//! struct back, so the guest and the host runner share one definition.
//! guest-tests/README.md lists every field.

use core::fmt::{self, Write};

use crate::clock::ClockStatus;
use crate::json::Object;
use crate::names::named_enum;
use crate::page::{Corruption, Reason};
use crate::params::{CpuSet, Pattern, Rate, Workload};
use crate::verify::VerifyReport;

/// What starts every event line.
pub const LINE_PREFIX: &str = "tern-guest: ";

/// An event that can be written as a line.
pub trait EventBody {
    /// The `"event"` field.
    const NAME: &'static str;
    /// Writes the other fields.
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>);
}

/// Writes `tern-guest: {"event":NAME,...}\n`.
pub fn write_line<W: Write + ?Sized, E: EventBody>(out: &mut W, event: &E) -> fmt::Result {
    out.write_str(LINE_PREFIX)?;
    let mut o = Object::new(out);
    o.str("event", E::NAME);
    event.fields(&mut o);
    o.finish()?;
    out.write_char('\n')
}

named_enum! {
    /// Where the CPU count came from.
    pub enum CpuSource {
        /// The MP table's enabled processor entries.
        MpTable = "mptable",
        /// No MP table: APIC IDs 1, 2, ... were started until one did not
        /// answer.
        Probe = "probe",
        /// Threads of the Linux program.
        Threads = "threads",
    }
}

named_enum! {
    /// Where the RAM size came from.
    pub enum MemSource {
        /// The PVH memory map.
        Memmap = "memmap",
        /// No memory map: `tern.mem_mib` (default 128) was assumed.
        Assumed = "assumed",
        /// The Linux program's host (its working set is allocated, not found).
        Host = "host",
    }
}

named_enum! {
    /// The second clock used for continuity checks.
    pub enum ClockSource {
        Kvmclock = "kvmclock",
        /// CLOCK_MONOTONIC (Linux program).
        Monotonic = "monotonic",
        /// Only the TSC.
        None = "none",
    }
}

/// First event: the guest is up and about to start its workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub workload: Workload,
    pub cpus: u32,
    pub cpus_source: CpuSource,
    /// CPUs that run the workload loop (the dirtier's writers; for `idle`
    /// every CPU, each running the stall meter).
    pub busy: CpuSet,
    pub mem_mib: u64,
    pub mem_source: MemSource,
    pub ws_mib: u32,
    pub rate: Rate,
    pub pattern: Pattern,
    pub tick_ms: u32,
    pub gap_us: u32,
    pub clock: ClockSource,
    pub tsc_hz: u64,
    /// From the first guest instruction to this event (TSC), in µs.
    pub boot_us: u64,
}

impl EventBody for Ready {
    const NAME: &'static str = "ready";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.str("workload", self.workload.name())
            .u64("cpus", self.cpus.into())
            .str("cpus_source", self.cpus_source.name())
            .u64_array("busy", self.busy.iter().map(|c| c as u64))
            .u64("mem_mib", self.mem_mib)
            .str("mem_source", self.mem_source.name())
            .u64("ws_mib", self.ws_mib.into());
        match self.rate {
            Rate::Max => o.str("rate", "max"),
            Rate::MibPerSec(n) => o.u64("rate", n.into()),
        };
        o.str("pattern", self.pattern.name())
            .u64("tick_ms", self.tick_ms.into())
            .u64("gap_us", self.gap_us.into())
            .str("clock", self.clock.name())
            .u64("tsc_hz", self.tsc_hz)
            .u64("boot_us", self.boot_us);
    }
}

/// Every worker has filled its slice; the measured run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// Pages in the working set.
    pub pages: u64,
    /// Time to fill them (first touch), in ms.
    pub fill_ms: u64,
}

impl EventBody for Started {
    const NAME: &'static str = "started";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("pages", self.pages).u64("fill_ms", self.fill_ms);
    }
}

/// A worker's unthrottled work rate, measured over the first
/// `tern.baseline_ms` of the run; later ticks' `rate_pct` are relative to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    pub cpu: u32,
    pub work_per_s: u64,
}

impl EventBody for Baseline {
    const NAME: &'static str = "baseline";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("cpu", self.cpu.into())
            .u64("work_per_s", self.work_per_s);
    }
}

/// One stall-meter interval of one worker. See guest-tests/README.md for
/// how `busy_pct` and `rate_pct` are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub cpu: u32,
    pub seq: u64,
    /// TSC at the end of the interval.
    pub tsc: u64,
    /// kvmclock (or CLOCK_MONOTONIC) at the end of the interval, in ns.
    pub clock_ns: Option<u64>,
    /// Length of the interval by the TSC.
    pub interval_us: u64,
    /// Loop iterations (the unit of work).
    pub work: u64,
    /// Pages dirtied.
    pub pages: u64,
    /// Dirty rate over the interval, MiB/s in hundredths.
    pub dirty_mib_s_x100: u64,
    /// Longest gap between two iterations.
    pub max_gap_us: u64,
    /// Sum of the gaps longer than `tern.gap_us`: time the CPU did not run.
    pub stalled_us: u64,
    /// Time the worker spent on its own reporting, command polling and
    /// verify pauses, left out of `busy_pct` and `rate_pct`.
    pub excluded_us: u64,
    /// Share of the (non-excluded) interval the CPU ran, in hundredths of a
    /// percent; None if nothing was left after exclusions.
    pub busy_x100: Option<u64>,
    /// Work rate against the baseline, in hundredths of a percent; None
    /// until the baseline is known.
    pub rate_x100: Option<u64>,
    pub clock: ClockStatus,
    /// Second clock's advance minus the TSC's over the interval, in µs.
    pub drift_us: Option<i64>,
}

impl EventBody for Tick {
    const NAME: &'static str = "tick";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("cpu", self.cpu.into())
            .u64("seq", self.seq)
            .u64("tsc", self.tsc)
            .opt_u64("clock_ns", self.clock_ns)
            .u64("interval_us", self.interval_us)
            .u64("work", self.work)
            .u64("pages", self.pages)
            .hundredths("dirty_mib_s", self.dirty_mib_s_x100 as i64)
            .u64("max_gap_us", self.max_gap_us)
            .u64("stalled_us", self.stalled_us)
            .u64("excluded_us", self.excluded_us);
        opt_hundredths(o, "busy_pct", self.busy_x100);
        opt_hundredths(o, "rate_pct", self.rate_x100);
        o.str("clock", self.clock.name());
        match self.drift_us {
            Some(d) => o.i64("drift_us", d),
            None => o.opt_u64("drift_us", None),
        };
    }
}

fn opt_hundredths<W: Write + ?Sized>(o: &mut Object<'_, W>, key: &str, v: Option<u64>) {
    match v {
        Some(v) => o.hundredths(key, v as i64),
        None => o.opt_u64(key, None),
    };
}

/// Result of a `verify` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub report: VerifyReport,
    pub elapsed_us: u64,
}

/// Field names of a verification report: pages of memory, or blocks of a
/// disk (whose parts are sectors).
#[derive(Clone, Copy)]
pub(crate) struct Unit {
    pub count: &'static str,
    pub item: &'static str,
    pub part: &'static str,
    pub found: &'static str,
}

pub(crate) const PAGES: Unit = Unit {
    count: "pages",
    item: "page",
    part: "line",
    found: "found_index",
};
pub(crate) const BLOCKS: Unit = Unit {
    count: "blocks",
    item: "block",
    part: "sector",
    found: "found_block",
};

pub(crate) fn verify_fields<W: Write + ?Sized>(
    o: &mut Object<'_, W>,
    r: &VerifyReport,
    unit: Unit,
) {
    o.bool("ok", r.ok())
        .u64(unit.count, r.pages)
        .u64("bad", r.bad);
    match &r.first_bad {
        None => o.opt_u64("first_bad", None),
        Some(b) => o.object("first_bad", |f| {
            f.u64(unit.item, b.page)
                .u64("expected_gen", b.expected_generation.into())
                .opt_u64("found_gen", b.damage.found_generation.map(u64::from))
                .str("reason", b.damage.reason.name());
            if let Some(line) = b.damage.line {
                f.u64(unit.part, line.into());
            }
            if let Some(index) = b.damage.found_index {
                f.u64(unit.found, index);
            }
        }),
    };
    o.object("reasons", |f| {
        for (reason, &n) in Reason::ALL.iter().zip(&r.by_reason) {
            if n > 0 {
                f.u64(reason.name(), n);
            }
        }
    });
}

impl EventBody for Verified {
    const NAME: &'static str = "verify";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        verify_fields(o, &self.report, PAGES);
        o.u64("elapsed_us", self.elapsed_us);
    }
}

/// Answer to `corrupt page=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupted {
    pub page: u64,
    pub how: Corruption,
}

impl EventBody for Corrupted {
    const NAME: &'static str = "corrupted";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("page", self.page).str("how", self.how.name());
    }
}

/// The workload stopped (`stop`); carries the final verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub report: VerifyReport,
    /// Pages dirtied over the whole run, all workers.
    pub dirtied: u64,
    /// Since the first guest instruction.
    pub uptime_ms: u64,
}

impl EventBody for Done {
    const NAME: &'static str = "done";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        verify_fields(o, &self.report, PAGES);
        o.u64("dirtied", self.dirtied)
            .u64("uptime_ms", self.uptime_ms);
    }
}

/// The guest is about to reset itself (`reboot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebooting;

impl EventBody for Rebooting {
    const NAME: &'static str = "rebooting";
    fn fields<W: Write + ?Sized>(&self, _: &mut Object<'_, W>) {}
}

named_enum! {
    /// What an error event is about.
    pub enum ErrorKind {
        /// A bad `tern.` parameter; the guest does not start its workload.
        Param = "param",
        /// Something the guest needs from the VMM is missing or malformed.
        Boot = "boot",
        /// The working set does not fit.
        Memory = "memory",
        /// A host command was not understood.
        Command = "command",
        /// A CPU exception; that CPU has stopped.
        Exception = "exception",
        /// A Rust panic; that CPU has stopped.
        Panic = "panic",
        /// A worker did not respond.
        Worker = "worker",
        /// The disk workload: no device, a failed request, no header.
        Disk = "disk",
        /// The net workload: no device.
        Net = "net",
    }
}

/// CPU state of an `exception` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub cpu: u32,
    pub vector: u8,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rsp: u64,
    pub cr2: u64,
}

/// `{"event":"error","kind":...,"message":...}` plus, for exceptions, the
/// [`Fault`] fields.
pub struct ErrorEvent<'a> {
    pub kind: ErrorKind,
    pub message: &'a dyn fmt::Display,
    pub fault: Option<Fault>,
}

impl EventBody for ErrorEvent<'_> {
    const NAME: &'static str = "error";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.str("kind", self.kind.name())
            .display("message", self.message);
        if let Some(f) = &self.fault {
            o.u64("cpu", f.cpu.into())
                .u64("vector", f.vector.into())
                .u64("error_code", f.error_code)
                .display("rip", format_args!("{:#x}", f.rip))
                .display("cs", format_args!("{:#x}", f.cs))
                .display("rsp", format_args!("{:#x}", f.rsp))
                .display("cr2", format_args!("{:#x}", f.cr2));
        }
    }
}

mod device;
pub use device::*;

#[cfg(feature = "std")]
mod read;
#[cfg(feature = "std")]
pub use read::{parse_line, parse_mac, ErrorReport, Event, ReadError};
