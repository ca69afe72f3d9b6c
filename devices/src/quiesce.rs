//! The non-blocking drain contract used by migration to find a quiet point in a busy device.
//!
//! A blocking drain (wait until every request completes) is what makes a migration hang behind
//! one slow disk request. Instead, the migration asks [`Quiesce::try_quiesce`] once per round:
//! the device stops taking new requests from its queues (the guest keeps running and queuing;
//! those requests simply wait in the available ring) and reports how many are still in flight.
//! When it answers [`QuiesceStatus::Quiesced`] the device's state can be saved with nothing
//! outstanding; if the migration gives up on this round it calls [`Quiesce::resume_io`].

use serde::{Deserialize, Serialize};

/// The answer to [`Quiesce::try_quiesce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuiesceStatus {
    /// No request is in flight and none will be taken until `resume_io`.
    Quiesced,
    /// New requests are no longer taken, but `in_flight` are still being served.
    Busy {
        /// Requests taken from the queues and not yet completed.
        in_flight: u32,
    },
}

impl QuiesceStatus {
    /// Whether the device is quiet.
    pub fn is_quiesced(self) -> bool {
        self == QuiesceStatus::Quiesced
    }
}

/// A device whose I/O can be brought to a quiet point without blocking.
pub trait Quiesce {
    /// Stops taking new requests from the queues and reports what is still in flight. Never
    /// blocks; calling it again while quiescing just reports progress.
    fn try_quiesce(&mut self) -> QuiesceStatus;

    /// Undoes `try_quiesce`: takes requests again, including those queued meanwhile.
    fn resume_io(&mut self);

    /// Caps the number of requests in flight (`None`: the device's own maximum). A lower depth
    /// makes quiet points come sooner under load; devices without a useful notion of depth
    /// ignore it.
    fn set_queue_depth_limit(&mut self, limit: Option<u16>);

    /// Whether the device must reach a quiet point while the guest still runs. Devices whose
    /// requests complete asynchronously (disk I/O) do: at the pause nothing may be left that
    /// could hang. A device whose every request completes at once and whose pending data is
    /// part of its saved state (virtio-net) does not: quiescing it early would only cut the
    /// guest off its network for the whole drain window, so it is quiesced at the pause.
    fn drains_before_pause(&self) -> bool {
        true
    }
}
