//! The block I/O worker pool: batches of requests in over one channel, the same batches with
//! their results out over another plus an `EventFd` the event loop watches.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::fault::BlockFaultHandle;
use super::request::{Op, Request, S_IOERR, S_OK};
use super::vectored::{transfer, Direction, IoVecs};
use super::{BlockError, QUEUE_SIZE};

/// Requests a worker runs together: one, or several reads (or writes) of contiguous disk ranges
/// that go to the image as one transfer. Pooled like requests: its vectors keep their capacity.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub reqs: Vec<Request>,
    /// Per request, in order, once run: the status code and the used length.
    pub results: Vec<(u8, u32)>,
}

/// Channel depth: a full queue of single-request batches plus as many again left over from
/// before a reset.
const CHANNEL_DEPTH: usize = 2 * QUEUE_SIZE as usize;

/// Worker threads, each with its own open file (positioned I/O only: no shared offset).
pub(crate) struct WorkerPool {
    submit: Option<SyncSender<Batch>>,
    threads: Vec<JoinHandle<()>>,
    fault: BlockFaultHandle,
}

impl WorkerPool {
    /// Starts `workers` threads on the image at `path`; completions go to the returned
    /// receiver, each followed by a write to `done_evt`.
    pub fn start(
        path: &Path,
        readonly: bool,
        workers: usize,
        done_evt: &EventFd,
        fault: BlockFaultHandle,
    ) -> Result<(Self, Receiver<Batch>), BlockError> {
        if workers == 0 {
            return Err(BlockError::NoWorkers);
        }
        let (submit, requests) = sync_channel::<Batch>(CHANNEL_DEPTH);
        let (done, completions) = sync_channel::<Batch>(CHANNEL_DEPTH);
        let requests = Arc::new(Mutex::new(requests));
        let mut pool = WorkerPool {
            submit: Some(submit),
            threads: Vec::with_capacity(workers),
            fault: fault.clone(),
        };
        for n in 0..workers {
            let file = open_image(path, readonly)?;
            let worker = Worker {
                file,
                requests: requests.clone(),
                done: done.clone(),
                done_evt: done_evt.try_clone().map_err(BlockError::Host)?,
                fault: fault.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("tern-blk-{n}"))
                .spawn(move || worker.run())
                .map_err(BlockError::Host)?;
            pool.threads.push(thread);
        }
        Ok((pool, completions))
    }

    /// Hands `batch` to a worker; gives it back if the pool cannot take it.
    pub fn submit(&self, batch: Batch) -> Result<(), Batch> {
        match self.submit.as_ref() {
            Some(tx) => tx.try_send(batch).map_err(|e| match e {
                TrySendError::Full(b) | TrySendError::Disconnected(b) => b,
            }),
            None => Err(batch),
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.fault.shutdown();
        self.submit = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("block: a worker thread panicked");
            }
        }
    }
}

/// Opens the image read-only or read-write.
pub(crate) fn open_image(path: &Path, readonly: bool) -> Result<File, BlockError> {
    OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

struct Worker {
    file: File,
    requests: Arc<Mutex<Receiver<Batch>>>,
    done: SyncSender<Batch>,
    done_evt: EventFd,
    fault: BlockFaultHandle,
}

impl Worker {
    fn run(self) {
        let mut iov = IoVecs::default();
        loop {
            let next = {
                let rx = self.requests.lock().unwrap_or_else(|e| e.into_inner());
                rx.recv()
            };
            let Ok(mut batch) = next else {
                return; // The device is gone.
            };
            if !self.fault.gate() {
                return; // Shutting down: the guest memory may be gone.
            }
            self.execute_batch(&mut batch, &mut iov);
            for req in &mut batch.reqs {
                req.mem = None;
            }
            if self.done.send(batch).is_err() {
                return;
            }
            if let Err(e) = self.done_evt.write(1) {
                log::error!("block: failed to signal a completion: {e}");
            }
        }
    }

    /// Runs the batch, filling in its results: merged as one transfer, or, if that fails or
    /// there is only one request, each request on its own (so a failure is reported for the
    /// request it belongs to).
    fn execute_batch(&self, batch: &mut Batch, iov: &mut IoVecs) {
        batch.results.clear();
        if let [first, _, ..] = batch.reqs.as_slice() {
            match self.transfer(first, batch.reqs.iter(), iov) {
                Ok(()) => {
                    for req in &batch.reqs {
                        batch.results.push((S_OK, used_len(req, req.data_len())));
                    }
                    return;
                }
                Err(e) => log::warn!(
                    "block: merged transfer of {} requests at {:#x} failed ({e}); running them \
                     one by one",
                    batch.reqs.len(),
                    first.offset
                ),
            }
        }
        for req in &batch.reqs {
            let result = match self.execute(req, iov) {
                Ok(written) => (S_OK, used_len(req, written)),
                Err(e) => {
                    log::warn!("block: request at {:#x} failed: {e}", req.offset);
                    (S_IOERR, 1)
                }
            };
            batch.results.push(result);
        }
    }

    /// The data of `reqs` (reads or writes like `first`, contiguous from its offset) as one
    /// transfer.
    fn transfer<'a>(
        &self,
        first: &Request,
        reqs: impl Iterator<Item = &'a Request>,
        iov: &mut IoVecs,
    ) -> io::Result<()> {
        let mem = first
            .mem
            .as_ref()
            .ok_or_else(|| io::Error::other("request without guest memory"))?;
        let dir = match first.op {
            Op::Read => Direction::Read,
            Op::Write => Direction::Write,
            op => return Err(io::Error::other(format!("{op:?} moves no data"))),
        };
        let segments = reqs.flat_map(|r| r.data.iter());
        transfer(&self.file, first.offset, mem, segments, dir, iov)
    }

    /// Performs one request; returns the bytes written into guest memory.
    fn execute(&self, req: &Request, iov: &mut IoVecs) -> io::Result<u64> {
        match req.op {
            Op::Flush => self.file.sync_data().map(|_| 0),
            Op::Discard => Ok(0),
            Op::WriteZeroes => {
                use std::os::unix::fs::FileExt;
                static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
                let mut done = 0;
                while done < req.zero_len {
                    let n = (req.zero_len - done).min(ZEROS.len() as u64) as usize;
                    self.file.write_all_at(&ZEROS[..n], req.offset + done)?;
                    done += n as u64;
                }
                Ok(0)
            }
            Op::Read => self
                .transfer(req, std::iter::once(req), iov)
                .map(|()| req.data_len()),
            Op::Write => self.transfer(req, std::iter::once(req), iov).map(|()| 0),
        }
    }
}

/// The used length of a finished request: the data written into guest memory, plus the status
/// byte.
fn used_len(req: &Request, written: u64) -> u32 {
    let written = match req.op {
        Op::Read => written,
        _ => 0,
    };
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}
