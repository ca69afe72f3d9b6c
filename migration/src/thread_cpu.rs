//! CPU time of the calling thread, so a migration can say what it cost: the
//! kernel's run time of the thread (`/proc/thread-self/schedstat`, first
//! field, ns; Linux 3.17+ with scheduler statistics). `None` where the file
//! is missing or unreadable: the figure is a report, never a reason to fail.

use std::time::Duration;

/// CPU time the calling thread has run so far.
pub fn this_thread() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    parse_schedstat(&text)
}

/// CPU time the calling thread has run since `before` (an earlier
/// [`this_thread`] of the same thread); `None` if either is unknown.
pub fn since(before: Option<Duration>) -> Option<Duration> {
    Some(this_thread()?.saturating_sub(before?))
}

/// The run time (first field, ns) of a `schedstat` line.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_field_is_the_run_time() {
        assert_eq!(
            parse_schedstat("123456789 42 7\n"),
            Some(Duration::from_nanos(123_456_789))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn a_busy_thread_is_charged_for_its_work() {
        let before = this_thread();
        assert!(
            before.is_some(),
            "this host has /proc/thread-self/schedstat"
        );
        // Spin until 5 ms of CPU are charged; on a loaded machine that may
        // take longer in wall time, but never 10 s.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 1u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let spent = since(before).unwrap();
            if spent >= Duration::from_millis(5) {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "10 s of spinning charged only {spent:?}"
            );
        }
    }
}
