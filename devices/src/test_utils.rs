//! Test helpers: guest memory, a driver-side queue built on virtio-queue's mock, and a driver
//! that brings a transport up through its registers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress};

use crate::bus::BusDevice;
use crate::virtio::{MmioTransport, VirtioDevice};
use crate::GuestMemoryMmap;

/// 256 MiB of guest memory at 0, with a dirty bitmap.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap()
}

/// A raw split descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Whether any page of `[addr, addr + len)` is marked dirty.
pub fn is_dirty(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    use vm_memory::GuestMemoryBackend;
    let region = mem.iter().next().unwrap();
    let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
    (addr..addr + len)
        .step_by(4096)
        .any(|a| mapping.bitmap().is_addr_set(a as usize))
}

/// Clears the dirty bitmap.
pub fn clear_dirty(mem: &GuestMemoryMmap) {
    use vm_memory::GuestMemoryBackend;
    for region in mem.iter() {
        let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
        mapping.bitmap().reset();
    }
}

/// The driver's side of one split queue, built from virtio-queue's mock pieces.
///
/// (The mock's own `MockSplitQueue::create` places the used ring over the end of the available
/// ring for queues bigger than a few entries, so the layout is computed here.)
pub struct GuestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    desc: DescriptorTable<'a, GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    addrs: (u64, u64, u64),
    size: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    used_idx: u16,
}

impl<'a> GuestQueue<'a> {
    /// A queue of `size` entries laid out from `base`.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        GuestQueue {
            mem,
            desc: DescriptorTable::new(mem, GuestAddress(base), size),
            avail: AvailRing::new(mem, GuestAddress(avail), size),
            used: UsedRing::new(mem, GuestAddress(used), size),
            addrs: (base, avail, used),
            size,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_idx: 0,
        }
    }

    /// Descriptor table, available and used ring addresses.
    pub fn addrs(&self) -> (u64, u64, u64) {
        self.addrs
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers and makes it available.
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let idxs: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop().expect("out of descriptors"))
            .collect();
        for (i, (&(addr, len, writable), &idx)) in bufs.iter().zip(&idxs).enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = if i + 1 < idxs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                idxs[i + 1]
            } else {
                0
            };
            self.desc.store(idx, desc(addr, len, flags, next)).unwrap();
        }
        let head = idxs[0];
        self.chains.insert(head, idxs);
        self.publish(head);
        head
    }

    /// Writes raw descriptors at chosen table indices (for malformed chains); they are owned by
    /// the head `head` until used.
    pub fn add_raw(&mut self, head: u16, descs: &[(u16, RawDescriptor)]) {
        let mut idxs = Vec::new();
        for &(i, d) in descs {
            self.desc.store(i, d).unwrap();
            if let Some(p) = self.free.iter().position(|&f| f == i) {
                self.free.remove(p);
                idxs.push(i);
            }
        }
        self.chains.insert(head, idxs);
        self.publish(head);
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.avail.ring().ref_at(slot).unwrap().store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail.idx().store(self.avail_idx);
    }

    /// Sets the available ring's idx directly (for malformed-ring tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.avail.idx().store(idx);
    }

    /// With EVENT_IDX: ask for an interrupt after used entry `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let at = self.addrs.1 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    /// The next used element, if the device produced one; frees its descriptors.
    pub fn next_used(&mut self) -> Option<(u16, u32)> {
        if self.used.idx().load() == self.used_idx {
            return None;
        }
        let slot = usize::from(self.used_idx % self.size);
        let elem = self.used.ring().ref_at(slot).unwrap().load();
        self.used_idx = self.used_idx.wrapping_add(1);
        let head = elem.id() as u16;
        if let Some(idxs) = self.chains.remove(&head) {
            self.free.extend(idxs);
        }
        Some((head, elem.len()))
    }

    /// Whether the device asks to be notified of new buffers (its used ring's NO_NOTIFY flag is
    /// clear); the answer without EVENT_IDX.
    pub fn device_wants_kick(&self) -> bool {
        let flags: u16 = self.mem.read_obj(GuestAddress(self.addrs.2)).unwrap();
        flags & VRING_USED_F_NO_NOTIFY as u16 == 0
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        let at = self.addrs.2 + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}

/// Reads a 32-bit register.
pub fn read_reg<B: BusDevice>(dev: &mut B, off: u32) -> u32 {
    let mut b = [0u8; 4];
    dev.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn write_reg<B: BusDevice>(dev: &mut B, off: u32, v: u32) {
    dev.write(u64::from(off), &v.to_le_bytes());
}

/// Brings a device up as a Linux driver would: status handshake, features, queues, DRIVER_OK.
pub fn bring_up<D: VirtioDevice>(t: &mut MmioTransport<D>, queues: &[&GuestQueue], features: u64) {
    write_reg(t, VIRTIO_MMIO_STATUS, 0);
    write_reg(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write_reg(t, VIRTIO_MMIO_STATUS, s);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    let s = s | VIRTIO_CONFIG_S_FEATURES_OK;
    write_reg(t, VIRTIO_MMIO_STATUS, s);
    assert_ne!(
        read_reg(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "features refused"
    );
    for (i, q) in queues.iter().enumerate() {
        let (d, a, u) = q.addrs();
        write_reg(t, VIRTIO_MMIO_QUEUE_SEL, i as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size()));
        write_reg(t, VIRTIO_MMIO_QUEUE_DESC_LOW, d as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (d >> 32) as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, a as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (a >> 32) as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_USED_LOW, u as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (u >> 32) as u32);
        write_reg(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    write_reg(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
}

/// An event loop with one transport on it.
pub struct Harness<D: VirtioDevice + 'static> {
    /// The event loop.
    pub em: EventManager<Arc<Mutex<MmioTransport<D>>>>,
    /// The transport, shared as the vmm shares it.
    pub t: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice + 'static> Harness<D>
where
    MmioTransport<D>: MutEventSubscriber,
{
    /// Puts `t` on a fresh event loop.
    pub fn new(t: MmioTransport<D>) -> Self {
        let t = Arc::new(Mutex::new(t));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(t.clone());
        Harness { em, t }
    }

    /// Runs the loop until `done` holds, failing if nothing happens for 20 s.
    pub fn run_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) {
        while !done(self) {
            let n = self.em.run_with_timeout(20_000).unwrap();
            assert!(n > 0, "no event for 20 s while waiting");
        }
    }

    /// Dispatches whatever is ready now, without waiting.
    pub fn poll(&mut self) {
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }
}

/// A scratch file removed on drop.
pub struct TempFile {
    /// Its path.
    pub path: std::path::PathBuf,
}

impl TempFile {
    /// A new file holding `contents`.
    pub fn with_contents(contents: &[u8]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-devices-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A scratch directory removed (with its contents) on drop.
pub struct TempDir {
    /// Its path.
    pub path: std::path::PathBuf,
}

impl TempDir {
    /// A new empty directory.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-devices-dir-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
