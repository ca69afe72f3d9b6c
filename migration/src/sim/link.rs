//! The link model: a bandwidth and a per-round latency.

use std::time::Duration;

/// The migration link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Payload bandwidth, bytes per second (after any `max_bandwidth` cap).
    pub bytes_per_sec: f64,
    /// Dead time per round (the final acknowledgement, the dirty-log sync hand-off), paid once
    /// per round and once more at switchover.
    pub latency: Duration,
}

impl Link {
    /// A link of `gbit` Gbit/s (10⁹ bits) with 200 µs of latency per round (one LAN hop).
    pub fn gbit(gbit: f64) -> Link {
        Link {
            bytes_per_sec: gbit * 1e9 / 8.0,
            latency: Duration::from_micros(200),
        }
    }

    /// Gbit/s, for tables.
    pub fn gbit_per_sec(&self) -> f64 {
        self.bytes_per_sec * 8.0 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_gbit_is_1_25_gb_per_second() {
        let l = Link::gbit(10.0);
        assert!((l.bytes_per_sec - 1.25e9).abs() < 1e-3);
        assert!((l.gbit_per_sec() - 10.0).abs() < 1e-9);
    }
}
