//! A page run's control frame, built as its pages are looked at: the source
//! says for each page in turn whether it goes as a zero marker
//! ([`RunControl::push_zero`]) or with its data and checksum
//! ([`RunControl::push_data`]), and [`RunControl::finish`] fills in the frame
//! header and the frame's checksum. The data pages themselves are not in the
//! frame: they follow it in the stream, written from wherever they are (guest
//! memory, on a real source), so no page is copied into a frame buffer.
//!
//! Layout of the frame (see PROTOCOL.md, Page runs): frame header, run head,
//! zero map, one CRC-32 per data page, frame checksum. The zero map's size
//! depends only on the page count, so the checksums' place is fixed before
//! anyone knows which pages are zero.

use super::frame::{header_bytes, HEADER_LEN};
use super::messages::{kind, page_crc, run_head_bytes, MAX_RUN_PAGES, PAGE_CRC, RUN_HEADER};

/// Pages and zero pages of a run as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Pages sent with their data.
    pub data: u32,
    /// Zero pages (markers only).
    pub zero: u32,
}

/// The largest control frame a run has.
pub const MAX_RUN_CONTROL: usize = HEADER_LEN
    + RUN_HEADER
    + (MAX_RUN_PAGES as usize).div_ceil(8)
    + MAX_RUN_PAGES as usize * PAGE_CRC
    + 4;

/// Whether a page is all zero bytes.
pub fn page_is_zero(page: &[u8]) -> bool {
    // OR 64-byte blocks together (the compiler vectorises the fold) and stop
    // at the first non-zero block: most data pages are rejected in the first one.
    let mut blocks = page.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// How a page goes: `None` as a zero marker, `Some(crc)` with its data and
/// that checksum.
pub fn classify_page(page: &[u8]) -> Option<u32> {
    (!page_is_zero(page)).then(|| page_crc(page))
}

/// A page run's control frame being built.
#[derive(Debug)]
pub struct RunControl {
    buf: Vec<u8>,
    region: u32,
    first_page: u64,
    count: u32,
    /// Pages said so far.
    next: u32,
    counts: RunCounts,
}

impl RunControl {
    /// A run of `count` pages (1..=`MAX_RUN_PAGES`) from `first_page` of
    /// `region`, built in `buf` (its contents are discarded, its allocation kept).
    ///
    /// # Panics
    /// If `count` is 0 or above `MAX_RUN_PAGES` (a caller's bug, not input).
    pub fn new(mut buf: Vec<u8>, region: u32, first_page: u64, count: u32) -> Self {
        assert!(
            (1..=MAX_RUN_PAGES).contains(&count),
            "a run has 1..={MAX_RUN_PAGES} pages, not {count}"
        );
        buf.clear();
        // Room for the largest run at once: no growth as checksums are pushed.
        buf.reserve(MAX_RUN_CONTROL);
        buf.resize(HEADER_LEN + RUN_HEADER + count.div_ceil(8) as usize, 0);
        RunControl {
            buf,
            region,
            first_page,
            count,
            next: 0,
            counts: RunCounts::default(),
        }
    }

    /// Pages in the run.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The next page goes as a zero marker.
    ///
    /// # Panics
    /// If every page of the run was said already (a caller's bug).
    pub fn push_zero(&mut self) {
        let i = self.take_next();
        self.buf[HEADER_LEN + RUN_HEADER + (i / 8) as usize] |= 1 << (i % 8);
        self.counts.zero += 1;
    }

    /// The next page goes with its data, whose checksum is `crc`
    /// ([`crate::protocol::messages::page_crc`]).
    ///
    /// # Panics
    /// If every page of the run was said already (a caller's bug).
    pub fn push_data(&mut self, crc: u32) {
        self.take_next();
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.counts.data += 1;
    }

    /// The next page as [`classify_page`] says; returns whether it goes with data.
    pub fn push_page(&mut self, page: &[u8]) -> bool {
        match classify_page(page) {
            Some(crc) => {
                self.push_data(crc);
                true
            }
            None => {
                self.push_zero();
                false
            }
        }
    }

    fn take_next(&mut self) -> u32 {
        assert!(self.next < self.count, "a run of {} pages", self.count);
        self.next += 1;
        self.next - 1
    }

    /// The whole frame (the buffer, holding just it) and the run's counts;
    /// its data pages, in order, must follow it in the stream.
    ///
    /// # Panics
    /// If not every page of the run was said (a caller's bug).
    pub fn finish(mut self) -> (Vec<u8>, RunCounts) {
        assert_eq!(self.next, self.count, "pages said of a run");
        let payload = self.buf.len() - HEADER_LEN;
        // At most MAX_RUN_CONTROL bytes: fits a u32.
        self.buf[..HEADER_LEN].copy_from_slice(&header_bytes(kind::PAGES, payload as u32));
        self.buf[HEADER_LEN..HEADER_LEN + RUN_HEADER].copy_from_slice(&run_head_bytes(
            self.region,
            self.first_page,
            self.count,
        ));
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        (self.buf, self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameReader;
    use crate::protocol::messages::{decode_run, PAGE_SIZE};

    #[test]
    fn a_run_says_which_pages_are_zero_and_checksums_the_others() {
        let mut pages = vec![0u8; 5 * PAGE_SIZE];
        pages[5] = 1; // page 0: data
        pages[2 * PAGE_SIZE + 4095] = 2; // page 2: data, only its last byte set
        pages[4 * PAGE_SIZE] = 4; // page 4: data
        let mut run = RunControl::new(vec![0xee; 3], 3, 100, 5);
        let with_data: Vec<bool> = pages.chunks(PAGE_SIZE).map(|p| run.push_page(p)).collect();
        assert_eq!(with_data, [true, false, true, false, true]);
        let (frame, counts) = run.finish();
        assert_eq!(counts, RunCounts { data: 3, zero: 2 });
        assert_eq!(frame.len(), HEADER_LEN + RUN_HEADER + 1 + 3 * PAGE_CRC + 4);
        let mut r = FrameReader::new(&frame[..], |_| true);
        let f = r.read_frame().unwrap();
        assert_eq!(f.kind, kind::PAGES);
        let run = decode_run(&f.payload).unwrap();
        assert_eq!((run.region, run.first_page, run.count), (3, 100, 5));
        assert_eq!(run.zero_map, [0b01010]);
        assert_eq!(run.data_pages(), 3);
        for (k, page) in [0, 2, 4].into_iter().enumerate() {
            let bytes = &pages[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
            assert_eq!(
                run.page_crc(k as u32),
                crc32fast::hash(bytes),
                "page {page}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_frame_checksum() {
        let mut run = RunControl::new(Vec::new(), 0, 0, 2);
        run.push_zero();
        run.push_data(7);
        let (mut frame, _) = run.finish();
        frame[HEADER_LEN + RUN_HEADER + 1] ^= 1;
        let mut r = FrameReader::new(&frame[..], |_| true);
        assert!(r.read_frame().is_err());
    }

    #[test]
    #[should_panic(expected = "pages said")]
    fn a_run_must_say_every_page() {
        let mut run = RunControl::new(Vec::new(), 0, 0, 2);
        run.push_zero();
        let _ = run.finish();
    }

    #[test]
    fn zero_pages_are_found_in_any_block() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(page_is_zero(&page));
        assert_eq!(classify_page(&page), None);
        page[PAGE_SIZE - 1] = 1;
        assert!(!page_is_zero(&page));
        assert_eq!(classify_page(&page), Some(crc32fast::hash(&page)));
        page[PAGE_SIZE - 1] = 0;
        page[64 * 7] = 1;
        assert!(!page_is_zero(&page));
    }
}
