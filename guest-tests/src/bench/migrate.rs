//! Migration cost, tern vs QEMU (no auto-converge: these guests converge
//! without it): idle 1 GiB and 4 GiB guests and `dirty-low`, over loopback.
//! Total time, downtime (as each VMM reports it, and as the guest saw it:
//! its longest stall during the migration) and bytes sent, median of `runs`,
//! with ratios. The VMMs' own downtimes are not the same measure: tern's runs
//! until the destination says it resumed, QEMU's ends when the source has
//! sent everything. Two columns compare like with like: "paused→sent" (tern's
//! time to that same point beside QEMU's downtime) and the guest's view.

use crate::artifacts;
use crate::bench::stats::Spread;
use crate::error::{Error, Result};
use crate::report::table::{ratio, Table};
use crate::run::{run_scenario, RunContext, RunResult};
use crate::scenario::Scenario;
use crate::vmm::Hypervisor;
use crate::workdir::WorkDir;

/// The cases: label, scenario, overrides.
pub fn cases() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let short = |extra: &[&str]| -> Vec<String> {
        ["baseline=1", "after=1", "warmup=3"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    vec![
        ("idle 1 GiB", "idle", short(&["memory=1024"])),
        ("idle 4 GiB", "idle", short(&["memory=4096"])),
        ("dirty-low 1 GiB", "dirty-low", short(&[])),
    ]
}

fn medians(results: &[RunResult]) -> [Option<Spread>; 5] {
    let pick = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        Spread::of(&results.iter().filter_map(f).collect::<Vec<_>>())
    };
    [
        pick(&|r| r.migration.total_ms),
        pick(&|r| r.migration.downtime_ms),
        pick(&|r| r.migration.bytes_sent.map(|b| b as f64 / 1048576.0)),
        pick(&|r| r.guest.max_stall_us.map(|us| us as f64 / 1e3)),
        pick(&|r| r.migration.downtime_sent_ms),
    ]
}

/// Runs the benchmark; the table as text.
pub fn run(tern: &dyn Hypervisor, qemu: &dyn Hypervisor, runs: usize) -> Result<String> {
    artifacts::require_kvm()?;
    let images = artifacts::guest_images()?;
    let mut table = Table::new([
        "guest",
        "vmm",
        "ok",
        "total ms",
        "downtime ms",
        "paused→sent ms",
        "guest stall ms",
        "sent MiB",
    ]);
    let mut notes = Vec::new();
    for (label, name, overrides) in cases() {
        let scenario = Scenario::build(name, &overrides)?;
        let mut per_vmm = Vec::new();
        for hv in [tern, qemu] {
            let mut done = Vec::new();
            for _ in 0..runs {
                let dir = WorkDir::create("bench-migrate")?;
                let ctx = RunContext {
                    images: &images,
                    work_dir: dir.path(),
                    injection: None,
                };
                match run_scenario(hv, &scenario, &ctx) {
                    Ok(r) if r.migration.status.completed() && r.verdict.passed => done.push(r),
                    Ok(r) => notes.push(format!(
                        "{label} {}: {:?}; verify {} ({})",
                        hv.kind().label(),
                        r.migration.status,
                        r.verdict.short(),
                        super::kept(&r)
                    )),
                    Err(Error::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => notes.push(format!("{label} {}: {e}", hv.kind().label())),
                }
            }
            let m = medians(&done);
            let show = |s: &Option<Spread>, d: usize| s.map_or("-".into(), |s| s.show(d));
            table.row([
                label.to_string(),
                hv.kind().label().to_string(),
                format!("{}/{runs}", done.len()),
                show(&m[0], 0),
                show(&m[1], 1),
                show(&m[4], 1),
                show(&m[3], 1),
                show(&m[2], 1),
            ]);
            per_vmm.push(m);
        }
        let med = |i: usize, k: usize| per_vmm[i][k].map(|s| s.median);
        table.row([
            label.to_string(),
            "tern/qemu".to_string(),
            String::new(),
            ratio(med(0, 0), med(1, 0)),
            ratio(med(0, 1), med(1, 1)),
            ratio(med(0, 4), med(1, 4)),
            ratio(med(0, 3), med(1, 3)),
            ratio(med(0, 2), med(1, 2)),
        ]);
    }
    let mut out = table.render();
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    Ok(out)
}
