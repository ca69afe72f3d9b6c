//! A model of QEMU's pre-copy policy, with and without auto-converge, for comparison.
//!
//! Modelled from QEMU's `migration/ram.c` and `cpu-throttle.c` as documented in the feature
//! anchors (defaults of QEMU 9–10):
//! - every dirty-bitmap sync (end of a pass, and with auto-converge every 5 s after the first
//!   pass: the periodic re-sync timer) closes a period if ≥ 1 s has passed since the last one;
//! - a period qualifies when the bytes dirtied in it exceed 50 % (`throttle-trigger-threshold`)
//!   of the bytes sent in it; on every 2nd qualifying period (the counter is not reset by
//!   non-qualifying ones) the throttle starts at 20 % (`cpu-throttle-initial`) or rises by 10 %
//!   (`cpu-throttle-increment`), up to 99 % (`max-cpu-throttle`), for **all** vCPUs alike;
//! - switchover when the pending bytes fit `bandwidth × downtime-limit` (300 ms), with the
//!   bandwidth of the last window; device state is not part of that estimate;
//! - no iteration limit and no timeout: it runs until converged or cancelled.

use std::time::Duration;

use crate::controller::{Action, Decision, Estimates, RoundObservation, DEFAULT_PAGE_SIZE};
use crate::throttle::secs_to_duration;

use super::policy::ConvergencePolicy;

/// QEMU's `throttle-trigger-threshold`.
const TRIGGER_THRESHOLD: f64 = 0.5;
/// QEMU's `cpu-throttle-initial`, percent.
const THROTTLE_INITIAL: u32 = 20;
/// QEMU's `cpu-throttle-increment`, percent.
const THROTTLE_INCREMENT: u32 = 10;
/// QEMU's `max-cpu-throttle`, percent.
const THROTTLE_MAX: u32 = 99;
/// QEMU's `downtime-limit`.
const DOWNTIME_LIMIT: Duration = Duration::from_millis(300);
/// The auto-converge periodic dirty sync.
const RESYNC: Duration = Duration::from_secs(5);
/// Minimum length of a trigger period.
const PERIOD: Duration = Duration::from_secs(1);

/// QEMU's policy.
#[derive(Clone, Debug)]
pub struct QemuModel {
    auto_converge: bool,
    vcpus: usize,
    period_start: Duration,
    period_dirty_bytes: f64,
    period_sent_bytes: f64,
    high_count: u32,
    throttle_pct: u32,
    bandwidth: Option<f64>,
    finished: Option<Decision>,
}

impl QemuModel {
    /// QEMU with `auto-converge` on (`true`) or off.
    pub fn new(vcpus: usize, auto_converge: bool) -> QemuModel {
        QemuModel {
            auto_converge,
            vcpus,
            period_start: Duration::ZERO,
            period_dirty_bytes: 0.0,
            period_sent_bytes: 0.0,
            high_count: 0,
            throttle_pct: 0,
            bandwidth: None,
            finished: None,
        }
    }
}

impl ConvergencePolicy for QemuModel {
    fn name(&self) -> String {
        if self.auto_converge {
            "QEMU auto-converge"
        } else {
            "QEMU (no throttle)"
        }
        .to_string()
    }

    fn observe(&mut self, obs: &RoundObservation) -> Decision {
        if let Some(done) = &self.finished {
            return done.clone();
        }
        let page = if obs.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            obs.page_size
        } as f64;
        let send = obs.send_time.as_secs_f64();
        if send > 0.0 {
            self.bandwidth = Some(obs.bytes_sent as f64 / send);
        }
        self.period_dirty_bytes += obs.dirtied_pages as f64 * page;
        self.period_sent_bytes += obs.bytes_sent as f64;
        if obs.elapsed.saturating_sub(self.period_start) >= PERIOD {
            if self.auto_converge
                && self.period_dirty_bytes > TRIGGER_THRESHOLD * self.period_sent_bytes
            {
                self.high_count += 1;
                if self.high_count >= 2 {
                    self.high_count = 0;
                    self.throttle_pct = if self.throttle_pct == 0 {
                        THROTTLE_INITIAL
                    } else {
                        (self.throttle_pct + THROTTLE_INCREMENT).min(THROTTLE_MAX)
                    };
                }
            }
            self.period_start = obs.elapsed;
            self.period_dirty_bytes = 0.0;
            self.period_sent_bytes = 0.0;
        }
        let pending = obs.remaining_pages as f64 * page;
        let expected = self
            .bandwidth
            .filter(|b| *b > 0.0)
            .map(|b| secs_to_duration(pending / b));
        let estimates = Estimates {
            transfer_bytes_per_sec: self.bandwidth,
            remaining_bytes: pending as u64,
            expected_downtime: expected,
            reason: format!("throttle {} % on all vCPUs", self.throttle_pct),
            ..Estimates::default()
        };
        if let Some(downtime) = expected.filter(|d| *d <= DOWNTIME_LIMIT) {
            let d = Decision {
                throttle_fractions: vec![0.0; self.vcpus],
                action: Action::Switchover {
                    expected_downtime: downtime,
                },
                estimates,
            };
            self.finished = Some(d.clone());
            return d;
        }
        let fraction = f64::from(self.throttle_pct) / 100.0;
        Decision {
            throttle_fractions: vec![fraction; self.vcpus],
            action: Action::Continue,
            estimates,
        }
    }

    fn interim_interval(&self, round: u32) -> Option<Duration> {
        (self.auto_converge && round > 0).then_some(RESYNC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(elapsed: u64, dirtied: u64, sent: u64, remaining: u64) -> RoundObservation {
        RoundObservation {
            elapsed: Duration::from_secs(elapsed),
            interval: Duration::from_secs(1),
            send_time: Duration::from_secs(1),
            bytes_sent: sent,
            dirtied_pages: dirtied,
            remaining_pages: remaining,
            page_size: 1,
            end_of_round: true,
            ..RoundObservation::default()
        }
    }

    #[test]
    fn throttles_on_every_second_qualifying_period() {
        let mut q = QemuModel::new(2, true);
        let seq: Vec<f64> = (1..=6)
            .map(|s| q.observe(&obs(s, 60, 100, 1_000)).throttle_fractions[0])
            .collect();
        assert_eq!(seq, vec![0.0, 0.2, 0.2, 0.3, 0.3, 0.4]);
        // A calm period does not reset the counter.
        let mut q = QemuModel::new(1, true);
        q.observe(&obs(1, 60, 100, 1_000));
        q.observe(&obs(2, 10, 100, 1_000));
        assert_eq!(
            q.observe(&obs(3, 60, 100, 1_000)).throttle_fractions,
            vec![0.2]
        );
    }

    #[test]
    fn without_auto_converge_never_throttles_and_switches_on_fit() {
        let mut q = QemuModel::new(1, false);
        for s in 1..5 {
            assert_eq!(
                q.observe(&obs(s, 90, 100, 1_000)).throttle_fractions,
                vec![0.0]
            );
        }
        let d = q.observe(&obs(6, 10, 100, 20));
        assert!(matches!(d.action, Action::Switchover { .. }));
    }
}
