//! A page-run frame built in place: the caller copies guest pages straight
//! into the frame's own buffer ([`RunFrame::pages_mut`]), and
//! [`RunFrame::finish`] turns it into the bytes of one whole frame — zero
//! pages found and dropped (the data pages after them moved down), the zero
//! map, the frame header and the checksum filled in — ready for a single
//! write. Each page is copied once in user space, into a buffer that then
//! goes to the socket as it is.
//!
//! Layout of the buffer (see PROTOCOL.md, PAGES): frame header, run head,
//! zero map, then the pages. The zero map's size depends only on the page
//! count, so the pages' place is fixed before anyone knows which are zero.

use super::frame::{header_bytes, FrameBuf, HEADER_LEN};
use super::messages::{kind, run_head_bytes, MAX_RUN_PAGES, PAGE_SIZE, RUN_HEADER};

/// Pages and zero pages of a run as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Pages sent with their data.
    pub data: u32,
    /// Zero pages (markers only).
    pub zero: u32,
}

/// The largest buffer a run frame needs.
pub const MAX_RUN_FRAME: usize = HEADER_LEN
    + RUN_HEADER
    + (MAX_RUN_PAGES as usize).div_ceil(8)
    + MAX_RUN_PAGES as usize * PAGE_SIZE
    + 4;

/// A page run being built in its frame buffer.
#[derive(Debug)]
pub struct RunFrame {
    buf: Vec<u8>,
    region: u32,
    first_page: u64,
    count: u32,
}

/// Whether a page is all zero bytes.
pub fn page_is_zero(page: &[u8]) -> bool {
    // OR 64-byte blocks together (the compiler vectorises the fold) and stop
    // at the first non-zero block: most data pages are rejected in the first one.
    let mut blocks = page.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

impl RunFrame {
    /// A run of `count` pages (1..=`MAX_RUN_PAGES`) from `first_page` of
    /// `region`, in `buf` (any previous contents are overwritten or unused;
    /// the buffer only grows, and only growth is zero-filled: see [`FrameBuf`]).
    ///
    /// # Panics
    /// If `count` is 0 or above `MAX_RUN_PAGES` (a caller's bug, not input).
    pub fn new(mut buf: Vec<u8>, region: u32, first_page: u64, count: u32) -> Self {
        assert!(
            (1..=MAX_RUN_PAGES).contains(&count),
            "a run has 1..={MAX_RUN_PAGES} pages, not {count}"
        );
        let len = Self::pages_at(count) + count as usize * PAGE_SIZE + 4;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        RunFrame {
            buf,
            region,
            first_page,
            count,
        }
    }

    fn pages_at(count: u32) -> usize {
        HEADER_LEN + RUN_HEADER + count.div_ceil(8) as usize
    }

    /// Pages in the run.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Where the run's pages go, `count` × `PAGE_SIZE` bytes, page `i` at
    /// `i * PAGE_SIZE`. Pages the caller knows to be zero need not be written.
    pub fn pages_mut(&mut self) -> &mut [u8] {
        let at = Self::pages_at(self.count);
        &mut self.buf[at..at + self.count as usize * PAGE_SIZE]
    }

    /// Completes the frame: pages flagged in `known_zero` (bit `i` of word
    /// `i / 64`) and pages whose bytes are all zero become zero markers, the
    /// data pages are packed together, and the header and checksum are
    /// written. Returns the frame (in the buffer, which keeps its length) and
    /// the counts.
    pub fn finish(mut self, known_zero: &[u64]) -> (FrameBuf, RunCounts) {
        let count = self.count as usize;
        let at = Self::pages_at(self.count);
        let map_at = HEADER_LEN + RUN_HEADER;
        self.buf[map_at..at].fill(0);
        let mut counts = RunCounts::default();
        let mut packed = 0usize;
        for i in 0..count {
            let known = known_zero
                .get(i / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0);
            let from = at + i * PAGE_SIZE;
            if known || page_is_zero(&self.buf[from..from + PAGE_SIZE]) {
                self.buf[map_at + i / 8] |= 1 << (i % 8);
                counts.zero += 1;
                continue;
            }
            if packed != i {
                self.buf
                    .copy_within(from..from + PAGE_SIZE, at + packed * PAGE_SIZE);
            }
            packed += 1;
            counts.data += 1;
        }
        let payload = RUN_HEADER + count.div_ceil(8) + packed * PAGE_SIZE;
        // At most MAX_RUN_FRAME bytes: fits a u32.
        self.buf[..HEADER_LEN].copy_from_slice(&header_bytes(kind::PAGES, payload as u32));
        self.buf[HEADER_LEN..map_at].copy_from_slice(&run_head_bytes(
            self.region,
            self.first_page,
            self.count,
        ));
        let end = HEADER_LEN + payload;
        let crc = crc32fast::hash(&self.buf[..end]);
        self.buf[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        (FrameBuf::new(self.buf, end + 4), counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameReader;
    use crate::protocol::messages::{check_zero_map, decode_run_head, zero_map_has};

    /// Decodes a run frame with the reader the destination uses.
    fn decode(frame: &[u8]) -> (u16, u32, u64, u32, Vec<u8>, Vec<u8>) {
        let mut r = FrameReader::new(frame, |_| true);
        let f = r.read_frame().unwrap();
        let head = decode_run_head(f.payload[..RUN_HEADER].try_into().unwrap()).unwrap();
        let map = f.payload[RUN_HEADER..RUN_HEADER + head.zero_map_len()].to_vec();
        let data_len = check_zero_map(&head, &map, f.payload.len()).unwrap();
        let data = f.payload[f.payload.len() - data_len..].to_vec();
        (f.kind, head.region, head.first_page, head.count, map, data)
    }

    #[test]
    fn data_pages_are_packed_behind_a_zero_map_and_the_frame_checks_out() {
        let mut run = RunFrame::new(Vec::new(), 3, 100, 5);
        let pages = run.pages_mut();
        pages.fill(0);
        pages[5] = 1; // page 0: data
        pages[2 * PAGE_SIZE + 4095] = 2; // page 2: data, only its last byte set
        pages[3 * PAGE_SIZE..4 * PAGE_SIZE].fill(0xee); // page 3: known zero
        pages[4 * PAGE_SIZE] = 4; // page 4: data
        let (frame, counts) = run.finish(&[0b01000]);
        assert_eq!(counts, RunCounts { data: 3, zero: 2 });
        let (kind, region, first, count, map, data) = decode(frame.bytes());
        assert_eq!((kind, region, first, count), (kind::PAGES, 3, 100, 5));
        assert_eq!(map, [0b01010]);
        for (i, z) in [false, true, false, true, false].into_iter().enumerate() {
            assert_eq!(zero_map_has(&map, i as u32), z, "page {i}");
        }
        assert_eq!(data.len(), 3 * PAGE_SIZE);
        assert_eq!(
            (data[5], data[PAGE_SIZE + 4095], data[2 * PAGE_SIZE]),
            (1, 2, 4)
        );
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 3);
    }

    #[test]
    fn a_reused_buffer_leaves_nothing_of_its_last_frame() {
        let mut run = RunFrame::new(Vec::new(), 0, 0, MAX_RUN_PAGES);
        run.pages_mut().fill(0x55);
        let (big, counts) = run.finish(&[]);
        assert_eq!(counts.data, MAX_RUN_PAGES);
        assert_eq!(big.len(), MAX_RUN_FRAME);
        // A smaller run in the same buffer: old bytes past it are not sent,
        // and its zero map starts clean.
        let mut run = RunFrame::new(big.into_buffer(), 1, 7, 2);
        run.pages_mut().fill(0);
        let (frame, counts) = run.finish(&[]);
        assert_eq!(counts, RunCounts { data: 0, zero: 2 });
        let (_, region, first, count, map, data) = decode(frame.bytes());
        assert_eq!(
            (region, first, count, map, data.len()),
            (1, 7, 2, vec![0b11], 0)
        );
        // The buffer kept its length (and its stale bytes), so a whole run
        // built in it next needs neither an allocation nor zero-filling;
        // pages known zero are not read from it.
        let buf = frame.into_buffer();
        assert_eq!(buf.len(), MAX_RUN_FRAME);
        let at = buf.as_ptr();
        let mut run = RunFrame::new(buf, 2, 0, MAX_RUN_PAGES);
        run.pages_mut()[..PAGE_SIZE].fill(3);
        let known_zero = [!1u64, !0, !0, !0];
        let (frame, counts) = run.finish(&known_zero);
        assert_eq!(
            counts,
            RunCounts {
                data: 1,
                zero: MAX_RUN_PAGES - 1
            }
        );
        let (_, _, _, _, _, data) = decode(frame.bytes());
        assert!(data.len() == PAGE_SIZE && data.iter().all(|&b| b == 3));
        let buf = frame.into_buffer();
        assert_eq!(buf.as_ptr(), at);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let mut run = RunFrame::new(Vec::new(), 0, 0, 1);
        run.pages_mut().fill(9);
        let (frame, _) = run.finish(&[]);
        let mut frame = frame.bytes().to_vec();
        frame[HEADER_LEN + RUN_HEADER + 1 + 100] ^= 1;
        let mut r = FrameReader::new(&frame[..], |_| true);
        assert!(r.read_frame().is_err());
    }

    #[test]
    fn zero_pages_are_found_in_any_block() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(page_is_zero(&page));
        page[PAGE_SIZE - 1] = 1;
        assert!(!page_is_zero(&page));
        page[PAGE_SIZE - 1] = 0;
        page[64 * 7] = 1;
        assert!(!page_is_zero(&page));
    }
}
