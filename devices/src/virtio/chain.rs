//! Walking a descriptor chain into a list of guest buffers, with every guest mistake reported
//! as a typed error, and copying bytes in and out of such a list.
//!
//! virtio-queue's `DescriptorChain` iterator silently stops at a bad descriptor, so a device
//! cannot tell a short chain from a broken one; this walker tells. It writes into a caller-owned
//! `Vec` so the hot path allocates nothing once the vector has grown.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero: empty descriptors are skipped).
    pub len: u32,
    /// Device-writable (the driver reads it) rather than device-readable.
    pub writable: bool,
}

/// A malformed descriptor chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor index beyond the table.
    #[error("descriptor index {index} beyond a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table size.
        size: u16,
    },
    /// More descriptors than the table holds (a loop) or than the device accepts.
    #[error("chain longer than {max} descriptors")]
    TooLong {
        /// The limit that was hit.
        max: usize,
    },
    /// An indirect descriptor that is nested, chained or of a bad size.
    #[error("invalid indirect descriptor")]
    BadIndirect,
    /// A descriptor or buffer outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The buffers add up to more than 4 GiB.
    #[error("chain holds more than 4 GiB")]
    TooManyBytes,
}

/// Collects the chain starting at descriptor `head` of a table at `table` with `size` entries.
///
/// At most `max_segments` non-empty buffers are accepted. Every buffer is checked to lie in
/// guest memory. `out` is cleared first.
pub fn collect_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    max_segments: usize,
    out: &mut Vec<Segment>,
) -> Result<(), ChainError> {
    out.clear();
    let (mut table, mut size, mut index) = (table, size, head);
    let mut indirect = false;
    let mut hops: u32 = 0;
    let mut total: u32 = 0;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        hops += 1;
        if hops > u32::from(size) {
            return Err(ChainError::TooLong {
                max: usize::from(size),
            });
        }
        let at =
            table
                .checked_add(u64::from(index) * DESC_SIZE)
                .ok_or(ChainError::OutsideMemory {
                    addr: table.raw_value(),
                    len: DESC_SIZE,
                })?;
        let raw: RawDescriptor = mem.read_obj(at).map_err(|_| ChainError::OutsideMemory {
            addr: at.raw_value(),
            len: DESC_SIZE,
        })?;
        let desc = Descriptor::from(raw);
        let flags = u32::from(desc.flags());

        if flags & VRING_DESC_F_INDIRECT != 0 {
            // One level only, and it must be the last descriptor of the direct chain.
            let len = desc.len();
            if indirect
                || flags & VRING_DESC_F_NEXT != 0
                || len == 0
                || u64::from(len) % DESC_SIZE != 0
                || u64::from(len) / DESC_SIZE > u64::from(u16::MAX)
            {
                return Err(ChainError::BadIndirect);
            }
            if !mem.check_range(desc.addr(), len as usize, Permissions::Read) {
                return Err(ChainError::OutsideMemory {
                    addr: desc.addr().raw_value(),
                    len: u64::from(len),
                });
            }
            table = desc.addr();
            size = (u64::from(len) / DESC_SIZE) as u16;
            index = 0;
            indirect = true;
            hops = 0;
            continue;
        }

        if desc.len() > 0 {
            let access = if flags & VRING_DESC_F_WRITE != 0 {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(desc.addr(), desc.len() as usize, access) {
                return Err(ChainError::OutsideMemory {
                    addr: desc.addr().raw_value(),
                    len: u64::from(desc.len()),
                });
            }
            total = total
                .checked_add(desc.len())
                .ok_or(ChainError::TooManyBytes)?;
            if out.len() >= max_segments {
                return Err(ChainError::TooLong { max: max_segments });
            }
            out.push(Segment {
                addr: desc.addr(),
                len: desc.len(),
                writable: flags & VRING_DESC_F_WRITE != 0,
            });
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(());
        }
        index = desc.next();
    }
}

/// Total bytes of the segments selected by `writable`.
pub fn total_len(segs: &[Segment], writable: bool) -> u64 {
    segs.iter()
        .filter(|s| s.writable == writable)
        .map(|s| u64::from(s.len))
        .sum()
}

/// Copies from guest memory into `buf`, starting `offset` bytes into the concatenation of the
/// device-readable segments. Returns the bytes copied (short at the end of the buffers).
pub fn read_readable<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    offset: usize,
    buf: &mut [u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut skip = offset;
    let mut done = 0;
    for s in segs.iter().filter(|s| !s.writable) {
        if done == buf.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr.unchecked_add(skip as u64))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `data` into guest memory, starting `offset` bytes into the concatenation of the
/// device-writable segments. Returns the bytes copied (short at the end of the buffers).
pub fn write_writable<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    offset: usize,
    data: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut skip = offset;
    let mut done = 0;
    for s in segs.iter().filter(|s| s.writable) {
        if done == data.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len() - done);
        mem.write_slice(&data[done..done + n], s.addr.unchecked_add(skip as u64))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{desc, guest_memory};
    use virtio_queue::mock::MockSplitQueue;

    const R: u16 = 0;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    fn walk(descs: &[RawDescriptor], head: u16) -> Result<Vec<Segment>, ChainError> {
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, 16);
        for (i, d) in descs.iter().enumerate() {
            q.desc_table().store(i as u16, *d).unwrap();
        }
        let mut out = Vec::new();
        collect_chain(&mem, q.desc_table_addr(), 16, head, 8, &mut out).map(|_| out)
    }

    #[test]
    fn good_chain_skips_empty_buffers() {
        let segs = walk(
            &[
                desc(0x10000, 16, R | N, 1),
                desc(0x20000, 0, R | N, 2),
                desc(0x30000, 512, W | N, 3),
                desc(0x40000, 1, W, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(total_len(&segs, false), 16);
        assert_eq!(total_len(&segs, true), 513);
    }

    #[test]
    fn malformed_chains_are_typed_errors() {
        // A loop.
        assert_eq!(
            walk(&[desc(0x10000, 0, R | N, 1), desc(0x10000, 0, R | N, 0)], 0),
            Err(ChainError::TooLong { max: 16 })
        );
        // Next index beyond the table.
        assert_eq!(
            walk(&[desc(0x10000, 1, R | N, 40)], 0),
            Err(ChainError::IndexOutOfRange {
                index: 40,
                size: 16
            })
        );
        // Head beyond the table.
        assert!(matches!(
            walk(&[], 16),
            Err(ChainError::IndexOutOfRange { .. })
        ));
        // Buffer outside guest memory, and one straddling its end.
        assert!(matches!(
            walk(&[desc(0xffff_0000_0000, 1, R, 0)], 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        assert!(matches!(
            walk(&[desc(0x10000, u32::MAX, W, 0)], 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        // More buffers than the device accepts.
        let long: Vec<_> = (0..10).map(|i| desc(0x10000, 1, R | N, i + 1)).collect();
        assert_eq!(walk(&long, 0), Err(ChainError::TooLong { max: 8 }));
        // Indirect with NEXT, and of a bad size.
        let ind = VRING_DESC_F_INDIRECT as u16;
        assert_eq!(
            walk(&[desc(0x10000, 32, ind | N, 1)], 0),
            Err(ChainError::BadIndirect)
        );
        assert_eq!(
            walk(&[desc(0x10000, 17, ind, 0)], 0),
            Err(ChainError::BadIndirect)
        );
    }

    #[test]
    fn indirect_tables_are_followed_once() {
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, 16);
        let table = GuestAddress(0x50000);
        mem.write_obj(desc(0x10000, 16, R | N, 1), table).unwrap();
        mem.write_obj(desc(0x20000, 8, W, 0), table.unchecked_add(16))
            .unwrap();
        q.desc_table()
            .store(0, desc(table.0, 32, VRING_DESC_F_INDIRECT as u16, 0))
            .unwrap();
        let mut out = Vec::new();
        collect_chain(&mem, q.desc_table_addr(), 16, 0, 8, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[1].writable);

        // An indirect descriptor inside an indirect table is refused.
        mem.write_obj(
            desc(table.0, 32, VRING_DESC_F_INDIRECT as u16, 0),
            table.unchecked_add(16),
        )
        .unwrap();
        mem.write_obj(desc(0x10000, 16, R | N, 1), table).unwrap();
        assert_eq!(
            collect_chain(&mem, q.desc_table_addr(), 16, 0, 8, &mut out),
            Err(ChainError::BadIndirect)
        );
    }

    #[test]
    fn copies_span_segments() {
        let mem = guest_memory();
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 3,
                writable: true,
            },
            Segment {
                addr: GuestAddress(0x9000),
                len: 2,
                writable: false,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 4,
                writable: true,
            },
        ];
        assert_eq!(write_writable(&mem, &segs, 1, b"abcdefgh").unwrap(), 6);
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(&b, b"cdef");
        mem.write_slice(b"xy", GuestAddress(0x9000)).unwrap();
        let mut r = [0u8; 8];
        assert_eq!(read_readable(&mem, &segs, 1, &mut r).unwrap(), 1);
        assert_eq!(r[0], b'y');
    }
}
