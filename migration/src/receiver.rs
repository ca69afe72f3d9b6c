//! The destination side of a migration as a state machine:
//!
//! ```text
//! AwaitHello --Hello ok--> Memory --State--> StateReceived --Complete--> Ready --Commit--> Resumed
//!      \--bad version / config: Refuse, fail        any error, Abandon or EOF before Commit: fail
//! ```
//!
//! The guest is started (`DestinationHost::resume`) only on Commit, after
//! every byte arrived intact and the state was restored, so a destination that
//! fails never runs a partial guest; until the source hears "Resumed" it keeps
//! its own guest.
//!
//! A page run is a control frame (which pages are zero, a CRC-32 per data
//! page), checked whole before anything in it is acted on, then its data
//! pages, read from the stream straight into guest memory and each checked
//! against its checksum as soon as it is whole. The source sends pages from
//! guest memory while its guest runs, so a page may change between its
//! checksum and its send and arrive damaged through no fault of the stream;
//! such a page was dirtied, and is sent again. So a page that fails its check
//! is held as *damaged* until it arrives again intact (or as a zero marker),
//! and Complete with any page still damaged fails the migration before the
//! state is restored: the guest never runs with a page the stream did not
//! deliver intact.

use std::collections::BTreeMap;
use std::io::Write;

use crate::protocol::frame::{FrameReader, FrameWriter, PartialFrame};
use crate::protocol::messages::{
    check_zero_map, decode_run_head, decode_source, encode_dest, kind, page_crc, page_crc_at,
    zero_map_has, DestMessage, Hello, RunHead, SourceMessage, MAX_RUN_PAGES, PAGE_CRC, PAGE_SIZE,
    PROTOCOL_VERSION, RUN_HEADER,
};
use crate::protocol::ProtocolError;
use crate::stream_input::StreamInput;

/// Data pages are read in pieces of at most this many bytes, so each page is
/// checked while it is still in the cache.
const READ_PIECE: usize = 64 << 10;

/// What the destination VMM provides to the receiver.
pub trait DestinationHost {
    /// Compares the source's configuration with ours; `Err(reason)` refuses.
    fn check(&mut self, hello: &Hello) -> Result<(), String>;
    /// The guest memory of the `count` consecutive pages from `first_page` of memory region
    /// `region`, exactly `count * PAGE_SIZE` bytes, for the stream to fill with their data (an
    /// error if the range is not in the region). The data arrives before its frame's checksum
    /// is verified (see the module notes).
    fn page_data(&mut self, region: u32, first_page: u64, count: u32) -> Result<&mut [u8], String>;
    /// Zero markers, after their frame was verified: page `first_page + i` of `region` must
    /// read as zeros for every bit `i` set in `zero_map` (bit `i % 8` of byte `i / 8`; `count`
    /// pages, an error if they are not all in the region). Pages that never held data are zero
    /// already.
    fn zero_pages(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
        zero_map: &[u8],
    ) -> Result<(), String>;
    /// Restores vCPU, VM and device state from the opaque state blob (the guest does not run yet).
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
    /// Starts the guest.
    fn resume(&mut self) -> Result<(), String>;
}

/// Where the receiver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverState {
    /// Waiting for the handshake.
    AwaitHello,
    /// Receiving memory.
    Memory,
    /// Guest state received, waiting for Complete.
    StateReceived,
    /// Restored, waiting for Commit.
    Ready,
    /// The guest runs here.
    Resumed,
}

impl ReceiverState {
    fn describe(self) -> &'static str {
        match self {
            ReceiverState::AwaitHello => "waiting for the handshake",
            ReceiverState::Memory => "receiving memory",
            ReceiverState::StateReceived => "waiting for Complete",
            ReceiverState::Ready => "waiting for Commit",
            ReceiverState::Resumed => "running",
        }
    }
}

/// Why a migration failed on the destination.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The stream was bad.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// We refused the handshake.
    #[error("refused the incoming migration: {0}")]
    Refused(String),
    /// The local VMM failed at a step.
    #[error("{step} failed: {message}")]
    Host {
        /// The step.
        step: &'static str,
        /// What happened.
        message: String,
    },
    /// The source gave up.
    #[error("the source abandoned the migration: {0}")]
    Abandoned(String),
    /// Pages that failed their checksum were not sent again by the end.
    #[error(
        "stream corrupt: {count} guest page(s) failed their checksum and were never sent again \
         (the first: page {page} of memory region {region}, at stream byte {offset})"
    )]
    DamagedPages {
        /// How many.
        count: usize,
        /// The first one's memory region.
        region: u32,
        /// Its page index in the region.
        page: u64,
        /// Stream offset of its data.
        offset: u64,
    },
}

/// What arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Pre-copy rounds the source ended.
    pub rounds: u32,
    /// Pages received with data.
    pub data_pages: u64,
    /// Zero pages received as markers.
    pub zero_pages: u64,
    /// Bytes read from the stream.
    pub bytes: u64,
    /// Data pages that failed their checksum (changed while being sent) and
    /// arrived intact later.
    pub pages_resent_damaged: u64,
    /// CPU time of the receiving thread over the whole stream (None where
    /// the host cannot tell).
    pub cpu: Option<std::time::Duration>,
}

/// Drives a whole incoming migration from `input` (see [`StreamInput`]),
/// answering on `output`. On success the guest runs (its host was resumed)
/// and the source has been told so.
pub fn receive<R: StreamInput, W: Write, H: DestinationHost>(
    input: R,
    output: W,
    host: &mut H,
) -> Result<ReceiveReport, ReceiveError> {
    let cpu_before = crate::thread_cpu::this_thread();
    let mut out = FrameWriter::new(output);
    let mut reader = FrameReader::new(input, kind::from_source);
    let result = run(&mut reader, &mut out, host);
    if let Err(e) = &result {
        // Tell the source why, if it can still hear; it resumes its guest either way.
        let msg = match e {
            ReceiveError::Refused(reason) => DestMessage::Refuse(reason.clone()),
            ReceiveError::Protocol(ProtocolError::VersionMismatch { .. }) => {
                DestMessage::Refuse(e.to_string())
            }
            other => DestMessage::Error(other.to_string()),
        };
        let _ = send(&mut out, &msg);
    }
    result.map(|mut r| {
        r.bytes = reader.offset();
        r.cpu = crate::thread_cpu::since(cpu_before);
        r
    })
}

fn send<W: Write>(out: &mut FrameWriter<W>, m: &DestMessage) -> Result<(), ProtocolError> {
    let (k, p) = encode_dest(m);
    out.write_frame(k, &[&p]).map_err(ProtocolError::Io)?;
    out.flush().map_err(ProtocolError::Io)
}

fn run<R: StreamInput, W: Write, H: DestinationHost>(
    reader: &mut FrameReader<R>,
    out: &mut FrameWriter<W>,
    host: &mut H,
) -> Result<ReceiveReport, ReceiveError> {
    let mut state = ReceiverState::AwaitHello;
    let mut report = ReceiveReport::default();
    let mut payload = Vec::new();
    let mut guest_state: Option<Vec<u8>> = None;
    let mut damaged = DamagedPages::default();
    let host_err = |step| move |message| ReceiveError::Host { step, message };
    loop {
        let mut frame = reader.begin_frame()?;
        let k = frame.kind();
        if k == kind::PAGES && state == ReceiverState::Memory {
            receive_run(reader, frame, host, &mut report, &mut damaged)?;
            continue;
        }
        payload.resize(frame.len() as usize, 0);
        reader.read_part(&mut frame, &mut payload)?;
        reader.finish_frame(frame)?;
        let msg = decode_source(k, &payload)?;
        state = match (state, msg) {
            (ReceiverState::AwaitHello, SourceMessage::Hello { version, hello }) => {
                let hello = match hello {
                    Some(h) if version == PROTOCOL_VERSION => h,
                    _ => {
                        return Err(ProtocolError::VersionMismatch {
                            ours: PROTOCOL_VERSION,
                            theirs: version,
                        }
                        .into())
                    }
                };
                if hello.page_size as usize != PAGE_SIZE {
                    return Err(ReceiveError::Refused(format!(
                        "page size {} (this tern uses {PAGE_SIZE})",
                        hello.page_size
                    )));
                }
                host.check(&hello).map_err(ReceiveError::Refused)?;
                send(
                    out,
                    &DestMessage::Accept {
                        tern_version: env!("CARGO_PKG_VERSION").into(),
                    },
                )?;
                ReceiverState::Memory
            }
            (ReceiverState::Memory, SourceMessage::RoundEnd { round }) => {
                report.rounds = round.max(report.rounds);
                send(out, &DestMessage::RoundReceived(round))?;
                ReceiverState::Memory
            }
            (ReceiverState::Memory, SourceMessage::State(bytes)) => {
                guest_state = Some(bytes.to_vec());
                ReceiverState::StateReceived
            }
            (ReceiverState::StateReceived, SourceMessage::Complete) => {
                damaged.check()?;
                report.pages_resent_damaged = damaged.mended;
                let blob = guest_state.take().unwrap_or_default();
                host.restore(&blob)
                    .map_err(host_err("restoring the guest state"))?;
                send(out, &DestMessage::Ready)?;
                ReceiverState::Ready
            }
            (ReceiverState::Ready, SourceMessage::Commit) => {
                host.resume().map_err(host_err("resuming the guest"))?;
                send(out, &DestMessage::Resumed)?;
                return Ok(report);
            }
            (_, SourceMessage::Abandon(reason)) => return Err(ReceiveError::Abandoned(reason)),
            (s, m) => {
                return Err(ProtocolError::Unexpected {
                    got: describe(&m),
                    state: s.describe(),
                }
                .into())
            }
        };
    }
}

/// Pages that arrived damaged and have not arrived intact since, with the
/// stream offset of the damaged copy.
#[derive(Default)]
struct DamagedPages {
    pages: BTreeMap<(u32, u64), u64>,
    /// Pages that were damaged and then arrived intact.
    mended: u64,
}

impl DamagedPages {
    fn damaged(&mut self, region: u32, page: u64, offset: u64) {
        self.pages.insert((region, page), offset);
    }

    fn intact(&mut self, region: u32, page: u64) {
        if !self.pages.is_empty() && self.pages.remove(&(region, page)).is_some() {
            self.mended += 1;
        }
    }

    /// Fails if any page is still damaged.
    fn check(&self) -> Result<(), ReceiveError> {
        match self.pages.iter().next() {
            None => Ok(()),
            Some((&(region, page), &offset)) => Err(ReceiveError::DamagedPages {
                count: self.pages.len(),
                region,
                page,
                offset,
            }),
        }
    }
}

/// A page run: its control frame, checked whole, then its data read straight
/// into the guest memory the host points at, each page checked as it completes.
fn receive_run<R: StreamInput, H: DestinationHost>(
    reader: &mut FrameReader<R>,
    mut frame: PartialFrame,
    host: &mut H,
    report: &mut ReceiveReport,
    damaged: &mut DamagedPages,
) -> Result<(), ReceiveError> {
    let host_err = |message| ReceiveError::Host {
        step: "writing guest memory",
        message,
    };
    let mut head = [0u8; RUN_HEADER];
    if (frame.len() as usize) < RUN_HEADER {
        return Err(ProtocolError::BadMessage {
            kind: kind::PAGES,
            what: format!("{} bytes, shorter than a run header", frame.len()),
        }
        .into());
    }
    reader.read_part(&mut frame, &mut head)?;
    let head: RunHead = decode_run_head(&head)?;
    let mut map = [0u8; MAX_RUN_PAGES as usize / 8];
    let map_len = head.zero_map_len();
    if frame.len() as usize - RUN_HEADER < map_len {
        return Err(ProtocolError::BadMessage {
            kind: kind::PAGES,
            what: "zero map cut short".into(),
        }
        .into());
    }
    let zero_map = &mut map[..map_len];
    reader.read_part(&mut frame, zero_map)?;
    let data_pages = check_zero_map(&head, zero_map, frame.len() as usize)?;
    let mut sums = [0u8; MAX_RUN_PAGES as usize * PAGE_CRC];
    let sums = &mut sums[..data_pages as usize * PAGE_CRC];
    reader.read_part(&mut frame, sums)?;
    reader.finish_frame(frame)?;
    let zeros = head.count - data_pages;
    let is_zero = |i: u32| zero_map_has(zero_map, i);
    if zeros > 0 {
        host.zero_pages(head.region, head.first_page, head.count, zero_map)
            .map_err(host_err)?;
        for i in (0..head.count).filter(|&i| is_zero(i)) {
            damaged.intact(head.region, head.first_page + u64::from(i));
        }
    }
    // Each stretch of consecutive data pages straight into guest memory;
    // all of them follow the control frame back to back.
    let mut due = data_pages as usize * PAGE_SIZE;
    let mut i = 0;
    let mut k = 0; // data pages so far
    while i < head.count {
        if is_zero(i) {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < head.count && !is_zero(end) {
            end += 1;
        }
        let first = head.first_page + u64::from(i);
        let dst = host
            .page_data(head.region, first, end - i)
            .map_err(host_err)?;
        if dst.len() != (end - i) as usize * PAGE_SIZE {
            return Err(host_err(format!(
                "{} bytes of guest memory for {} pages",
                dst.len(),
                end - i
            )));
        }
        let (mut got, mut checked) = (0, 0);
        while got < dst.len() {
            let piece = (dst.len() - got).min(READ_PIECE);
            let n = reader.read_unframed(&mut dst[got..got + piece], due)?;
            got += n;
            due -= n;
            while checked + PAGE_SIZE <= got {
                let page = first + (checked / PAGE_SIZE) as u64;
                if page_crc(&dst[checked..checked + PAGE_SIZE]) == page_crc_at(sums, k) {
                    damaged.intact(head.region, page);
                } else {
                    let at = reader.offset() - (got - checked) as u64;
                    damaged.damaged(head.region, page, at);
                }
                checked += PAGE_SIZE;
                k += 1;
            }
        }
        i = end;
    }
    report.zero_pages += u64::from(zeros);
    report.data_pages += u64::from(data_pages);
    Ok(())
}

fn describe(m: &SourceMessage<'_>) -> String {
    match m {
        SourceMessage::Hello { .. } => "Hello".into(),
        SourceMessage::Pages(_) => "a page run".into(),
        SourceMessage::RoundEnd { .. } => "RoundEnd".into(),
        SourceMessage::State(_) => "guest state".into(),
        SourceMessage::Complete => "Complete".into(),
        SourceMessage::Commit => "Commit".into(),
        SourceMessage::Abandon(_) => "Abandon".into(),
    }
}
