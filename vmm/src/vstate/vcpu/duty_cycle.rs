//! Enforcing a vCPU's throttle inside its own run loop: run for a slice of
//! CPU time, then sleep so that the sleep is the throttle's share of the
//! period actually used (an overshooting run slice is paid back in full).
//!
//! The slice is measured in the vCPU thread's own CPU time, not wall time: on
//! a busy host a woken vCPU may wait for a CPU, and that wait is neither guest
//! execution nor throttling. Budgeting CPU time makes the throttle mean what
//! an operator wants from it: the vCPU executes at most (1 − p) of the time.

use std::time::{Duration, Instant};

use migration::throttle::{DutyCycle, OversleepDebt};

use super::control::VcpuControl;
use super::timer::{ThreadTimer, TimerError};

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The state of one vCPU's duty cycle (the maths is `migration::throttle`).
pub struct DutyCycleRunner {
    /// Thread CPU time when the current run phase began.
    phase_start: Option<Duration>,
    timer: ThreadTimer,
    armed: bool,
    /// Overrun sleeps, taken off the next ones.
    debt: OversleepDebt,
}

impl DutyCycleRunner {
    /// A duty cycle whose timer signals the calling thread.
    pub fn new() -> Result<Self, TimerError> {
        Ok(DutyCycleRunner {
            phase_start: None,
            timer: ThreadTimer::for_current_thread()?,
            armed: false,
            debt: OversleepDebt::default(),
        })
    }

    /// Called before every `KVM_RUN`: sleeps if the run slice is used up, and
    /// arms the timer for the rest of the slice.
    pub fn before_run(&mut self, control: &VcpuControl) -> Result<(), TimerError> {
        let p = control.throttle();
        if p <= 0.0 {
            self.phase_start = None;
            self.debt = OversleepDebt::default();
            if self.armed {
                self.timer.disarm()?;
                self.armed = false;
            }
            return Ok(());
        }
        let cycle = match control.max_stall() {
            Some(max) => DutyCycle::bounded(p, control.throttle_period(), max),
            None => DutyCycle::new(p, control.throttle_period()),
        };
        let slice = cycle.run();
        let cpu = thread_cpu_time();
        let start = *self.phase_start.get_or_insert(cpu);
        let ran = cpu.saturating_sub(start);
        let remaining = if ran >= slice {
            let asked = self.debt.sleep_for(cycle.sleep_after(ran));
            let slept = control.sleep_unless_requested(Instant::now() + asked, p);
            self.debt.record(asked, slept, cycle.period());
            control.counters.throttled_ns.fetch_add(
                slept.as_nanos() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
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
