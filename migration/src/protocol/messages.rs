//! The messages of tern's migration protocol and their encodings (see
//! `migration/PROTOCOL.md`). Control messages are postcard-encoded serde
//! values; page runs have a fixed binary layout, and their data pages follow
//! the run's frame unframed, each with its own checksum in the frame, so a
//! source can send them straight from guest memory.

use serde::{Deserialize, Serialize};

use super::ProtocolError;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// First bytes of every Hello payload: says "this is a tern migration stream".
pub const HELLO_MAGIC: [u8; 4] = *b"TERN";
/// Guest page size the stream is expressed in.
pub const PAGE_SIZE: usize = 4096;
/// Most pages one run may carry.
pub const MAX_RUN_PAGES: u32 = 256;

/// Message kinds, source → destination.
pub mod kind {
    /// Handshake.
    pub const HELLO: u16 = 1;
    /// A run of guest pages.
    pub const PAGES: u16 = 2;
    /// A pre-copy round ended.
    pub const ROUND_END: u16 = 3;
    /// vCPU, VM and device state.
    pub const STATE: u16 = 4;
    /// Everything was sent: restore and say Ready.
    pub const COMPLETE: u16 = 5;
    /// Run the guest and say Resumed.
    pub const COMMIT: u16 = 6;
    /// The source gave up: discard everything.
    pub const ABANDON: u16 = 7;
    /// Handshake accepted.
    pub const ACCEPT: u16 = 101;
    /// Handshake refused.
    pub const REFUSE: u16 = 102;
    /// State restored; waiting for Commit.
    pub const READY: u16 = 103;
    /// The guest runs on the destination.
    pub const RESUMED: u16 = 104;
    /// The destination failed.
    pub const ERROR: u16 = 105;
    /// The destination has read everything up to a RoundEnd.
    pub const ROUND_RECEIVED: u16 = 106;

    /// Kinds a destination accepts.
    pub fn from_source(k: u16) -> bool {
        (HELLO..=ABANDON).contains(&k)
    }

    /// Kinds a source accepts.
    pub fn from_destination(k: u16) -> bool {
        (ACCEPT..=ROUND_RECEIVED).contains(&k)
    }
}

/// A guest RAM range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRange {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One device as the handshake describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device type, e.g. `virtio-blk`.
    pub kind: String,
    /// tern's id, e.g. `blk0`.
    pub id: String,
    /// Settings that must match on both sides, e.g. `readonly=true`.
    pub settings: Vec<(String, String)>,
}

/// The handshake body (after magic and version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The source's tern version, for messages.
    pub tern_version: String,
    /// Page size the stream uses.
    pub page_size: u32,
    /// Guest memory layout.
    pub memory: Vec<MemoryRange>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Devices, in bus order.
    pub devices: Vec<DeviceSummary>,
}

/// A run of consecutive pages of one memory region, borrowed from its frame:
/// the run's control part. Its data pages follow the frame in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun<'a> {
    /// Memory region (slot) index.
    pub region: u32,
    /// First page index within the region.
    pub first_page: u64,
    /// Number of pages.
    pub count: u32,
    /// Bit i set: page i is all zeroes and has no data after the frame.
    pub zero_map: &'a [u8],
    /// The CRC-32 of each non-zero page, in order, 4 bytes each (little-endian).
    pub page_crcs: &'a [u8],
}

impl PageRun<'_> {
    /// Whether page `i` of the run is a zero page.
    pub fn is_zero(&self, i: u32) -> bool {
        zero_map_has(self.zero_map, i)
    }

    /// Data pages that follow the run's frame.
    pub fn data_pages(&self) -> u32 {
        (self.page_crcs.len() / PAGE_CRC) as u32
    }

    /// The checksum of data page `k` (the `k`-th non-zero page; `k` must be
    /// below [`PageRun::data_pages`]).
    pub fn page_crc(&self, k: u32) -> u32 {
        page_crc_at(self.page_crcs, k)
    }
}

/// Bytes of one page checksum in a run's control part.
pub const PAGE_CRC: usize = 4;

/// Data page `k`'s checksum in a run's list of page checksums (`k` must be in the list).
pub fn page_crc_at(page_crcs: &[u8], k: u32) -> u32 {
    let at = k as usize * PAGE_CRC;
    let mut b = [0u8; PAGE_CRC];
    b.copy_from_slice(&page_crcs[at..at + PAGE_CRC]);
    u32::from_le_bytes(b)
}

/// The checksum a data page travels with: CRC-32 (IEEE) of its 4096 bytes.
pub fn page_crc(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// Whether a run's zero map marks its page `i` zero (bit `i % 8` of byte `i / 8`). `i` must be
/// within the map.
pub fn zero_map_has(zero_map: &[u8], i: u32) -> bool {
    zero_map[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Bytes of a page run before its zero map: region, count, first page.
pub const RUN_HEADER: usize = 16;

fn bad_run(what: String) -> ProtocolError {
    ProtocolError::BadMessage {
        kind: kind::PAGES,
        what,
    }
}

/// Encodes a run's head and zero map (the caller appends the page checksums).
pub fn encode_run_header(
    region: u32,
    first_page: u64,
    count: u32,
    zero_map: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&run_head_bytes(region, first_page, count));
    out.extend_from_slice(zero_map);
}

/// A run's head: region, page count, first page.
pub fn run_head_bytes(region: u32, first_page: u64, count: u32) -> [u8; RUN_HEADER] {
    let mut head = [0u8; RUN_HEADER];
    head[0..4].copy_from_slice(&region.to_le_bytes());
    head[4..8].copy_from_slice(&count.to_le_bytes());
    head[8..16].copy_from_slice(&first_page.to_le_bytes());
    head
}

/// The head of a page run, checked: the zero map and checksums that follow it are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunHead {
    /// Memory region (slot) index.
    pub region: u32,
    /// First page index within the region.
    pub first_page: u64,
    /// Number of pages (1..=`MAX_RUN_PAGES`).
    pub count: u32,
}

impl RunHead {
    /// Bytes of its zero map.
    pub fn zero_map_len(&self) -> usize {
        self.count.div_ceil(8) as usize
    }
}

/// Decodes the head of a page run and checks its page count.
pub fn decode_run_head(head: &[u8; RUN_HEADER]) -> Result<RunHead, ProtocolError> {
    let region = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&head[8..16]);
    let first_page = u64::from_le_bytes(first);
    if count == 0 || count > MAX_RUN_PAGES {
        return Err(bad_run(format!(
            "run of {count} pages (1..={MAX_RUN_PAGES} allowed)"
        )));
    }
    if first_page.checked_add(u64::from(count)).is_none() {
        return Err(bad_run(format!(
            "run of {count} pages from page {first_page} passes the end of any address space"
        )));
    }
    Ok(RunHead {
        region,
        first_page,
        count,
    })
}

/// Checks a run's zero map (exactly `zero_map_len` bytes, no bits past the run) against the
/// payload length the run's frame declared (head, map, then one checksum per data page);
/// returns the number of data pages, whose checksums follow the map in the frame and whose
/// data follows the frame.
pub fn check_zero_map(
    head: &RunHead,
    zero_map: &[u8],
    payload_len: usize,
) -> Result<u32, ProtocolError> {
    let map_len = head.zero_map_len();
    if zero_map.len() != map_len || payload_len < RUN_HEADER + map_len {
        return Err(bad_run("zero map cut short".into()));
    }
    let count = head.count;
    if count % 8 != 0 && zero_map[map_len - 1] >> (count % 8) != 0 {
        return Err(bad_run("zero map has bits past the run".into()));
    }
    let zeros: u32 = zero_map.iter().map(|b| b.count_ones()).sum();
    let data_pages = count - zeros;
    let expect = data_pages as usize * PAGE_CRC;
    let sums = payload_len - RUN_HEADER - map_len;
    if sums != expect {
        return Err(bad_run(format!(
            "{sums} bytes of page checksums for {data_pages} non-zero pages (expected {expect})"
        )));
    }
    Ok(data_pages)
}

/// Decodes and checks a page run's control part (its frame's payload).
pub fn decode_run(payload: &[u8]) -> Result<PageRun<'_>, ProtocolError> {
    let Some((head, rest)) = payload.split_first_chunk::<RUN_HEADER>() else {
        return Err(bad_run(format!(
            "{} bytes, shorter than a run header",
            payload.len()
        )));
    };
    let head = decode_run_head(head)?;
    let map_len = head.zero_map_len();
    if rest.len() < map_len {
        return Err(bad_run("zero map cut short".into()));
    }
    let (zero_map, page_crcs) = rest.split_at(map_len);
    check_zero_map(&head, zero_map, payload.len())?;
    Ok(PageRun {
        region: head.region,
        first_page: head.first_page,
        count: head.count,
        zero_map,
        page_crcs,
    })
}

/// A decoded message from the source.
#[derive(Debug, PartialEq)]
pub enum SourceMessage<'a> {
    /// Handshake, with the version the source speaks.
    Hello {
        /// Source protocol version.
        version: u32,
        /// The body, when the version is ours (otherwise it is not decoded).
        hello: Option<Hello>,
    },
    /// Pages.
    Pages(PageRun<'a>),
    /// End of a round.
    RoundEnd {
        /// Round number.
        round: u32,
    },
    /// Opaque guest state (the VMM encodes it).
    State(&'a [u8]),
    /// All sent.
    Complete,
    /// Go.
    Commit,
    /// Give up.
    Abandon(String),
}

/// A decoded message from the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestMessage {
    /// Handshake accepted.
    Accept {
        /// Destination's tern version.
        tern_version: String,
    },
    /// Handshake refused.
    Refuse(String),
    /// Restored; waiting for Commit.
    Ready,
    /// Running.
    Resumed,
    /// Failed.
    Error(String),
    /// Everything up to the RoundEnd of this round was read (and the pages in it are in guest
    /// memory): lets the source know how much of what it wrote is still on the way.
    RoundReceived(u32),
}

fn postcard_err(kind: u16) -> impl Fn(postcard::Error) -> ProtocolError {
    move |e| ProtocolError::BadMessage {
        kind,
        what: e.to_string(),
    }
}

/// Encodes a Hello payload: magic, our version, postcard body.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    encode_hello_with_version(hello, PROTOCOL_VERSION)
}

/// Encodes a Hello claiming `version` (tests use this to speak another version).
pub fn encode_hello_with_version(hello: &Hello, version: u32) -> Vec<u8> {
    let mut out = HELLO_MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    // Serializing plain owned data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(hello).unwrap_or_default());
    out
}

/// Decodes one message from the source.
pub fn decode_source(kind_: u16, payload: &[u8]) -> Result<SourceMessage<'_>, ProtocolError> {
    match kind_ {
        kind::HELLO => {
            if payload.len() < 8 || payload[0..4] != HELLO_MAGIC {
                return Err(ProtocolError::NotTern);
            }
            let version = u32::from_le_bytes(payload[4..8].try_into().unwrap_or_default());
            let hello = if version == PROTOCOL_VERSION {
                Some(postcard::from_bytes(&payload[8..]).map_err(postcard_err(kind_))?)
            } else {
                None
            };
            Ok(SourceMessage::Hello { version, hello })
        }
        kind::PAGES => Ok(SourceMessage::Pages(decode_run(payload)?)),
        kind::ROUND_END => {
            let round: u32 = postcard::from_bytes(payload).map_err(postcard_err(kind_))?;
            Ok(SourceMessage::RoundEnd { round })
        }
        kind::STATE => Ok(SourceMessage::State(payload)),
        kind::COMPLETE => empty(kind_, payload, SourceMessage::Complete),
        kind::COMMIT => empty(kind_, payload, SourceMessage::Commit),
        kind::ABANDON => Ok(SourceMessage::Abandon(
            postcard::from_bytes(payload).map_err(postcard_err(kind_))?,
        )),
        other => Err(ProtocolError::BadMessage {
            kind: other,
            what: "not a source message".into(),
        }),
    }
}

fn empty<T>(kind: u16, payload: &[u8], m: T) -> Result<T, ProtocolError> {
    if payload.is_empty() {
        Ok(m)
    } else {
        Err(ProtocolError::BadMessage {
            kind,
            what: format!("{} unexpected payload bytes", payload.len()),
        })
    }
}

/// The frame kind and payload of a destination message.
pub fn encode_dest(m: &DestMessage) -> (u16, Vec<u8>) {
    let k = match m {
        DestMessage::Accept { .. } => kind::ACCEPT,
        DestMessage::Refuse(_) => kind::REFUSE,
        DestMessage::Ready => kind::READY,
        DestMessage::Resumed => kind::RESUMED,
        DestMessage::Error(_) => kind::ERROR,
        DestMessage::RoundReceived(_) => kind::ROUND_RECEIVED,
    };
    (k, postcard::to_allocvec(m).unwrap_or_default())
}

/// Decodes a destination message and checks it matches its frame kind.
pub fn decode_dest(kind_: u16, payload: &[u8]) -> Result<DestMessage, ProtocolError> {
    let m: DestMessage = postcard::from_bytes(payload).map_err(postcard_err(kind_))?;
    if encode_dest(&m).0 != kind_ {
        return Err(ProtocolError::BadMessage {
            kind: kind_,
            what: "payload does not match the frame kind".into(),
        });
    }
    Ok(m)
}

/// Payload of a RoundEnd.
pub fn encode_round_end(round: u32) -> Vec<u8> {
    postcard::to_allocvec(&round).unwrap_or_default()
}

/// Payload of an Abandon.
pub fn encode_abandon(reason: &str) -> Vec<u8> {
    postcard::to_allocvec(reason).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            tern_version: "0.1.0".into(),
            page_size: 4096,
            memory: vec![MemoryRange {
                guest_addr: 0,
                size: 1 << 30,
            }],
            vcpus: 2,
            devices: vec![DeviceSummary {
                kind: "virtio-blk".into(),
                id: "blk0".into(),
                settings: vec![("readonly".into(), "false".into())],
            }],
        }
    }

    #[test]
    fn hello_roundtrip_and_version_check() {
        let p = encode_hello(&hello());
        assert_eq!(
            decode_source(kind::HELLO, &p).unwrap(),
            SourceMessage::Hello {
                version: PROTOCOL_VERSION,
                hello: Some(hello())
            }
        );
        let p = encode_hello_with_version(&hello(), 99);
        assert_eq!(
            decode_source(kind::HELLO, &p).unwrap(),
            SourceMessage::Hello {
                version: 99,
                hello: None
            }
        );
        assert!(matches!(
            decode_source(kind::HELLO, b"GARBAGE!"),
            Err(ProtocolError::NotTern)
        ));
    }

    #[test]
    fn page_runs() {
        // 3 pages, the middle one zero.
        let mut p = Vec::new();
        encode_run_header(1, 64, 3, &[0b010], &mut p);
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&9u32.to_le_bytes());
        let run = decode_run(&p).unwrap();
        assert_eq!((run.region, run.first_page, run.count), (1, 64, 3));
        assert!(!run.is_zero(0) && run.is_zero(1) && !run.is_zero(2));
        assert_eq!(
            (run.data_pages(), run.page_crc(0), run.page_crc(1)),
            (2, 7, 9)
        );
        // One page checksum short, or one too many.
        assert!(decode_run(&p[..p.len() - PAGE_CRC]).is_err());
        let mut long = p.clone();
        long.extend_from_slice(&[0; PAGE_CRC]);
        assert!(decode_run(&long).is_err());
        // Stray bits past the run.
        let mut q = p.clone();
        q[16] |= 0x80;
        assert!(decode_run(&q).is_err());
        // Oversized runs.
        let mut big = Vec::new();
        encode_run_header(0, 0, MAX_RUN_PAGES + 1, &[0xff; 33], &mut big);
        assert!(decode_run(&big).is_err());
        // A run whose pages would pass u64::MAX (all zero, so nothing else is wrong with it).
        let mut wraps = Vec::new();
        encode_run_header(0, u64::MAX - 1, 8, &[0xff], &mut wraps);
        assert!(matches!(
            decode_run(&wraps),
            Err(ProtocolError::BadMessage { .. })
        ));
        let mut last = Vec::new();
        encode_run_header(0, u64::MAX - 8, 8, &[0xff], &mut last);
        assert!(decode_run(&last).is_ok());
    }

    #[test]
    fn dest_messages_roundtrip_and_must_match_kind() {
        for m in [
            DestMessage::Accept {
                tern_version: "x".into(),
            },
            DestMessage::Refuse("no".into()),
            DestMessage::Ready,
            DestMessage::Resumed,
            DestMessage::Error("bad".into()),
            DestMessage::RoundReceived(7),
        ] {
            let (k, p) = encode_dest(&m);
            assert_eq!(decode_dest(k, &p).unwrap(), m);
        }
        let (_, p) = encode_dest(&DestMessage::Ready);
        assert!(decode_dest(kind::RESUMED, &p).is_err());
    }
}
