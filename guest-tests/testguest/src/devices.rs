//! The virtio-mmio devices named on the command line, and the device
//! workloads, which run on CPU 0 (the other CPUs halt).

use tern_workloads::bootdata::layout::Span;
use tern_workloads::disk::{self, DiskRun};
use tern_workloads::event::ErrorKind;
use tern_workloads::params::{Config, Workload};
use tern_workloads::run::emit;
use tern_workloads::virtio::blk::{BlkMemory, BlockDevice, VirtioBlk};
use tern_workloads::virtio::cmdline::{self, MmioDevice};
use tern_workloads::virtio::queue::QueueMem;
use tern_workloads::virtio::transport::{self, Transport, ID_BLOCK};
use tern_workloads::virtio::Dma;

use crate::heap::Heap;
use crate::platform::GuestPlatform;
use crate::{fail, netdev};

/// The 32-bit MMIO hole, where device windows must be (not RAM, which the
/// guest would then poke at).
const MMIO_HOLE: Span = Span::new(0xc000_0000, 0x1_0000_0000);

/// A device's register window. Registers are read and written from ring 3
/// through the identity map (MMIO exits to the VMM like any access).
pub struct MmioWindow {
    base: u64,
}

impl MmioWindow {
    /// A window for `device`, if it lies in the MMIO hole and outside RAM.
    fn new(device: &MmioDevice, ram: &[Span]) -> Option<MmioWindow> {
        let end = device.base.checked_add(device.size)?;
        let in_hole =
            MMIO_HOLE.start <= device.base && end <= MMIO_HOLE.end && device.base.is_multiple_of(4);
        let in_ram = ram.iter().any(|r| device.base < r.end && r.start < end);
        (in_hole && !in_ram).then_some(MmioWindow { base: device.base })
    }
}

impl Transport for MmioWindow {
    fn read(&self, offset: u32) -> u32 {
        // SAFETY: the window was checked to be in the MMIO hole, outside
        // RAM, and every offset the drivers use is within the 0x200 bytes a
        // virtio-mmio window has at least.
        unsafe { ((self.base + u64::from(offset)) as *const u32).read_volatile() }
    }

    fn write(&self, offset: u32, value: u32) {
        // SAFETY: as `read`.
        unsafe { ((self.base + u64::from(offset)) as *mut u32).write_volatile(value) }
    }
}

/// The first device of type `id` declared on the command line.
pub fn find(
    platform: &GuestPlatform,
    cmdline: &str,
    ram: &[Span],
    id: u32,
) -> Option<(MmioDevice, MmioWindow)> {
    for found in cmdline::devices(cmdline) {
        let device = match found {
            Ok(d) => d,
            Err(text) => {
                tern_workloads::run::emit_error(
                    platform,
                    ErrorKind::Boot,
                    format_args!("virtio_mmio.device={text}: not SIZE@ADDR:IRQ"),
                );
                continue;
            }
        };
        let Some(window) = MmioWindow::new(&device, ram) else {
            tern_workloads::run::emit_error(
                platform,
                ErrorKind::Boot,
                format_args!(
                    "virtio_mmio.device at {:#x}: not in the MMIO hole",
                    device.base
                ),
            );
            continue;
        };
        match transport::probe(&window) {
            Ok(found) if found == id => return Some((device, window)),
            Ok(_) => {}
            Err(e) => tern_workloads::run::emit_error(
                platform,
                ErrorKind::Boot,
                format_args!("virtio_mmio.device at {:#x}: {e}", device.base),
            ),
        }
    }
    None
}

/// Memory the device reads and writes: `words` u64s from the heap, with
/// their guest-physical address (identity mapped).
pub fn dma(heap: &mut Heap, words: usize) -> Option<Dma<'static>> {
    let words = heap.zeroed_u64s(words)?;
    Some(Dma {
        paddr: words.as_ptr() as u64,
        words,
    })
}

/// A virtqueue's memory and its address.
pub fn queue(heap: &mut Heap) -> Option<(&'static QueueMem, u64)> {
    let q: &'static QueueMem = heap.alloc(QueueMem::new())?;
    Some((q, q as *const QueueMem as u64))
}

/// Runs the device workload `config` names.
pub fn run(
    platform: &'static GuestPlatform,
    config: Config,
    heap: &mut Heap,
    cmdline: &str,
    ram: &[Span],
) -> ! {
    match config.workload {
        Workload::Net => netdev::run(platform, config, heap, cmdline, ram),
        _ => run_disk(platform, config, heap, cmdline, ram),
    }
}

fn run_disk(
    platform: &'static GuestPlatform,
    config: Config,
    heap: &mut Heap,
    cmdline: &str,
    ram: &[Span],
) -> ! {
    let Some((device, window)) = find(platform, cmdline, ram, ID_BLOCK) else {
        fail(
            platform,
            ErrorKind::Disk,
            format_args!(
                "no virtio-blk device among the virtio_mmio.device= entries in {cmdline:?}"
            ),
        )
    };
    let slot_bytes = disk::slot_bytes_for(config.disk_mode);
    let slots = config.qd as usize;
    let (Some((queue, queue_paddr)), Some(headers), Some(data)) = (
        queue(heap),
        dma(heap, 3 * slots),
        dma(heap, slots * slot_bytes / 8),
    ) else {
        fail(
            platform,
            ErrorKind::Memory,
            format_args!("no room for {slots} requests of {slot_bytes} bytes"),
        )
    };
    let blk = match VirtioBlk::new(
        window,
        BlkMemory {
            queue,
            queue_paddr,
            headers,
            data,
            slot_bytes,
        },
    ) {
        Ok(b) => b,
        Err(e) => fail(
            platform,
            ErrorKind::Disk,
            format_args!("virtio-blk at {:#x}: {e}", device.base),
        ),
    };
    let queue_size = blk.queue_size();
    let Some(table) = heap.zeroed_u32s(disk::blocks_for(blk.sectors(), config.disk_mib) as usize)
    else {
        fail(
            platform,
            ErrorKind::Memory,
            format_args!("no room for the block table"),
        )
    };
    let run = DiskRun::new(platform, config, blk, table);
    emit(platform, &run.info(device.base, queue_size));
    run.run()
}
