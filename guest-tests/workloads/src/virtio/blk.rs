//! virtio-blk (virtio 1.x section 5.2): read, write and flush requests, each
//! a descriptor chain of header, data and status, up to a queue depth of
//! preallocated request slots.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::queue::{queue_size, Buffer, QueueMem, SplitQueue, MAX_SIZE};
use super::transport::{Device, Transport, VirtioError, ID_BLOCK};
use super::Dma;

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u64 = 0;
const T_OUT: u64 = 1;
const T_FLUSH: u64 = 4;
/// What the status byte holds until the device writes it.
const STATUS_UNWRITTEN: u64 = 0xff;
pub const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    Read,
    Write,
    Flush,
}

/// A request's outcome as the device reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkStatus {
    Ok,
    IoErr,
    Unsupported,
    /// Any other status byte, or none written at all (0xff).
    Other(u8),
}

impl BlkStatus {
    fn from_byte(b: u8) -> BlkStatus {
        match b {
            0 => BlkStatus::Ok,
            1 => BlkStatus::IoErr,
            2 => BlkStatus::Unsupported,
            other => BlkStatus::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlkStatus::Ok => "ok",
            BlkStatus::IoErr => "ioerr",
            BlkStatus::Unsupported => "unsupported",
            BlkStatus::Other(_) => "other",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub slot: usize,
    pub status: BlkStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The slot is in flight or does not exist.
    BadSlot,
    /// Past the end of the disk or larger than the slot.
    BadRange,
    /// The device lacks VIRTIO_BLK_F_FLUSH.
    NoFlush,
    /// No free descriptors (cannot happen with slots sized to the queue).
    QueueFull,
}

/// A block device as the disk workload sees it: `slots` request slots, each
/// with its own data buffer, submitted and completed independently.
pub trait BlockDevice {
    /// Capacity in 512-byte sectors.
    fn sectors(&self) -> u64;
    fn read_only(&self) -> bool;
    fn has_flush(&self) -> bool;
    /// Requests that can be in flight at once.
    fn slots(&self) -> usize;
    /// Bytes of each slot's buffer.
    fn slot_bytes(&self) -> usize;
    /// Slot `slot`'s buffer. Only touch it while the slot is idle.
    fn data(&self, slot: usize) -> &[AtomicU64];
    /// Queues a request on an idle slot (the device sees it after `kick`).
    fn submit(
        &mut self,
        slot: usize,
        op: BlockOp,
        sector: u64,
        bytes: usize,
    ) -> Result<(), SubmitError>;
    fn kick(&mut self);
    fn poll(&mut self) -> Option<Completion>;
}

/// Each slot's header and status: `[type | reserved << 32, sector, status]`.
const HEADER_WORDS: usize = 3;

pub struct VirtioBlk<'a, T: Transport> {
    dev: Device<T>,
    queue: SplitQueue<'a>,
    headers: Dma<'a>,
    data: Dma<'a>,
    slot_bytes: usize,
    slots: usize,
    in_flight: [bool; MAX_SIZE],
    slot_of_head: [u16; MAX_SIZE],
    /// Largest data descriptor the device takes (VIRTIO_BLK_F_SIZE_MAX).
    segment: usize,
    sectors: u64,
}

/// Memory the driver needs, from the platform.
pub struct BlkMemory<'a> {
    pub queue: &'a QueueMem,
    pub queue_paddr: u64,
    /// At least 24 bytes per slot.
    pub headers: Dma<'a>,
    /// `slots * slot_bytes` bytes.
    pub data: Dma<'a>,
    pub slot_bytes: usize,
}

impl<'a, T: Transport> VirtioBlk<'a, T> {
    /// Brings up the device with up to `mem.data.len() / slot_bytes` slots,
    /// fewer if the queue is too small for that many chains.
    pub fn new(t: T, mem: BlkMemory<'a>) -> Result<Self, VirtioError> {
        let dev = Device::init(t, ID_BLOCK, F_RO | F_FLUSH | F_SIZE_MAX | F_SEG_MAX)?;
        let [lo, hi] = dev.config::<2>(0);
        let sectors = u64::from(lo) | (u64::from(hi) << 32);
        let [size_max, seg_max] = dev.config::<2>(8);
        let mut segment = mem.slot_bytes.max(1);
        if dev.features & F_SIZE_MAX != 0 && size_max != 0 {
            segment = segment.min(size_max as usize);
        }
        let mut segments = mem.slot_bytes.div_ceil(segment).max(1);
        if dev.features & F_SEG_MAX != 0 && seg_max != 0 && segments > seg_max as usize {
            segments = seg_max as usize; // slots get smaller instead
            segment = mem.slot_bytes.div_ceil(segments);
        }
        let size = queue_size(dev.queue_max(0));
        if size == 0 {
            return Err(VirtioError::Queue(0));
        }
        dev.setup_queue(0, size, mem.queue_paddr)?;
        let slots = (mem.data.len() / mem.slot_bytes.max(1))
            .min(mem.headers.len() / (8 * HEADER_WORDS))
            .min(usize::from(size) / (segments + 2));
        dev.driver_ok();
        Ok(VirtioBlk {
            dev,
            queue: SplitQueue::new(mem.queue, size),
            headers: mem.headers,
            data: mem.data,
            slot_bytes: (segment * segments).min(mem.slot_bytes),
            slots,
            in_flight: [false; MAX_SIZE],
            slot_of_head: [0; MAX_SIZE],
            segment,
            sectors,
        })
    }

    pub fn features(&self) -> u64 {
        self.dev.features
    }

    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    fn header(&self, slot: usize) -> &[AtomicU64] {
        &self.headers.words[slot * HEADER_WORDS..(slot + 1) * HEADER_WORDS]
    }
}

impl<T: Transport> BlockDevice for VirtioBlk<'_, T> {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read_only(&self) -> bool {
        self.dev.features & F_RO != 0
    }

    fn has_flush(&self) -> bool {
        self.dev.features & F_FLUSH != 0
    }

    fn slots(&self) -> usize {
        self.slots
    }

    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn data(&self, slot: usize) -> &[AtomicU64] {
        let words = self.slot_bytes / 8;
        &self.data.words[slot * words..(slot + 1) * words]
    }

    fn submit(
        &mut self,
        slot: usize,
        op: BlockOp,
        sector: u64,
        bytes: usize,
    ) -> Result<(), SubmitError> {
        if slot >= self.slots || self.in_flight[slot] {
            return Err(SubmitError::BadSlot);
        }
        let kind = match op {
            BlockOp::Read => T_IN,
            BlockOp::Write => T_OUT,
            BlockOp::Flush if self.has_flush() => T_FLUSH,
            BlockOp::Flush => return Err(SubmitError::NoFlush),
        };
        let sectors = bytes.div_ceil(SECTOR as usize) as u64;
        if op != BlockOp::Flush
            && (bytes == 0
                || bytes > self.slot_bytes
                || sector.saturating_add(sectors) > self.sectors)
        {
            return Err(SubmitError::BadRange);
        }
        let header = self.header(slot);
        header[0].store(kind, Relaxed);
        header[1].store(if op == BlockOp::Flush { 0 } else { sector }, Relaxed);
        header[2].store(STATUS_UNWRITTEN, Relaxed);
        let header_paddr = self.headers.paddr + (slot * HEADER_WORDS * 8) as u64;
        let mut chain = [Buffer {
            paddr: 0,
            len: 0,
            device_writes: false,
        }; MAX_SIZE];
        let mut n = 0;
        chain[n] = Buffer {
            paddr: header_paddr,
            len: 16,
            device_writes: false,
        };
        n += 1;
        if op != BlockOp::Flush {
            let base = self.data.paddr + (slot * self.slot_bytes) as u64;
            for at in (0..bytes).step_by(self.segment) {
                let len = self.segment.min(bytes - at) as u32;
                chain[n] = Buffer {
                    paddr: base + at as u64,
                    len,
                    device_writes: op == BlockOp::Read,
                };
                n += 1;
            }
        }
        chain[n] = Buffer {
            paddr: header_paddr + 16,
            len: 1,
            device_writes: true,
        };
        n += 1;
        let head = self.queue.push(&chain[..n]).ok_or(SubmitError::QueueFull)?;
        self.slot_of_head[usize::from(head)] = slot as u16;
        self.in_flight[slot] = true;
        Ok(())
    }

    fn kick(&mut self) {
        if self.queue.publish() {
            self.dev.notify(0);
        }
    }

    fn poll(&mut self) -> Option<Completion> {
        let used = self.queue.pop()?;
        let slot = usize::from(self.slot_of_head[usize::from(used.head)]);
        self.in_flight[slot] = false;
        let status = BlkStatus::from_byte(self.header(slot)[2].load(Relaxed) as u8);
        Some(Completion { slot, status })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::queue::tests::FakeDevice;
    use crate::virtio::transport::tests::FakeMmio;
    use crate::virtio::F_VERSION_1;

    /// Test memory that stands in for guest memory: `paddr` is the address
    /// of the words themselves, so the fake device can find buffers.
    pub fn dma(words: &[AtomicU64]) -> Dma<'_> {
        Dma {
            words,
            paddr: words.as_ptr() as u64,
        }
    }

    /// Where a device-side buffer points, as words (tests only).
    pub fn words_at(paddr: u64, len: u32) -> &'static [AtomicU64] {
        // SAFETY: in these tests every paddr is the address of live,
        // 8-byte-aligned words owned by the test (see `dma`), and len is
        // what the driver declared for them.
        unsafe {
            core::slice::from_raw_parts(paddr as *const AtomicU64, (len as usize).div_ceil(8))
        }
    }

    /// A block device model: `disk` holds the sectors; requests complete
    /// (in reverse order, to exercise the bookkeeping) when `run` is called.
    pub struct FakeDisk {
        pub disk: Vec<u64>,
        pub dev: FakeDevice,
        pub fail_writes: bool,
    }

    impl FakeDisk {
        pub fn run(&mut self, mem: &QueueMem, size: u16) -> usize {
            let disk = &mut self.disk;
            let fail = self.fail_writes;
            self.dev.run(mem, size, |chain| {
                let header = words_at(chain[0].paddr, 16);
                let (kind, sector) = (header[0].load(Relaxed), header[1].load(Relaxed));
                let status = chain.last().unwrap();
                let mut word = (sector * SECTOR / 8) as usize;
                let mut code = 0;
                for b in &chain[1..chain.len() - 1] {
                    for w in words_at(b.paddr, b.len) {
                        match kind {
                            T_IN => w.store(disk[word], Relaxed),
                            T_OUT if fail => code = 1,
                            T_OUT => disk[word] = w.load(Relaxed),
                            _ => code = 2,
                        }
                        word += 1;
                    }
                }
                // The status byte is the low byte of its word here.
                let s = words_at(status.paddr, 1);
                s[0].store((s[0].load(Relaxed) & !0xff) | code, Relaxed);
                1
            })
        }
    }

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn reads_writes_and_flushes() {
        let mut fake = FakeMmio::new(ID_BLOCK, F_VERSION_1 | F_FLUSH | F_SIZE_MAX);
        fake.config[0] = 64; // sectors
        fake.config[2] = 1024; // size_max: 4 KiB slots need 4 data descriptors
        let (q, headers, data) = (QueueMem::new(), words(3 * 8), words(8 * 512));
        let mem = BlkMemory {
            queue: &q,
            queue_paddr: 0x1000,
            headers: dma(&headers),
            data: dma(&data),
            slot_bytes: 4096,
        };
        let mut blk = VirtioBlk::new(&fake, mem).unwrap();
        assert_eq!(
            (
                blk.sectors(),
                blk.slots(),
                blk.slot_bytes(),
                blk.read_only()
            ),
            (64, 8, 4096, false)
        );
        let mut disk = FakeDisk {
            disk: vec![0; 64 * 64],
            dev: FakeDevice {
                last_avail: 0,
                reverse: true,
            },
            fail_writes: false,
        };

        for (i, w) in blk.data(2).iter().enumerate() {
            w.store(i as u64 + 1000, Relaxed);
        }
        blk.submit(2, BlockOp::Write, 8, 4096).unwrap();
        assert_eq!(
            blk.submit(2, BlockOp::Read, 0, 512),
            Err(SubmitError::BadSlot),
            "slot busy"
        );
        blk.submit(3, BlockOp::Flush, 0, 0).unwrap();
        blk.kick();
        assert_eq!(disk.run(&q, blk.queue_size()), 2);
        let mut done = [blk.poll().unwrap(), blk.poll().unwrap()];
        done.sort_by_key(|c| c.slot);
        assert_eq!(
            done,
            [
                Completion {
                    slot: 2,
                    status: BlkStatus::Ok
                },
                Completion {
                    slot: 3,
                    status: BlkStatus::Ok
                }
            ]
        );
        assert_eq!(disk.disk[8 * 64], 1000);
        assert_eq!(disk.disk[8 * 64 + 511], 1511);

        blk.submit(0, BlockOp::Read, 8, 1024).unwrap();
        blk.kick();
        disk.run(&q, blk.queue_size());
        assert_eq!(
            blk.poll(),
            Some(Completion {
                slot: 0,
                status: BlkStatus::Ok
            })
        );
        assert_eq!(blk.data(0)[127].load(Relaxed), 1127);
        assert_eq!(
            blk.submit(0, BlockOp::Read, 63, 1024),
            Err(SubmitError::BadRange)
        );
        assert_eq!(
            blk.submit(0, BlockOp::Read, 0, 8192),
            Err(SubmitError::BadRange)
        );

        disk.fail_writes = true;
        blk.submit(1, BlockOp::Write, 0, 512).unwrap();
        blk.kick();
        disk.run(&q, blk.queue_size());
        assert_eq!(
            blk.poll(),
            Some(Completion {
                slot: 1,
                status: BlkStatus::IoErr
            })
        );
    }

    #[test]
    fn read_only_and_no_flush_devices() {
        let fake = FakeMmio::new(ID_BLOCK, F_VERSION_1 | F_RO);
        let (q, headers, data) = (QueueMem::new(), words(3 * 4), words(4 * 64));
        let mem = BlkMemory {
            queue: &q,
            queue_paddr: 0,
            headers: dma(&headers),
            data: dma(&data),
            slot_bytes: 512,
        };
        let mut blk = VirtioBlk::new(&fake, mem).unwrap();
        assert!(blk.read_only() && !blk.has_flush());
        assert_eq!(
            blk.submit(0, BlockOp::Flush, 0, 0),
            Err(SubmitError::NoFlush)
        );
        assert_eq!(blk.slots(), 4, "limited by the header memory");
    }
}
