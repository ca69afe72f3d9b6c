//! tern's virtio devices on the MMIO bus: one window and one GSI each, wired
//! to KVM (irqfd for the interrupt, ioeventfds for queue notifications), with
//! typed save/restore, the non-blocking quiesce and the block fault hook.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::quiesce::{Quiesce, QuiesceStatus};
use devices::virtio::block::{
    Block, BlockArgs, BlockConfig, BlockFaultHandle, BlockState, DEFAULT_WORKERS,
};
use devices::virtio::mmio::{
    MmioTransport, MmioTransportArgs, MmioTransportState, QUEUE_NOTIFY_OFFSET,
};
use devices::virtio::net::{Net, NetArgs, NetConfig, NetState};
use devices::virtio::vsock::{Vsock, VsockConfig, VsockState};
use devices::virtio::VirtioDevice;
use devices::{GuestMemoryMmap, Persist};
use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};

use crate::event_loop::Subscriber;

/// A virtio device of one of tern's kinds.
pub enum VirtioDev {
    /// virtio-blk.
    Block(Arc<Mutex<MmioTransport<Block>>>),
    /// virtio-net on a tap.
    Net(Arc<Mutex<MmioTransport<Net>>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<MmioTransport<Vsock>>>),
}

/// How a device was configured (what a restore needs).
#[derive(Clone, Debug)]
pub enum VirtioConfig {
    /// Disk.
    Block(BlockConfig),
    /// NIC.
    Net(NetConfig),
    /// vsock.
    Vsock(VsockConfig),
}

/// One virtio device in its MMIO window.
pub struct VirtioSlot {
    /// Device id (`blk0`, `net0`, `vsock0`).
    pub id: String,
    /// MMIO base.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Interrupt line.
    pub gsi: u32,
    /// The device.
    pub dev: VirtioDev,
    /// Its configuration.
    pub config: VirtioConfig,
    /// Block fault hook.
    pub fault: Option<BlockFaultHandle>,
}

/// A saved virtio device.
#[derive(Debug, Serialize, Deserialize)]
pub enum VirtioState {
    /// virtio-blk.
    Block(MmioTransportState<BlockState>),
    /// virtio-net.
    Net(MmioTransportState<NetState>),
    /// virtio-vsock.
    Vsock(MmioTransportState<VsockState>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the locked transport, whatever the device kind.
macro_rules! with_transport {
    ($dev:expr, $t:ident => $body:expr) => {
        match $dev {
            VirtioDev::Block(m) => {
                #[allow(unused_mut)]
                let mut $t = lock(m);
                $body
            }
            VirtioDev::Net(m) => {
                #[allow(unused_mut)]
                let mut $t = lock(m);
                $body
            }
            VirtioDev::Vsock(m) => {
                #[allow(unused_mut)]
                let mut $t = lock(m);
                $body
            }
        }
    };
}

fn wire_transport<D: VirtioDevice>(
    t: &MmioTransport<D>,
    vm: &VmFd,
    base: u64,
    gsi: u32,
) -> Result<(), String> {
    vm.register_irqfd(t.irq_evt(), gsi)
        .map_err(|e| format!("irqfd on GSI {gsi}: {e}"))?;
    for (i, evt) in t.queue_evts().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
            i as u32,
        )
        .map_err(|e| format!("ioeventfd for queue {i}: {e}"))?;
    }
    Ok(())
}

fn unwire_transport<D: VirtioDevice>(t: &MmioTransport<D>, vm: &VmFd, base: u64, gsi: u32) {
    let _ = vm.unregister_irqfd(t.irq_evt(), gsi);
    for (i, evt) in t.queue_evts().iter().enumerate() {
        let _ = vm.unregister_ioevent(
            evt,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
            i as u32,
        );
    }
}

impl VirtioSlot {
    /// For a NIC: announces its guest on the network (see
    /// [`Net::announce`]); other devices have nothing to announce.
    pub fn announce(&self) -> std::io::Result<()> {
        match &self.dev {
            VirtioDev::Net(t) => lock(t).device_mut().announce(),
            _ => Ok(()),
        }
    }
}

impl VirtioSlot {
    /// Creates the device for `config` in window `base` on `gsi` (not wired to KVM yet).
    pub fn create(
        id: String,
        base: u64,
        size: u64,
        gsi: u32,
        config: VirtioConfig,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, String> {
        let transport_err = |e: std::io::Error| format!("{id}: cannot create its eventfds: {e}");
        let (dev, fault) = match &config {
            VirtioConfig::Block(c) => {
                let blk = Block::new(c.clone()).map_err(|e| format!("{id}: {}", chain(&e)))?;
                let fault = blk.fault_handle();
                let t = MmioTransport::new(blk, mem.clone()).map_err(transport_err)?;
                (VirtioDev::Block(Arc::new(Mutex::new(t))), Some(fault))
            }
            VirtioConfig::Net(c) => {
                let net = Net::new(c.clone())
                    .map_err(|e| format!("{id} (tap {}): {}", c.tap, chain(&e)))?;
                let t = MmioTransport::new(net, mem.clone()).map_err(transport_err)?;
                (VirtioDev::Net(Arc::new(Mutex::new(t))), None)
            }
            VirtioConfig::Vsock(c) => {
                let v = Vsock::new(c.clone()).map_err(|e| format!("{id}: {}", chain(&e)))?;
                let t = MmioTransport::new(v, mem.clone()).map_err(transport_err)?;
                (VirtioDev::Vsock(Arc::new(Mutex::new(t))), None)
            }
        };
        Ok(VirtioSlot {
            id,
            base,
            size,
            gsi,
            dev,
            config,
            fault,
        })
    }

    /// The device as a bus device.
    pub fn bus_device(&self) -> Arc<Mutex<dyn devices::BusDevice + Send>> {
        match &self.dev {
            VirtioDev::Block(m) => m.clone(),
            VirtioDev::Net(m) => m.clone(),
            VirtioDev::Vsock(m) => m.clone(),
        }
    }

    /// The device as an event-loop subscriber.
    pub fn subscriber(&self) -> Subscriber {
        match &self.dev {
            VirtioDev::Block(m) => m.clone(),
            VirtioDev::Net(m) => m.clone(),
            VirtioDev::Vsock(m) => m.clone(),
        }
    }

    /// Registers the interrupt and queue notifications with KVM.
    pub fn wire(&self, vm: &VmFd) -> Result<(), String> {
        with_transport!(&self.dev, t => wire_transport(&t, vm, self.base, self.gsi))
            .map_err(|e| format!("{}: cannot wire to KVM: {e}", self.id))
    }

    /// The `virtio_mmio.device=` entry for the kernel command line.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.gsi
        )
    }

    /// The device's identity for the migration handshake.
    pub fn summary(&self) -> devices::DeviceSummary {
        with_transport!(&self.dev, t => t.summary())
    }

    /// Stops taking requests; answers how many are in flight. Never blocks.
    pub fn try_quiesce(&self) -> QuiesceStatus {
        with_transport!(&self.dev, t => t.try_quiesce())
    }

    /// Whether the device is drained while the guest runs (see
    /// [`Quiesce::drains_before_pause`]).
    pub fn drains_before_pause(&self) -> bool {
        with_transport!(&self.dev, t => t.drains_before_pause())
    }

    /// Takes requests again.
    pub fn resume_io(&self) {
        with_transport!(&self.dev, t => t.resume_io())
    }

    /// Caps the requests the device keeps in flight.
    pub fn set_queue_depth_limit(&self, limit: Option<u16>) {
        with_transport!(&self.dev, t => t.set_queue_depth_limit(limit))
    }

    /// Saves the device.
    pub fn save(&self) -> VirtioState {
        match &self.dev {
            VirtioDev::Block(m) => VirtioState::Block(lock(m).save()),
            VirtioDev::Net(m) => VirtioState::Net(lock(m).save()),
            VirtioDev::Vsock(m) => VirtioState::Vsock(lock(m).save()),
        }
    }

    /// Replaces the device with one rebuilt from `state`, and wires it to KVM.
    pub fn restore(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        state: &VirtioState,
    ) -> Result<(), String> {
        let id = self.id.clone();
        let err = |e: &dyn std::error::Error| format!("{id}: {}", chain(e));
        match (&self.dev, &self.config, state) {
            (VirtioDev::Block(m), VirtioConfig::Block(c), VirtioState::Block(s)) => {
                let mut t = lock(m);
                unwire_transport(&t, vm, self.base, self.gsi);
                let args = MmioTransportArgs {
                    mem: mem.clone(),
                    device: BlockArgs {
                        config: c.clone(),
                        workers: DEFAULT_WORKERS,
                    },
                };
                *t = MmioTransport::restore(args, s).map_err(|e| err(&e))?;
                self.fault = Some(t.device().fault_handle());
                wire_transport(&t, vm, self.base, self.gsi)
            }
            (VirtioDev::Net(m), VirtioConfig::Net(c), VirtioState::Net(s)) => {
                let mut t = lock(m);
                unwire_transport(&t, vm, self.base, self.gsi);
                // The tap stays with the device being replaced until it drops:
                // the restored one takes a second handle to the same queue.
                let backend = t.device().backend().try_clone().map_err(|e| err(&e))?;
                let args = MmioTransportArgs {
                    mem: mem.clone(),
                    device: NetArgs {
                        config: c.clone(),
                        backend,
                    },
                };
                *t = MmioTransport::restore(args, s).map_err(|e| err(&e))?;
                wire_transport(&t, vm, self.base, self.gsi)
            }
            (VirtioDev::Vsock(m), VirtioConfig::Vsock(c), VirtioState::Vsock(s)) => {
                let mut t = lock(m);
                unwire_transport(&t, vm, self.base, self.gsi);
                let args = MmioTransportArgs {
                    mem: mem.clone(),
                    device: c.clone(),
                };
                *t = MmioTransport::restore(args, s).map_err(|e| err(&e))?;
                wire_transport(&t, vm, self.base, self.gsi)
            }
            _ => Err(format!(
                "{id}: the saved state is for another kind of device"
            )),
        }
        .map_err(|e| {
            if e.starts_with(&self.id) {
                e
            } else {
                format!("{}: {e}", self.id)
            }
        })
    }
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
