//! The VM's devices: where they sit on the PIO and MMIO buses, how their
//! interrupts and notifications are wired to KVM (irqfd, ioeventfd), the
//! `IoHandler` the vCPU threads dispatch exits to, and the non-blocking drain
//! the migration loop runs inside its rounds.

use std::io::Stdout;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::legacy::i8042::I8042;
use devices::legacy::serial::{Serial, SerialInput, SerialState};
use devices::quiesce::QuiesceStatus;
use devices::virtio::block::BlockConfig;
use devices::virtio::mmio::MMIO_WINDOW_SIZE;
use devices::virtio::net::NetConfig;
use devices::virtio::vsock::VsockConfig;
use devices::{Bus, BusError, GuestMemoryMmap, Persist};
use kvm_ioctls::VmFd;
use migration::controller::DeviceStatus;
use migration::protocol::messages::DeviceSummary as WireSummary;
use migration::stats::DrainStats;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{
    FIRST_DEVICE_IRQ, I8042_DATA_PORT, LAST_DEVICE_IRQ, SERIAL_IRQ, SERIAL_PORT,
    VIRTIO_MMIO_MAX_DEVICES, VIRTIO_MMIO_START, VIRTIO_MMIO_WINDOW,
};
use crate::config::VmConfig;
use crate::console::ConsoleOutput;
use crate::event_loop::Subscriber;
use crate::virtio_slots::{VirtioConfig, VirtioSlot, VirtioState};
use crate::vstate::vcpu::IoHandler;

/// The serial port as tern builds it: guest output on stdout, watched for panics.
pub type ConsoleSerial = Serial<ConsoleOutput<Stdout>>;

/// Longest a quiesce window stays open by default (`--drain-window`): well
/// below any guest block layer's request timeout (Linux: 30 s), so a drain
/// never looks like a hung disk.
pub const QUIESCE_WINDOW: Duration = Duration::from_millis(500);

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// A device could not be built or wired.
    #[error("{0}")]
    Device(String),
    /// A bus range clashed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KVM refused an irqfd.
    #[error("cannot wire {what} to KVM")]
    Kvm {
        /// What.
        what: String,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Too many virtio devices.
    #[error("at most {0} virtio devices")]
    TooMany(u64),
}

/// The saved state of every device.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialState,
    /// Virtio devices, by id.
    pub virtio: Vec<(String, VirtioState)>,
}

/// Where the drain is.
#[derive(Default)]
struct Drain {
    /// When the current quiesce window opened.
    window_start: Option<Instant>,
    /// A queue-depth limit is applied.
    depth_limited: bool,
    /// Last answer: requests in flight across devices (0 = quiesced).
    in_flight: Option<u32>,
}

/// All devices of the VM.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    /// The console UART.
    pub serial: Arc<Mutex<ConsoleSerial>>,
    /// The i8042 (reset line).
    pub i8042: Arc<Mutex<I8042>>,
    virtio: Mutex<Vec<VirtioSlot>>,
    drain: Mutex<Drain>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    /// Creates every device of `cfg`. The console's output goes to stdout; the
    /// first Linux panic line lands in `panic`. Virtio devices are wired to
    /// KVM now if `wire` (a boot), or when their state is restored (an incoming migration).
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        cfg: &VmConfig,
        panic: Arc<Mutex<Option<String>>>,
        wire: bool,
    ) -> Result<Self, DeviceManagerError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| DeviceManagerError::EventFd("serial", e))?;
        let input: Option<Box<dyn SerialInput>> = Some(Box::new(std::io::stdin()));
        let serial = Serial::new(irq, ConsoleOutput::new(std::io::stdout(), panic), input)
            .map_err(|e| DeviceManagerError::Device(format!("serial port: {e}")))?;
        vm.register_irqfd(serial.irq_evt(), SERIAL_IRQ)
            .map_err(|source| DeviceManagerError::Kvm {
                what: "the serial interrupt".into(),
                source,
            })?;
        let serial = Arc::new(Mutex::new(serial));
        let reset = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| DeviceManagerError::EventFd("i8042", e))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(reset)));

        let mut pio = Bus::new();
        pio.insert(
            serial.clone(),
            u64::from(SERIAL_PORT),
            devices::legacy::serial::PORT_RANGE_LEN,
        )?;
        pio.insert(
            i8042.clone(),
            u64::from(I8042_DATA_PORT),
            devices::legacy::i8042::PORT_RANGE_LEN,
        )?;

        let mut configs: Vec<(String, VirtioConfig)> = Vec::new();
        for (i, d) in cfg.disks.iter().enumerate() {
            let id = format!("blk{i}");
            configs.push((
                id.clone(),
                VirtioConfig::Block(BlockConfig {
                    id,
                    path: d.path.clone(),
                    readonly: d.readonly,
                }),
            ));
        }
        for (i, n) in cfg.nets.iter().enumerate() {
            let id = format!("net{i}");
            configs.push((
                id.clone(),
                VirtioConfig::Net(NetConfig {
                    id,
                    tap: n.tap.clone(),
                    mac: n.mac,
                }),
            ));
        }
        if let Some(v) = &cfg.vsock {
            configs.push((
                "vsock0".into(),
                VirtioConfig::Vsock(VsockConfig {
                    cid: v.cid,
                    uds_path: v.socket.clone(),
                }),
            ));
        }
        let max = VIRTIO_MMIO_MAX_DEVICES.min(u64::from(LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1));
        if configs.len() as u64 > max {
            return Err(DeviceManagerError::TooMany(max));
        }
        let mut mmio = Bus::new();
        let mut virtio = Vec::new();
        for (i, (id, config)) in configs.into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_WINDOW;
            let slot = VirtioSlot::create(
                id,
                base,
                MMIO_WINDOW_SIZE,
                FIRST_DEVICE_IRQ + i as u32,
                config,
                mem,
            )
            .map_err(DeviceManagerError::Device)?;
            mmio.insert(slot.bus_device(), base, MMIO_WINDOW_SIZE)?;
            if wire {
                slot.wire(vm).map_err(DeviceManagerError::Device)?;
            }
            virtio.push(slot);
        }
        Ok(DeviceManager {
            pio,
            mmio,
            serial,
            i8042,
            virtio: Mutex::new(virtio),
            drain: Mutex::new(Drain::default()),
        })
    }

    /// The i8042's reset eventfd (a guest reboot request).
    pub fn reset_evt(&self) -> Result<EventFd, std::io::Error> {
        lock(&self.i8042).reset_evt().try_clone()
    }

    /// The kernel command-line entries declaring the virtio devices.
    pub fn cmdline_entries(&self) -> Vec<String> {
        lock(&self.virtio)
            .iter()
            .map(VirtioSlot::cmdline_entry)
            .collect()
    }

    /// Everything the event loop must watch.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        let mut v: Vec<Subscriber> = vec![self.serial.clone()];
        v.extend(lock(&self.virtio).iter().map(VirtioSlot::subscriber));
        v
    }

    /// Every device as the migration handshake describes it, in bus order.
    /// A NIC configured without a MAC takes the source's, so its MAC is not compared.
    pub fn summaries(&self) -> Vec<WireSummary> {
        let mut v = vec![
            wire_summary(lock(&self.serial).summary()),
            wire_summary(lock(&self.i8042).summary()),
        ];
        v.extend(lock(&self.virtio).iter().map(|s| wire_summary(s.summary())));
        v
    }

    /// Whether device `id` takes its identity (MAC) from the migration stream.
    pub fn mac_from_stream(&self, id: &str) -> bool {
        lock(&self.virtio)
            .iter()
            .any(|s| s.id == id && matches!(&s.config, VirtioConfig::Net(c) if c.mac.is_none()))
    }

    /// Saves every device's state.
    pub fn save_states(&self) -> Result<DevicesState, String> {
        Ok(DevicesState {
            serial: lock(&self.serial).save(),
            virtio: lock(&self.virtio)
                .iter()
                .map(|s| (s.id.clone(), s.save()))
                .collect(),
        })
    }

    /// Replaces every device's state with `state` (before the guest runs) and
    /// wires the restored virtio devices to KVM.
    pub fn restore_states(
        &self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        state: &DevicesState,
    ) -> Result<(), String> {
        lock(&self.serial)
            .restore_state(&state.serial)
            .map_err(|e| format!("serial: {e}"))?;
        let mut slots = lock(&self.virtio);
        if slots.len() != state.virtio.len() {
            return Err(format!(
                "state for {} virtio devices, this VM has {}",
                state.virtio.len(),
                slots.len()
            ));
        }
        for (slot, (id, s)) in slots.iter_mut().zip(&state.virtio) {
            if &slot.id != id {
                return Err(format!(
                    "state for device {id} where this VM has {}",
                    slot.id
                ));
            }
            slot.restore(vm, mem, s)?;
        }
        Ok(())
    }

    /// Where the devices are in their drain (None: no device needs draining).
    pub fn drain_status(&self) -> Option<DeviceStatus> {
        if !lock(&self.virtio).iter().any(|s| s.drains_before_pause()) {
            return None;
        }
        let d = lock(&self.drain);
        Some(match (d.window_start, d.in_flight) {
            (None, _) => DeviceStatus::Running,
            (Some(_), Some(0)) => DeviceStatus::Quiesced,
            (Some(_), n) => DeviceStatus::Quiescing {
                in_flight: n.unwrap_or(0),
            },
        })
    }

    /// Asks every device to stop taking requests, without blocking: one
    /// attempt of the per-round drain. A window that stays busy longer than
    /// `window` is closed (I/O resumes) and the next round retries.
    pub fn try_quiesce(&self, stats: &Mutex<DrainStats>, window: Duration) {
        let all = lock(&self.virtio);
        // The others keep serving the guest until the pause.
        let slots: Vec<&VirtioSlot> = all.iter().filter(|s| s.drains_before_pause()).collect();
        if slots.is_empty() {
            return;
        }
        let mut d = lock(&self.drain);
        let mut st = lock(stats);
        if let Some(start) = d.window_start {
            if d.in_flight != Some(0) && start.elapsed() > window {
                // Busy for the whole window: let the guest's I/O flow again.
                for s in slots.iter() {
                    s.resume_io();
                }
                st.windows_ms.push(start.elapsed().as_secs_f64() * 1e3);
                d.window_start = None;
                d.in_flight = None;
                return;
            }
        }
        if !d.depth_limited {
            // Fewer requests in flight: quiet points come sooner.
            for s in slots.iter() {
                s.set_queue_depth_limit(Some(1));
            }
            d.depth_limited = true;
            st.queue_depth_limit = Some(1);
        }
        if d.window_start.is_none() {
            d.window_start = Some(Instant::now());
        }
        st.attempts += 1;
        let in_flight: u32 = slots
            .iter()
            .map(|s| match s.try_quiesce() {
                QuiesceStatus::Quiesced => 0,
                QuiesceStatus::Busy { in_flight } => in_flight,
            })
            .sum();
        if in_flight > 0 {
            st.busy += 1;
            st.max_in_flight = st.max_in_flight.max(in_flight);
        }
        d.in_flight = Some(in_flight);
    }

    /// Sends a RARP announcement from every NIC's guest MAC, so the network
    /// learns that the guest is now behind this host's taps.
    pub fn announce_nics(&self) {
        for slot in lock(&self.virtio).iter() {
            if let Err(e) = slot.announce() {
                log::warn!("{}: announcing the guest on its network: {e}", slot.id);
            }
        }
    }

    /// Lets every device take requests again and lifts the depth limit.
    pub fn resume_io(&self) {
        self.resume_io_into(None);
    }

    /// As `resume_io`, recording the closed window in `stats`.
    pub fn resume_io_into(&self, stats: Option<&Mutex<DrainStats>>) {
        let slots = lock(&self.virtio);
        let mut d = lock(&self.drain);
        if d.window_start.is_none() && !d.depth_limited {
            return;
        }
        for s in slots.iter() {
            s.resume_io();
            s.set_queue_depth_limit(None);
        }
        if let (Some(start), Some(stats)) = (d.window_start, stats) {
            lock(stats)
                .windows_ms
                .push(start.elapsed().as_secs_f64() * 1e3);
        }
        *d = Drain::default();
    }

    /// At switchover (vCPUs paused): every device stops taking requests.
    /// Returns the requests still in flight; a block device resubmits those on
    /// the destination, so saving now loses nothing even when forced.
    pub fn quiesce_for_switchover(&self, stats: &Mutex<DrainStats>) -> u32 {
        let slots = lock(&self.virtio);
        let n = slots
            .iter()
            .map(|s| match s.try_quiesce() {
                QuiesceStatus::Quiesced => 0,
                QuiesceStatus::Busy { in_flight } => in_flight,
            })
            .sum();
        let d = lock(&self.drain);
        if let Some(start) = d.window_start {
            lock(stats)
                .windows_ms
                .push(start.elapsed().as_secs_f64() * 1e3);
        }
        n
    }

    /// Applies a block fault-injection setting to device `id`.
    pub fn set_fault(
        &self,
        id: &str,
        fault: &crate::api::types::FaultRequest,
    ) -> Result<(), String> {
        let slots = lock(&self.virtio);
        let slot = slots.iter().find(|s| s.id == id).ok_or_else(|| {
            let ids: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
            format!("no device '{id}' (devices: {})", ids.join(", "))
        })?;
        let handle = slot
            .fault
            .as_ref()
            .ok_or_else(|| format!("device '{id}' is not a block device"))?;
        handle.set_latency(Duration::from_millis(fault.delay_ms));
        if fault.hold {
            handle.hold();
        } else {
            handle.release();
        }
        Ok(())
    }
}

fn wire_summary(d: devices::DeviceSummary) -> WireSummary {
    use devices::DeviceSummary as D;
    let (kind, id, settings): (&str, String, Vec<(String, String)>) = match d {
        D::Serial => ("serial", "com1".into(), vec![]),
        D::I8042 => ("i8042", "i8042".into(), vec![]),
        D::Block {
            id,
            readonly,
            capacity_sectors,
        } => (
            "virtio-blk",
            id,
            vec![
                ("readonly".into(), readonly.to_string()),
                ("capacity_sectors".into(), capacity_sectors.to_string()),
            ],
        ),
        D::Net { id, mac } => (
            "virtio-net",
            id,
            vec![(
                "mac".into(),
                mac.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            )],
        ),
        D::Vsock { id, cid } => ("virtio-vsock", id, vec![("cid".into(), cid.to_string())]),
    };
    WireSummary {
        kind: kind.into(),
        id,
        settings,
    }
}

impl IoHandler for DeviceManager {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            // Nothing there: an ISA bus floats high.
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
}
