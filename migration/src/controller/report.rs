//! What the controller says about itself: the estimates in every decision and the one-line
//! reason for humans.

use std::time::Duration;

use super::decision::{Estimates, Rate, Scaling, VcpuEstimate};
use super::observation::Clean;
use super::{Controller, Plan};

impl Controller {
    pub(super) fn estimates(
        &self,
        o: &Clean,
        expected: Option<Duration>,
        link: Option<f64>,
        plan: &Plan,
        reason: String,
    ) -> Estimates {
        let vcpus = self
            .vcpus
            .iter()
            .zip(&o.vcpu_shares)
            .map(|(m, &share)| {
                if !self.attributed {
                    return VcpuEstimate {
                        dirty_bytes_per_sec: None,
                        unthrottled_dirty_bytes_per_sec: None,
                        cpu_elasticity: None,
                        scaling: Scaling::Unknown,
                    };
                }
                let scaling = if !m.fitted() {
                    Scaling::Unknown
                } else if m.inelastic() {
                    Scaling::Inelastic
                } else {
                    Scaling::Proportional
                };
                VcpuEstimate {
                    dirty_bytes_per_sec: m.unthrottled().map(|_| m.curve().rate_at(share)),
                    unthrottled_dirty_bytes_per_sec: m.unthrottled(),
                    cpu_elasticity: Some(m.elasticity()),
                    scaling,
                }
            })
            .collect();
        Estimates {
            transfer_bytes_per_sec: link,
            dirty_bytes_per_sec: self.dirty.value(),
            planned_dirty_bytes_per_sec: plan.planned_bytes_per_sec,
            target_dirty_bytes_per_sec: plan.target_bytes_per_sec,
            unattributed_dirty_bytes_per_sec: if self.attributed {
                self.unattributed.unthrottled()
            } else {
                None
            },
            vcpus,
            remaining_bytes: o.remaining_bytes.min(u64::MAX as f64) as u64,
            expected_downtime: expected,
            escalations: self.progress.stuck_rounds(),
            probing: self.probing.iter().any(|p| *p) || self.probing_aggregate,
            reason,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn explain(
        &self,
        o: &Clean,
        plan: &Plan,
        expected: Option<Duration>,
        aim: Duration,
        bulk: bool,
        devices_busy: Option<u32>,
        soon: bool,
    ) -> String {
        let dirty = self
            .dirty
            .value()
            .map_or("?".to_string(), |d| Rate(d).to_string());
        let link = self
            .transfer_rate()
            .map_or("?".to_string(), |l| Rate(l).to_string());
        let downtime = expected.map_or("unknown".to_string(), ms);
        let mut text = if bulk {
            format!("round 0 (bulk pass): no throttle; dirty {dirty}, link {link}")
        } else {
            let throttled = plan.throttles.iter().filter(|p| **p > 0.0).count();
            let max = plan.throttles.iter().copied().fold(0.0, f64::max);
            let target = plan
                .target_bytes_per_sec
                .map_or("?".to_string(), |t| Rate(t).to_string());
            if throttled == 0 {
                format!(
                    "round {}: dirty {dirty} within target {target} (link {link}); no throttle",
                    o.round
                )
            } else {
                format!(
                    "round {}: dirty {dirty} vs target {target} (link {link}); throttling {throttled} of {} vCPUs, max {:.0} %",
                    o.round,
                    plan.throttles.len(),
                    max * 100.0
                )
            }
        };
        let escalations = self.progress.stuck_rounds();
        if escalations > 0 {
            text.push_str(&format!("; escalated {escalations}×"));
        }
        if self.probing.iter().any(|p| *p) || self.probing_aggregate {
            text.push_str("; probing burst vCPUs at max throttle");
        }
        text.push_str(&format!("; expected downtime {downtime} (aim {})", ms(aim)));
        if let Some(in_flight) = devices_busy {
            text.push_str(&format!(
                "; switchover due but devices busy ({in_flight} in flight): quiesce"
            ));
        } else if soon {
            text.push_str("; switchover within ~2 rounds: quiesce devices");
        }
        text
    }
}

/// A duration for humans: `830 ms`, `12.5 s`.
pub(super) fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}
