//! Events of the device workloads: the disk (virtio-blk) and the network
//! (virtio-net). Throughputs are exact decimals with two places, like the
//! rest; latencies and durations are µs.

use core::fmt::Write;

use super::{verify_fields, EventBody, BLOCKS};
use crate::json::Object;
use crate::names::named_enum;
use crate::verify::VerifyReport;

/// The disk the guest drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Its virtio-mmio window.
    pub base: u64,
    pub sectors: u64,
    pub read_only: bool,
    pub flush: bool,
    pub queue_size: u16,
    /// Requests in flight at most (`tern.qd`, or fewer if the queue is small).
    pub slots: u32,
    /// Largest request.
    pub slot_bytes: u32,
    /// Data blocks of 4 KiB the workload uses (block 0 is its header).
    pub blocks: u64,
}

impl EventBody for DiskInfo {
    const NAME: &'static str = "disk";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.display("base", format_args!("{:#x}", self.base))
            .u64("sectors", self.sectors)
            .bool("read_only", self.read_only)
            .bool("flush", self.flush)
            .u64("queue_size", self.queue_size.into())
            .u64("slots", self.slots.into())
            .u64("slot_bytes", self.slot_bytes.into())
            .u64("blocks", self.blocks);
    }
}

named_enum! {
    /// What the disk is doing.
    pub enum DiskPhase {
        /// A pass of checked block writes.
        Write = "write",
        /// Reading blocks back and checking them.
        Verify = "verify",
        SeqWrite = "seq_write",
        SeqRead = "seq_read",
        RandRead = "rand_read",
        RandWrite = "rand_write",
    }
}

/// Disk progress over one `tick_ms` interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskTick {
    pub seq: u64,
    pub phase: DiskPhase,
    /// Requests completed in the interval.
    pub requests: u64,
    pub bytes: u64,
    pub mib_s_x100: u64,
    pub iops: u64,
    pub in_flight: u32,
    /// Longest request (submit to completion seen) completed in the interval.
    pub max_latency_us: u64,
    /// Requests that failed in the interval.
    pub errors: u64,
}

impl EventBody for DiskTick {
    const NAME: &'static str = "disk_tick";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("seq", self.seq)
            .str("phase", self.phase.name())
            .u64("requests", self.requests)
            .u64("bytes", self.bytes)
            .hundredths("mib_s", self.mib_s_x100 as i64)
            .u64("iops", self.iops)
            .u64("in_flight", self.in_flight.into())
            .u64("max_latency_us", self.max_latency_us)
            .u64("errors", self.errors);
    }
}

/// A write pass ended (completed, or stopped by `stop`); its header is on
/// the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskWritten {
    pub generation: u32,
    /// Blocks written in this pass.
    pub blocks: u64,
    /// Blocks before this one hold this generation, the rest the one before.
    pub cursor: u64,
    pub complete: bool,
    /// This is the answer to `stop`: no pass follows.
    pub stopped: bool,
    pub errors: u64,
    pub elapsed_ms: u64,
    pub mib_s_x100: u64,
}

impl EventBody for DiskWritten {
    const NAME: &'static str = "disk_written";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("generation", self.generation.into())
            .u64("blocks", self.blocks)
            .u64("cursor", self.cursor)
            .bool("complete", self.complete)
            .bool("stopped", self.stopped)
            .u64("errors", self.errors)
            .u64("elapsed_ms", self.elapsed_ms)
            .hundredths("mib_s", self.mib_s_x100 as i64);
    }
}

named_enum! {
    /// What a disk verification compares against.
    pub enum VerifySource {
        /// The writes acknowledged in this boot.
        Memory = "memory",
        /// The header block on the disk (a previous boot's run).
        Disk = "disk",
    }
}

/// Result of a disk verification: the `verify` fields with blocks for pages
/// (`blocks`, `first_bad.block`, `first_bad.sector`, `first_bad.found_block`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskVerified {
    pub source: VerifySource,
    pub run_id: u64,
    pub generation: u32,
    pub report: VerifyReport,
    pub elapsed_us: u64,
    pub mib_s_x100: u64,
}

impl EventBody for DiskVerified {
    const NAME: &'static str = "disk_verify";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.str("source", self.source.name())
            .display("run_id", format_args!("{:#x}", self.run_id))
            .u64("generation", self.generation.into());
        verify_fields(o, &self.report, BLOCKS);
        o.u64("elapsed_us", self.elapsed_us)
            .hundredths("mib_s", self.mib_s_x100 as i64);
    }
}

/// One benchmark phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskBench {
    pub phase: DiskPhase,
    pub qd: u32,
    pub request_bytes: u64,
    pub requests: u64,
    pub bytes: u64,
    pub elapsed_us: u64,
    pub mib_s_x100: u64,
    pub iops: u64,
    pub max_latency_us: u64,
    pub errors: u64,
}

impl EventBody for DiskBench {
    const NAME: &'static str = "disk_bench";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.str("phase", self.phase.name())
            .u64("qd", self.qd.into())
            .u64("request_bytes", self.request_bytes)
            .u64("requests", self.requests)
            .u64("bytes", self.bytes)
            .u64("elapsed_us", self.elapsed_us)
            .hundredths("mib_s", self.mib_s_x100 as i64)
            .u64("iops", self.iops)
            .u64("max_latency_us", self.max_latency_us)
            .u64("errors", self.errors);
    }
}

/// The network device the guest drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetInfo {
    pub base: u64,
    pub mac: [u8; 6],
    pub queue_size: u16,
    /// Frames per second it sends (`tern.frames`).
    pub frames: u32,
    pub frame_bytes: u32,
}

impl EventBody for NetInfo {
    const NAME: &'static str = "net";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        let m = self.mac;
        o.display("base", format_args!("{:#x}", self.base))
            .display(
                "mac",
                format_args!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            )
            .u64("queue_size", self.queue_size.into())
            .u64("frames", self.frames.into())
            .u64("frame_bytes", self.frame_bytes.into());
    }
}

/// Frame counts of the net workload (cumulative since start) and the
/// round trips seen in the last interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetCounts {
    /// Our frames sent.
    pub sent: u64,
    /// Our frames that came back (distinct sequence numbers).
    pub returned: u64,
    /// Frames that came back after a later one had.
    pub reordered: u64,
    /// Frames that came back more than once.
    pub duplicates: u64,
    /// The peer's own frames received (`from_peer`), and how many of its
    /// sequence numbers were skipped (lost on the way to us).
    pub from_peer: u64,
    pub peer_gaps: u64,
    /// Frames that were not ours and not the peer's (ignored).
    pub foreign: u64,
    /// Frames not sent because no transmit buffer was free.
    pub tx_full: u64,
}

/// Net progress every `tick_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetTick {
    pub seq: u64,
    pub counts: NetCounts,
    /// Sent but not (yet) returned.
    pub outstanding: u64,
    /// Round trips completed in the interval: longest and mean.
    pub rtt_max_us: Option<u64>,
    pub rtt_avg_us: Option<u64>,
}

fn counts_fields<W: Write + ?Sized>(o: &mut Object<'_, W>, c: &NetCounts) {
    o.u64("sent", c.sent)
        .u64("returned", c.returned)
        .u64("reordered", c.reordered)
        .u64("duplicates", c.duplicates)
        .u64("from_peer", c.from_peer)
        .u64("peer_gaps", c.peer_gaps)
        .u64("foreign", c.foreign)
        .u64("tx_full", c.tx_full);
}

impl EventBody for NetTick {
    const NAME: &'static str = "net_tick";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("seq", self.seq);
        counts_fields(o, &self.counts);
        o.u64("outstanding", self.outstanding)
            .opt_u64("rtt_max_us", self.rtt_max_us)
            .opt_u64("rtt_avg_us", self.rtt_avg_us);
    }
}

/// The net workload stopped (`stop`), after waiting for stragglers: `lost`
/// is what never came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDone {
    pub counts: NetCounts,
    pub lost: u64,
}

impl EventBody for NetDone {
    const NAME: &'static str = "net_done";
    fn fields<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        counts_fields(o, &self.counts);
        o.u64("lost", self.lost);
    }
}
