//! The VM's devices: where they sit on the PIO and MMIO buses, how their
//! interrupts and notifications are wired to KVM (irqfd, ioeventfd), and the
//! `IoHandler` the vCPU threads dispatch exits to.

use std::io::Stdout;
use std::sync::{Arc, Mutex};

use devices::legacy::i8042::I8042;
use devices::legacy::serial::{Serial, SerialInput, SerialState};
use devices::{Bus, BusDevice, BusError, Persist};
use migration::controller::DeviceStatus;
use migration::protocol::messages::DeviceSummary as WireSummary;
use migration::stats::DrainStats;
use serde::{Deserialize, Serialize};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT};
use crate::console::ConsoleOutput;
use crate::vstate::vcpu::IoHandler;

/// The serial port as tern builds it: guest output on stdout, watched for panics.
pub type ConsoleSerial = Serial<ConsoleOutput<Stdout>>;

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// A device could not be built.
    #[error("cannot create the {what}: {message}")]
    Device {
        /// Which device.
        what: String,
        /// Why.
        message: String,
    },
    /// A bus range clashed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("cannot wire {what} to KVM")]
    Kvm {
        /// What.
        what: String,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The saved state of every device.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialState,
}

/// All devices of the VM.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    /// The console UART.
    pub serial: Arc<Mutex<ConsoleSerial>>,
    /// The i8042 (reset line).
    pub i8042: Arc<Mutex<I8042>>,
}

impl DeviceManager {
    /// Creates the legacy devices and wires them to `vm`. The console's
    /// output goes to stdout; the first Linux panic line lands in `panic`.
    pub fn new(vm: &VmFd, panic: Arc<Mutex<Option<String>>>, with_stdin: bool) -> Result<Self, DeviceManagerError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceManagerError::EventFd("serial", e))?;
        let input: Option<Box<dyn SerialInput>> = if with_stdin {
            Some(Box::new(std::io::stdin()))
        } else {
            None
        };
        let serial = Serial::new(irq, ConsoleOutput::new(std::io::stdout(), panic), input).map_err(|e| {
            DeviceManagerError::Device {
                what: "serial port".into(),
                message: e.to_string(),
            }
        })?;
        vm.register_irqfd(serial.irq_evt(), SERIAL_IRQ)
            .map_err(|source| DeviceManagerError::Kvm {
                what: "the serial interrupt".into(),
                source,
            })?;
        let serial = Arc::new(Mutex::new(serial));
        let reset = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceManagerError::EventFd("i8042", e))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(reset)));

        let mut pio = Bus::new();
        pio.insert(serial.clone(), u64::from(SERIAL_PORT), devices::legacy::serial::PORT_RANGE_LEN)?;
        // The i8042 answers on its data (0x60) and command/status (0x64) ports.
        pio.insert(i8042.clone(), u64::from(I8042_DATA_PORT), 5)?;
        Ok(DeviceManager {
            pio,
            mmio: Bus::new(),
            serial,
            i8042,
        })
    }

    /// The i8042's reset eventfd (a guest reboot request).
    pub fn reset_evt(&self) -> Result<EventFd, std::io::Error> {
        self.i8042.lock().unwrap_or_else(|e| e.into_inner()).reset_evt().try_clone()
    }

    /// The MMIO bus (virtio devices are added here).
    pub fn mmio_bus_mut(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// Adds a device to the MMIO bus.
    pub fn add_mmio(&mut self, dev: Arc<Mutex<dyn BusDevice + Send>>, base: u64, len: u64) -> Result<(), BusError> {
        self.mmio.insert(dev, base, len)
    }
}

fn wire(d: devices::DeviceSummary) -> WireSummary {
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
                mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
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

impl DeviceManager {
    /// Every device as the migration handshake describes it, in a fixed order.
    pub fn summaries(&self) -> Vec<WireSummary> {
        let lock = |m: &Arc<Mutex<ConsoleSerial>>| m.lock().unwrap_or_else(|e| e.into_inner()).summary();
        vec![
            wire(lock(&self.serial)),
            wire(self.i8042.lock().unwrap_or_else(|e| e.into_inner()).summary()),
        ]
    }

    /// Saves every device's state. Devices must be quiesced.
    pub fn save_states(&self) -> Result<DevicesState, String> {
        Ok(DevicesState {
            serial: self.serial.lock().unwrap_or_else(|e| e.into_inner()).save(),
        })
    }

    /// Replaces every device's state with `state` (before the guest runs).
    pub fn restore_states(&self, state: &DevicesState) -> Result<(), String> {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&state.serial)
            .map_err(|e| format!("serial: {e}"))?;
        Ok(())
    }

    /// Where the devices are in their drain (None: no device needs draining).
    pub fn drain_status(&self) -> Option<DeviceStatus> {
        None
    }

    /// Asks every device to stop taking requests, without blocking.
    pub fn try_quiesce(&self, _stats: &Mutex<DrainStats>) {}

    /// Lets every device take requests again.
    pub fn resume_io(&self) {}

    /// At switchover (vCPUs paused): every device must be quiesced.
    pub fn quiesce_for_switchover(&self) -> Result<(), String> {
        Ok(())
    }

    /// Applies a block fault-injection setting to device `id`.
    pub fn set_fault(&self, id: &str, _fault: &crate::api::types::FaultRequest) -> Result<(), String> {
        Err(format!("no block device '{id}'"))
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
