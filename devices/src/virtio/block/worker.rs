//! The block I/O worker pool: requests in over one channel, completions out over another plus
//! an `EventFd` the event loop watches.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::fault::BlockFaultHandle;
use super::request::{Op, Request, S_IOERR, S_OK};
use super::{BlockError, QUEUE_SIZE};

/// A finished request.
pub(crate) struct Completion {
    pub req: Request,
    pub code: u8,
    pub used_len: u32,
}

/// Channel depth: a full queue plus as many again left over from before a reset.
const CHANNEL_DEPTH: usize = 2 * QUEUE_SIZE as usize;

/// Worker threads, each with its own file description (so seeks do not race).
pub(crate) struct WorkerPool {
    submit: Option<SyncSender<Request>>,
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
    ) -> Result<(Self, Receiver<Completion>), BlockError> {
        if workers == 0 {
            return Err(BlockError::NoWorkers);
        }
        let (submit, requests) = sync_channel::<Request>(CHANNEL_DEPTH);
        let (done, completions) = sync_channel::<Completion>(CHANNEL_DEPTH);
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

    /// Hands `req` to a worker; gives it back if the pool cannot take it.
    pub fn submit(&self, req: Request) -> Result<(), Request> {
        match self.submit.as_ref() {
            Some(tx) => tx.try_send(req).map_err(|e| match e {
                TrySendError::Full(r) | TrySendError::Disconnected(r) => r,
            }),
            None => Err(req),
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
    requests: Arc<Mutex<Receiver<Request>>>,
    done: SyncSender<Completion>,
    done_evt: EventFd,
    fault: BlockFaultHandle,
}

impl Worker {
    fn run(mut self) {
        loop {
            let next = {
                let rx = self.requests.lock().unwrap_or_else(|e| e.into_inner());
                rx.recv()
            };
            let Ok(mut req) = next else {
                return; // The device is gone.
            };
            if !self.fault.gate() {
                return; // Shutting down: the guest memory may be gone.
            }
            let (code, used_len) = match self.execute(&req) {
                Ok(written) => (S_OK, written.saturating_add(1)),
                Err(e) => {
                    log::warn!("block: request at {:#x} failed: {e}", req.offset);
                    (S_IOERR, 1)
                }
            };
            req.mem = None;
            let completion = Completion {
                req,
                code,
                used_len,
            };
            if self.done.send(completion).is_err() {
                return;
            }
            if let Err(e) = self.done_evt.write(1) {
                log::error!("block: failed to signal a completion: {e}");
            }
        }
    }

    /// Performs the I/O; returns the bytes written into guest memory.
    fn execute(&mut self, req: &Request) -> io::Result<u32> {
        let mem = req
            .mem
            .as_ref()
            .ok_or_else(|| io::Error::other("request without guest memory"))?;
        let to_io = |e: vm_memory::GuestMemoryError| io::Error::other(e.to_string());
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
            Op::Read => {
                self.file.seek(SeekFrom::Start(req.offset))?;
                for s in &req.data {
                    mem.read_exact_volatile_from(s.addr, &mut self.file, s.len as usize)
                        .map_err(to_io)?;
                }
                u32::try_from(req.data_len()).map_err(io::Error::other)
            }
            Op::Write => {
                self.file.seek(SeekFrom::Start(req.offset))?;
                for s in &req.data {
                    mem.write_all_volatile_to(s.addr, &mut self.file, s.len as usize)
                        .map_err(to_io)?;
                }
                Ok(0)
            }
        }
    }
}
