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
    Disk(DiskInfo),
    DiskTick(DiskTick),
    DiskWritten(DiskWritten),
    DiskVerify(DiskVerified),
    DiskBench(DiskBench),
    Net(NetInfo),
    NetTick(NetTick),
    NetDone(NetDone),
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
    fn u16(&self, field: &'static str) -> Result<u16, ReadError> {
        u16::try_from(self.u64(field)?).map_err(|_| self.bad(field))
    }
    fn required_hundredths(&self, field: &'static str) -> Result<u64, ReadError> {
        self.hundredths(field)?.ok_or_else(|| self.bad(field))
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
    fn named<T>(&self, field: &'static str, from: fn(&str) -> Option<T>) -> Result<T, ReadError> {
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
            report: read_report(&f, PAGES)?,
            elapsed_us: f.u64("elapsed_us")?,
        }),
        Corrupted::NAME => Event::Corrupted(Corrupted {
            page: f.u64("page")?,
            how: f.named("how", Corruption::from_name)?,
        }),
        Done::NAME => Event::Done(Done {
            report: read_report(&f, PAGES)?,
            dirtied: f.u64("dirtied")?,
            uptime_ms: f.u64("uptime_ms")?,
        }),
        Rebooting::NAME => Event::Rebooting,
        "error" => Event::Error(read_error(&f)?),
        DiskInfo::NAME => Event::Disk(DiskInfo {
            base: f.u64("base")?,
            sectors: f.u64("sectors")?,
            read_only: f.bool("read_only")?,
            flush: f.bool("flush")?,
            queue_size: f.u16("queue_size")?,
            slots: f.u32("slots")?,
            slot_bytes: f.u32("slot_bytes")?,
            blocks: f.u64("blocks")?,
        }),
        DiskTick::NAME => Event::DiskTick(DiskTick {
            seq: f.u64("seq")?,
            phase: f.named("phase", DiskPhase::from_name)?,
            requests: f.u64("requests")?,
            bytes: f.u64("bytes")?,
            mib_s_x100: f.required_hundredths("mib_s")?,
            iops: f.u64("iops")?,
            in_flight: f.u32("in_flight")?,
            max_latency_us: f.u64("max_latency_us")?,
            errors: f.u64("errors")?,
        }),
        DiskWritten::NAME => Event::DiskWritten(DiskWritten {
            generation: f.u32("generation")?,
            blocks: f.u64("blocks")?,
            cursor: f.u64("cursor")?,
            complete: f.bool("complete")?,
            stopped: f.bool("stopped")?,
            errors: f.u64("errors")?,
            elapsed_ms: f.u64("elapsed_ms")?,
            mib_s_x100: f.required_hundredths("mib_s")?,
        }),
        DiskVerified::NAME => Event::DiskVerify(DiskVerified {
            source: f.named("source", VerifySource::from_name)?,
            run_id: f.u64("run_id")?,
            generation: f.u32("generation")?,
            report: read_report(&f, BLOCKS)?,
            elapsed_us: f.u64("elapsed_us")?,
            mib_s_x100: f.required_hundredths("mib_s")?,
        }),
        DiskBench::NAME => Event::DiskBench(DiskBench {
            phase: f.named("phase", DiskPhase::from_name)?,
            qd: f.u32("qd")?,
            request_bytes: f.u64("request_bytes")?,
            requests: f.u64("requests")?,
            bytes: f.u64("bytes")?,
            elapsed_us: f.u64("elapsed_us")?,
            mib_s_x100: f.required_hundredths("mib_s")?,
            iops: f.u64("iops")?,
            max_latency_us: f.u64("max_latency_us")?,
            errors: f.u64("errors")?,
        }),
        NetInfo::NAME => Event::Net(NetInfo {
            base: f.u64("base")?,
            mac: parse_mac(f.str("mac")?).ok_or_else(|| f.bad("mac"))?,
            queue_size: f.u16("queue_size")?,
            frames: f.u32("frames")?,
            frame_bytes: f.u32("frame_bytes")?,
        }),
        NetTick::NAME => Event::NetTick(NetTick {
            seq: f.u64("seq")?,
            counts: read_counts(&f)?,
            outstanding: f.u64("outstanding")?,
            rtt_max_us: f.opt_u64("rtt_max_us")?,
            rtt_avg_us: f.opt_u64("rtt_avg_us")?,
        }),
        NetDone::NAME => Event::NetDone(NetDone {
            counts: read_counts(&f)?,
            lost: f.u64("lost")?,
        }),
        other => Event::Other {
            event: other.to_string(),
            json: v.clone(),
        },
    })
}

fn read_counts(f: &Fields<'_>) -> Result<NetCounts, ReadError> {
    Ok(NetCounts {
        sent: f.u64("sent")?,
        returned: f.u64("returned")?,
        reordered: f.u64("reordered")?,
        duplicates: f.u64("duplicates")?,
        from_peer: f.u64("from_peer")?,
        peer_gaps: f.u64("peer_gaps")?,
        foreign: f.u64("foreign")?,
        tx_full: f.u64("tx_full")?,
    })
}

/// `"52:54:00:12:34:56"`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
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

fn read_report(f: &Fields<'_>, unit: Unit) -> Result<VerifyReport, ReadError> {
    let mut report = VerifyReport {
        pages: f.u64(unit.count)?,
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
            page: b.u64(unit.item)?,
            expected_generation: b.u32("expected_gen")?,
            damage: Damage {
                reason: b.named("reason", Reason::from_name)?,
                found_generation,
                line: b.opt_u64(unit.part)?.map(|l| l as u32),
                found_index: b.opt_u64(unit.found)?,
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

#[cfg(test)]
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
    fn device_events_read_back_as_written() {
        let disk = DiskInfo {
            base: 0xfeb0_0e00,
            sectors: 131072,
            read_only: true,
            flush: false,
            queue_size: 256,
            slots: 32,
            slot_bytes: 4096,
            blocks: 16383,
        };
        assert_eq!(round_trip(&disk), Event::Disk(disk));
        let tick = DiskTick {
            seq: 3,
            phase: DiskPhase::RandRead,
            requests: 9000,
            bytes: 9000 * 4096,
            mib_s_x100: 35156,
            iops: 90000,
            in_flight: 32,
            max_latency_us: 812,
            errors: 0,
        };
        assert_eq!(round_trip(&tick), Event::DiskTick(tick));
        let written = DiskWritten {
            generation: 2,
            blocks: 100,
            cursor: 50,
            complete: false,
            stopped: true,
            errors: 1,
            elapsed_ms: 7,
            mib_s_x100: 12,
        };
        assert_eq!(round_trip(&written), Event::DiskWritten(written));
        let verified = DiskVerified {
            source: VerifySource::Disk,
            run_id: u64::MAX,
            generation: 2,
            report: sample_report(),
            elapsed_us: 5,
            mib_s_x100: 100,
        };
        let text = line(&verified);
        assert!(
            text.contains(r#""first_bad":{"block":17,"#) && text.contains(r#""sector":17"#),
            "{text}"
        );
        assert_eq!(round_trip(&verified), Event::DiskVerify(verified));
        let bench = DiskBench {
            phase: DiskPhase::SeqWrite,
            qd: 32,
            request_bytes: 1 << 20,
            requests: 256,
            bytes: 256 << 20,
            elapsed_us: 1,
            mib_s_x100: 2,
            iops: 3,
            max_latency_us: 4,
            errors: 5,
        };
        assert_eq!(round_trip(&bench), Event::DiskBench(bench));
        let net = NetInfo {
            base: 0xd000_1000,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0xab],
            queue_size: 256,
            frames: 1000,
            frame_bytes: 128,
        };
        assert!(line(&net).contains(r#""mac":"52:54:00:12:34:ab""#));
        assert_eq!(round_trip(&net), Event::Net(net));
        let counts = NetCounts {
            sent: 1,
            returned: 2,
            reordered: 3,
            duplicates: 4,
            from_peer: 5,
            peer_gaps: 6,
            foreign: 7,
            tx_full: 8,
        };
        let net_tick = NetTick {
            seq: 1,
            counts,
            outstanding: 9,
            rtt_max_us: Some(10),
            rtt_avg_us: None,
        };
        assert_eq!(round_trip(&net_tick), Event::NetTick(net_tick));
        let done = NetDone { counts, lost: 11 };
        assert_eq!(round_trip(&done), Event::NetDone(done));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
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
