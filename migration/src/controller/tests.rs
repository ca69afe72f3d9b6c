//! Controller behaviour, one policy per test, on a toy guest fed round by round.

use super::*;

const PAGE: u64 = 4096;
const GB: f64 = 1e9;
const LINK: f64 = 1.25e9; // 10 Gbit/s

/// How a toy vCPU dirties memory.
#[derive(Clone, Copy, Debug)]
enum W {
    Idle,
    /// Proportional to CPU share: bytes/s at full share, distinct-byte cap per round.
    Linear(f64, f64),
    /// Independent of CPU share (a fixed burst per slice): bytes/s, cap per round.
    Burst(f64, f64),
}

impl W {
    fn dirtied(self, share: f64, secs: f64) -> f64 {
        match self {
            W::Idle => 0.0,
            W::Linear(rate, cap) => (rate * share * secs).min(cap),
            W::Burst(rate, cap) => {
                if share > 0.0 {
                    (rate * secs).min(cap)
                } else {
                    0.0
                }
            }
        }
    }
}

/// A guest whose vCPUs dirty per `W`, migrated over a link of `link` bytes/s, observed once per
/// round, applying every decision's throttles exactly.
struct Toy {
    workloads: Vec<W>,
    link: f64,
    remaining: f64,
    elapsed: Duration,
    round: u32,
    attributed: bool,
    throttles: Vec<f64>,
    devices: Option<DeviceStatus>,
    /// Fraction of each throttle the vCPUs report having run with (1.0: exactly; less: a
    /// busy host deschedules them too, so they look less throttled than commanded).
    reported_throttle: f64,
}

impl Toy {
    fn new(workloads: Vec<W>, memory: f64) -> Toy {
        let n = workloads.len();
        Toy {
            workloads,
            link: LINK,
            remaining: memory,
            elapsed: Duration::ZERO,
            round: 0,
            attributed: true,
            throttles: vec![0.0; n],
            devices: None,
            reported_throttle: 1.0,
        }
    }

    fn observation(&mut self) -> RoundObservation {
        let secs = (self.remaining / self.link).max(1e-3);
        let per: Vec<u64> = self
            .workloads
            .iter()
            .zip(&self.throttles)
            .map(|(w, p)| (w.dirtied(1.0 - p, secs) / PAGE as f64) as u64)
            .collect();
        let total: u64 = per.iter().sum();
        let interval = Duration::from_secs_f64(secs);
        self.elapsed += interval;
        let obs = RoundObservation {
            round: self.round,
            end_of_round: true,
            elapsed: self.elapsed,
            interval,
            bytes_sent: self.remaining as u64,
            send_time: interval,
            dirtied_pages: total,
            vcpu_dirtied_pages: self.attributed.then(|| per.clone()),
            remaining_pages: total,
            page_size: PAGE,
            vcpu_throttle_fractions: self
                .throttles
                .iter()
                .map(|p| p * self.reported_throttle)
                .collect(),
            devices: self.devices,
        };
        self.remaining = (total * PAGE) as f64;
        self.round += 1;
        obs
    }

    fn step(&mut self, ctl: &mut Controller) -> Decision {
        let obs = self.observation();
        let d = ctl.observe(&obs);
        self.throttles.clone_from(&d.throttle_fractions);
        d
    }

    /// Runs until a terminal action (or 200 rounds); returns every decision.
    fn run(&mut self, ctl: &mut Controller) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..200 {
            let d = self.step(ctl);
            let done = d.action.is_terminal();
            out.push(d);
            if done {
                break;
            }
        }
        out
    }
}

fn controller(vcpus: usize) -> Controller {
    Controller::new(ControllerConfig::new(vcpus)).unwrap()
}

#[test]
fn invalid_config_is_refused() {
    assert_eq!(
        Controller::new(ControllerConfig::new(0)).err(),
        Some(ConfigError::NoVcpus)
    );
}

#[test]
fn no_throttle_when_the_link_is_ample() {
    let mut toy = Toy::new(vec![W::Linear(0.05 * GB, 4.0 * GB), W::Idle], 8.0 * GB);
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(decisions.last().unwrap().action, Action::Switchover { .. }),
        "{decisions:#?}"
    );
    for d in &decisions {
        assert!(d.throttle_fractions.iter().all(|p| *p == 0.0), "{d:#?}");
    }
}

#[test]
fn idle_vcpus_are_never_throttled_when_another_dirties() {
    let mut toy = Toy::new(
        vec![W::Idle, W::Linear(3.0 * GB, 6.0 * GB), W::Idle, W::Idle],
        16.0 * GB,
    );
    let mut ctl = controller(4);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(decisions.last().unwrap().action, Action::Switchover { .. }),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| d.throttle_fractions[1] > 0.3),
        "the dirtier is throttled"
    );
    for d in &decisions {
        for i in [0, 2, 3] {
            assert_eq!(d.throttle_fractions[i], 0.0, "vCPU {i} idle: {d:#?}");
        }
    }
}

#[test]
fn without_attribution_all_vcpus_share_one_throttle() {
    let mut toy = Toy::new(vec![W::Idle, W::Linear(3.0 * GB, 6.0 * GB)], 16.0 * GB);
    toy.attributed = false;
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(decisions.last().unwrap().action, Action::Switchover { .. }),
        "{decisions:#?}"
    );
    assert!(decisions.iter().any(|d| d.throttle_fractions[0] > 0.0));
    for d in &decisions {
        assert_eq!(d.throttle_fractions[0], d.throttle_fractions[1]);
        assert!(d
            .estimates
            .vcpus
            .iter()
            .all(|v| v.dirty_bytes_per_sec.is_none()));
    }
}

/// The loop observes but the VMM does not apply the throttle: every round is stuck, so each one
/// tightens the target, up to `max_throttle` and never beyond.
#[test]
fn escalates_while_stuck_and_respects_max_throttle() {
    // Guest first: the escalation climbs in steps (at 0.5 and above, a plan of half the CPU or
    // more for a never-measured writer becomes a probe at the maximum at once).
    let config = ControllerConfig {
        max_throttle: 0.8,
        aggression: 0.0,
        ..ControllerConfig::new(2)
    };
    let mut ctl = Controller::new(config).unwrap();
    let page_bytes = PAGE as f64;
    let mut remaining = 8.0 * GB;
    let mut elapsed = Duration::ZERO;
    let mut last_throttle = 0.0;
    let mut last_escalations = 0;
    let mut increases = 0;
    let mut last_probing = false;
    for round in 0..12 {
        let secs = remaining / LINK;
        elapsed += Duration::from_secs_f64(secs);
        // 0.96 of the link: the set shrinks by 4 % a round whatever the (unapplied) throttle.
        let dirtied = if round == 0 {
            2.0 * GB
        } else {
            0.96 * remaining
        };
        let pages = (dirtied / page_bytes) as u64;
        let obs = RoundObservation {
            round,
            end_of_round: true,
            elapsed,
            interval: Duration::from_secs_f64(secs),
            bytes_sent: remaining as u64,
            send_time: Duration::from_secs_f64(secs),
            dirtied_pages: pages,
            vcpu_dirtied_pages: Some(vec![pages, 0]),
            remaining_pages: pages,
            page_size: PAGE,
            vcpu_throttle_fractions: vec![0.0, 0.0],
            devices: None,
        };
        let d = ctl.observe(&obs);
        assert!(!d.action.is_terminal(), "round {round}: {d:#?}");
        assert!(d.throttle_fractions[0] <= 0.8 + 1e-12, "{d:#?}");
        assert_eq!(d.throttle_fractions[1], 0.0);
        if round >= 1 {
            assert!(
                d.estimates.escalations > last_escalations,
                "round {round} was stuck"
            );
            assert_ne!(
                d.action,
                Action::Quiesce,
                "a stuck migration is not about to switch over"
            );
            // A probe round (maximum throttle to measure the writer) interrupts the climb.
            if !d.estimates.probing && !last_probing {
                assert!(d.throttle_fractions[0] >= last_throttle);
                if d.throttle_fractions[0] > last_throttle {
                    increases += 1;
                }
            }
        }
        last_escalations = d.estimates.escalations;
        last_probing = d.estimates.probing;
        last_throttle = d.throttle_fractions[0];
        remaining = dirtied;
    }
    assert!(increases >= 2, "the throttle rose step by step");
    assert_eq!(last_throttle, 0.8, "and stopped at max_throttle");
}

fn burst_guest() -> Toy {
    // 1 GB rewritten every slice, whatever the CPU share: at 1.25 GB/s the set never shrinks.
    Toy::new(vec![W::Burst(20.0 * GB, 1.0 * GB), W::Idle], 16.0 * GB)
}

#[test]
fn burst_is_recognised_within_three_rounds_after_bulk_and_aborted() {
    let mut toy = burst_guest();
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    let last = decisions.last().unwrap();
    assert!(
        matches!(
            &last.action,
            Action::Abort {
                reason: StopReason::NoConvergence { .. }
            }
        ),
        "{decisions:#?}"
    );
    // Bulk pass, a stuck unthrottled round, a probe round at maximum throttle: decided.
    assert!(
        decisions.len() <= 3,
        "decided at the end of round {} (bulk = round 0)",
        decisions.len() - 1
    );
    assert_eq!(
        last.throttle_fractions,
        vec![0.0, 0.0],
        "abort releases the throttle"
    );
    assert_eq!(last.estimates.vcpus[0].scaling, Scaling::Inelastic);
    // Before giving up it measured the burst vCPU at max throttle, never the idle one.
    assert!(decisions
        .iter()
        .any(|d| d.estimates.probing && d.throttle_fractions[0] == 0.99));
    assert!(decisions.iter().all(|d| d.throttle_fractions[1] == 0.0));
}

#[test]
fn guest_first_recognises_burst_within_three_rounds_after_bulk() {
    // At aggression 0 the plan never throttles a never-measured writer by half, so no early
    // probe: the elasticity fit (round 2) triggers the probe (round 3).
    let mut toy = burst_guest();
    let config = ControllerConfig {
        aggression: 0.0,
        ..ControllerConfig::new(2)
    };
    let mut ctl = Controller::new(config).unwrap();
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(&decisions.last().unwrap().action, Action::Abort { .. }),
        "{decisions:#?}"
    );
    assert!(decisions.len() <= 4, "{} rounds", decisions.len());
}

#[test]
fn burst_visible_in_the_bulk_pass_is_recognised_by_round_two() {
    // A small guest: the bulk pass is short, so its dirty rate is already the real one.
    let mut toy = Toy::new(vec![W::Burst(2.0 * GB, 2.0 * GB), W::Idle], 2.5 * GB);
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(&decisions.last().unwrap().action, Action::Abort { .. }),
        "{decisions:#?}"
    );
    assert!(decisions.len() <= 3, "{} rounds", decisions.len());
}

#[test]
fn burst_with_force_reports_the_expected_downtime_first() {
    let mut toy = burst_guest();
    let config = ControllerConfig {
        on_no_converge: OnNoConverge::Force,
        ..ControllerConfig::new(2)
    };
    let mut ctl = Controller::new(config).unwrap();
    let decisions = toy.run(&mut ctl);
    let last = decisions.last().unwrap();
    let Action::Force {
        reason: StopReason::NoConvergence { .. },
        expected_downtime: Some(downtime),
    } = last.action
    else {
        panic!("{decisions:#?}");
    };
    // 1 GB at 1.25 GB/s plus the 30 ms allowance.
    assert!((downtime.as_secs_f64() - 0.83).abs() < 0.05, "{downtime:?}");
    assert_eq!(last.estimates.expected_downtime, Some(downtime));
    assert!(last.throttle_fractions.iter().all(|p| *p == 0.0));
}

#[test]
fn hopeless_linear_writer_is_proven_from_the_bulk_pass() {
    // 300 GB/s of CPU-proportional writes over a huge working set: even 1 % of it is 2.4× the
    // link, and the bulk pass measures it.
    let mut toy = Toy::new(vec![W::Linear(300.0 * GB, 1e15)], 4.0 * GB);
    let mut ctl = controller(1);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(&decisions.last().unwrap().action, Action::Abort { .. }),
        "{decisions:#?}"
    );
    assert_eq!(decisions.len(), 1, "proven at the end of the bulk pass");
}

#[test]
fn hopeless_writer_saturating_its_set_is_confirmed_by_a_probe() {
    // The same writer on a 4 GB working set: every round rewrites it all, throttled or not, so
    // only a round at maximum throttle tells "burst-like" from "tameable".
    let mut toy = Toy::new(vec![W::Linear(300.0 * GB, 4.0 * GB)], 4.0 * GB);
    let mut ctl = controller(1);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(&decisions.last().unwrap().action, Action::Abort { .. }),
        "{decisions:#?}"
    );
    assert!(decisions.len() <= 3, "{} rounds", decisions.len());
}

#[test]
fn fast_but_tameable_writer_converges_under_heavy_throttle() {
    // 12 GB/s of CPU time (QEMU's "600 MB in 50 ms") on 1 GB: tameable at 10 Gbit/s.
    let mut toy = Toy::new(vec![W::Linear(12.0 * GB, 1.0 * GB), W::Idle], 8.0 * GB);
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    assert!(
        matches!(decisions.last().unwrap().action, Action::Switchover { .. }),
        "{decisions:#?}"
    );
    assert!(decisions.iter().any(|d| d.throttle_fractions[0] > 0.8));
}

#[test]
fn max_iterations_stops_per_on_no_converge() {
    let mut toy = Toy::new(vec![W::Linear(3.0 * GB, 6.0 * GB)], 16.0 * GB);
    let config = ControllerConfig {
        max_iterations: Some(2),
        ..ControllerConfig::new(1)
    };
    let mut ctl = Controller::new(config).unwrap();
    let decisions = toy.run(&mut ctl);
    assert_eq!(decisions.len(), 2);
    assert_eq!(
        decisions[1].action,
        Action::Abort {
            reason: StopReason::MaxIterations { rounds: 2 }
        }
    );
    assert_eq!(decisions[1].throttle_fractions, vec![0.0]);
}

#[test]
fn timeout_stops_per_on_no_converge() {
    let mut toy = Toy::new(vec![W::Linear(3.0 * GB, 6.0 * GB)], 16.0 * GB);
    let config = ControllerConfig {
        timeout: Some(Duration::from_secs(15)),
        on_no_converge: OnNoConverge::Force,
        ..ControllerConfig::new(1)
    };
    let mut ctl = Controller::new(config).unwrap();
    let decisions = toy.run(&mut ctl);
    let last = decisions.last().unwrap();
    match &last.action {
        Action::Force {
            reason: StopReason::Timeout { elapsed },
            expected_downtime: Some(_),
        } => {
            assert!(*elapsed >= Duration::from_secs(15));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn busy_devices_hold_the_switchover_and_quiesce_is_signalled_ahead() {
    let mut toy = Toy::new(vec![W::Linear(0.5 * GB, 4.0 * GB)], 8.0 * GB);
    toy.devices = Some(DeviceStatus::Running);
    let mut ctl = controller(1);
    let mut decisions = Vec::new();
    for _ in 0..12 {
        let d = toy.step(&mut ctl);
        decisions.push(d);
    }
    assert!(
        decisions.iter().all(|d| !d.action.is_terminal()),
        "never switches with busy devices"
    );
    let first_quiesce = decisions
        .iter()
        .position(|d| d.action == Action::Quiesce)
        .expect("quiesce signalled");
    assert!(decisions[first_quiesce..]
        .iter()
        .all(|d| d.action == Action::Quiesce));
    // Devices report quiesced: switch now.
    toy.devices = Some(DeviceStatus::Quiesced);
    let d = toy.step(&mut ctl);
    assert!(matches!(d.action, Action::Switchover { .. }), "{d:#?}");

    // Without device tracking, quiesce comes strictly before the switchover.
    let mut toy = Toy::new(vec![W::Linear(0.5 * GB, 4.0 * GB)], 8.0 * GB);
    let mut ctl = controller(1);
    let decisions = toy.run(&mut ctl);
    let n = decisions.len();
    assert!(matches!(decisions[n - 1].action, Action::Switchover { .. }));
    assert_eq!(decisions[n - 2].action, Action::Quiesce, "{decisions:#?}");
}

#[test]
fn terminal_decision_is_sticky() {
    let mut toy = burst_guest();
    let mut ctl = controller(2);
    let decisions = toy.run(&mut ctl);
    let last = decisions.last().unwrap().clone();
    assert!(last.action.is_terminal());
    assert_eq!(toy.step(&mut ctl), last);
}

#[test]
fn bulk_pass_interim_observations_never_throttle() {
    let mut ctl = controller(2);
    for i in 1..=20u64 {
        let d = ctl.observe(&RoundObservation {
            round: 0,
            end_of_round: false,
            elapsed: Duration::from_secs(i),
            interval: Duration::from_secs(1),
            bytes_sent: 1_250_000_000,
            send_time: Duration::from_secs(1),
            dirtied_pages: 1_000_000,
            vcpu_dirtied_pages: Some(vec![1_000_000, 0]),
            remaining_pages: 100_000_000,
            page_size: PAGE,
            vcpu_throttle_fractions: vec![0.0, 0.0],
            devices: None,
        });
        assert_eq!(d.throttle_fractions, vec![0.0, 0.0]);
        assert_eq!(d.action, Action::Continue);
    }
}

#[test]
fn interim_observations_adjust_the_throttle_inside_a_long_round() {
    let mut ctl = controller(1);
    let obs = |round, end, elapsed: u64, dirtied: u64, remaining: u64| RoundObservation {
        round,
        end_of_round: end,
        elapsed: Duration::from_secs(elapsed),
        interval: Duration::from_secs(1),
        bytes_sent: 1_250_000_000,
        send_time: Duration::from_secs(1),
        dirtied_pages: dirtied,
        vcpu_dirtied_pages: Some(vec![dirtied]),
        remaining_pages: remaining,
        page_size: PAGE,
        vcpu_throttle_fractions: vec![0.0],
        devices: None,
    };
    // Bulk pass ends with a calm guest: no throttle planned for round 1 (40 s long).
    let d = ctl.observe(&obs(0, true, 100, 1_000, 12_000_000));
    assert_eq!(d.throttle_fractions, vec![0.0]);
    // Then the guest dirties 2 GB/s: within the round (~39 s) the throttle follows.
    let mut last = 0.0;
    for s in 1..=39 {
        let d = ctl.observe(&obs(1, false, 100 + s, 488_281, 12_000_000));
        assert!(d.throttle_fractions[0] >= last);
        last = d.throttle_fractions[0];
    }
    assert!(last > 0.3, "{last}");
}

#[test]
fn same_inputs_same_outputs() {
    let run = || {
        let mut toy = Toy::new(
            vec![
                W::Linear(3.0 * GB, 6.0 * GB),
                W::Burst(0.2 * GB, 0.1 * GB),
                W::Idle,
            ],
            16.0 * GB,
        );
        let mut ctl = controller(3);
        toy.run(&mut ctl)
    };
    let a = run();
    let b = run();
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

/// A deterministic xorshift, so the garbage is the same every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn garbage_observations_never_panic_or_produce_nan() {
    let floats = [
        0.0,
        -1.0,
        0.5,
        0.99,
        1.0,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
    ];
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(1),
        Duration::MAX,
    ];
    let counts = [0, 1, 1000, u64::MAX / 2, u64::MAX];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for vcpus in [1usize, 3] {
        for aggression in [0.0, 0.5, 1.0] {
            for force in [false, true] {
                let config = ControllerConfig {
                    aggression,
                    max_iterations: Some(50),
                    max_bandwidth_bytes_per_sec: (vcpus == 3).then_some(1_000_000),
                    on_no_converge: if force {
                        OnNoConverge::Force
                    } else {
                        OnNoConverge::Abort
                    },
                    ..ControllerConfig::new(vcpus)
                };
                let mut ctl = Controller::new(config).unwrap();
                for _ in 0..300 {
                    let mut pick = |n: usize| (next(&mut state) % n as u64) as usize;
                    let attribution_len = pick(5);
                    let obs = RoundObservation {
                        round: pick(6) as u32,
                        end_of_round: pick(2) == 0,
                        elapsed: durations[pick(durations.len())],
                        interval: durations[pick(durations.len())],
                        bytes_sent: counts[pick(counts.len())],
                        send_time: durations[pick(durations.len())],
                        dirtied_pages: counts[pick(counts.len())],
                        vcpu_dirtied_pages: (attribution_len > 0).then(|| {
                            (0..attribution_len)
                                .map(|_| counts[pick(counts.len())])
                                .collect()
                        }),
                        remaining_pages: counts[pick(counts.len())],
                        page_size: [0, 1, 4096, u64::MAX][pick(4)],
                        vcpu_throttle_fractions: (0..pick(5))
                            .map(|_| floats[pick(floats.len())])
                            .collect(),
                        devices: [
                            None,
                            Some(DeviceStatus::Running),
                            Some(DeviceStatus::Quiesced),
                        ][pick(3)],
                    };
                    let d = ctl.observe(&obs);
                    assert_eq!(d.throttle_fractions.len(), vcpus);
                    assert!(
                        d.throttle_fractions
                            .iter()
                            .all(|p| (0.0..=0.99).contains(p)),
                        "{d:#?}"
                    );
                    let e = &d.estimates;
                    for v in [
                        e.transfer_bytes_per_sec,
                        e.dirty_bytes_per_sec,
                        e.planned_dirty_bytes_per_sec,
                        e.target_dirty_bytes_per_sec,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        assert!(!v.is_nan(), "{d:#?}");
                    }
                    if d.action.is_terminal() {
                        ctl = Controller::new(ctl.config().clone()).unwrap();
                    }
                }
            }
        }
    }
}

#[test]
fn saturated_writer_stuck_at_max_throttle_on_a_busy_host_is_recognised() {
    // Two vCPUs rewrite their 16 MiB working sets every round whatever their share (the set
    // never shrinks), the user caps the throttle at 50 %, and a busy host makes the vCPUs
    // report only 30 % of throttle: the controller must still see "stuck at maximum".
    let cap = 16.0 * 1024.0 * 1024.0;
    let mut toy = Toy::new(
        vec![W::Burst(8.0 * GB, cap), W::Burst(8.0 * GB, cap)],
        256.0 * 1024.0 * 1024.0,
    );
    toy.link = 16.0 * 1024.0 * 1024.0;
    toy.reported_throttle = 0.6;
    let mut ctl = Controller::new(ControllerConfig {
        max_throttle: 0.5,
        ..ControllerConfig::new(2)
    })
    .unwrap();
    let decisions = toy.run(&mut ctl);
    let last = decisions.last().unwrap();
    assert!(
        matches!(
            &last.action,
            Action::Abort {
                reason: StopReason::NoConvergence { .. }
            }
        ),
        "{:?}",
        last.action
    );
    assert!(
        decisions.len() <= 4,
        "recognised after {} rounds",
        decisions.len()
    );
}

#[test]
fn a_short_send_into_the_socket_buffer_does_not_make_the_link_look_fast() {
    // Seconds at 64 MiB/s, then a round end where 2 MiB went into the socket buffer in 1 ms.
    const MIB: u64 = 1 << 20;
    let mut ctl = controller(1);
    let obs = |end_of_round, bytes: u64, send_ms: u64, remaining_mib: u64| RoundObservation {
        round: 1,
        end_of_round,
        elapsed: Duration::from_secs(10),
        interval: Duration::from_millis(send_ms.max(20)),
        bytes_sent: bytes,
        send_time: Duration::from_millis(send_ms),
        dirtied_pages: 0,
        vcpu_dirtied_pages: Some(vec![0]),
        remaining_pages: remaining_mib * MIB / PAGE,
        page_size: PAGE,
        vcpu_throttle_fractions: vec![0.0],
        devices: None,
    };
    for _ in 0..4 {
        ctl.observe(&obs(false, 32 * MIB, 500, 400));
    }
    let d = ctl.observe(&obs(true, 2 * MIB, 1, 240));
    let rate = d.estimates.transfer_bytes_per_sec.unwrap();
    assert!(rate < 1.1 * 64.0 * MIB as f64, "{rate}");
    assert!(
        !matches!(d.action, Action::Switchover { .. }),
        "240 MiB at 64 MiB/s is not a 300 ms switchover: {d:?}"
    );
}

#[test]
fn busy_devices_with_memory_within_budget_never_escalate_the_throttle() {
    // 1 GB guest, a writer well below the link; a disk that stays busy for many rounds.
    let mut toy = Toy::new(vec![W::Linear(20e6, 4e6)], 1.0 * GB);
    toy.devices = Some(DeviceStatus::Quiescing { in_flight: 4 });
    let mut ctl = controller(1);
    for _ in 0..20 {
        let d = toy.step(&mut ctl);
        assert!(!d.action.is_terminal(), "{d:?}");
        assert_eq!(
            d.throttle_fractions,
            vec![0.0],
            "a busy disk is no reason to throttle: {d:?}"
        );
    }
}
