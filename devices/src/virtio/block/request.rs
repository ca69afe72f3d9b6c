//! Parsing a virtio-blk descriptor chain into a request, validating everything the guest put
//! there. Pure: no I/O, no queue access, so every malformed shape is unit-testable.

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Address, GuestAddress};

use super::SECTOR_SIZE;
use crate::virtio::chain::{read_readable, total_len, write_writable, Segment};
use crate::GuestMemoryMmap;

/// Size of the request header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// VIRTIO_BLK_S_* fit in a byte.
pub(crate) const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(crate) const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub(crate) const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// What a worker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Disk to guest.
    Read,
    /// Guest to disk.
    Write,
    /// fdatasync.
    Flush,
    /// Write zeros over `[offset, offset + zero_len)`.
    WriteZeroes,
    /// Discard a range (advisory: validated, then nothing to do on a raw file).
    Discard,
}

/// Largest range one WRITE_ZEROES or DISCARD may cover (VIRTIO_BLK_F_WRITE_ZEROES/DISCARD).
pub(crate) const MAX_ZERO_SECTORS: u32 = 1 << 16;
/// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
const FLAG_UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// A request on its way to a worker and back. Pooled: its `data` vector keeps its capacity, so
/// steady-state requests allocate nothing.
#[derive(Debug)]
pub(crate) struct Request {
    pub head: u16,
    pub op: Op,
    pub offset: u64,
    /// Bytes a WRITE_ZEROES or DISCARD covers.
    pub zero_len: u64,
    pub data: Vec<Segment>,
    pub status: GuestAddress,
    pub generation: u64,
    pub mem: Option<Arc<GuestMemoryMmap>>,
}

impl Request {
    pub fn new() -> Self {
        Request {
            head: 0,
            op: Op::Flush,
            offset: 0,
            zero_len: 0,
            data: Vec::new(),
            status: GuestAddress(0),
            generation: 0,
            mem: None,
        }
    }

    /// Bytes the request moves.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// The outcome of parsing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// `req` is filled in and goes to a worker.
    Submit,
    /// Done already: write `status` at the status byte, use the chain with `used_len`.
    Complete {
        status: GuestAddress,
        code: u8,
        used_len: u32,
    },
    /// No usable status byte: use the chain with length 0.
    Drop,
}

/// The disk facts parsing checks against.
pub(crate) struct DiskInfo<'a> {
    pub capacity_sectors: u64,
    pub readonly: bool,
    pub id: &'a [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// Appends to `out` the part `[start, end)` of the byte stream formed by the segments whose
/// direction is `writable`.
fn slice_stream(segs: &[Segment], writable: bool, start: u64, end: u64, out: &mut Vec<Segment>) {
    let mut pos = 0u64;
    for s in segs.iter().filter(|s| s.writable == writable) {
        let (s_start, s_end) = (pos, pos + u64::from(s.len));
        pos = s_end;
        let (a, b) = (s_start.max(start), s_end.min(end));
        if a < b {
            out.push(Segment {
                addr: s.addr.unchecked_add(a - s_start),
                len: (b - a) as u32,
                writable,
            });
        }
    }
}

/// Parses the chain `segs` (headed by `head`) into `req`.
pub(crate) fn parse(
    mem: &GuestMemoryMmap,
    head: u16,
    segs: &[Segment],
    disk: &DiskInfo,
    req: &mut Request,
) -> Parsed {
    // The status byte is the last byte of the last descriptor, which must be device-writable.
    let Some(last) = segs.last().filter(|s| s.writable) else {
        return Parsed::Drop;
    };
    let status = last.addr.unchecked_add(u64::from(last.len) - 1);
    let fail = |code| Parsed::Complete {
        status,
        code,
        used_len: 1,
    };

    // Device-readable buffers come first, then device-writable ones.
    if let Some(first_w) = segs.iter().position(|s| s.writable) {
        if segs[first_w..].iter().any(|s| !s.writable) {
            return fail(S_IOERR);
        }
    }
    let mut header = [0u8; HEADER_LEN];
    match read_readable(mem, segs, 0, &mut header) {
        Ok(HEADER_LEN) => {}
        _ => return fail(S_IOERR),
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let readable_data = total_len(segs, false) - HEADER_LEN as u64;
    let writable_data = total_len(segs, true) - 1;

    req.head = head;
    req.data.clear();
    let op = match kind {
        VIRTIO_BLK_T_IN => {
            if readable_data != 0 {
                return fail(S_IOERR);
            }
            slice_stream(segs, true, 0, writable_data, &mut req.data);
            Op::Read
        }
        VIRTIO_BLK_T_OUT => {
            if writable_data != 0 {
                return fail(S_IOERR);
            }
            if disk.readonly {
                return fail(S_IOERR);
            }
            let end = HEADER_LEN as u64 + readable_data;
            slice_stream(segs, false, HEADER_LEN as u64, end, &mut req.data);
            Op::Write
        }
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_WRITE_ZEROES | VIRTIO_BLK_T_DISCARD => {
            // One `struct virtio_blk_discard_write_zeroes` (max_*_seg is 1).
            let mut seg = [0u8; 16];
            let read = read_readable(mem, segs, HEADER_LEN, &mut seg);
            if writable_data != 0 || readable_data != 16 || read.ok() != Some(16) {
                return fail(S_IOERR);
            }
            let mut start = [0u8; 8];
            start.copy_from_slice(&seg[..8]);
            let start = u64::from_le_bytes(start);
            let count = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            if flags & !FLAG_UNMAP != 0 || (discard && flags != 0) {
                return fail(S_UNSUPP);
            }
            let end = start.checked_add(u64::from(count));
            if disk.readonly
                || count > MAX_ZERO_SECTORS
                || end.is_none_or(|end| end > disk.capacity_sectors)
            {
                return fail(S_IOERR);
            }
            req.offset = start * SECTOR_SIZE;
            req.zero_len = u64::from(count) * SECTOR_SIZE;
            req.op = if discard {
                Op::Discard
            } else {
                Op::WriteZeroes
            };
            req.status = status;
            return Parsed::Submit;
        }
        VIRTIO_BLK_T_GET_ID => {
            if readable_data != 0 {
                return fail(S_IOERR);
            }
            let n = (writable_data as usize).min(disk.id.len());
            return match write_writable(mem, segs, 0, &disk.id[..n]) {
                Ok(written) if written == n => Parsed::Complete {
                    status,
                    code: S_OK,
                    used_len: n as u32 + 1,
                },
                _ => fail(S_IOERR),
            };
        }
        _ => return fail(S_UNSUPP),
    };

    if op != Op::Flush {
        let len = req.data_len();
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len));
        let capacity = disk.capacity_sectors * SECTOR_SIZE;
        if len % SECTOR_SIZE != 0 || end.is_none_or(|end| end > capacity) {
            return fail(S_IOERR);
        }
        req.offset = sector * SECTOR_SIZE;
    }
    req.op = op;
    req.status = status;
    Parsed::Submit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::guest_memory;
    use vm_memory::Bytes;

    const ID: [u8; 20] = *b"disk-0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

    fn seg(addr: u64, len: u32, writable: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    fn run(mem: &GuestMemoryMmap, segs: &[Segment], readonly: bool) -> (Parsed, Request) {
        let disk = DiskInfo {
            capacity_sectors: 16,
            readonly,
            id: &ID,
        };
        let mut req = Request::new();
        let p = parse(mem, 3, segs, &disk, &mut req);
        (p, req)
    }

    fn code(p: &Parsed) -> u8 {
        match p {
            Parsed::Complete { code, .. } => *code,
            other => panic!("not completed: {other:?}"),
        }
    }

    #[test]
    fn well_formed_requests() {
        let mem = guest_memory();
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 2);
        let (p, req) = run(
            &mem,
            &[
                seg(0x1000, 16, false),
                seg(0x2000, 1024, true),
                seg(0x3000, 1, true),
            ],
            false,
        );
        assert_eq!(p, Parsed::Submit);
        assert_eq!((req.op, req.offset, req.data_len()), (Op::Read, 1024, 1024));
        assert_eq!(req.status, GuestAddress(0x3000));

        // Header, data and status in one buffer each direction (any layout).
        header(&mem, 0x1000, VIRTIO_BLK_T_OUT, 15);
        let (p, req) = run(
            &mem,
            &[seg(0x1000, 16 + 512, false), seg(0x3000, 1, true)],
            false,
        );
        assert_eq!(p, Parsed::Submit);
        assert_eq!(req.data, vec![seg(0x1010, 512, false)]);

        // IN data and status sharing the last buffer.
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 0);
        let (p, req) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 513, true)],
            false,
        );
        assert_eq!(p, Parsed::Submit);
        assert_eq!(req.data, vec![seg(0x2000, 512, true)]);
        assert_eq!(req.status, GuestAddress(0x2200));

        header(&mem, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let (p, req) = run(&mem, &[seg(0x1000, 16, false), seg(0x3000, 1, true)], false);
        assert_eq!((p, req.op), (Parsed::Submit, Op::Flush));

        header(&mem, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let (p, _) = run(
            &mem,
            &[
                seg(0x1000, 16, false),
                seg(0x2000, 20, true),
                seg(0x3000, 1, true),
            ],
            false,
        );
        assert_eq!(
            p,
            Parsed::Complete {
                status: GuestAddress(0x3000),
                code: S_OK,
                used_len: 21
            }
        );
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(id, ID);
    }

    #[test]
    fn malformed_requests_get_an_error_status() {
        let mem = guest_memory();
        let status = seg(0x3000, 1, true);
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 0);
        // Header too short.
        let (p, _) = run(&mem, &[seg(0x1000, 8, false), status], false);
        assert_eq!(code(&p), S_IOERR);
        // IN with device-readable data (wrong direction).
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 512, false), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        // Writable before readable.
        let (p, _) = run(
            &mem,
            &[seg(0x2000, 512, true), seg(0x1000, 16, false), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        // Not a whole number of sectors.
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 100, true), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        // Beyond the end of the disk, and a sector number that overflows.
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 15);
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 1024, true), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, u64::MAX / 256);
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 512, true), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        // OUT with device-writable data (wrong direction), and OUT on a read-only disk.
        header(&mem, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 512, true), status],
            false,
        );
        assert_eq!(code(&p), S_IOERR);
        let (p, _) = run(
            &mem,
            &[seg(0x1000, 16, false), seg(0x2000, 512, false), status],
            true,
        );
        assert_eq!(code(&p), S_IOERR);
        // WRITE_ZEROES: beyond the disk, with reserved flags, on a read-only disk, and a
        // discard asking to unmap.
        header(&mem, 0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let zeroes = |sector: u64, count: u32, flags: u32| {
            let mut z = [0u8; 16];
            z[..8].copy_from_slice(&sector.to_le_bytes());
            z[8..12].copy_from_slice(&count.to_le_bytes());
            z[12..].copy_from_slice(&flags.to_le_bytes());
            mem.write_slice(&z, GuestAddress(0x1010)).unwrap();
        };
        let wz = [seg(0x1000, 32, false), status];
        zeroes(10, 7, 0);
        assert_eq!(code(&run(&mem, &wz, false).0), S_IOERR);
        zeroes(0, 1, 4);
        assert_eq!(code(&run(&mem, &wz, false).0), S_UNSUPP);
        zeroes(0, 1, 0);
        assert_eq!(code(&run(&mem, &wz, true).0), S_IOERR);
        let (p, req) = run(&mem, &wz, false);
        assert_eq!(
            (p, req.op, req.zero_len),
            (Parsed::Submit, Op::WriteZeroes, 512)
        );
        header(&mem, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
        zeroes(0, 1, 1);
        assert_eq!(code(&run(&mem, &wz, false).0), S_UNSUPP);
        // Unknown type.
        header(&mem, 0x1000, 0x77, 0);
        let (p, _) = run(&mem, &[seg(0x1000, 16, false), status], false);
        assert_eq!(code(&p), S_UNSUPP);
        // No writable status byte at all: dropped.
        let (p, _) = run(&mem, &[seg(0x1000, 16, false)], false);
        assert_eq!(p, Parsed::Drop);
        let (p, _) = run(&mem, &[], false);
        assert_eq!(p, Parsed::Drop);
    }
}
