//! The virtio-blk device: queue processing and completions on the event loop, I/O on workers.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fault::BlockFaultHandle;
use super::merge::BatchShape;
use super::request::{parse, DiskInfo, Parsed, Request, MAX_ZERO_SECTORS, S_IOERR};
use super::worker::{open_image, Batch, WorkerPool};
use super::{BlockConfig, BlockError, DEFAULT_WORKERS, QUEUE_SIZE, SECTOR_SIZE};
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::DeviceSummary;
use crate::virtio::chain::{collect_chain, Segment};
use crate::virtio::{
    check_activation, new_queues, ActivateContext, ActivateError, IrqTrigger, VirtioDevice,
    COMMON_FEATURES, DEVICE_TOKEN_BASE,
};
use crate::GuestMemoryMmap;

const TOKEN_COMPLETION: u32 = DEVICE_TOKEN_BASE;
/// Data segments per request we advertise (VIRTIO_BLK_F_SEG_MAX): header and status take two
/// descriptors of a full queue.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Size of `struct virtio_blk_config` up to and including the write-zeroes fields.
const CONFIG_LEN: usize = 60;

struct Active {
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<IrqTrigger>,
}

/// A virtio-blk device on a raw image.
pub struct Block {
    pub(super) config: BlockConfig,
    pub(super) capacity_sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config_space: [u8; CONFIG_LEN],
    queues: Vec<Queue>,
    active: Option<Active>,
    pool: WorkerPool,
    completions: Receiver<Batch>,
    done_evt: EventFd,
    fault: BlockFaultHandle,
    /// Unused requests, kept for their buffers.
    free: Vec<Request>,
    /// Unused batches, kept for their buffers.
    free_batches: Vec<Batch>,
    /// Parsed requests of the current pass over the queue, not yet handed to the workers
    /// (contiguous ones go together: see `merge`).
    pending: Vec<Request>,
    /// Requests that joined another's batch, since the device was made.
    merged: u64,
    /// Scratch for chain walking.
    segs: Vec<Segment>,
    /// Heads taken from the queue and not yet completed, in submission order.
    pub(super) in_flight: Vec<u16>,
    /// Requests from before the last reset, still running on workers.
    stale: u32,
    generation: u64,
    quiescing: bool,
    depth_limit: Option<u16>,
    /// Heads to submit again once active (restored in-flight requests).
    pub(super) resubmit: Vec<u16>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A disk on `config.path` with [`DEFAULT_WORKERS`] I/O threads.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        Self::with_workers(config, DEFAULT_WORKERS)
    }

    /// A disk served by `workers` I/O threads.
    pub fn with_workers(config: BlockConfig, workers: usize) -> Result<Self, BlockError> {
        let file = open_image(&config.path, config.readonly)?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?
            .len();
        let capacity_sectors = len / SECTOR_SIZE;
        let done_evt = EventFd::new(EFD_NONBLOCK).map_err(BlockError::Host)?;
        let fault = BlockFaultHandle::default();
        let (pool, completions) = WorkerPool::start(
            &config.path,
            config.readonly,
            workers,
            &done_evt,
            fault.clone(),
        )?;

        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = config.id.len().min(id.len());
        id[..n].copy_from_slice(&config.id.as_bytes()[..n]);
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // Discard and write-zeroes: one range per request, sector aligned, no unmap.
        for (at, value) in [
            (36, MAX_ZERO_SECTORS),
            (40, 1),
            (44, 1),
            (48, MAX_ZERO_SECTORS),
            (52, 1),
        ] {
            config_space[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }

        Ok(Block {
            config,
            capacity_sectors,
            id,
            config_space,
            queues: new_queues(1, QUEUE_SIZE),
            active: None,
            pool,
            completions,
            done_evt,
            fault,
            free: Vec::new(),
            free_batches: Vec::new(),
            pending: Vec::with_capacity(QUEUE_SIZE as usize),
            merged: 0,
            segs: Vec::with_capacity(QUEUE_SIZE as usize),
            in_flight: Vec::with_capacity(QUEUE_SIZE as usize),
            stale: 0,
            generation: 0,
            quiescing: false,
            depth_limit: None,
            resubmit: Vec::new(),
        })
    }

    /// The fault hook (latency, hold), shareable with other threads.
    pub fn fault_handle(&self) -> BlockFaultHandle {
        self.fault.clone()
    }

    /// Size in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Requests taken from the queue and not yet completed (including ones still running from
    /// before a driver reset).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.len() as u32 + self.stale
    }

    /// Requests that went to the image as part of another request's transfer (contiguous reads
    /// or writes taken in one pass over the queue), since the device was made.
    pub fn merged_requests(&self) -> u64 {
        self.merged
    }

    fn can_take(&self) -> bool {
        let limit = self.depth_limit.unwrap_or(QUEUE_SIZE).max(1);
        !self.quiescing && self.in_flight.len() < usize::from(limit)
    }

    /// Takes requests from the available ring while allowed; honours EVENT_IDX.
    fn process_queue(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used = false;
        let mut empty_round_at = None;
        while self.can_take() {
            if let Err(e) = self.queues[0].disable_notification(&*mem) {
                log::error!("block: cannot access the queue: {e}");
                return;
            }
            let mut popped = false;
            while self.can_take() {
                let Some(chain) = self.queues[0].pop_descriptor_chain(&*mem) else {
                    break;
                };
                popped = true;
                used |= self.start_request(&mem, chain.head_index());
            }
            used |= self.submit_pending(&mem);
            if !self.can_take() {
                break;
            }
            match self.queues[0].enable_notification(&*mem) {
                // More arrived while notifications were off: the guest did not kick for it,
                // so take it now. Nothing popped and the index still where the last empty
                // round saw it means the ring cannot be read (its index ran more than a queue
                // ahead): wait for the next notification instead of spinning. (An empty round
                // alone is no sign of that: the guest may have published between the last pop
                // and re-enabling notifications.)
                Ok(true) => {
                    let idx = self.queues[0].avail_idx(&*mem, Ordering::Acquire).ok();
                    if popped || idx != empty_round_at {
                        empty_round_at = if popped { None } else { idx };
                        continue;
                    }
                    log::warn!(
                        "block: available ring index {} is unusable (device at {}); waiting \
                         for the next notification",
                        idx.map_or(0, |i| i.0),
                        self.queues[0].next_avail()
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    log::error!("block: cannot access the queue: {e}");
                    break;
                }
            }
        }
        if used {
            self.signal(&mem);
        }
    }

    /// Parses the chain at `head` and queues it for [`Self::submit_pending`]; returns whether it
    /// was completed at once.
    fn start_request(&mut self, mem: &Arc<GuestMemoryMmap>, head: u16) -> bool {
        let q = &self.queues[0];
        let (table, size) = (vm_memory::GuestAddress(q.desc_table()), q.size());
        if let Err(e) = collect_chain(
            &**mem,
            table,
            size,
            head,
            QUEUE_SIZE as usize,
            &mut self.segs,
        ) {
            log::warn!("block: dropping malformed chain {head}: {e}");
            self.add_used(mem, head, 0);
            return true;
        }
        let mut req = self.free.pop().unwrap_or_else(Request::new);
        let disk = DiskInfo {
            capacity_sectors: self.capacity_sectors,
            readonly: self.config.readonly,
            id: &self.id,
        };
        match parse(mem, head, &self.segs, &disk, &mut req) {
            Parsed::Submit => {
                req.generation = self.generation;
                req.mem = Some(mem.clone());
                self.in_flight.push(head);
                self.pending.push(req);
                false
            }
            Parsed::Complete {
                status,
                code,
                used_len,
            } => {
                self.free.push(req);
                self.finish(mem, head, status, code, used_len);
                true
            }
            Parsed::Drop => {
                self.free.push(req);
                self.add_used(mem, head, 0);
                true
            }
        }
    }

    /// Hands the pending requests to the workers, contiguous runs of reads or writes merged
    /// into batches; returns whether any was completed at once (with an error: the pool was
    /// full).
    fn submit_pending(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut failed = false;
        let mut pending = std::mem::take(&mut self.pending);
        let mut reqs = pending.drain(..).peekable();
        while let Some(first) = reqs.next() {
            let mut batch = self.free_batches.pop().unwrap_or_default();
            let mut shape = BatchShape::of(&first);
            batch.reqs.push(first);
            while let Some(next) = reqs.next_if(|next| shape.admits(next)) {
                shape.add(&next);
                batch.reqs.push(next);
                self.merged += 1;
            }
            if let Err(mut batch) = self.pool.submit(batch) {
                log::error!(
                    "block: worker pool full, failing {} request(s)",
                    batch.reqs.len()
                );
                for mut req in batch.reqs.drain(..) {
                    req.mem = None;
                    let (head, status) = (req.head, req.status);
                    self.free.push(req);
                    self.forget_in_flight(head);
                    self.finish(mem, head, status, S_IOERR, 1);
                    failed = true;
                }
                self.free_batches.push(batch);
            }
        }
        drop(reqs);
        self.pending = pending;
        failed
    }

    fn forget_in_flight(&mut self, head: u16) {
        if let Some(i) = self.in_flight.iter().position(|&h| h == head) {
            self.in_flight.remove(i);
        }
    }

    fn finish(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        status: vm_memory::GuestAddress,
        code: u8,
        used_len: u32,
    ) {
        if let Err(e) = mem.write_obj(code, status) {
            log::warn!("block: cannot write the status of request {head}: {e}");
        }
        self.add_used(mem, head, used_len);
    }

    fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if let Err(e) = self.queues[0].add_used(mem, head, len) {
            log::warn!("block: cannot return descriptor {head}: {e}");
        }
    }

    fn signal(&mut self, mem: &GuestMemoryMmap) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        match self.queues[0].needs_notification(mem) {
            Ok(true) => active.irq.signal_used(),
            Ok(false) => {}
            Err(e) => log::error!("block: cannot read the used event: {e}"),
        }
    }

    /// Drains the completion channel: status bytes, used ring, interrupt; then takes more.
    fn process_completions(&mut self) {
        let _ = self.done_evt.read();
        let mut used = false;
        while let Ok(mut batch) = self.completions.try_recv() {
            for (i, req) in batch.reqs.drain(..).enumerate() {
                // A worker answers every request; were one missing, fail it rather than
                // leave the guest waiting for it.
                let (code, used_len) = batch.results.get(i).copied().unwrap_or((S_IOERR, 1));
                let (head, status) = (req.head, req.status);
                let current = req.generation == self.generation;
                self.free.push(req);
                if !current {
                    self.stale = self.stale.saturating_sub(1);
                    continue;
                }
                self.forget_in_flight(head);
                if let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) {
                    self.finish(&mem, head, status, code, used_len);
                    used = true;
                }
            }
            batch.results.clear();
            self.free_batches.push(batch);
        }
        if used {
            if let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) {
                self.signal(&mem);
            }
        }
        self.process_queue();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut f = COMMON_FEATURES | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_FLUSH);
        if self.config.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("block: ignoring a config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_activation(self.active.is_some(), &self.queues)?;
        let size = self.queues[0].size();
        if let Some(bad) = self.resubmit.iter().find(|&&h| h >= size) {
            return Err(ActivateError::BadState(format!(
                "in-flight head {bad} beyond a queue of {size}"
            )));
        }
        let mem = Arc::new(ctx.mem);
        self.active = Some(Active {
            mem: mem.clone(),
            irq: ctx.irq,
        });
        // Requests in flight when the state was saved run again: the guest never saw them
        // complete, and reads and writes of the same data are idempotent.
        let mut used = false;
        for head in std::mem::take(&mut self.resubmit) {
            used |= self.start_request(&mem, head);
        }
        used |= self.submit_pending(&mem);
        if used {
            self.signal(&mem);
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.generation += 1;
        self.stale += self.in_flight.len() as u32;
        self.in_flight.clear();
        self.resubmit.clear();
        self.active = None;
        self.quiescing = false;
    }

    fn queue_notify(&mut self, index: usize, _ops: &mut EventOps) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn init_events(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.done_evt, TOKEN_COMPLETION, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::error!("block: failed to watch completions: {e}");
        }
    }

    fn process_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_COMPLETION {
            self.process_completions();
        }
    }

    fn summary(&self) -> DeviceSummary {
        DeviceSummary::Block {
            id: self.config.id.clone(),
            readonly: self.config.readonly,
            capacity_sectors: self.capacity_sectors,
        }
    }
}

impl Quiesce for Block {
    fn try_quiesce(&mut self) -> QuiesceStatus {
        self.quiescing = true;
        match self.in_flight() {
            0 => QuiesceStatus::Quiesced,
            in_flight => QuiesceStatus::Busy { in_flight },
        }
    }

    fn resume_io(&mut self) {
        self.quiescing = false;
        self.process_queue();
    }

    fn set_queue_depth_limit(&mut self, limit: Option<u16>) {
        self.depth_limit = limit.map(|l| l.max(1));
        self.process_queue();
    }
}
