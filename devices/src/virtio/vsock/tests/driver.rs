//! A guest-side vsock driver for tests: the three queues on virtio-queue's mock rings, rx and
//! tx buffers in guest memory, and the device on a real event loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::super::packet::*;
use super::super::{Vsock, VsockConfig, RX_QUEUE, TX_QUEUE};
use crate::test_utils::*;
use crate::virtio::{MmioTransport, COMMON_FEATURES};
use crate::GuestMemoryMmap;

pub const GUEST_CID: u64 = 3;
pub const GUEST_BUF: u32 = 256 * 1024;
pub const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
const TX_BUF_LEN: u64 = 0x2000;

/// A fresh socket path in a directory removed when the returned guard drops.
pub fn uds_path() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let path = dir.path.join("vsock");
    (dir, path)
}

pub fn pattern_a(i: usize) -> u8 {
    (i % 251) as u8
}

pub fn pattern_b(i: usize) -> u8 {
    (i * 7 % 253) as u8
}

/// The guest's side of one connection.
#[derive(Default)]
pub struct GuestConn {
    pub port: u32,
    pub host_port: u32,
    pub dev_buf_alloc: u32,
    pub dev_fwd_cnt: u32,
    pub tx_cnt: u32,
    pub fwd_cnt: u32,
    pub fwd_cnt_sent: u32,
}

impl GuestConn {
    pub fn credit(&self) -> u32 {
        self.dev_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.dev_fwd_cnt))
    }

    pub fn update(&mut self, h: &Header) {
        self.dev_buf_alloc = h.buf_alloc;
        self.dev_fwd_cnt = h.fwd_cnt;
    }

    pub fn header(&self, op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.port,
            dst_port: self.host_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// A guest driver: three queues and buffers in guest memory.
pub struct Guest<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub rx: GuestQueue<'a>,
    pub tx: GuestQueue<'a>,
    pub ev: GuestQueue<'a>,
    pub h: Harness<Vsock>,
    pub rx_bufs: HashMap<u16, u64>,
    pub rx_free: Vec<u64>,
    pub tx_bufs: HashMap<u16, u64>,
    pub tx_free: Vec<u64>,
    pub events: Vec<u32>,
    /// Rx buffers the device gave back empty.
    pub empty_rx: usize,
    /// Packets that came after the one `wait_for` returned, in the same
    /// poll: the next `poll` returns them first.
    pub backlog: Vec<(Header, Vec<u8>)>,
}

impl<'a> Guest<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, vsock: Vsock) -> Self {
        let rx = GuestQueue::new(mem, 0x10000, 256);
        let tx = GuestQueue::new(mem, 0x20000, 256);
        let mut ev = GuestQueue::new(mem, 0x30000, 16);
        let t = MmioTransport::new(vsock, mem.clone()).unwrap();
        let h = Harness::new(t);
        bring_up(&mut h.t.lock().unwrap(), &[&rx, &tx, &ev], COMMON_FEATURES);
        assert!(h.t.lock().unwrap().is_activated());
        ev.add(&[(0x80_0000, 4, true)]);
        Guest {
            mem,
            rx,
            tx,
            ev,
            h,
            rx_bufs: HashMap::new(),
            rx_free: (0..128).map(|i| 0x100_0000 + i * 0x2000).collect(),
            tx_bufs: HashMap::new(),
            tx_free: (0..128).map(|i| 0x400_0000 + i * TX_BUF_LEN).collect(),
            events: Vec::new(),
            empty_rx: 0,
            backlog: Vec::new(),
        }
    }

    pub fn kick(&self, queue: usize) {
        self.h.t.lock().unwrap().queue_evts()[queue]
            .write(1)
            .unwrap();
    }

    /// Keeps every free rx buffer posted.
    pub fn post_rx(&mut self) {
        let mut added = false;
        while let Some(addr) = self.rx_free.pop() {
            let head = self.rx.add(&[(addr, RX_BUF_LEN, true)]);
            self.rx_bufs.insert(head, addr);
            added = true;
        }
        if added {
            self.kick(RX_QUEUE);
        }
    }

    /// Queues a packet (header and payload in separate descriptors); false if out of buffers.
    pub fn send(&mut self, h: Header, payload: &[u8]) -> bool {
        let Some(addr) = self.tx_free.pop() else {
            return false;
        };
        self.mem
            .write_slice(&h.encode(), GuestAddress(addr))
            .unwrap();
        let mut bufs = vec![(addr, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            let at = addr + HDR_LEN as u64;
            self.mem.write_slice(payload, GuestAddress(at)).unwrap();
            bufs.push((at, payload.len() as u32, false));
        }
        let head = self.tx.add(&bufs);
        self.tx_bufs.insert(head, addr);
        true
    }

    pub fn flush_tx(&mut self) {
        self.kick(TX_QUEUE);
    }

    /// Returns finished tx buffers and collects received packets.
    pub fn poll(&mut self, wait_ms: i32) -> Vec<(Header, Vec<u8>)> {
        self.h.em.run_with_timeout(wait_ms).unwrap();
        while let Some((head, _)) = self.tx.next_used() {
            self.tx_free.push(self.tx_bufs.remove(&head).unwrap());
        }
        while let Some((_, len)) = self.ev.next_used() {
            assert_eq!(len, 4);
            self.events
                .push(self.mem.read_obj(GuestAddress(0x80_0000)).unwrap());
        }
        let mut got = std::mem::take(&mut self.backlog);
        while let Some((head, len)) = self.rx.next_used() {
            let addr = self.rx_bufs.remove(&head).unwrap();
            self.rx_free.push(addr);
            if len == 0 {
                self.empty_rx += 1;
                continue;
            }
            assert!(len as usize >= HDR_LEN, "rx packet of {len} bytes");
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let h = Header::decode(&raw);
            assert_eq!(h.len as usize, len as usize - HDR_LEN);
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
            let mut payload = vec![0u8; h.len as usize];
            let at = GuestAddress(addr + HDR_LEN as u64);
            self.mem.read_slice(&mut payload, at).unwrap();
            got.push((h, payload));
        }
        self.post_rx();
        got
    }

    /// Polls until a packet with `op` arrives; returns it. Packets before it
    /// are dropped; those after it, from the same poll, are kept for the next
    /// (host data can follow a RESPONSE at once).
    pub fn wait_for(&mut self, op: u16) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut batch = self.poll(50).into_iter();
            while let Some((h, p)) = batch.next() {
                if h.op == op {
                    self.backlog.extend(batch);
                    return (h, p);
                }
            }
            assert!(Instant::now() < deadline, "no packet with op {op}");
        }
    }
}

pub fn vsock(path: &Path) -> Vsock {
    Vsock::new(VsockConfig {
        cid: GUEST_CID,
        uds_path: path.to_path_buf(),
    })
    .unwrap()
}
