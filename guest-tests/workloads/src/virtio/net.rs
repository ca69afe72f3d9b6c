//! virtio-net (virtio 1.x section 5.1): raw Ethernet frames through one
//! receive and one transmit queue. No offloads are negotiated, so every
//! buffer is a 12-byte `virtio_net_hdr` (all zero on transmit) followed by
//! one whole frame.

use super::queue::{queue_size, Buffer, QueueMem, SplitQueue, MAX_SIZE};
use super::transport::{Device, Transport, VirtioError, ID_NET};
use super::{read_bytes, write_bytes, Dma};

pub const F_MAC: u64 = 1 << 5;
/// `virtio_net_hdr` with VIRTIO_F_VERSION_1 (num_buffers included).
pub const HEADER_BYTES: usize = 12;
/// A buffer: header plus the largest frame (1514 bytes without FCS), rounded up.
pub const BUFFER_BYTES: usize = 2048;
pub const MAX_FRAME: usize = 1514;
/// The MAC used when the device does not offer one (locally administered).
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x74, 0x65, 0x72, 0x6e, 0x01];
const RX: u16 = 0;
const TX: u16 = 1;

/// What the net workload needs from a network device.
pub trait FrameDevice {
    fn mac(&self) -> [u8; 6];
    /// Queues `frame` for sending; false if no transmit buffer is free.
    fn send(&mut self, frame: &[u8]) -> bool;
    /// The next received frame, copied into `buf` (truncated to it); its
    /// length.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Hands everything queued since the last flush to the device.
    fn flush(&mut self);
}

pub struct NetMemory<'a> {
    pub rx_queue: &'a QueueMem,
    pub rx_queue_paddr: u64,
    pub tx_queue: &'a QueueMem,
    pub tx_queue_paddr: u64,
    /// `BUFFER_BYTES` per buffer; as many receive as transmit buffers.
    pub rx_buffers: Dma<'a>,
    pub tx_buffers: Dma<'a>,
}

pub struct VirtioNet<'a, T: Transport> {
    dev: Device<T>,
    rx: SplitQueue<'a>,
    tx: SplitQueue<'a>,
    rx_buffers: Dma<'a>,
    tx_buffers: Dma<'a>,
    rx_of_head: [u16; MAX_SIZE],
    tx_of_head: [u16; MAX_SIZE],
    tx_free: [u16; MAX_SIZE],
    tx_free_count: usize,
    mac: [u8; 6],
    /// Received frames that did not even hold a header (device bugs).
    pub runts: u64,
}

impl<'a, T: Transport> VirtioNet<'a, T> {
    pub fn new(t: T, mem: NetMemory<'a>) -> Result<Self, VirtioError> {
        let dev = Device::init(t, ID_NET, F_MAC)?;
        let mac = if dev.features & F_MAC != 0 {
            dev.config_bytes::<6>(0)
        } else {
            DEFAULT_MAC
        };
        let (rx_size, tx_size) = (queue_size(dev.queue_max(RX)), queue_size(dev.queue_max(TX)));
        if rx_size == 0 || tx_size == 0 {
            return Err(VirtioError::Queue(if rx_size == 0 { RX } else { TX }));
        }
        dev.setup_queue(RX, rx_size, mem.rx_queue_paddr)?;
        dev.setup_queue(TX, tx_size, mem.tx_queue_paddr)?;
        let rx_count = usize::from(rx_size).min(mem.rx_buffers.len() / BUFFER_BYTES);
        let tx_count = usize::from(tx_size).min(mem.tx_buffers.len() / BUFFER_BYTES);
        let mut net = VirtioNet {
            dev,
            rx: SplitQueue::new(mem.rx_queue, rx_size),
            tx: SplitQueue::new(mem.tx_queue, tx_size),
            rx_buffers: mem.rx_buffers,
            tx_buffers: mem.tx_buffers,
            rx_of_head: [0; MAX_SIZE],
            tx_of_head: [0; MAX_SIZE],
            tx_free: core::array::from_fn(|i| i as u16),
            tx_free_count: tx_count,
            mac,
            runts: 0,
        };
        for slot in 0..rx_count {
            net.post_rx(slot);
        }
        net.dev.driver_ok();
        net.flush();
        Ok(net)
    }

    pub fn queue_size(&self) -> u16 {
        self.rx.size()
    }

    fn buffer(dma: &Dma<'a>, slot: usize) -> Dma<'a> {
        dma.slice(slot * BUFFER_BYTES, BUFFER_BYTES)
    }

    fn post_rx(&mut self, slot: usize) {
        let b = Self::buffer(&self.rx_buffers, slot);
        if let Some(head) = self.rx.push(&[Buffer {
            paddr: b.paddr,
            len: BUFFER_BYTES as u32,
            device_writes: true,
        }]) {
            self.rx_of_head[usize::from(head)] = slot as u16;
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some(used) = self.tx.pop() {
            self.tx_free[self.tx_free_count] = self.tx_of_head[usize::from(used.head)];
            self.tx_free_count += 1;
        }
    }
}

impl<T: Transport> FrameDevice for VirtioNet<'_, T> {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.reclaim_tx();
        if self.tx_free_count == 0 || frame.len() > MAX_FRAME {
            return false;
        }
        let slot = usize::from(self.tx_free[self.tx_free_count - 1]);
        let b = Self::buffer(&self.tx_buffers, slot);
        write_bytes(b.words, 0, &[0; HEADER_BYTES]);
        write_bytes(b.words, HEADER_BYTES, frame);
        let chain = [Buffer {
            paddr: b.paddr,
            len: (HEADER_BYTES + frame.len()) as u32,
            device_writes: false,
        }];
        match self.tx.push(&chain) {
            Some(head) => {
                self.tx_of_head[usize::from(head)] = slot as u16;
                self.tx_free_count -= 1;
                true
            }
            None => false,
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let used = self.rx.pop()?;
            let slot = usize::from(self.rx_of_head[usize::from(used.head)]);
            let written = (used.written as usize).min(BUFFER_BYTES);
            let frame = written.checked_sub(HEADER_BYTES);
            if let Some(len) = frame {
                let n = len.min(buf.len());
                read_bytes(
                    Self::buffer(&self.rx_buffers, slot).words,
                    HEADER_BYTES,
                    &mut buf[..n],
                );
            } else {
                self.runts += 1;
            }
            self.post_rx(slot);
            if let Some(len) = frame {
                return Some(len.min(buf.len()));
            }
        }
    }

    fn flush(&mut self) {
        if self.rx.publish() {
            self.dev.notify(RX);
        }
        if self.tx.publish() {
            self.dev.notify(TX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::blk::tests::{dma, words_at};
    use crate::virtio::queue::tests::FakeDevice;
    use crate::virtio::transport::tests::FakeMmio;
    use crate::virtio::F_VERSION_1;
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn frames_go_out_and_come_in() {
        let mut fake = FakeMmio::new(ID_NET, F_VERSION_1 | F_MAC);
        fake.config[0] = u32::from_le_bytes([0x52, 0x54, 0x00, 0x12]);
        fake.config[1] = u32::from_le_bytes([0x34, 0x56, 0, 0]);
        let (rxq, txq) = (QueueMem::new(), QueueMem::new());
        let (rxb, txb) = (words(4 * BUFFER_BYTES / 8), words(2 * BUFFER_BYTES / 8));
        let mem = NetMemory {
            rx_queue: &rxq,
            rx_queue_paddr: 0,
            tx_queue: &txq,
            tx_queue_paddr: 0,
            rx_buffers: dma(&rxb),
            tx_buffers: dma(&txb),
        };
        let mut net = VirtioNet::new(&fake, mem).unwrap();
        assert_eq!(net.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);

        // Transmit: two buffers, so the third send waits for completions.
        let frame: Vec<u8> = (0..60).collect();
        assert!(net.send(&frame) && net.send(&frame));
        assert!(!net.send(&frame), "no free transmit buffer");
        net.flush();
        let mut sent = Vec::new();
        FakeDevice {
            last_avail: 0,
            reverse: false,
        }
        .run(&txq, net.tx.size(), |chain| {
            let mut bytes = vec![0u8; chain[0].len as usize];
            read_bytes(words_at(chain[0].paddr, chain[0].len), 0, &mut bytes);
            sent.push(bytes);
            0
        });
        assert_eq!(sent.len(), 2);
        assert_eq!(&sent[0][..HEADER_BYTES], &[0; HEADER_BYTES]);
        assert_eq!(&sent[0][HEADER_BYTES..], &frame[..]);
        assert!(net.send(&frame), "completions free the buffers");

        // Receive: the device fills posted buffers (header + frame).
        let mut rx_dev = FakeDevice {
            last_avail: 0,
            reverse: false,
        };
        let mut n = 0u8;
        rx_dev.run(&rxq, net.rx.size(), |chain| {
            n += 1;
            let w = words_at(chain[0].paddr, chain[0].len);
            if n == 3 {
                return 4; // a runt: shorter than the header
            }
            write_bytes(w, HEADER_BYTES, &[n; 64]);
            (HEADER_BYTES + 64) as u32
        });
        let mut buf = [0u8; MAX_FRAME];
        assert_eq!(net.recv(&mut buf), Some(64));
        assert_eq!(buf[0], 1);
        assert_eq!(net.recv(&mut buf), Some(64));
        assert_eq!(net.recv(&mut buf), Some(64), "the runt is skipped");
        assert_eq!((buf[0], net.runts), (4, 1));
        assert_eq!(net.recv(&mut buf), None);
        // Every buffer went back to the device.
        net.flush();
        assert_eq!(rxq.avail.idx.load(Relaxed), 8);
    }
}
