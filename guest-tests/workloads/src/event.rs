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
    /// CPUs that dirty memory.
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

fn verify_fields<W: Write + ?Sized>(o: &mut Object<'_, W>, r: &VerifyReport) {
    o.bool("ok", r.ok()).u64("pages", r.pages).u64("bad", r.bad);
    match &r.first_bad {
        None => o.opt_u64("first_bad", None),
        Some(b) => o.object("first_bad", |f| {
            f.u64("page", b.page)
                .u64("expected_gen", b.expected_generation.into())
                .opt_u64("found_gen", b.damage.found_generation.map(u64::from))
                .str("reason", b.damage.reason.name());
            if let Some(line) = b.damage.line {
                f.u64("line", line.into());
            }
            if let Some(index) = b.damage.found_index {
                f.u64("found_index", index);
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
        verify_fields(o, &self.report);
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
        verify_fields(o, &self.report);
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

#[cfg(feature = "std")]
pub use read::{parse_line, ErrorReport, Event, ReadError};

#[cfg(feature = "std")]
mod read {
    //! Reading event lines back (host side).

    use super::*;
    use crate::json_read::{self, Value};
    use crate::page::Damage;
    use crate::verify::BadPage;

    /// A parsed event line.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Event {
        Ready(Ready),
        Started(Started),
        Baseline(Baseline),
        Tick(Tick),
        Verify(Verified),
        Corrupted(Corrupted),
        Done(Done),
        Rebooting,
        Error(ErrorReport),
        /// A well-formed event this reader does not know (newer guest).
        Other {
            event: String,
            json: Value,
        },
    }

    /// An `error` event.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ErrorReport {
        /// An [`ErrorKind`] name (kept as text: newer guests may add kinds).
        pub kind: String,
        pub message: String,
        pub fault: Option<Fault>,
    }

    /// Why a `tern-guest:` line could not be read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ReadError {
        Json(json_read::JsonError),
        /// A field is missing or has the wrong type or value.
        Field {
            event: String,
            field: &'static str,
        },
    }

    impl fmt::Display for ReadError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                ReadError::Json(e) => e.fmt(f),
                ReadError::Field { event, field } => {
                    write!(f, "event {event:?}: field {field:?} missing or invalid")
                }
            }
        }
    }

    impl std::error::Error for ReadError {}

    /// Reads the event on `line`, if it has one: `None` for lines without
    /// the `tern-guest: ` prefix (kernel messages, other output). The
    /// prefix may follow other text on the line (a log timestamp).
    pub fn parse_line(line: &str) -> Option<Result<Event, ReadError>> {
        let at = line.find(LINE_PREFIX)?;
        Some(parse_json(line[at + LINE_PREFIX.len()..].trim_end()))
    }

    struct Fields<'a> {
        v: &'a Value,
        event: &'a str,
    }

    impl<'a> Fields<'a> {
        fn bad(&self, field: &'static str) -> ReadError {
            ReadError::Field {
                event: self.event.to_string(),
                field,
            }
        }
        fn get(&self, field: &'static str) -> Result<&'a Value, ReadError> {
            self.v.get(field).ok_or_else(|| self.bad(field))
        }
        fn u64(&self, field: &'static str) -> Result<u64, ReadError> {
            self.get(field)?.as_u64().ok_or_else(|| self.bad(field))
        }
        fn u32(&self, field: &'static str) -> Result<u32, ReadError> {
            u32::try_from(self.u64(field)?).map_err(|_| self.bad(field))
        }
        fn opt_u64(&self, field: &'static str) -> Result<Option<u64>, ReadError> {
            match self.v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| self.bad(field)),
            }
        }
        fn str(&self, field: &'static str) -> Result<&'a str, ReadError> {
            self.get(field)?.as_str().ok_or_else(|| self.bad(field))
        }
        fn bool(&self, field: &'static str) -> Result<bool, ReadError> {
            self.get(field)?.as_bool().ok_or_else(|| self.bad(field))
        }
        fn hundredths(&self, field: &'static str) -> Result<Option<u64>, ReadError> {
            match self.get(field)? {
                Value::Null => Ok(None),
                v => v
                    .as_hundredths()
                    .and_then(|h| u64::try_from(h).ok())
                    .map(Some)
                    .ok_or_else(|| self.bad(field)),
            }
        }
        fn named<T>(
            &self,
            field: &'static str,
            from: fn(&str) -> Option<T>,
        ) -> Result<T, ReadError> {
            from(self.str(field)?).ok_or_else(|| self.bad(field))
        }
        fn nested(&self, field: &'static str) -> Result<Option<Fields<'a>>, ReadError> {
            match self.get(field)? {
                Value::Null => Ok(None),
                v @ Value::Object(_) => Ok(Some(Fields {
                    v,
                    event: self.event,
                })),
                _ => Err(self.bad(field)),
            }
        }
    }

    fn parse_json(text: &str) -> Result<Event, ReadError> {
        let v = json_read::parse(text).map_err(ReadError::Json)?;
        let event = v
            .get("event")
            .and_then(Value::as_str)
            .ok_or(ReadError::Field {
                event: String::new(),
                field: "event",
            })?;
        let f = Fields { v: &v, event };
        Ok(match event {
            Ready::NAME => Event::Ready(read_ready(&f)?),
            Started::NAME => Event::Started(Started {
                pages: f.u64("pages")?,
                fill_ms: f.u64("fill_ms")?,
            }),
            Baseline::NAME => Event::Baseline(Baseline {
                cpu: f.u32("cpu")?,
                work_per_s: f.u64("work_per_s")?,
            }),
            Tick::NAME => Event::Tick(read_tick(&f)?),
            Verified::NAME => Event::Verify(Verified {
                report: read_report(&f)?,
                elapsed_us: f.u64("elapsed_us")?,
            }),
            Corrupted::NAME => Event::Corrupted(Corrupted {
                page: f.u64("page")?,
                how: f.named("how", Corruption::from_name)?,
            }),
            Done::NAME => Event::Done(Done {
                report: read_report(&f)?,
                dirtied: f.u64("dirtied")?,
                uptime_ms: f.u64("uptime_ms")?,
            }),
            Rebooting::NAME => Event::Rebooting,
            "error" => Event::Error(read_error(&f)?),
            other => Event::Other {
                event: other.to_string(),
                json: v.clone(),
            },
        })
    }

    fn read_ready(f: &Fields<'_>) -> Result<Ready, ReadError> {
        let mut busy = CpuSet(0);
        for c in f.get("busy")?.as_array().ok_or_else(|| f.bad("busy"))? {
            match c.as_u64() {
                Some(c) if c < CpuSet::MAX as u64 => busy.0 |= 1 << c,
                _ => return Err(f.bad("busy")),
            }
        }
        let rate = match f.get("rate")? {
            Value::String(s) if s == "max" => Rate::Max,
            v => Rate::MibPerSec(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| f.bad("rate"))?,
            ),
        };
        Ok(Ready {
            workload: f.named("workload", Workload::from_name)?,
            cpus: f.u32("cpus")?,
            cpus_source: f.named("cpus_source", CpuSource::from_name)?,
            busy,
            mem_mib: f.u64("mem_mib")?,
            mem_source: f.named("mem_source", MemSource::from_name)?,
            ws_mib: f.u32("ws_mib")?,
            rate,
            pattern: f.named("pattern", Pattern::from_name)?,
            tick_ms: f.u32("tick_ms")?,
            gap_us: f.u32("gap_us")?,
            clock: f.named("clock", ClockSource::from_name)?,
            tsc_hz: f.u64("tsc_hz")?,
            boot_us: f.u64("boot_us")?,
        })
    }

    fn read_tick(f: &Fields<'_>) -> Result<Tick, ReadError> {
        let drift_us = |f: &Fields<'_>| match f.get("drift_us")? {
            Value::Null => Ok(None),
            v => v.as_i64().map(Some).ok_or_else(|| f.bad("drift_us")),
        };
        Ok(Tick {
            cpu: f.u32("cpu")?,
            seq: f.u64("seq")?,
            tsc: f.u64("tsc")?,
            clock_ns: f.opt_u64("clock_ns")?,
            interval_us: f.u64("interval_us")?,
            work: f.u64("work")?,
            pages: f.u64("pages")?,
            dirty_mib_s_x100: f
                .hundredths("dirty_mib_s")?
                .ok_or_else(|| f.bad("dirty_mib_s"))?,
            max_gap_us: f.u64("max_gap_us")?,
            stalled_us: f.u64("stalled_us")?,
            excluded_us: f.u64("excluded_us")?,
            busy_x100: f.hundredths("busy_pct")?,
            rate_x100: f.hundredths("rate_pct")?,
            clock: f.named("clock", ClockStatus::from_name)?,
            drift_us: drift_us(f)?,
        })
    }

    fn read_report(f: &Fields<'_>) -> Result<VerifyReport, ReadError> {
        let mut report = VerifyReport {
            pages: f.u64("pages")?,
            bad: f.u64("bad")?,
            ..Default::default()
        };
        if f.bool("ok")? != (report.bad == 0) {
            return Err(f.bad("ok"));
        }
        if let Some(b) = f.nested("first_bad")? {
            let found_generation = b
                .opt_u64("found_gen")?
                .map(|g| u32::try_from(g).map_err(|_| b.bad("found_gen")))
                .transpose()?;
            report.first_bad = Some(BadPage {
                page: b.u64("page")?,
                expected_generation: b.u32("expected_gen")?,
                damage: Damage {
                    reason: b.named("reason", Reason::from_name)?,
                    found_generation,
                    line: b.opt_u64("line")?.map(|l| l as u32),
                    found_index: b.opt_u64("found_index")?,
                },
            });
        }
        if let Some(r) = f.nested("reasons")? {
            for (slot, reason) in Reason::ALL.iter().enumerate() {
                report.by_reason[slot] =
                    r.v.get(reason.name())
                        .map_or(Some(0), Value::as_u64)
                        .ok_or_else(|| f.bad("reasons"))?;
            }
        }
        Ok(report)
    }

    fn read_error(f: &Fields<'_>) -> Result<ErrorReport, ReadError> {
        let fault = if f.v.get("vector").is_some() {
            Some(Fault {
                cpu: f.u32("cpu")?,
                vector: u8::try_from(f.u64("vector")?).map_err(|_| f.bad("vector"))?,
                error_code: f.u64("error_code")?,
                rip: f.u64("rip")?,
                cs: f.u64("cs")?,
                rsp: f.u64("rsp")?,
                cr2: f.u64("cr2")?,
            })
        } else {
            None
        };
        Ok(ErrorReport {
            kind: f.str("kind")?.to_string(),
            message: f.str("message")?.to_string(),
            fault,
        })
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::page::Damage;
    use crate::verify::BadPage;

    fn line<E: EventBody>(e: &E) -> String {
        let mut s = String::new();
        write_line(&mut s, e).unwrap();
        assert!(s.ends_with('\n') && s.starts_with(LINE_PREFIX));
        s
    }

    fn round_trip<E: EventBody>(e: &E) -> Event {
        parse_line(&line(e)).expect("prefix").expect("parses")
    }

    fn sample_report() -> VerifyReport {
        let mut by_reason = [0; Reason::ALL.len()];
        by_reason[6] = 2;
        by_reason[0] = 1;
        VerifyReport {
            pages: 16384,
            bad: 3,
            first_bad: Some(BadPage {
                page: 17,
                expected_generation: 9,
                damage: Damage {
                    reason: Reason::Torn,
                    found_generation: Some(9),
                    line: Some(17),
                    found_index: None,
                },
            }),
            by_reason,
        }
    }

    #[test]
    fn every_event_reads_back_as_written() {
        let ready = Ready {
            workload: Workload::Dirtier,
            cpus: 2,
            cpus_source: CpuSource::MpTable,
            busy: CpuSet(0b01),
            mem_mib: 512,
            mem_source: MemSource::Memmap,
            ws_mib: 64,
            rate: Rate::MibPerSec(40),
            pattern: Pattern::HotCold,
            tick_ms: 100,
            gap_us: 50,
            clock: ClockSource::Kvmclock,
            tsc_hz: 2_100_000_000,
            boot_us: 1234,
        };
        assert_eq!(round_trip(&ready), Event::Ready(ready));
        let max = Ready {
            rate: Rate::Max,
            ..ready
        };
        assert_eq!(round_trip(&max), Event::Ready(max));
        let tick = Tick {
            cpu: 1,
            seq: 5,
            tsc: u64::MAX,
            clock_ns: Some(99),
            interval_us: 100_000,
            work: 1_000_000,
            pages: 500,
            dirty_mib_s_x100: 1953,
            max_gap_us: 12,
            stalled_us: 0,
            excluded_us: 80,
            busy_x100: Some(9987),
            rate_x100: None,
            clock: ClockStatus::Jump,
            drift_us: Some(-3),
        };
        assert_eq!(round_trip(&tick), Event::Tick(tick));
        let no_clock = Tick {
            clock_ns: None,
            drift_us: None,
            busy_x100: None,
            rate_x100: Some(10012),
            ..tick
        };
        assert_eq!(round_trip(&no_clock), Event::Tick(no_clock));
        let v = Verified {
            report: sample_report(),
            elapsed_us: 5,
        };
        assert_eq!(round_trip(&v), Event::Verify(v));
        let ok = Verified {
            report: VerifyReport {
                pages: 4,
                ..Default::default()
            },
            elapsed_us: 1,
        };
        assert_eq!(round_trip(&ok), Event::Verify(ok));
        let done = Done {
            report: sample_report(),
            dirtied: 10,
            uptime_ms: 20,
        };
        assert_eq!(round_trip(&done), Event::Done(done));
        let s = Started {
            pages: 3,
            fill_ms: 4,
        };
        assert_eq!(round_trip(&s), Event::Started(s));
        let b = Baseline {
            cpu: 0,
            work_per_s: 7,
        };
        assert_eq!(round_trip(&b), Event::Baseline(b));
        let c = Corrupted {
            page: 3,
            how: Corruption::Zero,
        };
        assert_eq!(round_trip(&c), Event::Corrupted(c));
        assert_eq!(round_trip(&Rebooting), Event::Rebooting);
    }

    #[test]
    fn errors_and_faults() {
        let e = ErrorEvent {
            kind: ErrorKind::Param,
            message: &"tern.ws=x: \"bad\"",
            fault: None,
        };
        let Event::Error(r) = round_trip(&e) else {
            panic!()
        };
        assert_eq!(
            (r.kind.as_str(), r.message.as_str(), r.fault),
            ("param", "tern.ws=x: \"bad\"", None)
        );
        let fault = Fault {
            cpu: 1,
            vector: 14,
            error_code: 6,
            rip: 0x1007d1,
            cs: 0x23,
            rsp: 0x14df00,
            cr2: 0xdead_0000_0000,
        };
        let e = ErrorEvent {
            kind: ErrorKind::Exception,
            message: &"page fault",
            fault: Some(fault),
        };
        let text = line(&e);
        assert!(text.contains(r#""rip":"0x1007d1""#), "{text}");
        let Event::Error(r) = round_trip(&e) else {
            panic!()
        };
        assert_eq!(r.fault, Some(fault));
    }

    #[test]
    fn lines_without_the_prefix_are_not_events() {
        assert!(parse_line("[    0.000000] Linux version 6.1").is_none());
        let Some(Ok(Event::Other { event, .. })) =
            parse_line("x tern-guest: {\"event\":\"future\",\"n\":1}")
        else {
            panic!()
        };
        assert_eq!(event, "future");
        assert!(matches!(
            parse_line("tern-guest: {\"event\":\"tick\"}"),
            Some(Err(ReadError::Field { field: "cpu", .. }))
        ));
        assert!(matches!(
            parse_line("tern-guest: {"),
            Some(Err(ReadError::Json(_)))
        ));
        let inconsistent = "tern-guest: {\"event\":\"verify\",\"ok\":true,\"pages\":1,\"bad\":1,\"first_bad\":null,\"reasons\":{},\"elapsed_us\":0}";
        assert!(matches!(
            parse_line(inconsistent),
            Some(Err(ReadError::Field { field: "ok", .. }))
        ));
    }
}
