//! `tern migrate --estimate`: sample the guest's dirty rates with dirty
//! logging on, without migrating, and predict what a migration would cost.

use std::time::{Duration, Instant};

use migration::dirty::{DirtySet, RegionLayout};
use serde_json::json;

use super::harvest::Harvester;
use super::MigrationError;
use crate::api::types::EstimateRequest;
use crate::machine::Machine;

/// Samples for `req.sample_s` seconds and returns the measurements.
pub fn run(machine: &Machine, req: &EstimateRequest) -> Result<serde_json::Value, MigrationError> {
    if !(req.sample_s.is_finite() && req.sample_s > 0.0 && req.sample_s <= 600.0) {
        return Err(MigrationError::BadRequest(format!("sample time {} s must be in (0, 600]", req.sample_s)));
    }
    let layout: Vec<RegionLayout> = machine
        .dirty
        .slots()
        .iter()
        .map(|s| RegionLayout { pages: s.pages() })
        .collect();
    let set = std::sync::Arc::new(DirtySet::new(&layout));
    machine.dirty.set_sink(Some(set.clone()));
    let result = sample(machine, &set, Duration::from_secs_f64(req.sample_s));
    machine.dirty.set_sink(None);
    let _ = machine.vm.memory.set_dirty_logging(&machine.vm.fd, false);
    let s = result?;
    Ok(json!({
        "sample_s": s.secs,
        "working_set_bytes": s.unique_pages * 4096,
        "dirty_bytes_per_sec": s.dirty_pages_per_sec * 4096.0,
        "vcpu_dirty_bytes_per_sec": s.vcpu_pages_per_sec.as_ref().map(|v| v.iter().map(|p| p * 4096.0).collect::<Vec<_>>()),
    }))
}

struct Sample {
    secs: f64,
    unique_pages: u64,
    dirty_pages_per_sec: f64,
    vcpu_pages_per_sec: Option<Vec<f64>>,
}

fn sample(machine: &Machine, set: &DirtySet, span: Duration) -> Result<Sample, MigrationError> {
    machine
        .vm
        .memory
        .set_dirty_logging(&machine.vm.fd, true)
        .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
    let mut h = Harvester::new(machine, set);
    // In bitmap mode with INITIALLY_SET every page starts dirty: discard that first view.
    h.harvest(machine, set)?;
    set.clear();
    let start = Instant::now();
    let mut added = 0u64;
    let mut per_vcpu: Option<Vec<u64>> = None;
    while start.elapsed() < span {
        std::thread::sleep(Duration::from_millis(250));
        let r = h.harvest(machine, set)?;
        added += r.added;
        if let Some(v) = r.per_vcpu {
            let acc = per_vcpu.get_or_insert_with(|| vec![0; v.len()]);
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
        if machine.vm.tracking == crate::vstate::vm::DirtyTracking::Bitmap {
            // Re-arm what was seen so that rewrites count as dirtying again.
            rearm_all(machine, set)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Sample {
        secs,
        unique_pages: set.count(),
        dirty_pages_per_sec: added as f64 / secs,
        vcpu_pages_per_sec: per_vcpu.map(|v| v.into_iter().map(|p| p as f64 / secs).collect()),
    })
}

fn rearm_all(machine: &Machine, set: &DirtySet) -> Result<(), MigrationError> {
    for (r, slot) in machine.dirty.slots().iter().enumerate() {
        let n = set.words(r);
        let mut w = 0;
        while w < n {
            let end = (w + 64).min(n);
            // Peek without taking: the set keeps the working set.
            let mut bits: Vec<u64> = (w..end).map(|i| set.take_word(r, i)).collect();
            for (i, b) in bits.iter().enumerate() {
                set.mark_word(r, w + i, *b);
            }
            machine
                .dirty
                .clear_pages(&machine.vm.fd, slot.slot, w as u64 * 64, &mut bits)
                .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
            w = end;
        }
    }
    Ok(())
}
