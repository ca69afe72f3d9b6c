//! `tern migrate --estimate`: sample the guest's dirtying with dirty logging
//! on, without migrating, then run the convergence simulator on what was
//! measured (the same controller the migration uses) for each aggression
//! level: predicted total time, downtime, throttle and guest CPU lost.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::controller::ControllerConfig;
use migration::dirty::{DirtySet, RegionLayout};
use migration::predict::{predict, GuestMeasurements, VcpuSample, DEFAULT_AGGRESSIONS};
use serde_json::json;
use vm_memory::{Bytes, GuestAddress};

use super::harvest::per_vcpu_totals;
use super::MigrationError;
use crate::api::types::EstimateRequest;
use crate::machine::Machine;
use crate::vstate::vm::DirtyTracking;

/// Harvest window: short enough that a page is rarely written twice within it.
const WINDOW: Duration = Duration::from_millis(100);
const PAGE: u64 = 4096;

/// Samples for `req.sample_s` seconds and predicts.
pub fn run(machine: &Machine, req: &EstimateRequest) -> Result<serde_json::Value, MigrationError> {
    if !(req.sample_s.is_finite() && req.sample_s > 0.0 && req.sample_s <= 600.0) {
        return Err(MigrationError::BadRequest(format!(
            "sample time {} s must be in (0, 600]",
            req.sample_s
        )));
    }
    let layout: Vec<RegionLayout> = machine
        .dirty
        .slots()
        .iter()
        .map(|s| RegionLayout { pages: s.pages() })
        .collect();
    let distinct = Arc::new(DirtySet::new(&layout));
    let result = sample(machine, &distinct, Duration::from_secs_f64(req.sample_s));
    machine.dirty.set_sink(None);
    if let Err(e) = machine.vm.memory.set_dirty_logging(&machine.vm.fd, false) {
        log::error!("estimate: cannot turn dirty logging off: {e}");
    }
    let s = result?;
    let (link, link_source) = match req.bandwidth_bytes_per_sec {
        Some(b) if b > 0 => (b as f64, "given"),
        _ => (
            measure_local_stream_rate(),
            "measured: this host's local stream rate",
        ),
    };
    let vcpus = machine.controls.len();
    let distinct_bytes = distinct.count() * PAGE;
    let total_rate: f64 = s.rates.iter().sum();
    let samples: Vec<VcpuSample> = if s.attributed {
        s.rates
            .iter()
            .zip(&s.busy)
            .map(|(&r, &b)| VcpuSample {
                dirty_bytes_per_sec: r,
                // Distinct pages cannot be attributed: split by write rate.
                distinct_bytes: if total_rate > 0.0 {
                    (distinct_bytes as f64 * r / total_rate) as u64
                } else {
                    0
                },
                busy_fraction: b,
            })
            .collect()
    } else {
        vec![VcpuSample {
            dirty_bytes_per_sec: total_rate,
            distinct_bytes,
            busy_fraction: s.busy.iter().sum::<f64>() / vcpus.max(1) as f64,
        }]
    };
    let m = GuestMeasurements {
        memory_bytes: machine.config.mem_bytes,
        nonzero_bytes: s.nonzero_pages * PAGE,
        page_size: PAGE,
        window: s.window,
        vcpus: samples,
        link_bytes_per_sec: link,
        link_latency: Duration::from_millis(1),
        state_transfer: Duration::from_millis(20),
    };
    let mut cfg = ControllerConfig::new(vcpus);
    cfg.max_downtime = Duration::from_millis(req.max_downtime_ms.max(1));
    cfg.state_transfer_allowance = cfg.state_transfer_allowance.min(cfg.max_downtime / 3);
    cfg.max_throttle = (req.max_throttle_pct / 100.0).clamp(0.0, 0.99);
    let p = predict(&m, &cfg, &DEFAULT_AGGRESSIONS)
        .map_err(|e| MigrationError::BadRequest(e.to_string()))?;
    let rows: Vec<_> = p
        .rows
        .iter()
        .map(|r| {
            json!({
                "aggression": r.aggression,
                "converges": matches!(r.outcome, migration::sim::Outcome::Converged),
                "outcome": r.outcome,
                "total_s": r.total_time.as_secs_f64(),
                "downtime_ms": r.downtime.map(|d| d.as_secs_f64() * 1e3),
                "rounds": r.rounds,
                "bytes_sent": r.bytes_sent,
                "mean_throttle_pct": r.mean_throttle * 100.0,
                "max_throttle_pct": r.max_throttle * 100.0,
                "cpu_lost_vcpu_s": r.cpu_lost_vcpu_secs,
            })
        })
        .collect();
    Ok(json!({
        "sample_s": s.window.as_secs_f64(),
        "dirty_tracking": match machine.vm.tracking {
            DirtyTracking::Ring { .. } => "ring",
            DirtyTracking::Bitmap => "bitmap",
        },
        "per_vcpu_attribution": s.attributed,
        "memory_bytes": m.memory_bytes,
        "nonzero_bytes": m.nonzero_bytes,
        "working_set_bytes": distinct_bytes,
        "dirty_bytes_per_sec": total_rate,
        "vcpu_dirty_bytes_per_sec": s.attributed.then(|| s.rates.clone()),
        "vcpu_busy_fraction": s.busy,
        "link_bytes_per_sec": link,
        "link_source": link_source,
        "max_downtime_ms": req.max_downtime_ms,
        "predictions": rows,
    }))
}

struct Sample {
    window: Duration,
    /// Write rate per vCPU (ring) or for the whole guest (bitmap), bytes/s.
    rates: Vec<f64>,
    /// Whether `rates` is per vCPU.
    attributed: bool,
    /// CPU share each vCPU used while sampled.
    busy: Vec<f64>,
    nonzero_pages: u64,
}

fn dirty_err(e: impl std::fmt::Display) -> MigrationError {
    MigrationError::DirtyLog(e.to_string())
}

fn sample(
    machine: &Machine,
    distinct: &Arc<DirtySet>,
    span: Duration,
) -> Result<Sample, MigrationError> {
    let ring = matches!(machine.vm.tracking, DirtyTracking::Ring { .. });
    let vcpus = machine.controls.len();
    // Drop anything a ring holds from before, then log into `distinct`.
    machine.dirty.set_sink(None);
    if ring {
        super::harvest::harvest_all_rings(machine)?;
    }
    machine.dirty.set_sink(Some(distinct.clone()));
    machine
        .vm
        .memory
        .set_dirty_logging(&machine.vm.fd, true)
        .map_err(dirty_err)?;
    if !ring {
        // INITIALLY_SET: every page starts dirty. Re-arm them all (in bounded chunks).
        bitmap_window(machine, None)?;
    }
    let run_ns = |i: usize| machine.controls[i].counters.run_ns.load(Ordering::Relaxed);
    let run0: Vec<u64> = (0..vcpus).map(run_ns).collect();
    let mut bitmap_pages = 0u64;
    let per_vcpu0 = per_vcpu_totals(machine);
    let start = Instant::now();
    while start.elapsed() < span {
        std::thread::sleep(WINDOW);
        if ring {
            super::harvest::harvest_all_rings(machine)?;
        } else {
            bitmap_pages += bitmap_window(machine, Some(distinct))?;
        }
    }
    let window = start.elapsed();
    let secs = window.as_secs_f64();
    // Per vCPU: ring entries, or with the bitmap its dirty-tracking faults.
    let per_vcpu: Option<Vec<f64>> = per_vcpu0.zip(per_vcpu_totals(machine)).map(|(a, b)| {
        b.iter()
            .zip(&a)
            .map(|(n, o)| n.saturating_sub(*o) as f64)
            .collect()
    });
    let bitmap_bytes_per_sec = bitmap_pages as f64 * PAGE as f64 / secs;
    let (rates, attributed) = match per_vcpu {
        Some(pages) if ring => (pages.iter().map(|p| p * PAGE as f64 / secs).collect(), true),
        Some(faults) => {
            // Split the bitmap's pages by each vCPU's share of the faults.
            let total: f64 = faults.iter().sum();
            let share = |f: &f64| if total > 0.0 { f / total } else { 0.0 };
            (
                faults
                    .iter()
                    .map(|f| bitmap_bytes_per_sec * share(f))
                    .collect(),
                true,
            )
        }
        None => (vec![bitmap_bytes_per_sec], false),
    };
    let busy = (0..vcpus)
        .map(|i| ((run_ns(i) - run0[i]) as f64 / window.as_nanos() as f64).clamp(0.0, 1.0))
        .collect();
    Ok(Sample {
        window,
        rates,
        attributed,
        busy,
        nonzero_pages: count_nonzero_pages(machine)?,
    })
}

/// Bitmap mode: reads every slot's log, records it in `distinct`, and re-arms
/// it 64 words (4096 pages) at a time. Returns the pages seen.
fn bitmap_window(machine: &Machine, distinct: Option<&DirtySet>) -> Result<u64, MigrationError> {
    let mut seen = 0u64;
    for s in machine.dirty.slots() {
        let bitmap = machine
            .vm
            .fd
            .get_dirty_log(s.slot, s.size as usize)
            .map_err(|e| dirty_err(format!("KVM_GET_DIRTY_LOG: {e}")))?;
        seen += bitmap
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>();
        if let Some(d) = distinct {
            d.mark_bitmap(s.slot as usize, &bitmap);
        }
        for (chunk_index, chunk) in bitmap.chunks(64).enumerate() {
            if chunk.iter().all(|w| *w == 0) {
                continue;
            }
            let mut bits = chunk.to_vec();
            machine
                .dirty
                .clear_pages(
                    &machine.vm.fd,
                    s.slot,
                    chunk_index as u64 * 64 * 64,
                    &mut bits,
                )
                .map_err(dirty_err)?;
        }
    }
    Ok(seen)
}

/// Pages of guest memory that are not all zeroes.
fn count_nonzero_pages(machine: &Machine) -> Result<u64, MigrationError> {
    let mut buf = vec![0u8; 64 * PAGE as usize];
    let mut n = 0;
    for s in machine.dirty.slots() {
        let mut off = 0;
        while off < s.size {
            let len = (buf.len() as u64).min(s.size - off) as usize;
            machine
                .mem
                .read_slice(&mut buf[..len], GuestAddress(s.guest_addr + off))
                .map_err(|e| MigrationError::Memory(e.to_string()))?;
            n += buf[..len]
                .chunks_exact(PAGE as usize)
                .filter(|p| p.iter().any(|&b| b != 0))
                .count() as u64;
            off += len as u64;
        }
    }
    Ok(n)
}

/// What this host can push through a local stream socket, bytes/s: the
/// link rate assumed when none is given.
fn measure_local_stream_rate() -> f64 {
    const TOTAL: usize = 256 << 20;
    let Ok((mut a, mut b)) = UnixStream::pair() else {
        return 1e9;
    };
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    });
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        if a.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(a);
    let _ = reader.join();
    sent as f64 / start.elapsed().as_secs_f64().max(1e-6)
}
