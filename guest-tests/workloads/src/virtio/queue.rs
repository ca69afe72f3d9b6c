//! Split virtqueues (virtio 1.x section 2.6), driver side.
//!
//! [`QueueMem`] is the memory shared with the device, laid out for the
//! largest queue this driver uses ([`MAX_SIZE`]) with each part on its own
//! page; a smaller queue simply uses the start of each ring.
//! [`SplitQueue`] hands out descriptor chains from a free list, publishes
//! them in the available ring and takes completions back from the used ring.

use core::sync::atomic::{
    fence, AtomicU16, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

pub const MAX_SIZE: usize = 256;
/// Offsets of the available and used rings in [`QueueMem`].
pub const AVAIL_OFFSET: usize = 4096;
pub const USED_OFFSET: usize = 8192;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const USED_F_NO_NOTIFY: u16 = 1;

#[repr(C)]
pub struct Desc {
    pub addr: AtomicU64,
    pub len: AtomicU32,
    pub flags: AtomicU16,
    pub next: AtomicU16,
}

#[repr(C)]
pub struct Avail {
    pub flags: AtomicU16,
    pub idx: AtomicU16,
    pub ring: [AtomicU16; MAX_SIZE],
    pub used_event: AtomicU16,
}

#[repr(C)]
pub struct UsedElem {
    pub id: AtomicU32,
    pub len: AtomicU32,
}

#[repr(C)]
pub struct Used {
    pub flags: AtomicU16,
    pub idx: AtomicU16,
    pub ring: [UsedElem; MAX_SIZE],
    pub avail_event: AtomicU16,
}

/// Descriptor table, available ring and used ring of one queue.
#[repr(C, align(4096))]
pub struct QueueMem {
    pub desc: [Desc; MAX_SIZE],
    pub avail: Avail,
    _pad: [u8; USED_OFFSET - AVAIL_OFFSET - core::mem::size_of::<Avail>()],
    pub used: Used,
}

const _: () = assert!(core::mem::offset_of!(QueueMem, avail) == AVAIL_OFFSET);
const _: () = assert!(core::mem::offset_of!(QueueMem, used) == USED_OFFSET);

impl QueueMem {
    pub const fn new() -> QueueMem {
        QueueMem {
            desc: [const {
                Desc {
                    addr: AtomicU64::new(0),
                    len: AtomicU32::new(0),
                    flags: AtomicU16::new(0),
                    next: AtomicU16::new(0),
                }
            }; MAX_SIZE],
            avail: Avail {
                flags: AtomicU16::new(0),
                idx: AtomicU16::new(0),
                ring: [const { AtomicU16::new(0) }; MAX_SIZE],
                used_event: AtomicU16::new(0),
            },
            _pad: [0; USED_OFFSET - AVAIL_OFFSET - core::mem::size_of::<Avail>()],
            used: Used {
                flags: AtomicU16::new(0),
                idx: AtomicU16::new(0),
                ring: [const {
                    UsedElem {
                        id: AtomicU32::new(0),
                        len: AtomicU32::new(0),
                    }
                }; MAX_SIZE],
                avail_event: AtomicU16::new(0),
            },
        }
    }
}

impl Default for QueueMem {
    fn default() -> Self {
        Self::new()
    }
}

/// One buffer of a chain: guest-physical address, length, and whether the
/// device writes it (else it reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub paddr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// A completed chain: its head descriptor and the bytes the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedChain {
    pub head: u16,
    pub written: u32,
}

pub struct SplitQueue<'a> {
    mem: &'a QueueMem,
    size: u16,
    free_head: u16,
    num_free: u16,
    /// The next available-ring slot (not yet visible to the device until
    /// [`SplitQueue::publish`]).
    next_avail: u16,
    last_used: u16,
    /// Descriptors in the chain that starts at each head (0: not in use).
    chain_len: [u16; MAX_SIZE],
    /// Used entries naming a descriptor that is not the head of a chain in
    /// flight: a device bug, skipped.
    pub bogus_used: u32,
}

/// Largest power of two not above `n`, at most [`MAX_SIZE`] (0 stays 0).
pub fn queue_size(n: u16) -> u16 {
    let n = n.min(MAX_SIZE as u16);
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl<'a> SplitQueue<'a> {
    /// A queue of `size` entries (a power of two, at most [`MAX_SIZE`]) over
    /// `mem`, which the device must not be using yet.
    pub fn new(mem: &'a QueueMem, size: u16) -> SplitQueue<'a> {
        let size = queue_size(size).max(1);
        for i in 0..size {
            mem.desc[usize::from(i)].next.store(i + 1, Relaxed);
        }
        mem.avail.idx.store(0, Relaxed);
        mem.used.idx.store(0, Relaxed);
        SplitQueue {
            mem,
            size,
            free_head: 0,
            num_free: size,
            next_avail: 0,
            last_used: 0,
            chain_len: [0; MAX_SIZE],
            bogus_used: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.num_free
    }

    /// Puts a chain in the available ring (visible after `publish`);
    /// `None` if there are not enough free descriptors.
    pub fn push(&mut self, chain: &[Buffer]) -> Option<u16> {
        if chain.is_empty() || chain.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut index = head;
        for (i, b) in chain.iter().enumerate() {
            let d = &self.mem.desc[usize::from(index)];
            let last = i + 1 == chain.len();
            d.addr.store(b.paddr, Relaxed);
            d.len.store(b.len, Relaxed);
            let flags =
                if b.device_writes { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            d.flags.store(flags, Relaxed);
            let next = d.next.load(Relaxed);
            if last {
                self.free_head = next;
            } else {
                index = next;
            }
        }
        self.num_free -= chain.len() as u16;
        self.chain_len[usize::from(head)] = chain.len() as u16;
        let slot = usize::from(self.next_avail % self.size);
        self.mem.avail.ring[slot].store(head, Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Makes every pushed chain visible to the device; returns whether it
    /// asks to be notified.
    pub fn publish(&mut self) -> bool {
        fence(Release);
        self.mem.avail.idx.store(self.next_avail, Release);
        // The device's NO_NOTIFY flag must be read after our index store.
        fence(SeqCst);
        self.mem.used.flags.load(Relaxed) & USED_F_NO_NOTIFY == 0
    }

    /// Chains pushed but not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.size - self.num_free
    }

    /// Takes the next completed chain back, if any.
    pub fn pop(&mut self) -> Option<UsedChain> {
        loop {
            if self.mem.used.idx.load(Acquire) == self.last_used {
                return None;
            }
            let e = &self.mem.used.ring[usize::from(self.last_used % self.size)];
            self.last_used = self.last_used.wrapping_add(1);
            let (id, written) = (e.id.load(Relaxed), e.len.load(Relaxed));
            let Some(head) = u16::try_from(id)
                .ok()
                .filter(|&h| h < self.size && self.chain_len[usize::from(h)] != 0)
            else {
                self.bogus_used += 1;
                continue;
            };
            self.release(head);
            return Some(UsedChain { head, written });
        }
    }

    /// Returns the chain at `head` to the free list.
    fn release(&mut self, head: u16) {
        let len = core::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut last = head;
        for _ in 1..len {
            last = self.mem.desc[usize::from(last)].next.load(Relaxed);
        }
        self.mem.desc[usize::from(last)]
            .next
            .store(self.free_head, Relaxed);
        self.free_head = head;
        self.num_free += len;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The device side, for tests: completes every available chain with
    /// `complete(buffers) -> bytes written`, in order or reversed.
    pub struct FakeDevice {
        pub last_avail: u16,
        pub reverse: bool,
    }

    impl FakeDevice {
        pub fn run(
            &mut self,
            mem: &QueueMem,
            size: u16,
            mut complete: impl FnMut(&[Buffer]) -> u32,
        ) -> usize {
            let avail = mem.avail.idx.load(Acquire);
            let mut heads = Vec::new();
            while self.last_avail != avail {
                heads.push(mem.avail.ring[usize::from(self.last_avail % size)].load(Relaxed));
                self.last_avail = self.last_avail.wrapping_add(1);
            }
            if self.reverse {
                heads.reverse();
            }
            for &head in &heads {
                let mut chain = Vec::new();
                let mut i = head;
                loop {
                    let d = &mem.desc[usize::from(i)];
                    let flags = d.flags.load(Relaxed);
                    chain.push(Buffer {
                        paddr: d.addr.load(Relaxed),
                        len: d.len.load(Relaxed),
                        device_writes: flags & DESC_F_WRITE != 0,
                    });
                    if flags & DESC_F_NEXT == 0 {
                        break;
                    }
                    i = d.next.load(Relaxed);
                }
                let written = complete(&chain);
                let used = mem.used.idx.load(Relaxed);
                let e = &mem.used.ring[usize::from(used % size)];
                e.id.store(head.into(), Relaxed);
                e.len.store(written, Relaxed);
                mem.used.idx.store(used.wrapping_add(1), Release);
            }
            heads.len()
        }
    }

    fn buf(paddr: u64, len: u32, device_writes: bool) -> Buffer {
        Buffer {
            paddr,
            len,
            device_writes,
        }
    }

    #[test]
    fn chains_round_trip_and_descriptors_are_recycled() {
        let mem = QueueMem::new();
        let mut q = SplitQueue::new(&mem, 8);
        let mut dev = FakeDevice {
            last_avail: 0,
            reverse: true,
        };
        // Many rounds through a small queue: the free list must stay whole.
        for round in 0..100u64 {
            let a = q
                .push(&[
                    buf(round, 16, false),
                    buf(0x1000, 512, true),
                    buf(0x2000, 1, true),
                ])
                .unwrap();
            let b = q
                .push(&[buf(round, 16, false), buf(0x3000, 1, true)])
                .unwrap();
            assert_eq!(q.free(), 3);
            assert!(q.push(&[buf(0, 1, false); 4]).is_none(), "only 3 left");
            assert!(q.publish());
            let mut seen = Vec::new();
            assert_eq!(
                dev.run(&mem, 8, |c| {
                    seen.push(c.to_vec());
                    c.iter().filter(|b| b.device_writes).map(|b| b.len).sum()
                }),
                2
            );
            assert_eq!(
                seen[1],
                [
                    buf(round, 16, false),
                    buf(0x1000, 512, true),
                    buf(0x2000, 1, true)
                ]
            );
            // Completed in reverse order.
            assert_eq!(
                q.pop(),
                Some(UsedChain {
                    head: b,
                    written: 1
                })
            );
            assert_eq!(
                q.pop(),
                Some(UsedChain {
                    head: a,
                    written: 513
                })
            );
            assert_eq!(q.pop(), None);
            assert_eq!((q.free(), q.in_flight()), (8, 0));
        }
    }

    #[test]
    fn indices_wrap_past_u16() {
        let mem = QueueMem::new();
        let mut q = SplitQueue::new(&mem, 4);
        let mut dev = FakeDevice {
            last_avail: 0,
            reverse: false,
        };
        for _ in 0..70_000 {
            q.push(&[buf(1, 1, true)]).unwrap();
            q.publish();
            dev.run(&mem, 4, |_| 1);
            assert!(q.pop().is_some());
        }
        assert_eq!(q.free(), 4);
    }

    #[test]
    fn a_device_naming_a_bad_descriptor_is_survived() {
        let mem = QueueMem::new();
        let mut q = SplitQueue::new(&mem, 4);
        let head = q.push(&[buf(1, 1, true)]).unwrap();
        q.publish();
        for (i, id) in [7u32, 3, head.into()].into_iter().enumerate() {
            mem.used.ring[i].id.store(id, Relaxed);
        }
        mem.used.idx.store(3, Release);
        assert_eq!(q.pop(), Some(UsedChain { head, written: 0 }));
        assert_eq!(q.bogus_used, 2);
        assert_eq!(q.free(), 4);
    }

    #[test]
    fn sizes_and_notification_suppression() {
        assert_eq!(
            (
                queue_size(0),
                queue_size(1),
                queue_size(100),
                queue_size(1024)
            ),
            (0, 1, 64, 256)
        );
        let mem = QueueMem::new();
        let mut q = SplitQueue::new(&mem, 4);
        q.push(&[buf(1, 1, true)]);
        mem.used.flags.store(USED_F_NO_NOTIFY, Relaxed);
        assert!(!q.publish());
        assert_eq!(mem.avail.idx.load(Relaxed), 1);
    }
}
