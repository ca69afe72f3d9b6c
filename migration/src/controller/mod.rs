//! The convergence controller: observations in, decisions out.
//!
//! Pure and deterministic: no clock (time arrives in [`RoundObservation`]), no I/O, no
//! randomness, no hash-ordered state. The same observations always give the same decisions,
//! which is what lets [`crate::sim`] and [`crate::predict`] drive the very code the VMM runs.
//!
//! Per observation the controller
//! 1. updates its estimates ([`estimate`]): transfer rate, each dirtier's unthrottled rate and
//!    how its rate scales with CPU share;
//! 2. switches over when the expected downtime is within the aim ([`Policy`]), unless devices
//!    are still busy;
//! 3. stops (abort or force, per [`OnNoConverge`]) on `timeout`, `max_iterations`, or when a
//!    completed round, or an observation window at least as long as the switchover budget,
//!    proves the set cannot shrink even at `max_throttle` ([`verdict`]);
//! 4. otherwise allocates per-vCPU throttles by water-filling ([`allocate`]) towards a dirty
//!    rate of `(1 − margin)` of the transfer rate, tightened after every stuck round, and
//!    signals `Quiesce` when the switchover looks about two rounds away.
//!
//! A vCPU whose rate did not fall when it was throttled ("burst") is throttled to the maximum
//! for one probe round after a stuck round; the probe measures the rate at maximum throttle, so
//! the verdict after it is exact. A workload that no throttle can tame is recognised at the end
//! of the third round after the bulk pass at the latest (stuck round, throttled stuck round that
//! fits as inelastic, probe round), at the end of round 2 when the bulk pass already showed its
//! rate, and at the end of the bulk pass when even a linear extrapolation is hopeless.

mod allocate;
mod config;
mod decision;
mod estimate;
mod observation;
mod policy;
mod report;
mod verdict;

use std::time::Duration;

pub use allocate::{greedy, uniform, water_fill, Allocation, DirtierCurve, MIN_USEFUL_THROTTLE};
pub use config::{
    ConfigError, ControllerConfig, OnNoConverge, ParseOnNoConvergeError, DEFAULT_AGGRESSION,
    DEFAULT_AVERAGING_ALPHA, DEFAULT_MAX_DOWNTIME, DEFAULT_MAX_THROTTLE,
    DEFAULT_STATE_TRANSFER_ALLOWANCE, MAX_VCPUS,
};
pub use decision::{Action, Bytes, Decision, Estimates, Rate, Scaling, StopReason, VcpuEstimate};
pub use estimate::{Iir, INELASTIC_BELOW};
pub use observation::{DeviceStatus, RoundObservation, DEFAULT_PAGE_SIZE};
pub use policy::{Policy, NO_CONVERGENCE_SHRINK};

use estimate::{DirtierModel, RateSample, RoundAccumulator};
use observation::Clean;
use report::ms;
use verdict::{cannot_shrink, floor_lower_bound, probe_candidates, Progress, RoundProgress};

use crate::throttle::secs_to_duration;

/// Send time a transfer-rate sample needs to count fully. The sender writes into a socket
/// buffer of a few MiB: over a few milliseconds it "sends" at memory speed whatever the
/// link, and one such sample at the end of a round once made a 64 MiB/s link look like
/// 1 GiB/s and a 140 ms switchover last 4 s.
const FULL_TRANSFER_SAMPLE: Duration = Duration::from_millis(250);

/// A dirtier counts as "at maximum throttle" within this much CPU share of it.
const AT_MAX_SLACK: f64 = 0.005;

/// The convergence controller for one migration.
#[derive(Clone, Debug)]
pub struct Controller {
    config: ControllerConfig,
    policy: Policy,
    transfer: Iir,
    dirty: Iir,
    vcpus: Vec<DirtierModel>,
    unattributed: DirtierModel,
    aggregate: DirtierModel,
    round: RoundAccumulator,
    progress: Progress,
    attributed: bool,
    /// Remaining bytes at the end of the previous round: the current round's pending set.
    round_start_bytes: Option<f64>,
    /// Per vCPU: throttled to the maximum this round to measure it.
    probing: Vec<bool>,
    /// Per vCPU: already probed once.
    probed: Vec<bool>,
    probing_aggregate: bool,
    probed_aggregate: bool,
    commanded: Vec<f64>,
    /// The last completed round did not shrink the set enough: the model is not to be trusted
    /// for predicting the switchover.
    last_round_stuck: bool,
    /// The current round began with every dirtier at the maximum throttle: only such a round's
    /// shrink says what the maximum throttle achieves (one that ramped up to it mid-way says
    /// little, and once aborted a guest that would have converged).
    round_began_at_max: bool,
    terminal: Option<Decision>,
}

/// The throttle plan for the time until the next observation.
struct Plan {
    throttles: Vec<f64>,
    planned_bytes_per_sec: Option<f64>,
    target_bytes_per_sec: Option<f64>,
}

impl Controller {
    /// A controller for one migration; fails on an invalid config.
    pub fn new(config: ControllerConfig) -> Result<Controller, ConfigError> {
        config.validate()?;
        let alpha = config.averaging_alpha;
        let n = config.vcpus;
        Ok(Controller {
            policy: Policy::for_aggression(config.aggression),
            transfer: Iir::new(alpha),
            dirty: Iir::new(alpha),
            vcpus: vec![DirtierModel::new(alpha); n],
            unattributed: DirtierModel::unthrottleable(alpha),
            aggregate: DirtierModel::new(alpha),
            round: RoundAccumulator::default(),
            progress: Progress::default(),
            attributed: false,
            round_start_bytes: None,
            probing: vec![false; n],
            probed: vec![false; n],
            probing_aggregate: false,
            probed_aggregate: false,
            commanded: vec![0.0; n],
            round_began_at_max: false,
            last_round_stuck: false,
            terminal: None,
            config,
        })
    }

    /// The (validated) configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The aggression-derived constants in use.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The decision to apply before the first observation: no throttle, continue.
    pub fn initial_decision(&self) -> Decision {
        Decision::initial(self.config.vcpus)
    }

    /// Takes one observation and decides. After a terminal action (switchover, abort, force)
    /// every later call returns that same decision.
    pub fn observe(&mut self, obs: &RoundObservation) -> Decision {
        if let Some(done) = &self.terminal {
            return done.clone();
        }
        let o = obs.clean(self.config.vcpus, &self.commanded);
        if o.send_secs > 0.0 && o.send_secs.is_finite() {
            // A sample measured over a short send time mostly measures the socket buffer
            // filling, not the link: weigh it by how long it ran.
            let weight = (o.send_secs / FULL_TRANSFER_SAMPLE.as_secs_f64()).min(1.0);
            self.transfer
                .update_weighted(o.bytes_sent / o.send_secs, weight);
        }
        if o.interval_secs > 0.0 && o.interval_secs.is_finite() {
            self.dirty.update(o.dirtied_bytes / o.interval_secs);
        }
        self.attributed = o.vcpu_dirtied_bytes.is_some();
        self.round.add(&o);
        let link = self.transfer_rate();
        let min_share = 1.0 - self.config.max_throttle;

        let mut progress = None;
        let mut floor = None;
        if o.end_of_round {
            floor = self.commit_round(min_share);
            let within_budget = self
                .expected_downtime(o.remaining_bytes, link)
                .is_some_and(|d| d <= self.config.max_downtime);
            progress = self
                .progress
                .record(o.remaining_bytes, &self.policy, within_budget);
            self.last_round_stuck = progress.is_some_and(|p| p.stuck);
            if self.last_round_stuck {
                for m in self
                    .vcpus
                    .iter_mut()
                    .chain([&mut self.aggregate, &mut self.unattributed])
                {
                    m.trust_latest();
                }
            }
            self.round_start_bytes = Some(o.remaining_bytes);
        } else if o.round > 0 {
            self.observe_partial(link);
        }

        let expected = self.expected_downtime(o.remaining_bytes, link);
        let stalled =
            progress.is_some_and(|p| p.stalled) || o.devices == Some(DeviceStatus::Quiesced);
        let nominal_aim = self
            .config
            .max_downtime
            .mul_f64(self.policy.switchover_fraction);
        let aim = if stalled {
            self.config.max_downtime
        } else {
            nominal_aim
        };

        // 1. Switchover, unless devices are still busy.
        let mut devices_busy = None;
        if let Some(downtime) = expected.filter(|d| *d <= aim) {
            match o.devices {
                Some(DeviceStatus::Running) => devices_busy = Some(0),
                Some(DeviceStatus::Quiescing { in_flight }) => devices_busy = Some(in_flight),
                _ => {
                    let reason = format!(
                        "expected downtime {} within {} ({}): switchover",
                        ms(downtime),
                        ms(aim),
                        if stalled {
                            "max_downtime, progress stalled"
                        } else {
                            "aim while progressing"
                        }
                    );
                    return self.finish(
                        Action::Switchover {
                            expected_downtime: downtime,
                        },
                        &o,
                        expected,
                        link,
                        reason,
                    );
                }
            }
        }

        // 2. Limits.
        if let Some(timeout) = self.config.timeout {
            if o.elapsed >= timeout {
                return self.stop(
                    StopReason::Timeout { elapsed: o.elapsed },
                    &o,
                    expected,
                    link,
                );
            }
        }
        if o.end_of_round {
            if let Some(max) = self.config.max_iterations {
                let rounds = o.round.saturating_add(1);
                if rounds >= max && devices_busy.is_none() {
                    return self.stop(StopReason::MaxIterations { rounds }, &o, expected, link);
                }
            }
        }

        // 3. Convergence verdict: this observation's window (when at least as long as the
        //    switchover budget), and the whole round when one just ended.
        let budget = self
            .config
            .max_downtime
            .saturating_sub(self.config.state_transfer_allowance);
        let window = (o.interval_secs >= budget.as_secs_f64() && o.interval_secs > 0.0)
            .then(|| window_floor(&o, min_share));
        let floor = match (floor, window) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let (Some(floor), Some(link)) = (floor, link) {
            if devices_busy.is_none() && link > 0.0 {
                let proven = cannot_shrink(floor, link);
                let stuck_at_max = progress.is_some_and(|p| p.shrink < NO_CONVERGENCE_SHRINK)
                    && self.round_began_at_max
                    && self.all_at_max(min_share);
                if proven || stuck_at_max {
                    let reason = StopReason::NoConvergence {
                        floor_bytes_per_sec: floor,
                        transfer_bytes_per_sec: link,
                    };
                    return self.stop(reason, &o, expected, Some(link));
                }
            }
        }
        if o.end_of_round {
            self.arm_probe(progress, min_share, link);
        }

        // 4. Throttle plan.
        let bulk = o.round == 0 && !o.end_of_round;
        let plan = match link {
            Some(link) if !bulk && link > 0.0 => {
                let plan = self.plan(link);
                if o.end_of_round
                    && progress.is_some_and(|p| p.stuck)
                    && self.probe_unmeasured(&plan)
                {
                    self.plan(link)
                } else {
                    plan
                }
            }
            _ => Plan {
                throttles: vec![0.0; self.config.vcpus],
                planned_bytes_per_sec: None,
                target_bytes_per_sec: None,
            },
        };
        let soon = self.switchover_soon(
            o.remaining_bytes,
            plan.planned_bytes_per_sec,
            link,
            nominal_aim,
        );
        let action = if devices_busy.is_some() || soon {
            Action::Quiesce
        } else {
            Action::Continue
        };
        let reason = self.explain(&o, &plan, expected, aim, bulk, devices_busy, soon);
        let estimates = self.estimates(&o, expected, link, &plan, reason);
        self.commanded.clone_from(&plan.throttles);
        if o.end_of_round {
            self.round_began_at_max = self.all_at_max(min_share);
        }
        Decision {
            throttle_fractions: plan.throttles,
            action,
            estimates,
        }
    }

    /// Transfer rate: the average, capped by `max_bandwidth`, which also stands in before any
    /// measurement.
    fn transfer_rate(&self) -> Option<f64> {
        let cap = self.config.max_bandwidth_bytes_per_sec.map(|b| b as f64);
        match (self.transfer.value(), cap) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (Some(m), None) => Some(m),
            (None, c) => c,
        }
    }

    fn expected_downtime(&self, remaining_bytes: f64, link: Option<f64>) -> Option<Duration> {
        let allowance = self.config.state_transfer_allowance;
        if remaining_bytes <= 0.0 {
            return Some(allowance);
        }
        let link = link.filter(|l| *l > 0.0)?;
        Some(secs_to_duration(remaining_bytes / link).saturating_add(allowance))
    }

    /// Commits the round's samples to the models; returns the lower bound on the dirty rate at
    /// maximum throttle.
    fn commit_round(&mut self, min_share: f64) -> Option<f64> {
        let samples = self.round.finish()?;
        // The probe (if any) covered the round that just ended.
        for (probing, probed) in self.probing.iter_mut().zip(self.probed.iter_mut()) {
            if *probing {
                *probed = true;
                *probing = false;
            }
        }
        if self.probing_aggregate {
            self.probed_aggregate = true;
            self.probing_aggregate = false;
        }
        self.aggregate.commit_round(samples.total);
        match &samples.vcpus {
            Some(per_vcpu) => {
                for (model, s) in self.vcpus.iter_mut().zip(per_vcpu) {
                    model.commit_round(*s);
                }
                self.unattributed.commit_round(RateSample {
                    share: 1.0,
                    bytes_per_sec: samples.unattributed_bytes_per_sec,
                    secs: samples.secs,
                });
                Some(floor_lower_bound(
                    per_vcpu,
                    samples.unattributed_bytes_per_sec,
                    min_share,
                ))
            }
            None => Some(floor_lower_bound(&[samples.total], 0.0, min_share)),
        }
    }

    /// Folds the round in progress into provisional estimates, weighted by how far into the
    /// round's expected duration we are.
    fn observe_partial(&mut self, link: Option<f64>) {
        let Some(samples) = self.round.samples() else {
            return;
        };
        let expected_secs = match (self.round_start_bytes, link) {
            (Some(bytes), Some(link)) if link > 0.0 => bytes / link,
            _ => 0.0,
        };
        let weight = if expected_secs > 0.0 {
            (samples.secs / expected_secs).min(1.0)
        } else {
            1.0
        };
        self.aggregate.observe_partial(samples.total, weight);
        if let Some(per_vcpu) = &samples.vcpus {
            for (model, s) in self.vcpus.iter_mut().zip(per_vcpu) {
                model.observe_partial(*s, weight);
            }
            self.unattributed.observe_partial(
                RateSample {
                    share: 1.0,
                    bytes_per_sec: samples.unattributed_bytes_per_sec,
                    secs: samples.secs,
                },
                weight,
            );
        }
    }

    /// Whether every dirtier that dirties ran at maximum throttle in the last round.
    fn all_at_max(&self, min_share: f64) -> bool {
        let measured_at_max = |m: &DirtierModel| {
            m.last()
                .is_none_or(|s| s.bytes_per_sec <= 0.0 || s.share <= min_share + AT_MAX_SLACK)
        };
        // A vCPU already commanded to the maximum throttle is at the maximum even if it
        // measured a higher share: on a busy host a throttled vCPU is also descheduled,
        // which makes its share look higher than the throttle allows.
        let commanded_at_max = |i: usize| {
            self.commanded
                .get(i)
                .is_some_and(|&p| p >= self.config.max_throttle - AT_MAX_SLACK)
        };
        if self.attributed {
            self.vcpus
                .iter()
                .enumerate()
                .all(|(i, m)| measured_at_max(m) || commanded_at_max(i))
        } else {
            measured_at_max(&self.aggregate) || (0..self.config.vcpus).all(commanded_at_max)
        }
    }

    /// After a stuck round, schedules a probe round at maximum throttle for dirtiers measured as
    /// inelastic and not probed yet.
    fn arm_probe(&mut self, progress: Option<RoundProgress>, min_share: f64, link: Option<f64>) {
        if !progress.is_some_and(|p| p.stuck) {
            return;
        }
        let link = link.unwrap_or(0.0);
        if self.attributed {
            for i in probe_candidates(&self.vcpus, min_share, link) {
                if let (Some(probing), Some(false)) = (self.probing.get_mut(i), self.probed.get(i))
                {
                    *probing = true;
                }
            }
        } else if !self.probed_aggregate
            && !probe_candidates(std::slice::from_ref(&self.aggregate), min_share, link).is_empty()
        {
            self.probing_aggregate = true;
        }
    }

    /// After a stuck round, a dirtier whose response to throttling was never measured and
    /// that the plan throttles by half or more anyway is probed at the maximum instead: it costs
    /// at most twice the planned throttle for one round, and measures the one point that tells
    /// a burst from a tameable writer. Below half (low aggression) the plan is kept. Returns
    /// whether a probe was scheduled.
    fn probe_unmeasured(&mut self, plan: &Plan) -> bool {
        let unmeasured = |m: &DirtierModel, probed: bool| {
            !probed && !m.fitted() && m.unthrottled().is_some_and(|u| u > 0.0)
        };
        let mut any = false;
        if self.attributed {
            for (i, p) in plan.throttles.iter().enumerate() {
                let (Some(m), Some(&probed)) = (self.vcpus.get(i), self.probed.get(i)) else {
                    continue;
                };
                if *p >= 0.5 && unmeasured(m, probed) {
                    if let Some(probing) = self.probing.get_mut(i) {
                        *probing = true;
                        any = true;
                    }
                }
            }
        } else if plan.throttles.first().is_some_and(|p| *p >= 0.5)
            && unmeasured(&self.aggregate, self.probed_aggregate)
        {
            self.probing_aggregate = true;
            any = true;
        }
        any
    }

    fn plan(&self, link: f64) -> Plan {
        let max = self.config.max_throttle;
        let target = self
            .policy
            .target_dirty_rate(link, self.progress.stuck_rounds());
        if self.attributed {
            let fixed = self.unattributed.unthrottled().unwrap_or(0.0);
            let min_share = 1.0 - max;
            let curves: Vec<DirtierCurve> = self
                .vcpus
                .iter()
                .map(|m| m.allocation_curve(min_share))
                .collect();
            let mut throttles =
                water_fill(&curves, (target - fixed).max(0.0), max).throttle_fractions;
            for (p, probing) in throttles.iter_mut().zip(&self.probing) {
                if *probing {
                    *p = max;
                }
            }
            let planned = fixed
                + curves
                    .iter()
                    .zip(&throttles)
                    .map(|(c, p)| c.rate_at(1.0 - p))
                    .sum::<f64>();
            Plan {
                throttles,
                planned_bytes_per_sec: Some(planned),
                target_bytes_per_sec: Some(target),
            }
        } else {
            let curve = self.aggregate.allocation_curve(1.0 - max);
            let p = if self.probing_aggregate {
                max
            } else {
                water_fill(std::slice::from_ref(&curve), target, max)
                    .throttle_fractions
                    .first()
                    .copied()
                    .unwrap_or(0.0)
            };
            Plan {
                throttles: vec![p; self.config.vcpus],
                planned_bytes_per_sec: Some(curve.rate_at(1.0 - p)),
                target_bytes_per_sec: Some(target),
            }
        }
    }

    /// Whether, at the planned dirty rate, one of the next two rounds should end within `aim`.
    fn switchover_soon(
        &self,
        remaining_bytes: f64,
        planned: Option<f64>,
        link: Option<f64>,
        aim: Duration,
    ) -> bool {
        let (Some(planned), Some(link)) = (planned, link) else {
            return false;
        };
        if self.last_round_stuck {
            return false;
        }
        if link <= 0.0 || planned >= link {
            return false;
        }
        let mut set = remaining_bytes;
        for _ in 0..2 {
            set = planned * (set / link);
            if self
                .expected_downtime(set, Some(link))
                .is_some_and(|d| d <= aim)
            {
                return true;
            }
        }
        false
    }

    fn stop(
        &mut self,
        reason: StopReason,
        o: &Clean,
        expected: Option<Duration>,
        link: Option<f64>,
    ) -> Decision {
        let text = match self.config.on_no_converge {
            OnNoConverge::Abort => format!("{reason}; aborting, guest stays on the source"),
            OnNoConverge::Force => format!(
                "{reason}; forcing stop-and-copy, expected downtime {}",
                expected.map_or("unknown".to_string(), ms)
            ),
        };
        let action = match self.config.on_no_converge {
            OnNoConverge::Abort => Action::Abort { reason },
            OnNoConverge::Force => Action::Force {
                reason,
                expected_downtime: expected,
            },
        };
        self.finish(action, o, expected, link, text)
    }

    fn finish(
        &mut self,
        action: Action,
        o: &Clean,
        expected: Option<Duration>,
        link: Option<f64>,
        reason: String,
    ) -> Decision {
        let plan = Plan {
            throttles: vec![0.0; self.config.vcpus],
            planned_bytes_per_sec: None,
            target_bytes_per_sec: None,
        };
        let estimates = self.estimates(o, expected, link, &plan, reason);
        let decision = Decision {
            throttle_fractions: plan.throttles,
            action,
            estimates,
        };
        self.commanded = vec![0.0; self.config.vcpus];
        self.terminal = Some(decision.clone());
        decision
    }
}

/// Lower bound on the dirty rate at maximum throttle from one observation's window alone.
///
/// Growth over any window is at most what a fresh dirty log would show over a window of the same
/// length, and shorter rounds only see higher rates (see [`verdict`]). So if this bound reaches
/// the link rate on a window at least as long as the switchover budget, every round short
/// enough to end in a switchover would leave a set almost as large as it started with.
fn window_floor(o: &Clean, min_share: f64) -> f64 {
    let secs = o.interval_secs;
    match &o.vcpu_dirtied_bytes {
        Some(per_vcpu) => {
            let samples: Vec<RateSample> = per_vcpu
                .iter()
                .zip(&o.vcpu_shares)
                .map(|(&b, &share)| RateSample {
                    share,
                    bytes_per_sec: b / secs,
                    secs,
                })
                .collect();
            floor_lower_bound(&samples, o.unattributed_bytes / secs, min_share)
        }
        None => {
            // Without attribution, extrapolate from the least throttled vCPU (the smaller bound).
            let share = o.vcpu_shares.iter().copied().fold(0.0, f64::max);
            let share = if o.vcpu_shares.is_empty() { 1.0 } else { share };
            floor_lower_bound(
                &[RateSample {
                    share,
                    bytes_per_sec: o.dirtied_bytes / secs,
                    secs,
                }],
                0.0,
                min_share,
            )
        }
    }
}

#[cfg(test)]
mod tests;
