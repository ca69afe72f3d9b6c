//! The virtio-mmio register interface (virtio 1.x, section 4.2.2) and the
//! device initialization sequence (section 3.1.1).

use super::queue::{AVAIL_OFFSET, USED_OFFSET};
use super::F_VERSION_1;

/// 32-bit register access to one device window; offsets are bytes.
pub trait Transport {
    fn read(&self, offset: u32) -> u32;
    fn write(&self, offset: u32, value: u32);
}

pub const MAGIC_VALUE: u32 = 0x000;
pub const VERSION: u32 = 0x004;
pub const DEVICE_ID: u32 = 0x008;
pub const DEVICE_FEATURES: u32 = 0x010;
pub const DEVICE_FEATURES_SEL: u32 = 0x014;
pub const DRIVER_FEATURES: u32 = 0x020;
pub const DRIVER_FEATURES_SEL: u32 = 0x024;
pub const QUEUE_SEL: u32 = 0x030;
pub const QUEUE_NUM_MAX: u32 = 0x034;
pub const QUEUE_NUM: u32 = 0x038;
pub const QUEUE_READY: u32 = 0x044;
pub const QUEUE_NOTIFY: u32 = 0x050;
pub const INTERRUPT_STATUS: u32 = 0x060;
pub const INTERRUPT_ACK: u32 = 0x064;
pub const STATUS: u32 = 0x070;
pub const QUEUE_DESC_LOW: u32 = 0x080;
pub const QUEUE_DESC_HIGH: u32 = 0x084;
pub const QUEUE_DRIVER_LOW: u32 = 0x090;
pub const QUEUE_DRIVER_HIGH: u32 = 0x094;
pub const QUEUE_DEVICE_LOW: u32 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u32 = 0x0a4;
pub const CONFIG_GENERATION: u32 = 0x0fc;
pub const CONFIG: u32 = 0x100;

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_FAILED: u32 = 0x80;

pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    NotVirtio(u32),
    /// Only modern (version 2) devices are supported.
    Version(u32),
    WrongDevice {
        expected: u32,
        found: u32,
    },
    /// The device lacks VIRTIO_F_VERSION_1.
    NotModern,
    FeaturesRejected,
    /// The queue does not exist (QueueNumMax is 0) or is already live.
    Queue(u16),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::NotVirtio(m) => write!(f, "no virtio-mmio magic (read {m:#x})"),
            VirtioError::Version(v) => {
                write!(f, "virtio-mmio version {v} (only 2, modern, is supported)")
            }
            VirtioError::WrongDevice { expected, found } => {
                write!(f, "device ID {found}, expected {expected}")
            }
            VirtioError::NotModern => f.write_str("device does not offer VIRTIO_F_VERSION_1"),
            VirtioError::FeaturesRejected => {
                f.write_str("device did not accept the negotiated features")
            }
            VirtioError::Queue(q) => write!(f, "queue {q} is missing or already in use"),
        }
    }
}

/// Reads the device ID of the window (0: nothing there), after checking
/// the magic value and version.
pub fn probe(t: &impl Transport) -> Result<u32, VirtioError> {
    let magic = t.read(MAGIC_VALUE);
    if magic != MAGIC {
        return Err(VirtioError::NotVirtio(magic));
    }
    match t.read(VERSION) {
        2 => Ok(t.read(DEVICE_ID)),
        v => Err(VirtioError::Version(v)),
    }
}

/// A device being driven: the negotiated features and the transport.
pub struct Device<T: Transport> {
    t: T,
    pub features: u64,
}

impl<T: Transport> Device<T> {
    /// Resets the device and negotiates `wanted` (plus VERSION_1) against
    /// what it offers; leaves it in FEATURES_OK, ready for queue setup.
    pub fn init(t: T, device_id: u32, wanted: u64) -> Result<Device<T>, VirtioError> {
        let found = probe(&t)?;
        if found != device_id {
            return Err(VirtioError::WrongDevice {
                expected: device_id,
                found,
            });
        }
        t.write(STATUS, 0);
        while t.read(STATUS) != 0 {
            core::hint::spin_loop();
        }
        t.write(STATUS, STATUS_ACKNOWLEDGE);
        t.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut offered = 0u64;
        for half in 0..2 {
            t.write(DEVICE_FEATURES_SEL, half);
            offered |= u64::from(t.read(DEVICE_FEATURES)) << (32 * half);
        }
        if offered & F_VERSION_1 == 0 {
            t.write(STATUS, STATUS_FAILED);
            return Err(VirtioError::NotModern);
        }
        let features = offered & (wanted | F_VERSION_1);
        for half in 0..2 {
            t.write(DRIVER_FEATURES_SEL, half);
            t.write(DRIVER_FEATURES, (features >> (32 * half)) as u32);
        }
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        t.write(STATUS, status);
        if t.read(STATUS) & STATUS_FEATURES_OK == 0 {
            t.write(STATUS, STATUS_FAILED);
            return Err(VirtioError::FeaturesRejected);
        }
        Ok(Device { t, features })
    }

    /// Largest size of queue `index` (0: no such queue).
    pub fn queue_max(&self, index: u16) -> u16 {
        self.t.write(QUEUE_SEL, index.into());
        self.t.read(QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16
    }

    /// Gives queue `index` of `size` entries the [`super::queue::QueueMem`]
    /// at guest-physical `paddr`.
    pub fn setup_queue(&self, index: u16, size: u16, paddr: u64) -> Result<(), VirtioError> {
        self.t.write(QUEUE_SEL, index.into());
        if self.t.read(QUEUE_NUM_MAX) == 0 || self.t.read(QUEUE_READY) != 0 {
            return Err(VirtioError::Queue(index));
        }
        self.t.write(QUEUE_NUM, size.into());
        let write64 = |low, high, value: u64| {
            self.t.write(low, value as u32);
            self.t.write(high, (value >> 32) as u32);
        };
        write64(QUEUE_DESC_LOW, QUEUE_DESC_HIGH, paddr);
        write64(
            QUEUE_DRIVER_LOW,
            QUEUE_DRIVER_HIGH,
            paddr + AVAIL_OFFSET as u64,
        );
        write64(
            QUEUE_DEVICE_LOW,
            QUEUE_DEVICE_HIGH,
            paddr + USED_OFFSET as u64,
        );
        self.t.write(QUEUE_READY, 1);
        Ok(())
    }

    /// The device may now use its queues.
    pub fn driver_ok(&self) {
        self.t.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    pub fn notify(&self, queue: u16) {
        self.t.write(QUEUE_NOTIFY, queue.into());
    }

    /// Clears any pending interrupt (the guest polls, but a device that sees
    /// its interrupt never acknowledged may hold back).
    pub fn ack_interrupts(&self) {
        let pending = self.t.read(INTERRUPT_STATUS);
        if pending != 0 {
            self.t.write(INTERRUPT_ACK, pending);
        }
    }

    /// A consistent read of 32-bit config words (the generation counter
    /// guards against a change halfway).
    pub fn config<const N: usize>(&self, offset: u32) -> [u32; N] {
        loop {
            let generation = self.t.read(CONFIG_GENERATION);
            let words = core::array::from_fn(|i| self.t.read(CONFIG + offset + 4 * i as u32));
            if self.t.read(CONFIG_GENERATION) == generation {
                return words;
            }
        }
    }

    /// Config bytes `offset..offset+N` (byte-wide reads, for fields that
    /// are not 32-bit aligned, like a MAC address).
    pub fn config_bytes<const N: usize>(&self, offset: u32) -> [u8; N] {
        let words: [u32; 4] = self.config((offset / 4) * 4);
        let bytes: [u8; 16] = core::array::from_fn(|i| (words[i / 4] >> (8 * (i % 4))) as u8);
        let start = (offset % 4) as usize;
        core::array::from_fn(|i| bytes[start + i])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A register-level model of a virtio-mmio device: enough to check the
    /// driver's sequence.
    pub struct FakeMmio {
        pub regs: RefCell<std::collections::HashMap<u32, u32>>,
        pub offered: u64,
        pub accept_features: bool,
        pub writes: RefCell<Vec<(u32, u32)>>,
        pub config: Vec<u32>,
    }

    impl FakeMmio {
        pub fn new(device_id: u32, offered: u64) -> Self {
            let regs = [
                (MAGIC_VALUE, MAGIC),
                (VERSION, 2),
                (DEVICE_ID, device_id),
                (QUEUE_NUM_MAX, 256),
            ];
            FakeMmio {
                regs: RefCell::new(regs.into_iter().collect()),
                offered,
                accept_features: true,
                writes: RefCell::new(Vec::new()),
                config: vec![0; 16],
            }
        }

        pub fn reg(&self, r: u32) -> u32 {
            self.regs.borrow().get(&r).copied().unwrap_or(0)
        }

        /// Queue registers are per queue: keyed by the selected queue too.
        fn key(&self, offset: u32) -> u32 {
            const PER_QUEUE: [u32; 9] = [
                QUEUE_NUM,
                QUEUE_READY,
                QUEUE_DESC_LOW,
                QUEUE_DESC_HIGH,
                QUEUE_DRIVER_LOW,
                QUEUE_DRIVER_HIGH,
                QUEUE_DEVICE_LOW,
                QUEUE_DEVICE_HIGH,
                QUEUE_NUM_MAX,
            ];
            if PER_QUEUE.contains(&offset) {
                offset | (self.reg(QUEUE_SEL) << 16)
            } else {
                offset
            }
        }
    }

    impl Transport for &FakeMmio {
        fn read(&self, offset: u32) -> u32 {
            match offset {
                DEVICE_FEATURES => (self.offered >> (32 * self.reg(DEVICE_FEATURES_SEL))) as u32,
                o if o >= CONFIG => self.config[((o - CONFIG) / 4) as usize],
                QUEUE_NUM_MAX => self
                    .regs
                    .borrow()
                    .get(&self.key(QUEUE_NUM_MAX))
                    .copied()
                    .unwrap_or(self.reg(QUEUE_NUM_MAX)),
                o => self.reg(self.key(o)),
            }
        }

        fn write(&self, offset: u32, mut value: u32) {
            self.writes.borrow_mut().push((offset, value));
            if offset == STATUS && value & STATUS_FEATURES_OK != 0 && !self.accept_features {
                value &= !STATUS_FEATURES_OK;
            }
            let key = self.key(offset);
            self.regs.borrow_mut().insert(key, value);
        }
    }

    #[test]
    fn negotiates_and_sets_up_a_queue() {
        let fake = FakeMmio::new(ID_BLOCK, F_VERSION_1 | (1 << 9) | (1 << 5) | (1 << 40));
        let dev = Device::init(&fake, ID_BLOCK, 1 << 9).unwrap();
        assert_eq!(dev.features, F_VERSION_1 | (1 << 9));
        let driver_features: Vec<u32> = fake
            .writes
            .borrow()
            .iter()
            .filter(|w| w.0 == DRIVER_FEATURES)
            .map(|w| w.1)
            .collect();
        assert_eq!(driver_features, [1 << 9, 1]);
        assert_eq!(dev.queue_max(0), 256);
        dev.setup_queue(0, 128, 0x1234_5000_0000).unwrap();
        assert_eq!((fake.reg(QUEUE_NUM), fake.reg(QUEUE_READY)), (128, 1));
        assert_eq!(
            (fake.reg(QUEUE_DESC_LOW), fake.reg(QUEUE_DESC_HIGH)),
            (0x5000_0000, 0x1234)
        );
        assert_eq!(
            fake.reg(QUEUE_DRIVER_LOW),
            0x5000_0000 + AVAIL_OFFSET as u32
        );
        assert_eq!(fake.reg(QUEUE_DEVICE_LOW), 0x5000_0000 + USED_OFFSET as u32);
        assert_eq!(
            dev.setup_queue(0, 128, 0),
            Err(VirtioError::Queue(0)),
            "already live"
        );
        dev.driver_ok();
        assert_eq!(fake.reg(STATUS), 0xf);
        let statuses: Vec<u32> = fake
            .writes
            .borrow()
            .iter()
            .filter(|w| w.0 == STATUS)
            .map(|w| w.1)
            .collect();
        assert_eq!(
            statuses,
            [0, 1, 3, 0xb, 0xf],
            "reset, ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK"
        );
    }

    #[test]
    fn refuses_what_it_cannot_drive() {
        let fake = FakeMmio::new(ID_NET, F_VERSION_1);
        assert_eq!(
            Device::init(&fake, ID_BLOCK, 0).err(),
            Some(VirtioError::WrongDevice {
                expected: 2,
                found: 1
            })
        );
        let legacy = FakeMmio::new(ID_NET, 0);
        legacy.regs.borrow_mut().insert(VERSION, 1);
        assert_eq!(
            Device::init(&legacy, ID_NET, 0).err(),
            Some(VirtioError::Version(1))
        );
        let old = FakeMmio::new(ID_NET, 1 << 5);
        assert_eq!(
            Device::init(&old, ID_NET, 0).err(),
            Some(VirtioError::NotModern)
        );
        let mut picky = FakeMmio::new(ID_NET, F_VERSION_1);
        picky.accept_features = false;
        assert_eq!(
            Device::init(&picky, ID_NET, 0).err(),
            Some(VirtioError::FeaturesRejected)
        );
        let nothing = FakeMmio::new(0, 0);
        nothing.regs.borrow_mut().insert(MAGIC_VALUE, 0);
        assert_eq!(probe(&&nothing), Err(VirtioError::NotVirtio(0)));
    }

    #[test]
    fn config_reads() {
        let mut fake = FakeMmio::new(ID_NET, F_VERSION_1);
        fake.config[0] = 0x5634_1252;
        fake.config[1] = 0x0000_9a78;
        let dev = Device::init(&fake, ID_NET, 0).unwrap();
        assert_eq!(
            dev.config_bytes::<6>(0),
            [0x52, 0x12, 0x34, 0x56, 0x78, 0x9a]
        );
        assert_eq!(dev.config_bytes::<2>(5), [0x9a, 0]);
        assert_eq!(dev.config::<2>(0), [0x5634_1252, 0x9a78]);
    }
}
