//! Enforcing a vCPU's throttle inside its own run loop: run for a slice of
//! wall time, then sleep so that the sleep is the throttle's share of the
//! period actually used (an overshooting run slice is paid back in full).

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

/// The state of one vCPU's duty cycle.
pub struct DutyCycle {
    period: Duration,
    phase_start: Option<Instant>,
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
        let now = Instant::now();
        let start = *self.phase_start.get_or_insert(now);
        let ran = now - start;
        let start = if ran >= slice {
            let slept = control.sleep_unless_requested(Instant::now() + sleep_for(p, ran));
            control
                .counters
                .throttled_ns
                .fetch_add(slept.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            let s = Instant::now();
            self.phase_start = Some(s);
            s
        } else {
            start
        };
        let remaining = slice.saturating_sub(start.elapsed());
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
