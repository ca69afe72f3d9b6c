//! Did the guest survive the migration intact? The verdict combines the
//! guest's own memory check (the `verify` event after migration: every
//! page's content against its generation table) with what the host sees in
//! the event stream:
//!
//! - no `error` event and no unreadable `tern-guest:` line on either side;
//! - the guest did not start over on the destination (no second `ready`);
//! - each vCPU's tick sequence continues across the switchover with no
//!   tick lost and none repeated (a repeat would mean the guest ran twice);
//! - every tick's clock check is `ok` (no TSC or kvmclock going backwards,
//!   no jump between them).

use std::collections::BTreeMap;

use serde::Serialize;
use tern_workloads::event::Event;
use tern_workloads::verify::VerifyReport;

use crate::analysis::{Side, TickAt};
use crate::console::{GuestLine, Parsed};

/// Kind of a problem found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The guest's memory check found bad pages.
    BadPages,
    /// The memory check did not cover the working set.
    VerifyIncomplete,
    /// No answer to `verify`.
    NoVerify,
    /// A step of the run failed after the migration.
    RunStep,
    GuestError,
    UnreadableLine,
    /// The guest booted again on the destination.
    Restarted,
    TicksLost,
    TicksRepeated,
    /// A console line with bytes around or between events (the guest
    /// printed from a damaged buffer).
    GarbledLine,
    /// The guest's stall meter measured its baseline again (its state went
    /// back in time).
    MeterRestarted,
    Clock,
}

/// Whether a finding fails the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// The guest's state or execution is wrong.
    Fail,
    /// Worth reporting, not wrong: the guest's two clocks disagreed over an
    /// interval (one of them jumped), as QEMU's guests see across its
    /// switchover.
    Note,
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn fail(kind: FindingKind, message: String) -> Finding {
        Finding {
            kind,
            severity: Severity::Fail,
            message,
        }
    }
}

/// The guest's own check, as reported: of memory pages, or, for the disk
/// workload, of disk blocks (`pages` then counts blocks).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifySummary {
    pub side: Side,
    pub ok: bool,
    pub pages: u64,
    pub bad: u64,
    pub first_bad_page: Option<u64>,
    pub first_bad_reason: Option<String>,
    pub elapsed_us: u64,
}

impl VerifySummary {
    /// From a `verify` (pages) or `disk_verify` (blocks) report.
    pub fn from_report(side: Side, report: &VerifyReport, elapsed_us: u64) -> VerifySummary {
        VerifySummary {
            side,
            ok: report.ok(),
            pages: report.pages,
            bad: report.bad,
            first_bad_page: report.first_bad.map(|b| b.page),
            first_bad_reason: report.first_bad.map(|b| b.damage.reason.name().to_string()),
            elapsed_us,
        }
    }
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub verify: Option<VerifySummary>,
    pub findings: Vec<Finding>,
}

impl Verdict {
    /// One line for tables: `pass`, or the first finding.
    pub fn short(&self) -> String {
        let (fails, notes): (Vec<&Finding>, Vec<&Finding>) = self
            .findings
            .iter()
            .partition(|f| f.severity == Severity::Fail);
        match (fails.first(), notes.first()) {
            (None, None) => "pass".into(),
            (None, Some(n)) => format!("pass (note: {})", n.message),
            (Some(f), _) if self.findings.len() == 1 => format!("FAIL: {}", f.message),
            (Some(f), _) => format!("FAIL: {} (+{} more)", f.message, self.findings.len() - 1),
        }
    }
}

/// What the verifier looks at.
pub struct Evidence<'a> {
    pub source_lines: &'a [GuestLine],
    pub destination_lines: &'a [GuestLine],
    pub source_ticks: &'a [TickAt],
    pub destination_ticks: &'a [TickAt],
    /// Pages in the working set (`started`).
    pub expected_pages: Option<u64>,
    /// The answer to the `verify` sent after the migration.
    pub verify: Option<VerifySummary>,
    /// Steps of the run that failed after the migration (the guest did not
    /// tick or answer on the destination).
    pub run_problems: Vec<String>,
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Source => "source",
        Side::Destination => "destination",
    }
}

fn event_findings(lines: &[GuestLine], side: Side, findings: &mut Vec<Finding>) {
    let side_name = side_name(side);
    for l in lines.iter().filter(|l| l.complete) {
        // The test guest starts every line with the prefix and prints one
        // event per line.
        let prefix = tern_workloads::event::LINE_PREFIX;
        if l.text.contains(prefix)
            && (!l.text.starts_with(prefix) || l.text.matches(prefix).count() > 1)
        {
            findings.push(Finding::fail(
                FindingKind::GarbledLine,
                format!("{side_name}: garbled console line: {:?}", l.text),
            ));
            continue;
        }
        match &l.parsed {
            Parsed::Event(Event::Error(e)) => findings.push(Finding::fail(
                FindingKind::GuestError,
                format!("{side_name}: guest error ({}): {}", e.kind, e.message),
            )),
            Parsed::Event(Event::Ready(_)) if side == Side::Destination => {
                findings.push(Finding::fail(
                    FindingKind::Restarted,
                    "destination: the guest printed `ready` again (it booted anew)".into(),
                ))
            }
            Parsed::Unreadable(why) => findings.push(Finding::fail(
                FindingKind::UnreadableLine,
                format!("{side_name}: unreadable guest line ({why}): {}", l.text),
            )),
            _ => {}
        }
    }
}

fn tick_findings(ticks: impl Iterator<Item = TickAt>, findings: &mut Vec<Finding>) {
    let mut last: BTreeMap<u32, (u64, Side)> = BTreeMap::new();
    // Backwards clocks fail the verdict; a jump (the two clocks disagree)
    // is a note.
    let (mut backwards, mut jumps): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for t in ticks {
        let status = t.tick.clock.name();
        if status != "ok" {
            let list = if status == "jump" {
                &mut jumps
            } else {
                &mut backwards
            };
            list.push(format!(
                "{} cpu {} tick {}: clock {} (drift {:?} µs)",
                side_name(t.side),
                t.tick.cpu,
                t.tick.seq,
                t.tick.clock.name(),
                t.tick.drift_us
            ));
        }
        if let Some((prev, prev_side)) = last.insert(t.tick.cpu, (t.tick.seq, t.side)) {
            let across = if prev_side != t.side {
                " across the switchover"
            } else {
                ""
            };
            if t.tick.seq > prev + 1 {
                findings.push(Finding::fail(
                    FindingKind::TicksLost,
                    format!(
                        "cpu {}: ticks {}..={} missing{across}",
                        t.tick.cpu,
                        prev + 1,
                        t.tick.seq - 1
                    ),
                ));
            } else if t.tick.seq <= prev {
                findings.push(Finding::fail(
                    FindingKind::TicksRepeated,
                    format!(
                        "cpu {}: tick {} after tick {prev}{across} (the guest ran twice?)",
                        t.tick.cpu, t.tick.seq
                    ),
                ));
            }
        }
    }
    if let Some(first) = backwards.first() {
        findings.push(Finding::fail(
            FindingKind::Clock,
            format!(
                "{} ticks with a clock going backwards; first: {first}",
                backwards.len()
            ),
        ));
    }
    if let Some(first) = jumps.first() {
        findings.push(Finding {
            kind: FindingKind::Clock,
            severity: Severity::Note,
            message: format!(
                "{} ticks where TSC and kvmclock disagreed; first: {first}",
                jumps.len()
            ),
        });
    }
}

/// A second `baseline` event of a vCPU means its stall meter started over.
fn baseline_findings(lines: &[&GuestLine], findings: &mut Vec<Finding>) {
    let mut seen = std::collections::BTreeSet::new();
    for l in lines {
        if let Some(Event::Baseline(b)) = l.event() {
            if !seen.insert(b.cpu) {
                findings.push(Finding::fail(
                    FindingKind::MeterRestarted,
                    format!(
                        "cpu {}: a second baseline event (the guest's meter state went back in time)",
                        b.cpu
                    ),
                ));
            }
        }
    }
}

/// Judges the evidence.
pub fn judge(e: &Evidence<'_>) -> Verdict {
    let mut findings: Vec<Finding> = e
        .run_problems
        .iter()
        .map(|p| Finding::fail(FindingKind::RunStep, p.clone()))
        .collect();
    match &e.verify {
        None => findings.push(Finding::fail(
            FindingKind::NoVerify,
            "no answer to `verify`".into(),
        )),
        Some(v) if !v.ok => findings.push(Finding::fail(
            FindingKind::BadPages,
            format!(
                "{} bad pages of {}; first: page {} ({})",
                v.bad,
                v.pages,
                v.first_bad_page.map_or("?".into(), |p| p.to_string()),
                v.first_bad_reason.as_deref().unwrap_or("?")
            ),
        )),
        Some(v) => {
            if let Some(expected) = e.expected_pages.filter(|&p| p != v.pages) {
                findings.push(Finding::fail(
                    FindingKind::VerifyIncomplete,
                    format!(
                        "verify checked {} pages, the working set has {expected}",
                        v.pages
                    ),
                ));
            }
        }
    }
    event_findings(e.source_lines, Side::Source, &mut findings);
    event_findings(e.destination_lines, Side::Destination, &mut findings);
    let complete: Vec<&GuestLine> = e
        .source_lines
        .iter()
        .chain(e.destination_lines)
        .filter(|l| l.complete)
        .collect();
    baseline_findings(&complete, &mut findings);
    tick_findings(
        e.source_ticks.iter().chain(e.destination_ticks).cloned(),
        &mut findings,
    );
    Verdict {
        passed: findings.iter().all(|f| f.severity == Severity::Note),
        verify: e.verify.clone(),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_workloads::clock::ClockStatus;
    use tern_workloads::event::Tick;

    fn t(side: Side, cpu: u32, seq: u64, clock: ClockStatus) -> TickAt {
        TickAt {
            at_ms: seq as f64,
            side,
            tick: Tick {
                cpu,
                seq,
                tsc: 0,
                clock_ns: None,
                interval_us: 1,
                work: 1,
                pages: 0,
                dirty_mib_s_x100: 0,
                max_gap_us: 0,
                stalled_us: 0,
                excluded_us: 0,
                busy_x100: None,
                rate_x100: None,
                clock,
                drift_us: Some(3),
            },
        }
    }

    fn ok_verify(pages: u64) -> Option<VerifySummary> {
        Some(VerifySummary {
            side: Side::Destination,
            ok: true,
            pages,
            bad: 0,
            first_bad_page: None,
            first_bad_reason: None,
            elapsed_us: 1,
        })
    }

    #[test]
    fn a_clean_run_passes() {
        let src = [
            t(Side::Source, 0, 0, ClockStatus::Ok),
            t(Side::Source, 0, 1, ClockStatus::Ok),
        ];
        let dst = [t(Side::Destination, 0, 2, ClockStatus::Ok)];
        let v = judge(&Evidence {
            source_lines: &[],
            destination_lines: &[],
            source_ticks: &src,
            destination_ticks: &dst,
            expected_pages: Some(10),
            verify: ok_verify(10),
            run_problems: Vec::new(),
        });
        assert!(v.passed, "{v:?}");
        assert_eq!(v.short(), "pass");
    }

    #[test]
    fn lost_and_repeated_ticks_bad_pages_and_clocks_fail() {
        let src = [
            t(Side::Source, 0, 0, ClockStatus::Ok),
            t(Side::Source, 0, 1, ClockStatus::Ok),
        ];
        let dst = [
            t(Side::Destination, 0, 4, ClockStatus::Jump),
            t(Side::Destination, 0, 4, ClockStatus::Ok),
        ];
        let mut bad = ok_verify(10).unwrap();
        bad.ok = false;
        bad.bad = 1;
        bad.first_bad_page = Some(7);
        bad.first_bad_reason = Some("torn".into());
        let v = judge(&Evidence {
            source_lines: &[],
            destination_lines: &[],
            source_ticks: &src,
            destination_ticks: &dst,
            expected_pages: Some(10),
            verify: Some(bad),
            run_problems: Vec::new(),
        });
        let kinds: Vec<FindingKind> = v.findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FindingKind::BadPages,
                FindingKind::TicksLost,
                FindingKind::TicksRepeated,
                FindingKind::Clock
            ]
        );
        assert_eq!(v.findings[3].severity, Severity::Note);
        assert!(v.findings[0].message.contains("page 7 (torn)"));
        assert!(v.findings[1]
            .message
            .contains("ticks 2..=3 missing across the switchover"));
        assert!(v.short().starts_with("FAIL: 1 bad pages"));
    }

    #[test]
    fn a_clock_jump_is_a_note_and_a_backwards_clock_fails() {
        let judge_ticks = |clock| {
            let ticks = [
                t(Side::Source, 0, 0, ClockStatus::Ok),
                t(Side::Destination, 0, 1, clock),
            ];
            judge(&Evidence {
                source_lines: &[],
                destination_lines: &[],
                source_ticks: &ticks[..1],
                destination_ticks: &ticks[1..],
                expected_pages: Some(10),
                verify: ok_verify(10),
                run_problems: Vec::new(),
            })
        };
        let jump = judge_ticks(ClockStatus::Jump);
        assert!(jump.passed, "{jump:?}");
        assert!(jump
            .short()
            .starts_with("pass (note: 1 ticks where TSC and kvmclock disagreed"));
        let back = judge_ticks(ClockStatus::ClockBackwards);
        assert!(!back.passed);
        assert!(back.findings[0]
            .message
            .contains("destination cpu 0 tick 1: clock clock_backwards"));
    }

    #[test]
    fn garbled_lines_and_a_restarted_meter_fail() {
        let clock = crate::console::RunClock::start();
        let text = "t*\u{fffd}st: {\"event\":\"tick\"}tern-guest: {\"event\":\"baseline\",\"cpu\":0,\"work_per_s\":5}\n\
                    tern-guest: {\"event\":\"baseline\",\"cpu\":0,\"work_per_s\":5}\n";
        let mut c = crate::console::Console::start(
            "destination",
            clock,
            std::io::Cursor::new(text.as_bytes().to_vec()),
        );
        c.drain_until_closed(std::time::Duration::from_secs(5))
            .unwrap();
        let v = judge(&Evidence {
            source_lines: &[],
            destination_lines: c.lines(),
            source_ticks: &[],
            destination_ticks: &[],
            expected_pages: Some(10),
            verify: ok_verify(10),
            run_problems: Vec::new(),
        });
        let kinds: Vec<FindingKind> = v.findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [FindingKind::GarbledLine, FindingKind::MeterRestarted],
            "{v:?}"
        );
    }

    #[test]
    fn no_verify_and_a_short_verify_fail() {
        let v = judge(&Evidence {
            source_lines: &[],
            destination_lines: &[],
            source_ticks: &[],
            destination_ticks: &[],
            expected_pages: Some(10),
            verify: None,
            run_problems: vec!["after the migration: no tick".into()],
        });
        assert_eq!(v.findings[0].kind, FindingKind::RunStep);
        assert_eq!(v.findings[1].kind, FindingKind::NoVerify);
        let v = judge(&Evidence {
            source_lines: &[],
            destination_lines: &[],
            source_ticks: &[],
            destination_ticks: &[],
            expected_pages: Some(10),
            verify: ok_verify(9),
            run_problems: Vec::new(),
        });
        assert_eq!(v.findings[0].kind, FindingKind::VerifyIncomplete);
    }
}
