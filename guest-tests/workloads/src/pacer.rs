//! Spreads page writes evenly in time to hold a dirty rate, on the TSC.

/// Lets one page through every `interval` TSC ticks (fixed point, 32
/// fractional bits, so rates that are not whole ticks per page stay exact).
/// After a stall it does not try to catch up by more than `max_backlog`:
/// a guest that was paused should not then dirty in a burst.
pub struct Pacer {
    interval: u128,
    max_backlog: u128,
    next_due: u128,
}

const FRACTION_BITS: u32 = 32;

impl Pacer {
    /// `pages_num / pages_den` pages per second, on a `tsc_hz` clock,
    /// starting at `now`. `pages_num` must not be 0.
    pub fn new(pages_num: u64, pages_den: u64, tsc_hz: u64, now: u64) -> Self {
        let interval = ((u128::from(tsc_hz) * u128::from(pages_den.max(1))) << FRACTION_BITS)
            / u128::from(pages_num.max(1));
        let one_ms = u128::from(tsc_hz / 1000) << FRACTION_BITS;
        Pacer {
            interval: interval.max(1),
            max_backlog: one_ms.max(interval),
            next_due: u128::from(now) << FRACTION_BITS,
        }
    }

    /// Whether a page may be written at `now` (and if so, it is counted).
    pub fn take(&mut self, now: u64) -> bool {
        let now = u128::from(now) << FRACTION_BITS;
        if now < self.next_due {
            return false;
        }
        self.next_due = self.next_due.max(now.saturating_sub(self.max_backlog)) + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages_between(p: &mut Pacer, from: u64, to: u64, step: u64) -> u64 {
        (from..to)
            .step_by(step as usize)
            .filter(|&t| p.take(t))
            .count() as u64
    }

    #[test]
    fn holds_the_rate() {
        // 1000 pages/s on a 1 MHz clock: one page per 1000 ticks.
        let mut p = Pacer::new(1000, 1, 1_000_000, 0);
        assert_eq!(pages_between(&mut p, 0, 1_000_000, 10), 1000);
    }

    #[test]
    fn fractional_rates_are_exact_over_time() {
        // 256 pages/s shared by 3 workers: 85.33 pages/s each.
        let mut p = Pacer::new(256, 3, 3_000_000, 0);
        assert_eq!(pages_between(&mut p, 0, 3_000_000 * 3, 7), 256);
    }

    #[test]
    fn a_stall_does_not_become_a_burst() {
        let mut p = Pacer::new(1000, 1, 1_000_000, 0);
        assert!(p.take(0));
        // 10 s without a look: at most 1 ms of backlog (1 page) is owed.
        let burst = pages_between(&mut p, 10_000_000, 10_000_100, 1);
        assert!(burst <= 2, "burst of {burst}");
        assert_eq!(
            pages_between(&mut p, 10_000_100, 11_000_100, 10),
            1000,
            "then the rate again"
        );
    }
}
