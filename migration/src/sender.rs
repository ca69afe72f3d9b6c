//! The source side of a migration session: the handshake, page runs (zero
//! pages become markers), round ends, guest state and the two-phase end
//! (Complete → Ready, Commit → Resumed). Messages from the destination are
//! read on their own thread, so an error it reports mid-stream is seen at the
//! next round end instead of after the whole memory was sent. Frames to it
//! are built whole and written by a thread of their own as well
//! ([`crate::send_queue`]), so building a page run overlaps sending the last.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use crate::protocol::frame::{FrameBuf, FrameReader};
use crate::protocol::messages::{
    decode_dest, encode_abandon, encode_hello_with_version, encode_round_end, kind, DestMessage,
    Hello, MAX_RUN_PAGES, PAGE_SIZE, PROTOCOL_VERSION,
};
pub use crate::protocol::run_frame::RunCounts;
use crate::protocol::run_frame::RunFrame;
use crate::protocol::ProtocolError;
use crate::send_queue::SendQueue;
use crate::transport::Stream;

/// Why the source side of a session failed. In every case the source keeps
/// (or resumes) its guest.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The destination refused the handshake.
    #[error("the destination refused: {0}")]
    Refused(String),
    /// The destination reported a failure.
    #[error("the destination failed: {0}")]
    DestinationFailed(String),
    /// The destination went away.
    #[error("the destination closed the connection")]
    PeerGone,
    /// No answer in time.
    #[error("no answer from the destination within {0:?} while waiting for {1}")]
    Timeout(Duration, &'static str),
    /// Writing or reading the stream failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The destination said something out of turn.
    #[error("unexpected answer from the destination: {0:?}")]
    Unexpected(DestMessage),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                SendError::PeerGone
            }
            _ => SendError::Protocol(ProtocolError::Io(e)),
        }
    }
}

/// An open session to a destination.
pub struct SourceSession {
    stream: Stream,
    out: SendQueue,
    inbox: Receiver<Result<DestMessage, ProtocolError>>,
}

impl SourceSession {
    /// Sends the handshake and waits for the destination's answer.
    pub fn start(stream: Stream, hello: &Hello, timeout: Duration) -> Result<Self, SendError> {
        Self::start_with_version(stream, hello, timeout, PROTOCOL_VERSION)
    }

    /// As `start`, claiming protocol `version` (for tests of version handling).
    pub fn start_with_version(
        stream: Stream,
        hello: &Hello,
        timeout: Duration,
        version: u32,
    ) -> Result<Self, SendError> {
        let input = stream.try_clone()?;
        let output = stream.try_clone()?;
        let (tx, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("tern-mig-rx".into())
            .spawn(move || {
                let mut r = FrameReader::new(input, kind::from_destination);
                loop {
                    let msg = r.read_frame().and_then(|f| decode_dest(f.kind, &f.payload));
                    let stop = msg.is_err();
                    if tx.send(msg).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| SendError::Protocol(ProtocolError::Io(e)))?;
        let mut s = SourceSession {
            stream,
            out: SendQueue::start(output, "tern-mig-tx")?,
            inbox,
        };
        s.write_frame(kind::HELLO, &[&encode_hello_with_version(hello, version)])?;
        s.out.flush()?;
        match s.wait(timeout, "the handshake answer")? {
            DestMessage::Accept { .. } => Ok(s),
            DestMessage::Refuse(reason) => Err(SendError::Refused(reason)),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Bytes handed to the stream so far (the writer thread may still be
    /// writing the last few frames; a flush waits for them).
    pub fn bytes_sent(&self) -> u64 {
        self.out.bytes_queued()
    }

    /// CPU time of the thread that writes the stream, as of the last flush
    /// (every call that waits for the destination flushes first).
    pub fn writer_cpu(&self) -> Option<Duration> {
        self.out.writer_cpu()
    }

    /// Queues one frame whose payload is the concatenation of `parts`.
    fn write_frame(&mut self, kind: u16, parts: &[&[u8]]) -> Result<(), SendError> {
        let frame = FrameBuf::encode(kind, parts, self.out.buffer()?)?;
        self.out.send(frame)?;
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, what: &'static str) -> Result<DestMessage, SendError> {
        match self.inbox.recv_timeout(timeout) {
            Ok(Ok(DestMessage::Error(m))) => Err(SendError::DestinationFailed(m)),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(ProtocolError::PeerClosed)) | Err(RecvTimeoutError::Disconnected) => {
                Err(SendError::PeerGone)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(RecvTimeoutError::Timeout) => Err(SendError::Timeout(timeout, what)),
        }
    }

    /// Fails if the destination has reported anything (it only speaks
    /// unprompted to report an error).
    pub fn check_destination(&mut self) -> Result<(), SendError> {
        match self.inbox.try_recv() {
            Err(TryRecvError::Empty) => Ok(()),
            Ok(Ok(DestMessage::Error(m))) => Err(SendError::DestinationFailed(m)),
            Ok(Ok(m)) => Err(SendError::Unexpected(m)),
            Ok(Err(ProtocolError::PeerClosed)) | Err(TryRecvError::Disconnected) => {
                Err(SendError::PeerGone)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Sends `pages` (a whole number of pages, at most `MAX_RUN_PAGES`)
    /// starting at page `first_page` of `region`; zero pages go as markers.
    pub fn send_run(
        &mut self,
        region: u32,
        first_page: u64,
        pages: &[u8],
    ) -> Result<RunCounts, SendError> {
        self.send_run_skipping(region, first_page, pages, &[])
    }

    /// As [`SourceSession::send_run`], with the pages whose bit is set in
    /// `known_zero` (bit `i % 64` of word `i / 64`) sent as zero markers
    /// without being looked at: their bytes in `pages` may be anything.
    pub fn send_run_skipping(
        &mut self,
        region: u32,
        first_page: u64,
        pages: &[u8],
        known_zero: &[u64],
    ) -> Result<RunCounts, SendError> {
        let count = (pages.len() / PAGE_SIZE) as u32;
        debug_assert!(pages.len() % PAGE_SIZE == 0);
        let mut run = self.begin_run(region, first_page, count)?;
        run.pages_mut()
            .copy_from_slice(&pages[..count as usize * PAGE_SIZE]);
        self.send_run_frame(run, known_zero)
    }

    /// Starts a run of `count` pages (1..=`MAX_RUN_PAGES`) from `first_page`
    /// of `region`, to be filled in place ([`RunFrame::pages_mut`]) and sent
    /// with [`SourceSession::send_run_frame`]. Waits while every frame
    /// buffer is in flight.
    pub fn begin_run(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
    ) -> Result<RunFrame, SendError> {
        if !(1..=MAX_RUN_PAGES).contains(&count) {
            return Err(SendError::Protocol(ProtocolError::BadMessage {
                kind: kind::PAGES,
                what: format!("a run has 1..={MAX_RUN_PAGES} pages, not {count}"),
            }));
        }
        Ok(RunFrame::new(self.out.buffer()?, region, first_page, count))
    }

    /// Sends a run started with [`SourceSession::begin_run`]; pages flagged
    /// in `known_zero` (bit `i % 64` of word `i / 64`) and pages found all
    /// zero go as markers.
    pub fn send_run_frame(
        &mut self,
        run: RunFrame,
        known_zero: &[u64],
    ) -> Result<RunCounts, SendError> {
        let (frame, counts) = run.finish(known_zero);
        self.out.send(frame)?;
        Ok(counts)
    }

    /// Ends round `round`: flushes, and fails if the destination reported an error.
    pub fn end_round(&mut self, round: u32) -> Result<(), SendError> {
        self.write_frame(kind::ROUND_END, &[&encode_round_end(round)])?;
        self.out.flush()?;
        self.check_destination()
    }

    /// Sends the guest state blob.
    pub fn send_state(&mut self, state: &[u8]) -> Result<(), SendError> {
        self.write_frame(kind::STATE, &[state])?;
        Ok(())
    }

    /// Says everything was sent and waits until the destination has restored it.
    pub fn complete(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.write_frame(kind::COMPLETE, &[])?;
        self.out.flush()?;
        match self.wait(timeout, "Ready")? {
            DestMessage::Ready => Ok(()),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Tells the destination to run the guest and waits until it says it does.
    pub fn commit(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.write_frame(kind::COMMIT, &[])?;
        self.out.flush()?;
        match self.wait(timeout, "Resumed")? {
            DestMessage::Resumed => Ok(()),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Tells the destination to discard everything (best effort).
    pub fn abandon(&mut self, reason: &str) {
        let _ = self.write_frame(kind::ABANDON, &[&encode_abandon(reason)]);
        let _ = self.out.flush();
    }
}

impl Drop for SourceSession {
    fn drop(&mut self) {
        // Closes the socket for every clone, so the reader thread ends and the
        // destination sees the stream end.
        self.stream.shutdown();
    }
}
