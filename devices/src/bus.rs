//! Address-range dispatch of PIO and MMIO accesses from the vCPU threads to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device reachable through port or memory-mapped I/O.
///
/// `offset` is relative to the base of the range the device was inserted at. Accesses come from
/// vCPU threads, so an implementation must never block for long and never panic on what the
/// guest writes.
pub trait BusDevice {
    /// Handles a guest read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the vCPU threads (bus) and the event loop.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice + Send>>;

/// Errors from building a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a range already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range already inserted.
        other_base: u64,
        /// Length of the range already inserted.
        other_len: u64,
    },
    /// A range of length zero was given.
    #[error("range at {base:#x} has length zero")]
    ZeroLength {
        /// Base of the rejected range.
        base: u64,
    },
    /// The range wraps around the end of the address space.
    #[error("range {base:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device starts at this address.
    #[error("no device at {base:#x}")]
    NotFound {
        /// The address that was looked up.
        base: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// A set of non-overlapping address ranges, each mapped to a device.
///
/// One `Bus` serves port I/O and another MMIO. It is built before the vCPUs start and then only
/// read, so the vCPU threads can share it (`Arc<Bus>`) without a lock of its own.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`. Overlapping or empty ranges are rejected.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        // The closest range starting at or below our end is the only one that can overlap us.
        if let Some((&other_base, other)) = self.ranges.range(..=end).next_back() {
            if other_base + (other.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device inserted at `base` and returns it.
    pub fn remove(&mut self, base: u64) -> Result<SharedBusDevice, BusError> {
        self.ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound { base })
    }

    /// The device whose range holds all of `[addr, addr + size)`, with the access's offset in it.
    pub fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedBusDevice)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let last = offset.checked_add((size as u64).saturating_sub(1))?;
        (last < entry.len).then_some((offset, &entry.device))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

// A poisoned lock means another thread panicked inside a device; the device's state is still
// the best there is, and a vCPU thread must not panic in turn.
fn lock(device: &SharedBusDevice) -> MutexGuard<'_, dyn BusDevice + Send + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn insert_rejects_overlap_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x1000, 0x100).unwrap();
        bus.insert(dev(), 0x1100, 0x100).unwrap();
        bus.insert(dev(), 0x0f00, 0x100).unwrap();
        for (base, len) in [(0x10ff, 1), (0x0fff, 2), (0x0e00, 0x1000), (0x1050, 0x10)] {
            assert!(matches!(
                bus.insert(dev(), base, len),
                Err(BusError::Overlap { .. })
            ));
        }
        assert_eq!(
            bus.insert(dev(), 0x5000, 0),
            Err(BusError::ZeroLength { base: 0x5000 })
        );
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        bus.insert(dev(), u64::MAX, 1).unwrap();
    }

    #[test]
    fn dispatch_by_address_with_offsets() {
        let mut bus = Bus::new();
        let a = dev();
        let b = dev();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0xd000_0000, 0x1000).unwrap();

        assert!(bus.write(0x3fb, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((3, vec![7])));

        let mut data = [0u8; 4];
        assert!(bus.read(0xd000_0070, &mut data));
        assert_eq!(data, [0x70; 4]);

        // Outside every range, or straddling a range's end.
        assert!(!bus.read(0x3f7, &mut data[..1]));
        assert!(!bus.write(0x3ff, &[1, 2]));
        assert!(!bus.read(0xd000_0ffe, &mut data));
        assert!(b.lock().unwrap().last_write.is_none());

        bus.remove(0x3f8).unwrap();
        assert!(!bus.write(0x3f8, &[1]));
        assert!(matches!(
            bus.remove(0x3f8),
            Err(BusError::NotFound { base: 0x3f8 })
        ));
    }
}
