//! The source side of a live migration: pre-copy rounds while the guest
//! runs, steered by the pure convergence controller, then the switchover.
//! Until the destination says "resumed", every failure leaves the guest
//! running here, unthrottled, with dirty logging off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::controller::{
    Action, Controller, ControllerConfig, Decision, OnNoConverge, RoundObservation,
};
use migration::dirty::{DirtySet, RegionLayout};
use migration::protocol::messages::{Hello, MemoryRange, PAGE_SIZE};
use migration::sender::SourceSession;
use migration::stats::{MigrationCpu, MigrationPhase, ProgressPoint};
use migration::transport::Stream;
use migration::uri::MigrationUri;

use vm_memory::Bytes;

use super::guest_state::GuestState;
use super::harvest::{harvest_all_rings, reset_vmm_writes, Harvested, Harvester};
use super::send::{Cursor, Pacer, PageSender};
use super::{MigrationControl, MigrationError};
use crate::api::types::MigrateRequest;
use crate::exit::ExitReason;
use crate::machine::Machine;
use crate::vstate::kvmclock;
use crate::vstate::vcpu::PAUSE_TIMEOUT;
use crate::vstate::vm::DirtyTracking;

/// Shortest round: when there is little to send (a small dirty set, devices
/// being drained), rounds would otherwise spin, costing a core and flooding
/// the statistics without learning anything new. The wait comes at the start
/// of the round after a short one, once the controller has decided to go on:
/// a short round that ends in a switchover costs nothing extra.
const MIN_ROUND: Duration = Duration::from_millis(20);
/// Most progress points kept; older ones are thinned out, keeping the shape.
const MAX_HISTORY: usize = 2000;

/// How often a long round reports to the controller.
const OBSERVE_EVERY: Duration = Duration::from_millis(500);
/// How long the destination may take to restore, and to resume.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(30);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write to the destination may make no progress: a destination
/// that stops reading (hung, or stopped) fails the migration after this,
/// resuming the guest here, instead of holding the migration thread — and,
/// during the switchover, the paused guest — for ever.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the controller's configuration from the API request.
pub fn controller_config(
    req: &MigrateRequest,
    vcpus: usize,
) -> Result<ControllerConfig, MigrationError> {
    let mut c = ControllerConfig::new(vcpus);
    c.max_downtime = Duration::from_millis(req.max_downtime_ms);
    // The state allowance must stay below the downtime limit.
    c.state_transfer_allowance = c.state_transfer_allowance.min(c.max_downtime / 3);
    c.max_bandwidth_bytes_per_sec = req.max_bandwidth_bytes_per_sec;
    c.timeout = match req.timeout_s {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(MigrationError::BadRequest(format!(
                "timeout {s} s must be positive"
            )))
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    c.max_iterations = req.max_iterations;
    if req.max_stall_ms == Some(0) {
        return Err(MigrationError::BadRequest(
            "max stall must be at least 1 ms".into(),
        ));
    }
    if req.drain_window_ms == Some(0) {
        return Err(MigrationError::BadRequest(
            "drain window must be at least 1 ms".into(),
        ));
    }
    c.aggression = req.aggression;
    c.max_throttle = if req.no_throttle {
        0.0
    } else {
        req.max_throttle_pct / 100.0
    };
    c.on_no_converge = req
        .on_no_converge
        .parse::<OnNoConverge>()
        .map_err(|e| MigrationError::BadRequest(e.to_string()))?;
    c.validate()
        .map_err(|e| MigrationError::BadRequest(e.to_string()))?;
    Ok(c)
}

/// The handshake describing this VM.
pub fn hello(machine: &Machine) -> Hello {
    Hello {
        tern_version: env!("CARGO_PKG_VERSION").into(),
        page_size: PAGE_SIZE as u32,
        memory: machine
            .dirty
            .slots()
            .iter()
            .map(|s| MemoryRange {
                guest_addr: s.guest_addr,
                size: s.size,
            })
            .collect(),
        vcpus: machine.controls.len() as u32,
        devices: machine.devices.summaries(),
    }
}

/// Turns dirty tracking on; returns the set with every page in it.
fn start_tracking(machine: &Machine) -> Result<Arc<DirtySet>, MigrationError> {
    let layout: Vec<RegionLayout> = machine
        .dirty
        .slots()
        .iter()
        .map(|s| RegionLayout { pages: s.pages() })
        .collect();
    let set = Arc::new(DirtySet::new(&layout));
    // Drop ring entries left over from an earlier, failed migration.
    machine.dirty.set_sink(None);
    if matches!(machine.vm.tracking, DirtyTracking::Ring { .. }) {
        harvest_all_rings(machine)?;
    }
    machine.dirty.set_sink(Some(set.clone()));
    reset_vmm_writes(machine);
    machine
        .vm
        .memory
        .set_dirty_logging(&machine.vm.fd, true)
        .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
    set.mark_all();
    Ok(set)
}

/// Undoes everything the migration did to the running guest.
pub fn restore_running_guest(machine: &Machine) {
    machine.with_vcpus(|v| {
        for i in 0..machine.controls.len() {
            v.set_throttle(i, 0.0);
        }
        v.resume();
    });
    for c in &machine.controls {
        c.set_max_stall(None);
    }
    machine.devices.resume_io();
    machine.dirty.set_sink(None);
    if let Err(e) = machine.vm.memory.set_dirty_logging(&machine.vm.fd, false) {
        log::error!("migration cleanup: cannot turn dirty logging off: {e}");
    }
}

/// Per-interval bookkeeping for observations.
struct Interval {
    start: Instant,
    bytes: u64,
    send_time: Duration,
    throttled_ns: Vec<u64>,
}

impl Interval {
    fn begin(machine: &Machine, session: &SourceSession, sender: &PageSender) -> Self {
        Interval {
            start: Instant::now(),
            bytes: session.bytes_sent(),
            send_time: sender.totals.send_time,
            throttled_ns: machine
                .controls
                .iter()
                .map(|c| c.counters.throttled_ns.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn observe(
    machine: &Machine,
    iv: &Interval,
    session: &SourceSession,
    sender: &PageSender,
    h: &Harvested,
    round: u32,
    end_of_round: bool,
    started: Instant,
    remaining_pages: u64,
) -> RoundObservation {
    let interval = iv.start.elapsed();
    let throttles = machine
        .controls
        .iter()
        .zip(&iv.throttled_ns)
        .map(|(c, before)| {
            let slept = c.counters.throttled_ns.load(Ordering::Relaxed) - before;
            (slept as f64 / interval.as_nanos().max(1) as f64).clamp(0.0, 0.99)
        })
        .collect();
    RoundObservation {
        round,
        end_of_round,
        elapsed: started.elapsed(),
        interval,
        bytes_sent: session.bytes_sent() - iv.bytes,
        send_time: sender.totals.send_time - iv.send_time,
        dirtied_pages: h.added,
        vcpu_dirtied_pages: h.per_vcpu.clone(),
        remaining_pages,
        page_size: PAGE_SIZE as u64,
        vcpu_throttle_fractions: throttles,
        devices: machine.devices.drain_status(),
    }
}

/// What is left to send, in pages that will carry data. During the bulk pass
/// the pages not yet walked are counted at their sampled data fraction: much of
/// a guest's memory is zero pages, which cost one bit on the wire, and counting
/// them in full would make the expected downtime (and so the policy's
/// decisions) absurdly pessimistic.
fn remaining_data_pages(machine: &Machine, set: &DirtySet, round: u32, cursor: &Cursor) -> u64 {
    let count = set.count();
    if round != 0 {
        return count;
    }
    let total: u64 = (0..set.regions()).map(|r| set.region_pages(r)).sum();
    let behind = cursor.pages_behind(set);
    let unvisited = total.saturating_sub(behind).min(count);
    let fraction = sampled_data_fraction(machine, behind, total);
    (count - unvisited) + (unvisited as f64 * fraction).ceil() as u64
}

/// The fraction of non-zero pages among guest pages `from..to` (numbered
/// across regions), from 1024 pages spread evenly over them: about a
/// millisecond of reads, ±3 % at worst.
fn sampled_data_fraction(machine: &Machine, from: u64, to: u64) -> f64 {
    const SAMPLES: u64 = 1024;
    let span = to.saturating_sub(from);
    if span == 0 {
        return 1.0;
    }
    let slots = machine.dirty.slots();
    let n = SAMPLES.min(span);
    let mut page = [0u8; PAGE_SIZE];
    let mut data = 0u64;
    for i in 0..n {
        let mut p = from + i * span / n;
        let addr = slots.iter().find_map(|s| {
            if p < s.pages() {
                Some(s.guest_addr + p * PAGE_SIZE as u64)
            } else {
                p -= s.pages();
                None
            }
        });
        let nonzero = addr
            .map(|a| {
                machine
                    .mem
                    .read_slice(&mut page, vm_memory::GuestAddress(a))
                    .is_err()
                    || page.iter().any(|&b| b != 0)
            })
            .unwrap_or(true);
        data += u64::from(nonzero);
    }
    data as f64 / n as f64
}

fn apply(machine: &Machine, d: &Decision, ctl: &MigrationControl, round: u32, started: Instant) {
    machine.with_vcpus(|v| {
        for (i, p) in d.throttle_fractions.iter().enumerate() {
            v.set_throttle(i, *p);
        }
    });
    let e = &d.estimates;
    let mut s = ctl.stats();
    s.rounds = round + 1;
    s.remaining_bytes = e.remaining_bytes;
    s.transfer_bytes_per_sec = e.transfer_bytes_per_sec.unwrap_or(0.0);
    s.dirty_bytes_per_sec = e.dirty_bytes_per_sec.unwrap_or(0.0);
    s.expected_downtime_ms = e.expected_downtime.map(|d| d.as_secs_f64() * 1e3);
    s.throttle_pct = d.throttle_fractions.iter().map(|p| p * 100.0).collect();
    s.reason = e.reason.clone();
    let point = ProgressPoint {
        t_ms: started.elapsed().as_secs_f64() * 1e3,
        round,
        remaining_bytes: e.remaining_bytes,
        transfer_bytes_per_sec: s.transfer_bytes_per_sec,
        dirty_bytes_per_sec: s.dirty_bytes_per_sec,
        throttle_pct: s.throttle_pct.clone(),
        expected_downtime_ms: s.expected_downtime_ms,
    };
    s.history.push(point);
    if s.history.len() > MAX_HISTORY {
        // Keep every other point of the older half.
        let half = s.history.len() / 2;
        let mut i = 0;
        s.history.retain(|_| {
            i += 1;
            i > half || i % 2 == 0
        });
    }
}

/// Runs a whole outgoing migration. `Ok` means the guest runs on the
/// destination; on `Err` the caller restores the running guest here.
pub fn run(
    machine: &Arc<Machine>,
    req: &MigrateRequest,
    ctl: &MigrationControl,
) -> Result<(), MigrationError> {
    let started = Instant::now();
    let loop_cpu_before = migration::thread_cpu::this_thread();
    let uri: MigrationUri = req
        .to
        .parse()
        .map_err(|e: migration::uri::UriError| MigrationError::BadRequest(e.to_string()))?;
    let mut controller = Controller::new(controller_config(req, machine.controls.len())?)
        .map_err(|e| MigrationError::BadRequest(e.to_string()))?;

    let stream = Stream::connect(&uri, CONNECT_TIMEOUT)
        .map_err(|e| MigrationError::Connect(format!("{e}: {}", root_cause(&e))))?;
    super::socket_buffers::widen(&stream);
    stream
        .set_write_timeout(Some(WRITE_STALL_TIMEOUT))
        .map_err(|e| MigrationError::Connect(format!("migration socket: {e}")))?;
    let mut session = SourceSession::start(stream, &hello(machine), HANDSHAKE_TIMEOUT)?;
    let begun = Begun {
        at: started,
        loop_cpu: loop_cpu_before,
    };
    let result = migrate_guest(machine, req, ctl, &mut session, &mut controller, begun);
    if let Err(e) = &result {
        // Tell the destination to discard everything (best effort: it may be gone).
        session.abandon(&e.to_string());
    }
    // After a completion the process is about to exit: the figure is taken
    // there, before the stats are final (see `migrate_guest`); here only
    // for a migration that failed, once the abandon has been flushed.
    if result.is_err() {
        let cpu = cpu_used(loop_cpu_before);
        ctl.update(|s| s.cpu_ms = cpu);
    }
    result
}

/// CPU the migration loop (the calling thread, since `loop_before`) has used.
fn cpu_used(loop_before: Option<Duration>) -> Option<MigrationCpu> {
    let loop_cpu = migration::thread_cpu::since(loop_before)?;
    Some(MigrationCpu {
        loop_ms: loop_cpu.as_secs_f64() * 1e3,
    })
}

/// When the migration began: wall clock, and the loop thread's CPU time.
#[derive(Clone, Copy)]
struct Begun {
    at: Instant,
    loop_cpu: Option<Duration>,
}

/// Everything after the handshake: rounds, switchover, the two-phase end.
fn migrate_guest(
    machine: &Arc<Machine>,
    req: &MigrateRequest,
    ctl: &MigrationControl,
    session: &mut SourceSession,
    controller: &mut Controller,
    begun: Begun,
) -> Result<(), MigrationError> {
    let started = begun.at;
    for c in &machine.controls {
        c.set_max_stall(req.max_stall_ms.map(Duration::from_millis));
    }
    let drain_window = req
        .drain_window_ms
        .map_or(crate::device_manager::QUIESCE_WINDOW, Duration::from_millis);
    let set = start_tracking(machine)?;
    let mut harvester = Harvester::new(machine, &set);
    ctl.update(|s| {
        s.setup_ms = started.elapsed().as_secs_f64() * 1e3;
        s.phase = MigrationPhase::Active;
    });

    let mut sender = PageSender::new();
    let check_sent = std::env::var_os("TERN_DEBUG_CHECK_SENT").is_some();
    if check_sent {
        sender.remember_sent(&set);
    }
    let mut pacer = Pacer::new(req.max_bandwidth_bytes_per_sec);
    let mut round = 0u32;
    let forced_downtime;
    let mut wait_before_round = Duration::ZERO;
    'rounds: loop {
        let mut cursor = Cursor::default();
        let mut iv = Interval::begin(machine, session, &sender);
        // Inside the round's interval: what the guest dirties meanwhile is
        // this round's.
        std::thread::sleep(wait_before_round);
        let work_started = Instant::now();
        pacer.restart();
        loop {
            let done = sender.pass(
                machine,
                &set,
                session,
                &mut pacer,
                &mut cursor,
                Instant::now() + OBSERVE_EVERY,
                &ctl.cancel,
            )?;
            if done {
                break;
            }
            // A long round: let the controller react inside it.
            let h = harvester.harvest(machine, &set)?;
            let remaining = remaining_data_pages(machine, &set, round, &cursor);
            let obs = observe(
                machine, &iv, session, &sender, &h, round, false, started, remaining,
            );
            let d = controller.observe(&obs);
            apply(machine, &d, ctl, round, started);
            session.check_destination()?;
            iv = Interval::begin(machine, session, &sender);
            match d.action {
                Action::Abort { reason } => {
                    return Err(MigrationError::Aborted(reason.to_string()))
                }
                Action::Force {
                    expected_downtime, ..
                } => {
                    forced_downtime = expected_downtime;
                    // Ended here: what was sent of it is awaited below.
                    session.end_round(round)?;
                    break 'rounds;
                }
                _ => {}
            }
        }
        // From this round's work only: counting its own wait would make
        // every other round a few-µs one, whose rates are noise.
        wait_before_round = MIN_ROUND.saturating_sub(work_started.elapsed());
        let h = harvester.harvest(machine, &set)?;
        session.end_round(round)?;
        let obs = observe(
            machine,
            &iv,
            session,
            &sender,
            &h,
            round,
            true,
            started,
            set.count(),
        );
        let d = controller.observe(&obs);
        apply(machine, &d, ctl, round, started);
        ctl.update(|s| {
            s.bytes_sent = session.bytes_sent();
            s.data_pages = sender.totals.data_pages;
            s.zero_pages = sender.totals.zero_pages;
            s.total_ms = started.elapsed().as_secs_f64() * 1e3;
        });
        match d.action {
            Action::Continue => machine.devices.resume_io_into(Some(&ctl.drain)),
            Action::Quiesce => machine.devices.try_quiesce(&ctl.drain, drain_window),
            Action::Switchover { .. } => {
                forced_downtime = None;
                break;
            }
            Action::Abort { reason } => return Err(MigrationError::Aborted(reason.to_string())),
            Action::Force {
                expected_downtime, ..
            } => {
                forced_downtime = expected_downtime;
                break;
            }
        }
        if ctl.cancel.load(Ordering::Relaxed) {
            return Err(MigrationError::Cancelled);
        }
        round += 1;
    }

    // Before the pause, the destination must have read everything sent so
    // far: the socket buffers can hold megabytes, which it would otherwise
    // read while the guest is paused, a downtime the controller never saw.
    // The guest runs meanwhile; what it dirties goes in the final copy.
    let waited = session.await_round(round, COMPLETE_TIMEOUT)?;
    log::debug!("switchover: the destination had read round {round} {waited:?} later");
    // Switchover: the only step that stops the guest.
    ctl.update(|s| {
        s.phase = MigrationPhase::Switchover;
        s.forced_expected_downtime_ms = forced_downtime.map(|d| d.as_secs_f64() * 1e3);
    });
    let paused_at = Instant::now();
    machine
        .with_vcpus(|v| v.pause(PAUSE_TIMEOUT))
        .ok_or_else(|| MigrationError::Vcpu("no vCPUs".into()))?
        .map_err(|e| MigrationError::Vcpu(e.to_string()))?;
    log::debug!("switchover: vCPUs paused after {:?}", paused_at.elapsed());
    let in_flight = machine.devices.quiesce_for_switchover(&ctl.drain);
    if in_flight > 0 {
        // Forced with requests in flight: they are resubmitted on the destination.
        log::warn!("switchover with {in_flight} device requests in flight");
    }
    harvester.harvest(machine, &set)?;
    // The guest is paused: the cap protected the link while the guest ran,
    // now it would only stretch the pause (QEMU lifts its cap here too). The
    // controller's downtime estimate used the capped rate, so the pause is no
    // longer than it expected.
    let mut pacer = Pacer::new(None);
    sender.send_all(machine, &set, session, &mut pacer, &ctl.cancel)?;
    log::debug!(
        "switchover: dirty set sent after {:?} ({} data pages so far)",
        paused_at.elapsed(),
        sender.totals.data_pages
    );
    // Pages written while saving device state (e.g. a completion) go too.
    let devices = machine
        .devices
        .save_states()
        .map_err(MigrationError::Device)?;
    harvester.harvest(machine, &set)?;
    sender.send_all(machine, &set, session, &mut pacer, &ctl.cancel)?;
    if check_sent {
        let bad = sender.check_sent(machine, 16);
        if bad.is_empty() {
            log::warn!("TERN_DEBUG_CHECK_SENT: every page matches what was sent");
        } else {
            log::error!(
                "TERN_DEBUG_CHECK_SENT: pages changed since last sent (region, page): {bad:?}"
            );
        }
    }
    session.end_round(round + 1)?;
    let vcpus = machine
        .with_vcpus(|v| v.save())
        .ok_or_else(|| MigrationError::Vcpu("no vCPUs".into()))?
        .map_err(|e| MigrationError::Vcpu(e.to_string()))?;
    let mut vm = machine
        .vm
        .save_state()
        .map_err(|e| MigrationError::Vcpu(e.to_string()))?;
    // The clock the guest itself shows, tied to vCPU 0's TSC (see kvmclock).
    let guest_clock = kvmclock::guest_clock_at_first_tsc(&machine.mem, &vcpus);
    let carried = kvmclock::CarriedClock::choose(vm.clock.clock, guest_clock);
    match carried {
        kvmclock::CarriedClock::Guest(ns) => log::debug!(
            "switchover: guest kvmclock {ns} ns, KVM clock {} ns (guest ahead by {} us)",
            vm.clock.clock,
            (i128::from(ns) - i128::from(vm.clock.clock)) / 1000
        ),
        kvmclock::CarriedClock::KvmGuestImplausible { kvm, guest } => log::warn!(
            "the guest's kvmclock area reads {guest} ns, KVM's clock {kvm} ns: too far apart to \
             be a clock; KVM's is carried"
        ),
        kvmclock::CarriedClock::Kvm(_) => {}
    }
    vm.clock.clock = carried.ns();
    let saved_at_realtime_ns = vcpus
        .first()
        .and_then(|v| v.tsc_read_at_realtime_ns)
        .unwrap_or_else(kvmclock::realtime_ns);
    let blob = GuestState {
        vcpus,
        vm,
        devices,
        saved_at_realtime_ns,
    }
    .encode()
    .map_err(MigrationError::Device)?;
    session.send_state(&blob)?;
    let sent_after = paused_at.elapsed();
    log::debug!(
        "switchover: state ({} bytes) sent after {:?}",
        blob.len(),
        paused_at.elapsed()
    );
    session.complete(COMPLETE_TIMEOUT)?;
    log::debug!(
        "switchover: destination ready after {:?}",
        paused_at.elapsed()
    );
    if ctl.cancel.load(Ordering::Relaxed) {
        return Err(MigrationError::Cancelled);
    }
    session.commit(COMMIT_TIMEOUT)?;
    let downtime = paused_at.elapsed();
    let cpu = cpu_used(begun.loop_cpu);
    ctl.update(|s| {
        s.cpu_ms = cpu;
        s.phase = MigrationPhase::Completed;
        s.downtime_ms = Some(downtime.as_secs_f64() * 1e3);
        s.downtime_sent_ms = Some(sent_after.as_secs_f64() * 1e3);
        s.bytes_sent = session.bytes_sent();
        s.data_pages = sender.totals.data_pages;
        s.zero_pages = sender.totals.zero_pages;
        s.remaining_bytes = 0;
        s.total_ms = started.elapsed().as_secs_f64() * 1e3;
    });
    machine.exit.exit(ExitReason::MigratedAway);
    Ok(())
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
