//! Runs a policy against a guest and a link, analytically, round by round.
//!
//! Per round: the pending set takes `latency + bytes / bandwidth` to send; meanwhile each vCPU
//! writes at the rate its current throttle allows and the distinct pages it dirtied become
//! the next round's set. At every observation point (the end of the round, and the policy's
//! in-round cadence) the runner builds the observation the VMM would, asks the policy, and
//! applies the throttles it returns from then on.

use std::time::Duration;

use crate::controller::{Action, RoundObservation};
use crate::throttle::secs_to_duration;

use super::guest::GuestModel;
use super::link::Link;
use super::policy::ConvergencePolicy;
use super::result::{Outcome, RoundRecord, SimResult};

/// Wire bytes for a zero page in the bulk pass (a page header, no payload).
pub const ZERO_PAGE_WIRE_BYTES: f64 = 16.0;

/// Simulation limits and what the dirty log can tell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimOptions {
    /// Report per-vCPU dirtied pages (KVM dirty ring) or only totals (bitmap).
    pub attribution: bool,
    /// Stop a migration still iterating after this long (outcome [`Outcome::GaveUp`]).
    pub time_limit: Duration,
    /// Same, in rounds.
    pub max_rounds: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            attribution: true,
            time_limit: Duration::from_secs(4 * 3600),
            max_rounds: 10_000,
        }
    }
}

/// Running totals.
#[derive(Default)]
struct Totals {
    time: f64,
    bytes_sent: f64,
    throttle_lost: f64,
    throttle_time: f64,
    max_throttle: f64,
    trace: Vec<RoundRecord>,
}

/// Simulates one migration of `guest` over `link` driven by `policy`.
pub fn simulate(
    guest: &GuestModel,
    link: &Link,
    policy: &mut dyn ConvergencePolicy,
    options: &SimOptions,
) -> SimResult {
    let n = guest.vcpus.len();
    let page = guest.page_size.max(1) as f64;
    let bw = link.bytes_per_sec;
    let latency = link.latency.as_secs_f64();
    let busy: f64 = guest
        .vcpus
        .iter()
        .map(|v| v.busy_fraction.clamp(0.0, 1.0))
        .sum();
    let limit = options.time_limit.as_secs_f64();
    let mut t = Totals::default();
    let name = policy.name();
    let end = |t: Totals,
               outcome: Outcome,
               downtime: Option<f64>,
               expected: Option<Duration>,
               rounds: u32| {
        let downtime_secs = downtime.unwrap_or(0.0);
        let total = t.time + downtime_secs;
        let lost = t.throttle_lost + downtime_secs * busy;
        let wanted = busy * total;
        SimResult {
            policy: name.clone(),
            outcome,
            total_time: secs_to_duration(total),
            downtime: downtime.map(secs_to_duration),
            expected_downtime: expected,
            rounds,
            bytes_sent: t.bytes_sent.min(u64::MAX as f64) as u64,
            throttle_cpu_lost_vcpu_secs: t.throttle_lost,
            cpu_lost_vcpu_secs: lost,
            work_retained: if wanted > 0.0 {
                (1.0 - lost / wanted).clamp(0.0, 1.0)
            } else {
                1.0
            },
            mean_throttle: if t.time > 0.0 && n > 0 {
                t.throttle_time / (t.time * n as f64)
            } else {
                0.0
            },
            max_throttle: t.max_throttle,
            trace: t.trace,
        }
    };
    if !(bw.is_finite() && bw > 0.0) {
        return end(t, Outcome::GaveUp, None, None, 0);
    }

    let memory = guest.memory_bytes as f64;
    let zero = if guest.zero_fraction.is_nan() {
        0.0
    } else {
        guest.zero_fraction.clamp(0.0, 1.0)
    };
    let mut pending_pages = memory / page;
    let mut pending_wire = memory * (1.0 - zero) + pending_pages * zero * ZERO_PAGE_WIRE_BYTES;
    let mut throttles = vec![0.0; n];

    for round in 0..options.max_rounds {
        let round_secs = latency + pending_wire / bw;
        let round_start = t.time;
        let mut written = vec![0.0; n];
        let mut distinct_prev = vec![0.0; n];
        let mut elapsed_in = 0.0;
        let mut sent_prev = 0.0;
        let mut round_throttle_time = 0.0;
        let mut round_max: f64 = 0.0;
        let mut throttled = vec![false; n];
        let step = policy
            .interim_interval(round)
            .map(|d| d.as_secs_f64())
            .filter(|s| *s > 0.0);
        loop {
            let left = round_secs - elapsed_in;
            let dt = step.map_or(left, |s| s.min(left));
            let last = dt >= left - 1e-9;
            let mut dirtied_vcpu = Vec::with_capacity(n);
            for (i, v) in guest.vcpus.iter().enumerate() {
                let p = throttles[i];
                written[i] += v.write_rate(p) * dt;
                let distinct = v.distinct_bytes(written[i]);
                dirtied_vcpu.push(((distinct - distinct_prev[i]).max(0.0) / page) as u64);
                distinct_prev[i] = distinct;
                t.throttle_lost += p * v.busy_fraction.clamp(0.0, 1.0) * dt;
                round_throttle_time += p * dt;
                round_max = round_max.max(p);
                throttled[i] |= p > 0.0;
            }
            elapsed_in += dt;
            t.time += dt;
            let sent_now = ((elapsed_in - latency) * bw).clamp(0.0, pending_wire);
            let chunk = sent_now - sent_prev;
            sent_prev = sent_now;
            t.bytes_sent += chunk;
            let round_distinct: f64 = distinct_prev.iter().sum();
            let unsent = if last || pending_wire <= 0.0 {
                0.0
            } else {
                1.0 - sent_now / pending_wire
            };
            let remaining_pages = pending_pages * unsent + round_distinct / page;
            let obs = RoundObservation {
                round,
                end_of_round: last,
                elapsed: secs_to_duration(t.time),
                interval: secs_to_duration(dt),
                bytes_sent: chunk as u64,
                send_time: secs_to_duration(dt),
                dirtied_pages: dirtied_vcpu.iter().sum(),
                vcpu_dirtied_pages: options.attribution.then(|| dirtied_vcpu.clone()),
                remaining_pages: remaining_pages as u64,
                page_size: guest.page_size,
                vcpu_throttle_fractions: throttles.clone(),
                devices: None,
            };
            let d = policy.observe(&obs);
            let record = |t: &mut Totals, remaining: f64| {
                t.throttle_time += round_throttle_time;
                t.max_throttle = t.max_throttle.max(round_max);
                t.trace.push(RoundRecord {
                    round,
                    start_secs: round_start,
                    duration_secs: t.time - round_start,
                    sent_bytes: sent_now as u64,
                    remaining_bytes: (remaining * page) as u64,
                    mean_throttle: if n > 0 && t.time > round_start {
                        round_throttle_time / ((t.time - round_start) * n as f64)
                    } else {
                        0.0
                    },
                    max_throttle: round_max,
                    throttled_vcpus: throttled.iter().filter(|x| **x).count(),
                });
            };
            match d.action {
                Action::Switchover { expected_downtime } => {
                    record(&mut t, remaining_pages);
                    let final_bytes = remaining_pages * page;
                    t.bytes_sent += final_bytes;
                    let downtime = latency + final_bytes / bw + guest.state_transfer.as_secs_f64();
                    return end(
                        t,
                        Outcome::Converged,
                        Some(downtime),
                        Some(expected_downtime),
                        round + 1,
                    );
                }
                Action::Force {
                    reason,
                    expected_downtime,
                } => {
                    record(&mut t, remaining_pages);
                    let final_bytes = remaining_pages * page;
                    t.bytes_sent += final_bytes;
                    let downtime = latency + final_bytes / bw + guest.state_transfer.as_secs_f64();
                    return end(
                        t,
                        Outcome::Forced { reason },
                        Some(downtime),
                        expected_downtime,
                        round + 1,
                    );
                }
                Action::Abort { reason } => {
                    record(&mut t, remaining_pages);
                    return end(t, Outcome::Aborted { reason }, None, None, round + 1);
                }
                Action::Continue | Action::Quiesce => {
                    for (dst, src) in throttles
                        .iter_mut()
                        .zip(d.throttle_fractions.iter().chain(std::iter::repeat(&0.0)))
                    {
                        *dst = if src.is_nan() {
                            0.0
                        } else {
                            src.clamp(0.0, 1.0)
                        };
                    }
                }
            }
            if last || t.time > limit {
                if last {
                    record(&mut t, remaining_pages);
                }
                break;
            }
        }
        if t.time > limit {
            return end(t, Outcome::GaveUp, None, None, round + 1);
        }
        let next: f64 = distinct_prev.iter().sum();
        pending_pages = next / page;
        pending_wire = next;
    }
    let rounds = options.max_rounds;
    end(t, Outcome::GaveUp, None, None, rounds)
}
