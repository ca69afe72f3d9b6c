//! What the guest's ticks say about a migration: the work rate before
//! (baseline), during and after it, the longest stall, and the gap across
//! the switchover.
//!
//! Every vCPU that runs the stall meter prints a tick per interval with the
//! work it did (`work`, loop iterations), the interval (`interval_us`, by
//! its TSC), its longest gap between iterations (`max_gap_us`) and the pages
//! it dirtied. A work rate is Σwork / Σinterval per vCPU, summed over vCPUs.

use std::collections::BTreeMap;

use serde::Serialize;
use tern_workloads::event::{Event, Tick};

use crate::console::GuestLine;

/// Which VMM printed a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Source,
    Destination,
}

/// A tick and when the runner received it.
#[derive(Clone, Debug, PartialEq)]
pub struct TickAt {
    pub at_ms: f64,
    pub side: Side,
    pub tick: Tick,
}

/// The ticks among `lines`.
pub fn ticks(lines: &[GuestLine], side: Side) -> Vec<TickAt> {
    lines
        .iter()
        .filter_map(|l| match l.event() {
            Some(Event::Tick(t)) => Some(TickAt {
                at_ms: l.at_ms,
                side,
                tick: *t,
            }),
            _ => None,
        })
        .collect()
}

/// Work rate (iterations/s) and dirty rate (MiB/s) over `ticks`, summed
/// over the vCPUs; None without ticks.
pub fn rates<'a>(ticks: impl IntoIterator<Item = &'a TickAt>) -> Option<(f64, f64)> {
    let mut per_cpu: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
    for t in ticks {
        let e = per_cpu.entry(t.tick.cpu).or_default();
        e.0 += t.tick.work;
        e.1 += t.tick.pages;
        e.2 += t.tick.interval_us;
    }
    if per_cpu.is_empty() {
        return None;
    }
    let (mut work, mut dirty) = (0.0, 0.0);
    for (w, pages, us) in per_cpu.values() {
        if *us > 0 {
            let s = *us as f64 / 1e6;
            work += *w as f64 / s;
            dirty += *pages as f64 * 4096.0 / 1048576.0 / s;
        }
    }
    Some((work, dirty))
}

/// One point of the guest's timeline: the ticks of one interval (same
/// side and sequence number) across vCPUs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestPoint {
    /// Seconds since the migration started (negative before).
    pub t_s: f64,
    pub side: Side,
    pub seq: u64,
    /// Work rate against the pre-migration baseline, percent.
    pub work_pct: Option<f64>,
    /// Dirty rate the guest reports, MiB/s (all vCPUs).
    pub dirty_mib_s: f64,
    /// Longest gap of any vCPU in the interval, µs.
    pub max_gap_us: u64,
}

/// The guest's view of one migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GuestMetrics {
    /// Work rate over the pre-migration window, iterations/s (all vCPUs).
    pub baseline_work_per_s: Option<f64>,
    /// Dirty rate over the pre-migration window, MiB/s (guest's count).
    pub baseline_dirty_mib_s: Option<f64>,
    /// Work rate from the migration's start to the first destination tick
    /// (its interval holds the switchover), or to the end if it did not
    /// complete.
    pub during_work_per_s: Option<f64>,
    /// `during / baseline`, percent: the work rate retained.
    pub work_retained_pct: Option<f64>,
    /// Dirty rate during the migration, MiB/s.
    pub during_dirty_mib_s: Option<f64>,
    /// Work rate on the destination after the first tick, percent of the
    /// baseline.
    pub after_work_pct: Option<f64>,
    /// Longest gap any vCPU saw during the migration window, µs (guest
    /// time: its TSC).
    pub max_stall_us: Option<u64>,
    /// When the longest gap ended, seconds since the migration started.
    pub max_stall_at_s: Option<f64>,
    /// Host time between the source's last tick and the destination's first.
    pub switchover_gap_ms: Option<f64>,
    /// The guest's own gap measure in the first destination interval, µs.
    pub first_destination_gap_us: Option<u64>,
    /// Ticks counted per phase.
    pub ticks_before: usize,
    pub ticks_during: usize,
    pub ticks_after: usize,
}

/// Computes [`GuestMetrics`] and the timeline.
///
/// `baseline_from_ms..migration_start_ms` is the pre-migration window;
/// `migration_end_ms` is when the runner saw the migration end.
pub fn analyse(
    source: &[TickAt],
    destination: &[TickAt],
    baseline_from_ms: f64,
    migration_start_ms: f64,
    migration_end_ms: f64,
) -> (GuestMetrics, Vec<GuestPoint>) {
    let before: Vec<&TickAt> = source
        .iter()
        .filter(|t| t.at_ms >= baseline_from_ms && t.at_ms < migration_start_ms)
        .collect();
    let first_dest_seq = destination.iter().map(|t| t.tick.seq).min();
    // A source tick belongs to the migration if its interval overlaps it
    // (a tick that ends after the end still counts when it began before:
    // a vCPU held through the end reports that stall only then). When the
    // guest moved, every source tick after the start does.
    let during_source = |t: &&TickAt| {
        let began_ms = t.at_ms - t.tick.interval_us as f64 / 1e3;
        t.at_ms >= migration_start_ms && (first_dest_seq.is_some() || began_ms < migration_end_ms)
    };
    let mut during: Vec<&TickAt> = source.iter().filter(during_source).collect();
    // The first destination interval holds the switchover.
    during.extend(
        destination
            .iter()
            .filter(|t| Some(t.tick.seq) == first_dest_seq),
    );
    let after: Vec<&TickAt> = destination
        .iter()
        .filter(|t| Some(t.tick.seq) != first_dest_seq)
        .collect();

    let baseline = rates(before.iter().copied());
    let during_rates = rates(during.iter().copied());
    let after_rates = rates(after.iter().copied());
    let pct = |r: Option<(f64, f64)>| match (r, baseline) {
        (Some((w, _)), Some((b, _))) if b > 0.0 => Some(w / b * 100.0),
        _ => None,
    };
    let stall = during.iter().max_by_key(|t| t.tick.max_gap_us);
    let last_source = source
        .iter()
        .map(|t| t.at_ms)
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    let first_dest = destination
        .iter()
        .map(|t| t.at_ms)
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.min(a))));
    let metrics = GuestMetrics {
        baseline_work_per_s: baseline.map(|r| r.0),
        baseline_dirty_mib_s: baseline.map(|r| r.1),
        during_work_per_s: during_rates.map(|r| r.0),
        work_retained_pct: pct(during_rates),
        during_dirty_mib_s: during_rates.map(|r| r.1),
        after_work_pct: pct(after_rates),
        max_stall_us: stall.map(|t| t.tick.max_gap_us),
        max_stall_at_s: stall.map(|t| (t.at_ms - migration_start_ms) / 1e3),
        switchover_gap_ms: match (last_source, first_dest) {
            (Some(l), Some(f)) => Some(f - l),
            _ => None,
        },
        first_destination_gap_us: destination
            .iter()
            .filter(|t| Some(t.tick.seq) == first_dest_seq)
            .map(|t| t.tick.max_gap_us)
            .max(),
        ticks_before: before.len(),
        ticks_during: during.len(),
        ticks_after: after.len(),
    };

    // Timeline: one point per (side, seq).
    let mut groups: BTreeMap<(Side, u64), Vec<&TickAt>> = BTreeMap::new();
    for t in source.iter().chain(destination) {
        groups.entry((t.side, t.tick.seq)).or_default().push(t);
    }
    let points = groups
        .into_iter()
        .map(|((side, seq), ts)| {
            let at = ts.iter().map(|t| t.at_ms).sum::<f64>() / ts.len() as f64;
            let r = rates(ts.iter().copied());
            GuestPoint {
                t_s: (at - migration_start_ms) / 1e3,
                side,
                seq,
                work_pct: pct(r),
                dirty_mib_s: r.map_or(0.0, |r| r.1),
                max_gap_us: ts.iter().map(|t| t.tick.max_gap_us).max().unwrap_or(0),
            }
        })
        .collect();
    (metrics, points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_workloads::clock::ClockStatus;

    fn tick(side: Side, at_ms: f64, cpu: u32, seq: u64, work: u64, gap: u64) -> TickAt {
        TickAt {
            at_ms,
            side,
            tick: Tick {
                cpu,
                seq,
                tsc: 0,
                clock_ns: None,
                interval_us: 100_000,
                work,
                pages: 256,
                dirty_mib_s_x100: 1000,
                max_gap_us: gap,
                stalled_us: 0,
                excluded_us: 0,
                busy_x100: None,
                rate_x100: None,
                clock: ClockStatus::Ok,
                drift_us: None,
            },
        }
    }

    #[test]
    fn baseline_during_after_and_the_switchover_gap() {
        let mut src = Vec::new();
        for seq in 0..10 {
            let at = seq as f64 * 100.0;
            // 1000 work per 100 ms on each of 2 vCPUs before 500 ms, half after.
            let work = if at < 500.0 { 1000 } else { 500 };
            src.push(tick(Side::Source, at, 0, seq, work, 10));
            src.push(tick(Side::Source, at, 1, seq, work, 20));
        }
        let dst = vec![
            tick(Side::Destination, 1300.0, 0, 10, 500, 250_000),
            tick(Side::Destination, 1400.0, 0, 11, 1000, 5),
        ];
        let (m, points) = analyse(&src, &dst, 0.0, 500.0, 1250.0);
        assert_eq!(m.baseline_work_per_s, Some(20_000.0));
        assert_eq!(m.baseline_dirty_mib_s, Some(20.0));
        assert_eq!(m.ticks_before, 10);
        // During: 5 source seqs of 2 × 500, plus the first destination tick.
        assert_eq!(m.ticks_during, 11);
        let retained = m.work_retained_pct.unwrap();
        assert!((retained - 50.0).abs() < 1e-9, "{retained}");
        assert_eq!(m.max_stall_us, Some(250_000));
        assert_eq!(m.first_destination_gap_us, Some(250_000));
        assert_eq!(m.switchover_gap_ms, Some(400.0));
        assert!((m.after_work_pct.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(points.len(), 12);
        assert_eq!(points[0].t_s, -0.5);
        assert_eq!(points[11].side, Side::Destination);
    }

    #[test]
    fn a_stall_reported_after_an_unfinished_migration_still_counts() {
        let mut src: Vec<TickAt> = (0..10)
            .map(|seq| tick(Side::Source, seq as f64 * 100.0, 0, seq, 1000, 10))
            .collect();
        // Held from 1000 ms to past the end (3000 ms), reported at 3500 ms.
        let mut held = tick(Side::Source, 3500.0, 0, 10, 100, 2_400_000);
        held.tick.interval_us = 2_500_000;
        src.push(held);
        // A tick entirely after the end does not count.
        src.push(tick(Side::Source, 3700.0, 0, 11, 1000, 10));
        let (m, _) = analyse(&src, &[], 0.0, 500.0, 3000.0);
        assert_eq!(m.max_stall_us, Some(2_400_000));
        assert_eq!(m.ticks_during, 6);
        assert!(m.work_retained_pct.unwrap() < 20.0, "{m:?}");
    }

    #[test]
    fn no_ticks_no_numbers() {
        let (m, p) = analyse(&[], &[], 0.0, 1.0, 2.0);
        assert_eq!(m, GuestMetrics::default());
        assert!(p.is_empty());
    }
}
