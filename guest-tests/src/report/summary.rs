//! The scenario tables: one run in detail, and runs side by side with
//! tern/QEMU ratios.

use crate::report::table::{mib, num, ratio, Table};
use crate::run::RunResult;
use crate::vmm::VmmKind;

/// A run, or why it could not be carried out.
pub enum RunReport {
    Done(Box<RunResult>),
    Error {
        vmm: VmmKind,
        scenario: String,
        error: String,
    },
}

impl RunReport {
    pub fn vmm(&self) -> VmmKind {
        match self {
            RunReport::Done(r) => r.vmm,
            RunReport::Error { vmm, .. } => *vmm,
        }
    }

    pub fn result(&self) -> Option<&RunResult> {
        match self {
            RunReport::Done(r) => Some(r),
            RunReport::Error { .. } => None,
        }
    }
}

fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|u| u as f64 / 1e3)
}

/// One run in detail: a two-column table.
pub fn detail(r: &RunResult) -> String {
    let m = &r.migration;
    let g = &r.guest;
    let mut t = Table::key_value();
    let link = r.scenario.link.map_or("loopback".to_string(), |l| {
        format!("shaped, {:.0} MiB/s", l.rate_mib_s())
    });
    t.row([
        "scenario".to_string(),
        format!("{} — {}", r.scenario.name, r.scenario.description),
    ]);
    t.row(["vmm".to_string(), r.vmm.label().to_string()]);
    t.row([
        "guest".to_string(),
        format!(
            "{} vCPU, {} MiB: {}",
            r.scenario.cpus, r.scenario.memory_mib, r.guest_cmdline
        ),
    ]);
    t.row(["link".to_string(), link]);
    t.row([
        "boot".to_string(),
        format!(
            "ready {} ms after start, {} attempt(s){}",
            num(r.boot.to_ready_ms, 1),
            r.boot.attempts,
            r.boot
                .first_failure
                .as_deref()
                .map_or(String::new(), |f| format!(" (first failed: {f})"))
        ),
    ]);
    t.row(["result".to_string(), m.status.short()]);
    t.row([
        "total time (s)".to_string(),
        num(m.total_ms.map(|t| t / 1e3), 2),
    ]);
    t.row(["downtime (ms)".to_string(), num(m.downtime_ms, 1)]);
    t.row(["setup (ms)".to_string(), num(m.setup_ms, 1)]);
    t.row(["sent (MiB)".to_string(), mib(m.bytes_sent)]);
    t.row([
        "rounds".to_string(),
        m.rounds.map_or("-".into(), |r| r.to_string()),
    ]);
    t.row(["max throttle (%)".to_string(), num(m.max_throttle_pct, 0)]);
    t.row(["work retained (%)".to_string(), num(g.work_retained_pct, 1)]);
    t.row(["work after (%)".to_string(), num(g.after_work_pct, 1)]);
    t.row([
        "max guest stall (ms)".to_string(),
        num(ms(g.max_stall_us), 1),
    ]);
    t.row([
        "switchover gap (ms)".to_string(),
        num(g.switchover_gap_ms, 1),
    ]);
    t.row([
        "guest dirty (MiB/s)".to_string(),
        format!(
            "{} before, {} during",
            num(g.baseline_dirty_mib_s, 1),
            num(g.during_dirty_mib_s, 1)
        ),
    ]);
    t.row(["verify".to_string(), r.verdict.short()]);
    if let Some(reason) = reason(r) {
        t.row(["reason".to_string(), reason]);
    }
    t.render()
}

/// Why a migration did not complete.
fn reason(r: &RunResult) -> Option<String> {
    use crate::vmm::MigrationStatus::*;
    match &r.migration.status {
        Completed => None,
        DidNotConverge { reason, .. } | Failed { reason } => Some(reason.clone()),
    }
}

/// The columns of [`side_by_side`].
pub const COLUMNS: [&str; 11] = [
    "vmm",
    "result",
    "total s",
    "downtime ms",
    "max stall ms",
    "work kept %",
    "sent MiB",
    "rounds",
    "max thr %",
    "gap ms",
    "verify",
];

/// Runs of one scenario side by side, then the ratios of tern to each QEMU
/// run (total time, downtime and bytes only when both completed).
pub fn side_by_side(reports: &[RunReport]) -> String {
    let mut t = Table::new(COLUMNS);
    for rep in reports {
        match rep {
            RunReport::Done(r) => {
                let m = &r.migration;
                t.row([
                    r.vmm.label().to_string(),
                    m.status.short(),
                    num(m.total_ms.map(|t| t / 1e3), 2),
                    num(m.downtime_ms, 1),
                    num(ms(r.guest.max_stall_us), 1),
                    num(r.guest.work_retained_pct, 1),
                    mib(m.bytes_sent),
                    m.rounds.map_or("-".into(), |r| r.to_string()),
                    num(m.max_throttle_pct, 0),
                    num(r.guest.switchover_gap_ms, 0),
                    if r.verdict.passed {
                        "pass".into()
                    } else {
                        "FAIL".into()
                    },
                ]);
            }
            RunReport::Error { vmm, .. } => {
                t.row([vmm.label().to_string(), "ERROR (below)".to_string()]);
            }
        }
    }
    let tern = reports
        .iter()
        .find_map(|r| r.result().filter(|r| r.vmm == VmmKind::Tern));
    if let Some(tern) = tern {
        for q in reports
            .iter()
            .filter_map(RunReport::result)
            .filter(|r| r.vmm.is_qemu())
        {
            let both = tern.migration.status.completed() && q.migration.status.completed();
            let when = |a: Option<f64>, b: Option<f64>| if both { ratio(a, b) } else { "-".into() };
            let tm = &tern.migration;
            let qm = &q.migration;
            t.row([
                format!("tern/{}", q.vmm.label()),
                String::new(),
                when(tm.total_ms, qm.total_ms),
                when(tm.downtime_ms, qm.downtime_ms),
                ratio(ms(tern.guest.max_stall_us), ms(q.guest.max_stall_us)),
                ratio(tern.guest.work_retained_pct, q.guest.work_retained_pct),
                when(
                    tm.bytes_sent.map(|b| b as f64),
                    qm.bytes_sent.map(|b| b as f64),
                ),
            ]);
        }
    }
    let mut out = t.render();
    for r in reports {
        if let RunReport::Error { vmm, error, .. } = r {
            out.push_str(&format!("error: {}: {error}\n", vmm.label()));
        }
    }
    for r in reports.iter().filter_map(RunReport::result) {
        if let Some(first) = &r.boot.first_failure {
            out.push_str(&format!(
                "note: {}: the first boot failed, the retry worked: {first}\n",
                r.vmm.label()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_rows() {
        let s = side_by_side(&[RunReport::Error {
            vmm: VmmKind::Tern,
            scenario: "idle".into(),
            error: "boom".into(),
        }]);
        assert!(
            s.lines().nth(2).unwrap().starts_with("tern  ERROR (below)"),
            "{s}"
        );
        assert!(
            s.lines().nth(3).unwrap().starts_with("error: tern: boom"),
            "{s}"
        );
    }
}
