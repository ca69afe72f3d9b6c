//! The source's outgoing frames, written by a thread of their own.
//!
//! The migration thread builds each frame whole in a buffer from a small
//! pool (a page run: guest pages copied in, zero pages found, checksummed;
//! see [`crate::protocol::run_frame`]) and queues it; the writer thread
//! hands it to the socket and returns the buffer. Building the next run then
//! overlaps the kernel's send of the last one, which on a fast link is most
//! of the cost of a byte. The pool bounds what is in flight (and so the
//! memory this takes) to [`POOL_BUFFERS`] frames; taking a buffer waits for
//! the writer, which is the back-pressure a blocking write used to give.
//!
//! Frames go out in the order they were queued. Small ones (runs of zero
//! markers, control messages) are gathered back to back in one buffer and
//! handed over together, up to [`GATHER_LIMIT`] bytes: a pass over a mostly
//! empty guest builds a thousand such frames per GiB, and a hand-over to the
//! writer thread costs far more than copying a few dozen bytes.
//! [`SendQueue::flush`] sends what is gathered and waits until everything
//! queued is written, so a caller that then waits for the destination's
//! answer knows its question left. A write error ends the writing; every
//! later call reports it.
//!
//! The writer thread's CPU time is published at every flush (and when it
//! ends), for the migration's cost report: after a flush,
//! [`SendQueue::writer_cpu`] covers everything written.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::frame::FrameBuf;
use crate::protocol::run_frame::MAX_RUN_FRAME;

/// Frames in flight at most: one being built, the others queued or being
/// written.
pub const POOL_BUFFERS: usize = 4;

/// Frames up to this size are gathered rather than handed over alone.
pub const GATHER_FRAME: usize = 16 << 10;

/// Gathered frames go to the writer once they reach this many bytes.
pub const GATHER_LIMIT: usize = 256 << 10;

enum Job {
    Frame(FrameBuf),
    Flush(SyncSender<io::Result<()>>),
}

/// The first write error, shared with the writer thread.
type Failure = Arc<Mutex<Option<(io::ErrorKind, String)>>>;

/// A queue of whole frames to one stream, written in order by its own thread.
pub struct SendQueue {
    jobs: SyncSender<Job>,
    free: Receiver<Vec<u8>>,
    /// Puts a buffer whose frame was gathered straight back into the pool.
    recycle: SyncSender<Vec<u8>>,
    /// Small frames not handed over yet (in a buffer from the pool).
    gathered: Option<FrameBuf>,
    failure: Failure,
    queued: u64,
    /// The writer thread's CPU time as of its last flush, ns (`u64::MAX`: not known).
    writer_cpu_ns: Arc<AtomicU64>,
}

fn failed(failure: &Failure) -> Option<io::Error> {
    let f = failure.lock().unwrap_or_else(|e| e.into_inner());
    f.as_ref()
        .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
}

impl SendQueue {
    /// Starts the writer thread (`name`) on `out`.
    pub fn start<W: Write + Send + 'static>(out: W, name: &str) -> io::Result<Self> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(POOL_BUFFERS + 2);
        let (free_tx, free) = mpsc::sync_channel::<Vec<u8>>(POOL_BUFFERS);
        for _ in 0..POOL_BUFFERS {
            // Backed now, while the handshake is under way, not on the
            // first frames of the bulk pass (a fault per page of each).
            // Cannot block: the channel holds exactly the pool.
            let _ = free_tx.send(backed_frame_buffer());
        }
        let failure = Failure::default();
        let writer_failure = failure.clone();
        let writer_cpu_ns = Arc::new(AtomicU64::new(u64::MAX));
        let cpu = writer_cpu_ns.clone();
        let recycle = free_tx.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_jobs(out, job_rx, free_tx, writer_failure, &cpu))?;
        Ok(SendQueue {
            jobs,
            free,
            recycle,
            gathered: None,
            failure,
            queued: 0,
            writer_cpu_ns,
        })
    }

    /// Bytes queued so far (what the socket has, or soon will have).
    pub fn bytes_queued(&self) -> u64 {
        self.queued
    }

    /// A buffer for the next frame; waits while every buffer is in flight.
    pub fn buffer(&mut self) -> io::Result<Vec<u8>> {
        if let Some(e) = failed(&self.failure) {
            return Err(e);
        }
        self.free.recv().map_err(|_| self.gone())
    }

    /// Queues `frame` (built in a buffer from [`SendQueue::buffer`]).
    pub fn send(&mut self, frame: FrameBuf) -> io::Result<()> {
        if let Some(e) = failed(&self.failure) {
            return Err(e);
        }
        let len = frame.len();
        self.queued += len as u64;
        if len > GATHER_FRAME {
            self.hand_over_gathered()?;
            return self.hand_over(frame);
        }
        if self.gathered.as_mut().is_some_and(|g| g.append(&frame)) {
            // Cannot block: the channel holds the whole pool, and this
            // buffer was taken from it.
            let _ = self.recycle.try_send(frame.into_buffer());
        } else {
            self.hand_over_gathered()?;
            self.gathered = Some(frame);
        }
        if self
            .gathered
            .as_ref()
            .is_some_and(|g| g.len() >= GATHER_LIMIT)
        {
            self.hand_over_gathered()?;
        }
        Ok(())
    }

    fn hand_over(&mut self, frame: FrameBuf) -> io::Result<()> {
        self.jobs.send(Job::Frame(frame)).map_err(|_| self.gone())
    }

    fn hand_over_gathered(&mut self) -> io::Result<()> {
        match self.gathered.take() {
            Some(gathered) => self.hand_over(gathered),
            None => Ok(()),
        }
    }

    /// Sends what is gathered, then waits until everything queued has been
    /// written (and the stream flushed).
    pub fn flush(&mut self) -> io::Result<()> {
        self.hand_over_gathered()?;
        let (ack, done) = mpsc::sync_channel(1);
        self.jobs.send(Job::Flush(ack)).map_err(|_| self.gone())?;
        done.recv().map_err(|_| self.gone())?
    }

    /// CPU time the writer thread has used, as of its last flush (`None`
    /// before the first flush, or where the host cannot tell).
    pub fn writer_cpu(&self) -> Option<Duration> {
        match self.writer_cpu_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    fn gone(&self) -> io::Error {
        failed(&self.failure)
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the writer thread ended"))
    }
}

/// A buffer of [`MAX_RUN_FRAME`] bytes, every page of it written once.
fn backed_frame_buffer() -> Vec<u8> {
    // Not zeroes: a zeroed allocation comes from untouched pages.
    vec![0x5a; MAX_RUN_FRAME]
}

/// The writer thread: writes frames in order and recycles their buffers
/// until the queue is dropped; after an error, only recycles and reports it.
fn write_jobs<W: Write>(
    mut out: W,
    jobs: Receiver<Job>,
    free: SyncSender<Vec<u8>>,
    failure: Failure,
    cpu_ns: &AtomicU64,
) {
    // Published before a flush is acknowledged, so the flusher sees it.
    let publish_cpu = || {
        if let Some(t) = crate::thread_cpu::this_thread() {
            cpu_ns.store(
                t.as_nanos().min(u128::from(u64::MAX - 1)) as u64,
                Ordering::Release,
            );
        }
    };
    let mut broken = false;
    for job in jobs {
        match job {
            Job::Frame(frame) => {
                if !broken {
                    if let Err(e) = out.write_all(frame.bytes()) {
                        broken = true;
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((e.kind(), e.to_string()));
                    }
                }
                // Back whole, at its length (see `FrameBuf`); a buffer grown
                // far beyond a run (device state) is not kept.
                let buf = frame.into_buffer();
                let buf = if buf.capacity() > 2 * MAX_RUN_FRAME {
                    Vec::with_capacity(MAX_RUN_FRAME)
                } else {
                    buf
                };
                // Never blocks: at most the pool's buffers exist. Fails only
                // when the queue is gone, and then nobody needs it.
                let _ = free.try_send(buf);
            }
            Job::Flush(ack) => {
                let r = match failed(&failure) {
                    Some(e) => Err(e),
                    None => out.flush(),
                };
                publish_cpu();
                let _ = ack.send(r);
            }
        }
    }
    publish_cpu();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared byte sink that can be told to fail.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if *self.fail.lock().unwrap() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer gone"));
            }
            // A few bytes at a time, as a socket may take them.
            let n = buf.len().min(3);
            self.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_arrive_in_order_and_buffers_come_back() {
        let sink = Sink::default();
        let mut q = SendQueue::start(sink.clone(), "test-writer").unwrap();
        // More frames than buffers: each buffer is used several times.
        for i in 0..(3 * POOL_BUFFERS as u8) {
            let mut b = q.buffer().unwrap();
            // Whole, as every frame left it.
            assert_eq!(b.len(), MAX_RUN_FRAME);
            b[..5].fill(i);
            q.send(FrameBuf::new(b, 5)).unwrap();
        }
        assert_eq!(q.writer_cpu(), None, "nothing published before a flush");
        q.flush().unwrap();
        assert!(
            q.writer_cpu().is_some(),
            "a flush publishes the writer's CPU time"
        );
        assert_eq!(q.bytes_queued(), 5 * 3 * POOL_BUFFERS as u64);
        let bytes = sink.bytes.lock().unwrap().clone();
        let expected: Vec<u8> = (0..(3 * POOL_BUFFERS as u8)).flat_map(|i| [i; 5]).collect();
        assert_eq!(bytes, expected);
    }

    /// Queues a frame of `len` bytes of `fill`, returning its bytes.
    fn queue(q: &mut SendQueue, len: usize, fill: u8) -> Vec<u8> {
        let mut b = q.buffer().unwrap();
        b[..len].fill(fill);
        q.send(FrameBuf::new(b, len)).unwrap();
        vec![fill; len]
    }

    #[test]
    fn small_frames_are_gathered_and_keep_their_place_among_big_ones() {
        let sink = Sink::default();
        let mut q = SendQueue::start(sink.clone(), "test-writer").unwrap();
        let mut expected = Vec::new();
        for (i, len) in [5, 7, GATHER_FRAME + 1, 3, GATHER_FRAME, 64 << 10, 9]
            .into_iter()
            .enumerate()
        {
            expected.extend(queue(&mut q, len, i as u8 + 1));
        }
        q.flush().unwrap();
        assert_eq!(q.bytes_queued(), expected.len() as u64);
        assert!(*sink.bytes.lock().unwrap() == expected);
    }

    #[test]
    fn gathered_frames_go_out_at_the_limit_without_a_flush() {
        let sink = Sink::default();
        let mut q = SendQueue::start(sink.clone(), "test-writer").unwrap();
        let mut expected = Vec::new();
        while expected.len() < GATHER_LIMIT {
            expected.extend(queue(&mut q, GATHER_FRAME, expected.len() as u8));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.bytes.lock().unwrap().len() < expected.len() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(*sink.bytes.lock().unwrap() == expected);
    }

    #[test]
    fn a_write_error_is_reported_by_every_later_call() {
        let sink = Sink::default();
        let mut q = SendQueue::start(sink.clone(), "test-writer").unwrap();
        *sink.fail.lock().unwrap() = true;
        let b = q.buffer().unwrap();
        // Queued; the writer's write fails, and the flush says so.
        q.send(FrameBuf::new(b, 1)).unwrap();
        let e = q.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(q.buffer().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(
            q.send(FrameBuf::new(Vec::new(), 0)).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(q.flush().is_err());
    }
}
