//! The source side of a migration session: the handshake, page runs (zero
//! pages become markers), round ends, guest state and the two-phase end
//! (Complete → Ready, Commit → Resumed). Messages from the destination are
//! read on their own thread, so an error it reports mid-stream is seen at the
//! next round end instead of after the whole memory was sent.
//!
//! Frames to it are written by the caller's thread. A page run goes as its
//! control frame (which pages are zero, a checksum per data page) and then
//! its data pages, which the caller writes from wherever they are — guest
//! memory, on a real source ([`SourceSession::send_run_with`]) — so no page is
//! copied in user space and no hand-over to another thread sits between the
//! checksum and the send. Small frames (control messages, runs of zero
//! markers only) are gathered and go out with the next run's data, at
//! [`GATHER_LIMIT`], or when the session waits for the destination.

use std::io::{self, IoSlice};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use crate::protocol::frame::{append_frame, write_all_vectored, FrameReader};
use crate::protocol::messages::{
    decode_dest, encode_abandon, encode_hello_with_version, encode_round_end, kind, DestMessage,
    Hello, MAX_RUN_PAGES, PAGE_SIZE, PROTOCOL_VERSION,
};
pub use crate::protocol::run_frame::{RunControl, RunCounts};
use crate::protocol::ProtocolError;
use crate::transport::Stream;

/// Gathered small frames are written once they reach this many bytes.
pub const GATHER_LIMIT: usize = 256 << 10;

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
    /// The destination took none of the stream for the socket's write timeout.
    #[error("the destination took no data for {0:?}: it stopped reading")]
    Stalled(Duration),
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
    inbox: Receiver<Result<DestMessage, ProtocolError>>,
    /// Whole frames not written yet.
    pending: Vec<u8>,
    /// The buffer run control frames are built in, kept between runs.
    control: Vec<u8>,
    /// Bytes written or pending.
    queued: u64,
    /// The last round the destination said it has read (RoundReceived).
    received: Option<u32>,
    /// The stream's write timeout, as it was when the session started.
    write_timeout: Option<Duration>,
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
        let stream_write_timeout = stream.write_timeout();
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
            inbox,
            pending: Vec::with_capacity(GATHER_LIMIT),
            control: Vec::new(),
            queued: 0,
            received: None,
            write_timeout: stream_write_timeout,
        };
        s.write_frame(kind::HELLO, &[&encode_hello_with_version(hello, version)])?;
        s.flush()?;
        match s.wait(timeout, "the handshake answer")? {
            DestMessage::Accept { .. } => Ok(s),
            DestMessage::Refuse(reason) => Err(SendError::Refused(reason)),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Bytes of the stream so far (small frames among them may still be
    /// gathered, not written: every call that waits for the destination
    /// writes them first).
    pub fn bytes_sent(&self) -> u64 {
        self.queued
    }

    /// Gathers one frame whose payload is the concatenation of `parts`.
    fn write_frame(&mut self, kind: u16, parts: &[&[u8]]) -> Result<(), SendError> {
        self.queued += append_frame(&mut self.pending, kind, parts)? as u64;
        self.flush_if_full()
    }

    /// Writes the gathered frames once they reach [`GATHER_LIMIT`].
    fn flush_if_full(&mut self) -> Result<(), SendError> {
        if self.pending.len() >= GATHER_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// When a whole write that starts now must be done by: the stream's write
    /// timeout from now (None: no timeout). Each call to the socket also
    /// times out on its own, but a destination that takes a trickle now and
    /// then would otherwise keep the writer for many timeouts.
    fn write_deadline(&self) -> Option<Instant> {
        self.write_timeout.map(|t| Instant::now() + t)
    }

    /// What a failed write means: a write that timed out (the stream's write
    /// timeout, see [`Stream::set_write_timeout`]) is a stalled destination.
    fn write_error(&self, e: io::Error) -> SendError {
        match (e.kind(), self.write_timeout) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => SendError::Stalled(t),
            _ => e.into(),
        }
    }

    /// Writes the gathered frames.
    fn flush(&mut self) -> Result<(), SendError> {
        if !self.pending.is_empty() {
            let deadline = self.write_deadline();
            let result = write_all_vectored(
                &mut self.stream,
                &mut [IoSlice::new(&self.pending)],
                deadline,
            );
            if let Err(e) = result {
                return Err(self.write_error(e));
            }
            self.pending.clear();
        }
        Ok(())
    }

    /// The next message from the destination within what is left of
    /// `timeout`, which started at `since`; an Error it reports, its going
    /// away or silence are errors.
    fn next(
        &mut self,
        since: Instant,
        timeout: Duration,
        what: &'static str,
    ) -> Result<DestMessage, SendError> {
        let left = timeout.saturating_sub(since.elapsed());
        match self.inbox.recv_timeout(left) {
            Ok(Ok(DestMessage::Error(m))) => Err(SendError::DestinationFailed(m)),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(ProtocolError::PeerClosed)) | Err(RecvTimeoutError::Disconnected) => {
                Err(SendError::PeerGone)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(RecvTimeoutError::Timeout) => Err(SendError::Timeout(timeout, what)),
        }
    }

    /// The next message from the destination other than a round
    /// acknowledgement (those are recorded), within `timeout`.
    fn wait(&mut self, timeout: Duration, what: &'static str) -> Result<DestMessage, SendError> {
        let since = Instant::now();
        loop {
            match self.next(since, timeout, what)? {
                DestMessage::RoundReceived(r) => self.round_received(r),
                m => return Ok(m),
            }
        }
    }

    fn round_received(&mut self, round: u32) {
        self.received = Some(self.received.map_or(round, |r| r.max(round)));
    }

    /// Fails if the destination has reported an error (it speaks unprompted
    /// only for that, and to acknowledge rounds, which are recorded).
    pub fn check_destination(&mut self) -> Result<(), SendError> {
        loop {
            match self.inbox.try_recv() {
                Err(TryRecvError::Empty) => return Ok(()),
                Ok(Ok(DestMessage::RoundReceived(r))) => self.round_received(r),
                Ok(Ok(DestMessage::Error(m))) => return Err(SendError::DestinationFailed(m)),
                Ok(Ok(m)) => return Err(SendError::Unexpected(m)),
                Ok(Err(ProtocolError::PeerClosed)) | Err(TryRecvError::Disconnected) => {
                    return Err(SendError::PeerGone)
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Waits until the destination has read everything up to the end of
    /// round `round` (its RoundReceived), so nothing sent before is still on
    /// the way: what the socket buffers hold would otherwise be read while the
    /// guest is paused, unseen by the downtime estimate. Returns how long it
    /// waited.
    pub fn await_round(&mut self, round: u32, timeout: Duration) -> Result<Duration, SendError> {
        let started = Instant::now();
        self.flush()?;
        while self.received.is_none_or(|r| r < round) {
            match self.next(started, timeout, "the round's acknowledgement")? {
                DestMessage::RoundReceived(r) => self.round_received(r),
                m => return Err(SendError::Unexpected(m)),
            }
        }
        Ok(started.elapsed())
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
        debug_assert!(pages.len() % PAGE_SIZE == 0);
        let count = (pages.len() / PAGE_SIZE) as u32;
        let mut run = self.begin_run(region, first_page, count)?;
        // Byte ranges of `pages` that go with data, consecutive pages merged.
        let mut data: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
            if known_zero
                .get(i / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
            {
                run.push_zero();
                continue;
            }
            if !run.push_page(page) {
                continue;
            }
            let at = i * PAGE_SIZE;
            match data.last_mut() {
                Some(r) if r.end == at => r.end = at + PAGE_SIZE,
                _ => data.push(at..at + PAGE_SIZE),
            }
        }
        self.send_run_with(run, |stream, prefix, deadline| {
            let mut slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(prefix))
                .chain(data.iter().map(|r| IoSlice::new(&pages[r.clone()])))
                .collect();
            write_all_vectored(stream, &mut slices, deadline)
        })
    }

    /// Starts a run of `count` pages (1..=`MAX_RUN_PAGES`) from `first_page`
    /// of `region`: say what each page goes as, in order, then send it with
    /// [`SourceSession::send_run_with`].
    pub fn begin_run(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
    ) -> Result<RunControl, SendError> {
        if !(1..=MAX_RUN_PAGES).contains(&count) {
            return Err(SendError::Protocol(ProtocolError::BadMessage {
                kind: kind::PAGES,
                what: format!("a run has 1..={MAX_RUN_PAGES} pages, not {count}"),
            }));
        }
        let buf = std::mem::take(&mut self.control);
        Ok(RunControl::new(buf, region, first_page, count))
    }

    /// Sends a run begun with [`SourceSession::begin_run`] whose every page
    /// was said: its control frame, then its data pages, which `write_data`
    /// writes. It gets the stream, the bytes that must go first (frames
    /// gathered so far, then the run's control frame) and the time the whole
    /// write must be done by (see [`Stream::set_write_timeout`]; past it a
    /// partial write should end with `TimedOut`); it must write all of those
    /// bytes and then the run's data pages, in order, and nothing else. A run
    /// of zero markers only has no data: its frame is gathered and
    /// `write_data` not called.
    ///
    /// A data page may change between its checksum and the send (the guest
    /// runs): the destination then finds it damaged and waits for it to be
    /// sent again, which it will be, since it was dirtied (see PROTOCOL.md).
    pub fn send_run_with<F>(
        &mut self,
        run: RunControl,
        write_data: F,
    ) -> Result<RunCounts, SendError>
    where
        F: FnOnce(&mut Stream, &[u8], Option<Instant>) -> io::Result<()>,
    {
        let (frame, counts) = run.finish();
        self.pending.extend_from_slice(&frame);
        self.queued += frame.len() as u64;
        self.control = frame;
        if counts.data == 0 {
            self.flush_if_full()?;
            return Ok(counts);
        }
        let deadline = self.write_deadline();
        if let Err(e) = write_data(&mut self.stream, &self.pending, deadline) {
            return Err(self.write_error(e));
        }
        self.pending.clear();
        self.queued += u64::from(counts.data) * PAGE_SIZE as u64;
        Ok(counts)
    }

    /// Ends round `round`: flushes, and fails if the destination reported an error.
    pub fn end_round(&mut self, round: u32) -> Result<(), SendError> {
        self.write_frame(kind::ROUND_END, &[&encode_round_end(round)])?;
        self.flush()?;
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
        self.flush()?;
        match self.wait(timeout, "Ready")? {
            DestMessage::Ready => Ok(()),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Tells the destination to run the guest and waits until it says it does.
    pub fn commit(&mut self, timeout: Duration) -> Result<(), SendError> {
        self.write_frame(kind::COMMIT, &[])?;
        self.flush()?;
        match self.wait(timeout, "Resumed")? {
            DestMessage::Resumed => Ok(()),
            other => Err(SendError::Unexpected(other)),
        }
    }

    /// Tells the destination to discard everything (best effort).
    pub fn abandon(&mut self, reason: &str) {
        let _ = self.write_frame(kind::ABANDON, &[&encode_abandon(reason)]);
        let _ = self.flush();
    }
}

impl Drop for SourceSession {
    fn drop(&mut self) {
        // Closes the socket for every clone, so the reader thread ends and the
        // destination sees the stream end.
        self.stream.shutdown();
    }
}
