//! What the migration loop tells the controller after a round (or during a long one), and the
//! cleaning that makes any such input safe to compute with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Page size assumed when an observation says 0 (a zero page size would make every remaining
/// set look empty and trigger a switchover).
pub const DEFAULT_PAGE_SIZE: u64 = 4096;

/// Where the devices are in their non-blocking drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// Devices take requests normally.
    Running,
    /// Quiesce was asked for; some requests are still in flight.
    Quiescing {
        /// Requests still in flight across devices.
        in_flight: u32,
    },
    /// No request in flight and none being taken: state can be saved without blocking.
    Quiesced,
}

/// One observation: the counters since the previous observation plus the current state.
///
/// Observe once at the end of every round (`end_of_round: true`). In long rounds (the bulk pass
/// of a large guest, or any round longer than a second or so) also observe every second or so
/// with `end_of_round: false`, so the throttle and the switchover react inside the round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundObservation {
    /// Index of the round this observation belongs to; 0 is the bulk pass over all memory.
    pub round: u32,
    /// Whether the round has just finished (its pending set is sent and the dirty log harvested).
    pub end_of_round: bool,
    /// Time since the migration started.
    pub elapsed: Duration,
    /// Time covered by this observation: since the previous observation (the round's duration
    /// when observing once per round).
    pub interval: Duration,
    /// Bytes put on the wire during `interval`.
    pub bytes_sent: u64,
    /// Time spent sending during `interval` (excluding e.g. the dirty-log harvest).
    pub send_time: Duration,
    /// Pages newly added to the dirty set during `interval` (the dirty-set growth), all sources.
    pub dirtied_pages: u64,
    /// The same split per vCPU when the dirty log attributes writes (KVM dirty ring);
    /// `None` with the bitmap, which cannot tell vCPUs apart. Writes the VMM makes itself
    /// (virtio DMA) are the part of `dirtied_pages` no vCPU accounts for.
    pub vcpu_dirtied_pages: Option<Vec<u64>>,
    /// Pages still to send now: the harvested dirty set plus anything unsent from this round.
    pub remaining_pages: u64,
    /// Guest page size in bytes.
    pub page_size: u64,
    /// The throttle fraction each vCPU actually ran with during `interval` (time-averaged).
    pub vcpu_throttle_fractions: Vec<f64>,
    /// Device drain state, when the VMM tracks it; `None` means "not tracked, never blocks".
    pub devices: Option<DeviceStatus>,
}

/// An observation reduced to finite, consistent numbers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Clean {
    pub round: u32,
    pub end_of_round: bool,
    pub elapsed: Duration,
    pub interval_secs: f64,
    pub bytes_sent: f64,
    pub send_secs: f64,
    pub dirtied_bytes: f64,
    /// Per-vCPU dirtied bytes, scaled so they never sum above `dirtied_bytes`.
    pub vcpu_dirtied_bytes: Option<Vec<f64>>,
    /// Dirtied bytes no vCPU accounts for (0 without attribution).
    pub unattributed_bytes: f64,
    pub remaining_bytes: f64,
    pub remaining_pages: u64,
    /// CPU share `1 − p` each vCPU ran with.
    pub vcpu_shares: Vec<f64>,
    pub devices: Option<DeviceStatus>,
}

/// Throttle fraction → CPU share, for any input (NaN = unthrottled; clamped to `0.0..=1.0`).
pub(crate) fn share_of(fraction: f64) -> f64 {
    if fraction.is_nan() {
        1.0
    } else {
        1.0 - fraction.clamp(0.0, 1.0)
    }
}

impl RoundObservation {
    /// Cleans the observation for a guest with `vcpus` vCPUs. Missing throttle entries are taken
    /// from `commanded` (what the controller last asked for); a per-vCPU dirty vector of the
    /// wrong length is treated as no attribution.
    pub(crate) fn clean(&self, vcpus: usize, commanded: &[f64]) -> Clean {
        let page = if self.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            self.page_size
        } as f64;
        let dirtied_bytes = self.dirtied_pages as f64 * page;
        let (vcpu_dirtied_bytes, unattributed_bytes) = match &self.vcpu_dirtied_pages {
            Some(v) if v.len() == vcpus && vcpus > 0 => {
                let raw: Vec<f64> = v.iter().map(|&p| p as f64 * page).collect();
                let sum: f64 = raw.iter().sum();
                if sum > dirtied_bytes && sum > 0.0 {
                    // Two vCPUs dirtying one page, or a page dirtied again after the harvest,
                    // count twice in the ring: keep the shares, not the sum.
                    let scale = dirtied_bytes / sum;
                    (Some(raw.iter().map(|b| b * scale).collect()), 0.0)
                } else {
                    (Some(raw), dirtied_bytes - sum)
                }
            }
            _ => (None, 0.0),
        };
        let vcpu_shares = (0..vcpus)
            .map(|i| {
                let f = self
                    .vcpu_throttle_fractions
                    .get(i)
                    .or_else(|| commanded.get(i))
                    .copied()
                    .unwrap_or(0.0);
                share_of(f)
            })
            .collect();
        Clean {
            round: self.round,
            end_of_round: self.end_of_round,
            elapsed: self.elapsed,
            interval_secs: self.interval.as_secs_f64(),
            bytes_sent: self.bytes_sent as f64,
            send_secs: self.send_time.as_secs_f64(),
            dirtied_bytes,
            vcpu_dirtied_bytes,
            unattributed_bytes,
            remaining_bytes: self.remaining_pages as f64 * page,
            remaining_pages: self.remaining_pages,
            vcpu_shares,
            devices: self.devices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_size_uses_default() {
        let o = RoundObservation {
            remaining_pages: 10,
            page_size: 0,
            ..Default::default()
        };
        assert_eq!(o.clean(1, &[]).remaining_bytes, 40960.0);
    }

    #[test]
    fn wrong_length_attribution_is_ignored() {
        let o = RoundObservation {
            dirtied_pages: 10,
            vcpu_dirtied_pages: Some(vec![1, 2, 3]),
            page_size: 4096,
            ..Default::default()
        };
        let c = o.clean(2, &[]);
        assert!(c.vcpu_dirtied_bytes.is_none());
        assert_eq!(c.unattributed_bytes, 0.0);
    }

    #[test]
    fn overlapping_attribution_is_scaled_and_remainder_is_unattributed() {
        let o = RoundObservation {
            dirtied_pages: 10,
            vcpu_dirtied_pages: Some(vec![10, 10]),
            page_size: 1,
            ..Default::default()
        };
        let c = o.clean(2, &[]);
        assert_eq!(c.vcpu_dirtied_bytes, Some(vec![5.0, 5.0]));
        let o = RoundObservation {
            vcpu_dirtied_pages: Some(vec![2, 3]),
            ..o
        };
        let c = o.clean(2, &[]);
        assert_eq!(c.unattributed_bytes, 5.0);
    }

    #[test]
    fn throttles_are_cleaned_and_filled_from_commanded() {
        let o = RoundObservation {
            vcpu_throttle_fractions: vec![f64::NAN, 2.0],
            ..Default::default()
        };
        let c = o.clean(4, &[0.0, 0.0, 0.5]);
        assert_eq!(c.vcpu_shares, vec![1.0, 0.0, 0.5, 1.0]);
    }
}
