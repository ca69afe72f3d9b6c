//! The control block shared between a vCPU thread and the rest of tern:
//! what the vCPU should be doing (run, pause, exit), whether it has parked,
//! commands to run while parked, its throttle, and its counters.
//!
//! Requests go in under the mutex first, then the thread is kicked (signal +
//! `immediate_exit`), so the thread always sees the request after it leaves
//! `KVM_RUN` (the order crosvm documents).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::state::VcpuState;

/// What the vCPU thread should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Running guest code.
    Run,
    /// Parked outside `KVM_RUN`, with pending I/O completed.
    Pause,
    /// Leaving its thread.
    Exit,
}

/// Work a parked vCPU thread does on request (vCPU ioctls run on the vCPU's own thread).
pub enum VcpuCommand {
    /// Save the complete vCPU state.
    Save,
    /// Load a vCPU state.
    Restore(Box<VcpuState>),
}

/// The answer to a `VcpuCommand`.
pub enum VcpuReply {
    /// The saved state.
    Saved(Box<VcpuState>),
    /// The state was loaded.
    Restored,
    /// The command failed; the message says why.
    Failed(String),
}

pub(crate) struct ControlState {
    pub target: Target,
    pub parked: bool,
    pub exited: bool,
    pub command: Option<VcpuCommand>,
    pub reply: Option<VcpuReply>,
}

/// Per-vCPU counters, readable at any time.
#[derive(Default)]
pub struct VcpuCounters {
    /// Nanoseconds spent inside `KVM_RUN`.
    pub run_ns: AtomicU64,
    /// Nanoseconds slept by the duty-cycle throttle.
    pub throttled_ns: AtomicU64,
    /// Exits to user space.
    pub exits: AtomicU64,
    /// Pages this vCPU dirtied, as harvested from its dirty ring.
    pub dirty_ring_pages: AtomicU64,
}

/// The shared control block of one vCPU.
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
    kick_pending: AtomicBool,
    /// Throttle in parts per 10 000 (0 = none, 9900 = 99 %).
    throttle_bp: AtomicU32,
    /// Duty-cycle period in microseconds.
    period_us: AtomicU32,
    /// Longest throttle sleep in microseconds (0 = no bound but the default one).
    max_stall_us: AtomicU32,
    /// Counters.
    pub counters: VcpuCounters,
}

/// Largest throttle tern applies: the vCPU always keeps 1 % of its time.
pub const MAX_THROTTLE: f64 = 0.99;

impl VcpuControl {
    /// A control block for a vCPU that starts in `target`.
    pub fn new(target: Target) -> Self {
        VcpuControl {
            state: Mutex::new(ControlState {
                target,
                parked: false,
                exited: false,
                command: None,
                reply: None,
            }),
            changed: Condvar::new(),
            kick_pending: AtomicBool::new(false),
            throttle_bp: AtomicU32::new(0),
            period_us: AtomicU32::new(migration::throttle::DEFAULT_PERIOD.as_micros() as u32),
            max_stall_us: AtomicU32::new(0),
            counters: VcpuCounters::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A poisoned lock means a vCPU thread panicked; the state itself is plain
        // data and still meaningful, so keep going rather than cascade the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, ControlState>,
    ) -> MutexGuard<'a, ControlState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, ControlState>,
        timeout: Duration,
    ) -> MutexGuard<'a, ControlState> {
        self.changed
            .wait_timeout(guard, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_all();
    }

    /// Marks that the vCPU thread must look at its requests.
    pub(crate) fn set_kick_pending(&self) {
        self.kick_pending.store(true, Ordering::SeqCst);
    }

    /// Takes the pending-kick flag.
    pub(crate) fn take_kick_pending(&self) -> bool {
        self.kick_pending.swap(false, Ordering::SeqCst)
    }

    /// Current throttle as a fraction in [0, 0.99].
    pub fn throttle(&self) -> f64 {
        f64::from(self.throttle_bp.load(Ordering::Relaxed)) / 10_000.0
    }

    /// Sets the throttle fraction, clamped to [0, 0.99].
    pub fn set_throttle(&self, fraction: f64) {
        let f = if fraction.is_finite() {
            fraction.clamp(0.0, MAX_THROTTLE)
        } else {
            0.0
        };
        let new = (f * 10_000.0).round() as u32;
        let old = self.throttle_bp.swap(new, Ordering::SeqCst);
        if new < old {
            // A vCPU asleep for the old, higher throttle wakes up now
            // (`sleep_unless_requested`): at 99 % it would sleep on for up
            // to a second the controller no longer wants. Under the lock,
            // so the sleeper either sees the new value or gets the wake-up.
            let _state = self.lock();
            self.notify();
        }
    }

    /// The duty-cycle period.
    pub fn throttle_period(&self) -> Duration {
        Duration::from_micros(u64::from(self.period_us.load(Ordering::Relaxed)))
    }

    /// Sets the duty-cycle period (1 ms to 1 s).
    pub fn set_throttle_period(&self, period: Duration) {
        let us = period.as_micros().clamp(1_000, 1_000_000) as u32;
        self.period_us.store(us, Ordering::Relaxed);
    }

    /// The longest throttle sleep allowed, if bounded.
    pub fn max_stall(&self) -> Option<Duration> {
        match self.max_stall_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }

    /// Bounds every throttle sleep (None: only the duty cycle's own bound).
    pub fn set_max_stall(&self, max: Option<Duration>) {
        let us = max.map_or(0, |d| d.as_micros().clamp(1, 1_000_000) as u32);
        self.max_stall_us.store(us, Ordering::Relaxed);
    }

    /// Sleeps until `until` unless a request (pause, exit, command) arrives
    /// first, or the throttle drops below `throttle`, the one the sleep was
    /// computed for. Returns the time actually slept.
    pub(crate) fn sleep_unless_requested(&self, until: Instant, throttle: f64) -> Duration {
        let start = Instant::now();
        let throttle = (throttle * 10_000.0).round() as u32;
        let mut guard = self.lock();
        loop {
            let now = Instant::now();
            if now >= until
                || guard.target != Target::Run
                || guard.command.is_some()
                || self.throttle_bp.load(Ordering::SeqCst) < throttle
            {
                break;
            }
            guard = self.wait_timeout(guard, until - now);
        }
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lowering_the_throttle_ends_a_throttle_sleep() {
        let control = Arc::new(VcpuControl::new(Target::Run));
        control.set_throttle(0.99);
        let sleeper = control.clone();
        let slept = std::thread::spawn(move || {
            sleeper.sleep_unless_requested(Instant::now() + Duration::from_secs(10), 0.99)
        });
        std::thread::sleep(Duration::from_millis(50));
        // Raising it, or setting the same, keeps the sleep going.
        control.set_throttle(0.99);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!slept.is_finished());
        control.set_throttle(0.0);
        let slept = slept.join().unwrap();
        assert!(slept < Duration::from_secs(5), "slept {slept:?}");
        assert!(slept >= Duration::from_millis(100), "slept {slept:?}");
    }

    #[test]
    fn a_throttle_lowered_before_the_sleep_began_ends_it_at_once() {
        let control = VcpuControl::new(Target::Run);
        // The sleep was computed for 50 %, but the throttle is already 10 %.
        control.set_throttle(0.1);
        let slept = control.sleep_unless_requested(Instant::now() + Duration::from_secs(10), 0.5);
        assert!(slept < Duration::from_secs(1), "slept {slept:?}");
    }
}
