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

use std::io::{Read, Write};

use crate::protocol::frame::{FrameReader, FrameWriter};
use crate::protocol::messages::{
    decode_source, encode_dest, kind, DestMessage, Hello, PageRun, SourceMessage, PAGE_SIZE,
    PROTOCOL_VERSION,
};
use crate::protocol::ProtocolError;

/// What the destination VMM provides to the receiver.
pub trait DestinationHost {
    /// Compares the source's configuration with ours; `Err(reason)` refuses.
    fn check(&mut self, hello: &Hello) -> Result<(), String>;
    /// Stores a run of pages into guest memory.
    fn write_pages(&mut self, run: &PageRun<'_>) -> Result<(), String>;
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
}

/// Drives a whole incoming migration. On success the guest runs (its host
/// was resumed) and the source has been told so.
pub fn receive<R: Read, W: Write, H: DestinationHost>(
    input: R,
    output: W,
    host: &mut H,
) -> Result<ReceiveReport, ReceiveError> {
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
        r
    })
}

fn send<W: Write>(out: &mut FrameWriter<W>, m: &DestMessage) -> Result<(), ProtocolError> {
    let (k, p) = encode_dest(m);
    out.write_frame(k, &[&p]).map_err(ProtocolError::Io)?;
    out.flush().map_err(ProtocolError::Io)
}

fn run<R: Read, W: Write, H: DestinationHost>(
    reader: &mut FrameReader<R>,
    out: &mut FrameWriter<W>,
    host: &mut H,
) -> Result<ReceiveReport, ReceiveError> {
    let mut state = ReceiverState::AwaitHello;
    let mut report = ReceiveReport::default();
    let mut payload = Vec::new();
    let mut guest_state: Option<Vec<u8>> = None;
    let host_err = |step| move |message| ReceiveError::Host { step, message };
    loop {
        let k = reader.read_frame_into(&mut payload)?;
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
            (ReceiverState::Memory, SourceMessage::Pages(run)) => {
                host.write_pages(&run)
                    .map_err(host_err("writing guest memory"))?;
                let zeros = (0..run.count).filter(|&i| run.is_zero(i)).count() as u64;
                report.zero_pages += zeros;
                report.data_pages += u64::from(run.count) - zeros;
                ReceiverState::Memory
            }
            (ReceiverState::Memory, SourceMessage::RoundEnd { round }) => {
                report.rounds = round.max(report.rounds);
                ReceiverState::Memory
            }
            (ReceiverState::Memory, SourceMessage::State(bytes)) => {
                guest_state = Some(bytes.to_vec());
                ReceiverState::StateReceived
            }
            (ReceiverState::StateReceived, SourceMessage::Complete) => {
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
