//! The net workload on the test guest: virtio-net from ring 3.

use tern_workloads::bootdata::layout::Span;
use tern_workloads::event::{ErrorKind, NetInfo};
use tern_workloads::netload::NetRun;
use tern_workloads::params::Config;
use tern_workloads::run::emit;
use tern_workloads::virtio::net::{FrameDevice, NetMemory, VirtioNet, BUFFER_BYTES};
use tern_workloads::virtio::queue::MAX_SIZE;
use tern_workloads::virtio::transport::ID_NET;

use crate::devices::{dma, find, queue};
use crate::fail;
use crate::heap::Heap;
use crate::platform::GuestPlatform;

pub fn run(
    platform: &'static GuestPlatform,
    config: Config,
    heap: &mut Heap,
    cmdline: &str,
    ram: &[Span],
) -> ! {
    let Some((device, window)) = find(platform, cmdline, ram, ID_NET) else {
        fail(
            platform,
            ErrorKind::Net,
            format_args!("no virtio-net device among the virtio_mmio.device= entries"),
        )
    };
    let buffer_words = MAX_SIZE * BUFFER_BYTES / 8;
    let (
        Some((rx_queue, rx_queue_paddr)),
        Some((tx_queue, tx_queue_paddr)),
        Some(rx_buffers),
        Some(tx_buffers),
    ) = (
        queue(heap),
        queue(heap),
        dma(heap, buffer_words),
        dma(heap, buffer_words),
    )
    else {
        fail(
            platform,
            ErrorKind::Memory,
            format_args!("no room for the network buffers"),
        )
    };
    let memory = NetMemory {
        rx_queue,
        rx_queue_paddr,
        tx_queue,
        tx_queue_paddr,
        rx_buffers,
        tx_buffers,
    };
    let net = match VirtioNet::new(window, memory) {
        Ok(n) => n,
        Err(e) => fail(
            platform,
            ErrorKind::Net,
            format_args!("virtio-net at {:#x}: {e}", device.base),
        ),
    };
    let info = NetInfo {
        base: device.base,
        mac: net.mac(),
        queue_size: net.queue_size(),
        frames: config.frames,
        frame_bytes: config.frame_bytes,
    };
    emit(platform, &info);
    NetRun::new(platform, config, net).run()
}
