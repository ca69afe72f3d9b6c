//! tern's send rate when nothing can be skipped: the guest fills a working
//! set with self-checking (never zero) pages and then only meters time
//! (`tern.rate=0`), so the bulk pass is all data. Compared with a plain
//! loopback TCP copy on the same machine.

use crate::artifacts;
use crate::bench::loopback;
use crate::error::{Error, Result};
use crate::report::table::{num, Table};
use crate::run::{run_scenario, RunContext};
use crate::scenario::Scenario;
use crate::vmm::Hypervisor;
use crate::workdir::WorkDir;

/// Runs the benchmark with a `ws_mib` working set; the table as text.
pub fn run(tern: &dyn Hypervisor, ws_mib: u32) -> Result<String> {
    artifacts::require_kvm()?;
    let images = artifacts::guest_images()?;
    let memory = u64::from(ws_mib) + 128;
    let scenario = Scenario::build(
        "dirty-low",
        &[
            format!("ws={ws_mib}"),
            "rate=0".into(),
            format!("memory={memory}"),
            "baseline=1".into(),
            "after=1".into(),
            "warmup=3".into(),
        ],
    )?;
    let dir = WorkDir::create("send-rate")?;
    let ctx = RunContext {
        images: &images,
        work_dir: dir.path(),
        injection: None,
    };
    let r = run_scenario(tern, &scenario, &ctx)?;
    if !r.migration.status.completed() {
        return Err(Error::vm(
            "tern",
            format!("migration did not complete: {}", r.migration.status.short()),
        ));
    }
    let copy = loopback::measure(u64::from(ws_mib.max(1024)) << 20)?;
    let m = &r.migration;
    let seconds = m.total_ms.map(|t| (t - m.setup_ms.unwrap_or(0.0)) / 1e3);
    let rate = match (m.bytes_sent, seconds) {
        (Some(b), Some(s)) if s > 0.0 => Some(b as f64 / 1048576.0 / s),
        _ => None,
    };
    let mut t = Table::key_value();
    t.row([
        "guest".to_string(),
        format!("{memory} MiB, {ws_mib} MiB of non-zero pages"),
    ]);
    t.row([
        "data pages".to_string(),
        m.data_pages.map_or("-".into(), |p| p.to_string()),
    ]);
    t.row([
        "zero pages".to_string(),
        m.zero_pages.map_or("-".into(), |p| p.to_string()),
    ]);
    t.row([
        "sent MiB".to_string(),
        num(m.bytes_sent.map(|b| b as f64 / 1048576.0), 1),
    ]);
    t.row([
        "total ms (setup excluded)".to_string(),
        num(seconds.map(|s| s * 1e3), 0),
    ]);
    t.row(["tern send rate MiB/s".to_string(), num(rate, 0)]);
    t.row([
        "loopback TCP copy MiB/s".to_string(),
        num(Some(copy.mib_per_s()), 0),
    ]);
    t.row([
        "tern / loopback".to_string(),
        num(rate.map(|r| r / copy.mib_per_s() * 100.0), 1) + " %",
    ]);
    t.row(["verify".to_string(), r.verdict.short()]);
    Ok(t.render())
}
