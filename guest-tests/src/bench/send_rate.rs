//! Send rate when nothing can be skipped: the guest fills a working set with
//! self-checking (never zero) pages and then only meters time (`tern.rate=0`,
//! halting between ticks: `tern.idle=halt`), so the bulk pass is all data. tern, tern with a `--prefault` destination
//! (its memory backed before the stream arrives: the same migration without
//! the destination's first-touch page faults, which on a nested host cost
//! more than the copy) and QEMU on the same guest, alternating, against three
//! plain loopback TCP copies on the same machine, measured once per round
//! (see [`crate::bench::loopback`]): between reused buffers (the machine's
//! loopback throughput, the reference), from memory into prefaulted
//! memory (what a `--prefault` destination's migration must at least do) and
//! from memory into fresh memory (the same for a destination without it).
//! And against the same machine's loopback as `iperf3` measures it, with its
//! default writes and with 1 MiB writes ([`crate::bench::iperf`]): the figure
//! an outsider would take for the machine's loopback TCP throughput.

use crate::artifacts;
use crate::bench::iperf;
use crate::bench::loopback::{self, Sink, Source};
use crate::bench::stats::Spread;
use crate::error::{Error, Result};
use crate::report::table::{num, ratio, Table};
use crate::run::{run_scenario, RunContext, RunResult};
use crate::scenario::Scenario;
use crate::tern::Tern;
use crate::vmm::Hypervisor;
use crate::workdir::WorkDir;

/// MiB/s over the migration proper (setup excluded).
fn send_rate(r: &RunResult) -> Option<f64> {
    let m = &r.migration;
    let seconds = m.total_ms.map(|t| (t - m.setup_ms.unwrap_or(0.0)) / 1e3)?;
    let bytes = m.bytes_sent?;
    (seconds > 0.0).then(|| bytes as f64 / 1048576.0 / seconds)
}

/// CPU per GiB sent of a tern migration, ms: the source's migration loop
/// (which does all of the sending) and the destination's receiving thread
/// (from its "guest received (…, N ms of CPU)" line).
fn tern_cpu_per_gib(r: &RunResult) -> Option<[f64; 2]> {
    let gib = r.migration.bytes_sent? as f64 / (1u64 << 30) as f64;
    let cpu = &r.migration.vmm_stats["cpu_ms"];
    let dest = destination_cpu_ms(&r.destination_stderr)?;
    if gib <= 0.0 {
        return None;
    }
    Some([cpu["loop_ms"].as_f64()? / gib, dest / gib])
}

/// The CPU a tern destination's receiving thread used, ms, from its
/// "tern: guest received (…, N ms of CPU) and running" line.
fn destination_cpu_ms(stderr: &[String]) -> Option<f64> {
    stderr
        .iter()
        .find(|l| l.contains("guest received"))?
        .split(", ")
        .find_map(|p| p.strip_suffix(" ms of CPU) and running"))?
        .parse()
        .ok()
}

/// CPU per GiB of a plain copy, ms: writer and reader.
fn copy_cpu_per_gib(t: &loopback::Throughput) -> Option<[f64; 2]> {
    let gib = t.bytes as f64 / (1u64 << 30) as f64;
    if gib <= 0.0 {
        return None;
    }
    Some([t.writer_cpu_s? * 1e3 / gib, t.reader_cpu_s? * 1e3 / gib])
}

/// Medians of each column of `rows`, shown "a / b / …" (or "-").
fn show_columns<const N: usize>(rows: &[[f64; N]]) -> String {
    if rows.is_empty() {
        return "-".into();
    }
    (0..N)
        .map(|c| {
            let col: Vec<f64> = rows.iter().map(|r| r[c]).collect();
            Spread::of(&col).map_or("-".into(), |s| format!("{:.0}", s.median))
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Runs the benchmark with a `ws_mib` working set, `runs` times per VMM; the
/// table as text.
pub fn run(tern: &Tern, qemu: &dyn Hypervisor, ws_mib: u32, runs: usize) -> Result<String> {
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
            // Nothing to do after the fill: halt, not spin, so the vCPU does
            // not take one of the host's cores from the migration.
            "guest.idle=halt".into(),
        ],
    )?;
    let prefaulted = Tern {
        prefault_destination: true,
        ..Tern::new(tern.binary.clone())
    };
    let vmms: [(&str, &dyn Hypervisor); 3] = [
        ("tern", tern),
        ("tern, destination --prefault", &prefaulted),
        ("qemu", qemu),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut last: [Option<RunResult>; 3] = Default::default();
    let mut notes = Vec::new();
    // The copies are measured in every round too: the machine's speed moves
    // between rounds (other tenants, the host's memory), and a ratio against
    // one measurement would carry its luck.
    let copy_bytes = u64::from(ws_mib.max(1024)) << 20;
    let mut reused = Vec::new();
    let mut prefaulted = Vec::new();
    let mut fresh = Vec::new();
    // Per round and VMM: its rate over the round's reused-buffer copy, and
    // over the round's memory-to-memory copy like its destination's.
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut memory_ratios: [Vec<f64>; 3] = Default::default();
    // CPU per GiB: tern's (loop, writer, destination) per tern VMM; the
    // copies' (writer, reader).
    let mut tern_cpu: [Vec<[f64; 2]>; 2] = Default::default();
    let mut reused_cpu = Vec::new();
    let mut prefaulted_cpu = Vec::new();
    let iperf_server = iperf::Server::start()?;
    // Per write size of iperf::WRITE_SIZES: its rates, and per VMM the
    // round's rate over it.
    let mut iperf_rates: [Vec<f64>; 2] = Default::default();
    let mut iperf_ratios: [[Vec<f64>; 2]; 3] = Default::default();
    for _ in 0..runs.max(1) {
        let mut round: [Option<f64>; 3] = [None; 3];
        for (i, (label, hv)) in vmms.iter().enumerate() {
            let dir = WorkDir::create("send-rate")?;
            let ctx = RunContext {
                images: &images,
                work_dir: dir.path(),
                injection: None,
            };
            let r = run_scenario(*hv, &scenario, &ctx)?;
            if !r.migration.status.completed() || !r.verdict.passed {
                notes.push(format!(
                    "{label}: {}; verify {} ({})",
                    r.migration.status.short(),
                    r.verdict.short(),
                    super::kept(&r)
                ));
                continue;
            }
            match send_rate(&r) {
                Some(rate) => {
                    rates[i].push(rate);
                    round[i] = Some(rate);
                }
                None => notes.push(format!("{label}: no bytes sent or total time reported")),
            }
            if let (Some(cpu), Some(slot)) = (tern_cpu_per_gib(&r), tern_cpu.get_mut(i)) {
                slot.push(cpu);
            }
            last[i] = Some(r);
        }
        let copy = loopback::measure_copy(copy_bytes, Source::Reused, Sink::Reused)?;
        reused_cpu.extend(copy_cpu_per_gib(&copy));
        let copy = copy.mib_per_s();
        reused.push(copy);
        let to_prefaulted =
            loopback::measure_copy(copy_bytes, Source::Memory, Sink::PrefaultedMemory)?;
        prefaulted_cpu.extend(copy_cpu_per_gib(&to_prefaulted));
        let to_prefaulted = to_prefaulted.mib_per_s();
        prefaulted.push(to_prefaulted);
        let to_fresh =
            loopback::measure_copy(copy_bytes, Source::Memory, Sink::FreshMemory)?.mib_per_s();
        fresh.push(to_fresh);
        let mut iperf_round = [0.0; 2];
        for (k, write_size) in iperf::WRITE_SIZES.into_iter().enumerate() {
            iperf_round[k] = iperf_server.measure(copy_bytes, write_size)?;
            iperf_rates[k].push(iperf_round[k]);
        }
        for (i, rate) in round.iter().enumerate() {
            if let Some(rate) = rate {
                for (k, reference) in iperf_round.iter().enumerate() {
                    iperf_ratios[i][k].push(rate / reference * 100.0);
                }
                ratios[i].push(rate / copy * 100.0);
                // Only tern with a --prefault destination backs its memory first.
                let like = if i == 1 { to_prefaulted } else { to_fresh };
                memory_ratios[i].push(rate / like * 100.0);
            }
        }
    }
    if rates[0].is_empty() {
        return Err(Error::vm(
            "tern",
            format!("no migration completed and verified: {}", notes.join("; ")),
        ));
    }
    let spreads = rates.each_ref().map(|r| Spread::of(r));
    let (Some(reused), Some(prefaulted), Some(fresh)) = (
        Spread::of(&reused),
        Spread::of(&prefaulted),
        Spread::of(&fresh),
    ) else {
        return Err(Error::vm("loopback", "no copy measured".to_string()));
    };

    let mut t = Table::key_value();
    t.row([
        "guest".to_string(),
        format!("{memory} MiB, {ws_mib} MiB of non-zero pages"),
    ]);
    for (i, (label, _)) in vmms.iter().enumerate() {
        if let Some(r) = &last[i] {
            let m = &r.migration;
            t.row([
                format!("{label} data / zero pages, sent MiB"),
                format!(
                    "{} / {}, {}",
                    m.data_pages.map_or("-".into(), |p| p.to_string()),
                    m.zero_pages.map_or("-".into(), |p| p.to_string()),
                    num(m.bytes_sent.map(|b| b as f64 / 1048576.0), 1)
                ),
            ]);
        }
    }
    for (i, (label, _)) in vmms.iter().enumerate() {
        t.row([
            format!("{label}: send rate MiB/s (median of {})", rates[i].len()),
            spreads[i].map_or("-".into(), |s| s.show(0)),
        ]);
    }
    t.row([
        format!("loopback TCP copy, reused buffers MiB/s (median of {runs})"),
        reused.show(0),
    ]);
    t.row([
        format!("loopback TCP copy, memory to prefaulted memory MiB/s (median of {runs})"),
        prefaulted.show(0),
    ]);
    t.row([
        format!("loopback TCP copy, memory to fresh memory MiB/s (median of {runs})"),
        fresh.show(0),
    ]);
    for (k, write_size) in iperf::WRITE_SIZES.into_iter().enumerate() {
        t.row([
            format!(
                "loopback TCP, {} MiB/s (median of {})",
                iperf::label(write_size),
                iperf_rates[k].len()
            ),
            Spread::of(&iperf_rates[k]).map_or("-".into(), |s| s.show(0)),
        ]);
    }
    for (i, (label, _)) in vmms.iter().enumerate() {
        t.row([
            format!("{label} / that round's loopback (reused buffers), %"),
            Spread::of(&ratios[i]).map_or("-".into(), |s| s.show(1)),
        ]);
    }
    for (i, (label, _)) in vmms.iter().enumerate() {
        let like = if i == 1 { "prefaulted" } else { "fresh" };
        t.row([
            format!("{label} / that round's memory-to-{like}-memory copy, %"),
            Spread::of(&memory_ratios[i]).map_or("-".into(), |s| s.show(1)),
        ]);
    }
    for (i, (label, _)) in vmms.iter().enumerate() {
        let shown: Vec<String> = iperf_ratios[i]
            .iter()
            .map(|r| Spread::of(r).map_or("-".into(), |s| s.show(1)))
            .collect();
        t.row([
            format!(
                "{label} / that round's {} / {}, %",
                iperf::label(iperf::WRITE_SIZES[0]),
                iperf::label(iperf::WRITE_SIZES[1])
            ),
            shown.join(" / "),
        ]);
    }
    let median = |i: usize| spreads[i].map(|s| s.median);
    t.row(["tern / qemu".into(), ratio(median(0), median(2))]);
    // Where a 2-core host's two cores go: with every thread busy, the rate
    // follows the total CPU a GiB costs, not the busiest thread's share.
    for (i, cpu) in tern_cpu.iter().enumerate() {
        t.row([
            format!(
                "{}: CPU ms per GiB, source loop / destination (median of {})",
                vmms[i].0,
                cpu.len()
            ),
            show_columns(cpu),
        ]);
    }
    t.row([
        format!(
            "loopback TCP copy, reused buffers: CPU ms per GiB, writer / reader (median of {})",
            reused_cpu.len()
        ),
        show_columns(&reused_cpu),
    ]);
    t.row([
        format!("loopback TCP copy, memory to prefaulted memory: CPU ms per GiB, writer / reader (median of {})", prefaulted_cpu.len()),
        show_columns(&prefaulted_cpu),
    ]);
    let mut out = t.render();
    for n in notes {
        out.push_str(&format!("\nnote: {n}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_cpu_comes_from_its_received_line() {
        let lines = |l: &str| vec!["tern: waiting".to_string(), l.to_string()];
        assert_eq!(
            destination_cpu_ms(&lines(
                "tern: guest received (1 rounds, 262471 data pages, 32446 zero pages, \
                 1075155608 bytes, 123 ms of CPU) and running"
            )),
            Some(123.0)
        );
        // A destination that could not tell its CPU says nothing of it.
        assert_eq!(
            destination_cpu_ms(&lines(
                "tern: guest received (1 rounds, 2 data pages, 3 zero pages, 4 bytes) and running"
            )),
            None
        );
    }
}
