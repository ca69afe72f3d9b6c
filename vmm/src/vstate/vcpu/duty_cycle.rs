//! Enforcing a vCPU's throttle inside its own run loop: run for a slice of
//! CPU time, then sleep so that the sleep is the throttle's share of the
//! period actually used (an overshooting run slice is paid back in full).
//!
//! The slice is measured in the vCPU thread's own CPU time, not wall time: on
//! a busy host a woken vCPU may wait for a CPU, and that wait is neither guest
//! execution nor throttling. Budgeting CPU time makes the throttle mean what
//! an operator wants from it: the vCPU executes at most (1 − p) of the time.

use std::time::{Duration, Instant};

use super::control::VcpuControl;
use super::timer::{ThreadTimer, TimerError};

/// Default duty-cycle period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(10);
/// The shortest run slice: at high throttle the period stretches instead of
/// the slice shrinking below this, so exits and timer latency stay small
/// against it.
pub const MIN_RUN_SLICE: Duration = Duration::from_millis(1);

/// Run slice for throttle `p` (0 < p < 1) with period `period`.
pub fn run_slice(p: f64, period: Duration) -> Duration {
    period.mul_f64(1.0 - p).max(MIN_RUN_SLICE)
}

/// Sleep owed after running `ran` at throttle `p`.
pub fn sleep_for(p: f64, ran: Duration) -> Duration {
    if p <= 0.0 {
        return Duration::ZERO;
    }
    ran.mul_f64(p / (1.0 - p))
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The state of one vCPU's duty cycle.
pub struct DutyCycle {
    period: Duration,
    /// Thread CPU time when the current run phase began.
    phase_start: Option<Duration>,
    timer: ThreadTimer,
    armed: bool,
}

impl DutyCycle {
    /// A duty cycle with the given period; its timer signals the calling thread.
    pub fn new(period: Duration) -> Result<Self, TimerError> {
        Ok(DutyCycle {
            period,
            phase_start: None,
            timer: ThreadTimer::for_current_thread()?,
            armed: false,
        })
    }

    /// Called before every `KVM_RUN`: sleeps if the run slice is used up, and
    /// arms the timer for the rest of the slice.
    pub fn before_run(&mut self, control: &VcpuControl) -> Result<(), TimerError> {
        let p = control.throttle();
        if p <= 0.0 {
            self.phase_start = None;
            if self.armed {
                self.timer.disarm()?;
                self.armed = false;
            }
            return Ok(());
        }
        let slice = run_slice(p, self.period);
        let cpu = thread_cpu_time();
        let start = *self.phase_start.get_or_insert(cpu);
        let ran = cpu.saturating_sub(start);
        let remaining = if ran >= slice {
            let slept = control.sleep_unless_requested(Instant::now() + sleep_for(p, ran));
            control
                .counters
                .throttled_ns
                .fetch_add(slept.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            self.phase_start = Some(thread_cpu_time());
            slice
        } else {
            slice - ran
        };
        // Wall time ≥ CPU time: if the thread is descheduled the timer fires
        // early, the budget is not used up yet, and it is re-armed for the rest.
        self.timer.arm(remaining)?;
        self.armed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_sleeps_give_the_share() {
        for p in [0.1, 0.5, 0.9] {
            let s = run_slice(p, DEFAULT_PERIOD);
            let z = sleep_for(p, s);
            let share = s.as_secs_f64() / (s + z).as_secs_f64();
            assert!((share - (1.0 - p)).abs() < 1e-9, "p={p} share={share}");
        }
    }

    #[test]
    fn high_throttle_stretches_the_period() {
        let s = run_slice(0.99, DEFAULT_PERIOD);
        assert_eq!(s, MIN_RUN_SLICE);
        assert_eq!(sleep_for(0.99, s), Duration::from_millis(99));
    }

    #[test]
    fn overshoot_is_paid_back() {
        assert_eq!(sleep_for(0.5, Duration::from_millis(7)), Duration::from_millis(7));
    }
}
