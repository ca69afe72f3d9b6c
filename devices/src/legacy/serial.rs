//! The 16550 UART console: vm-superio's register model, an irqfd for its interrupt, output to
//! any `Write`, and input from a host fd (stdin in tern) fed into the receive FIFO.
//!
//! Input respects the FIFO: the event loop reads at most as many bytes as the FIFO has room
//! for; when it is full, the input fd leaves the epoll set until the guest has emptied the FIFO
//! (vm-superio's `in_buffer_empty` callback writes an `EventFd` the loop watches). Nothing is
//! read from the host that the guest cannot take.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState as SuperioState};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::state::{DeviceSummary, Persist};

/// The UART has eight registers.
pub const PORT_RANGE_LEN: u64 = 8;
/// The receive FIFO size of a 16550A.
const FIFO_SIZE: usize = 64;

const TOKEN_INPUT: u32 = 1;
const TOKEN_SPACE: u32 = 2;

/// A host input source for the serial port: readable, pollable.
pub trait SerialInput: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> SerialInput for T {}

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating the FIFO-space `EventFd` failed.
    #[error("failed to create the serial FIFO event")]
    EventFd(#[source] io::Error),
    /// Duplicating an `EventFd` failed.
    #[error("failed to duplicate an eventfd")]
    CloneEventFd(#[source] io::Error),
    /// A saved receive FIFO larger than the hardware's.
    #[error("saved receive FIFO holds {len} bytes, more than {FIFO_SIZE}")]
    FifoTooLarge {
        /// Bytes in the saved FIFO.
        len: usize,
    },
    /// vm-superio refused the state or could not raise the interrupt.
    #[error("failed to rebuild the UART: {0}")]
    Restore(String),
}

/// Raises the UART interrupt through an irqfd.
struct IrqFdTrigger(EventFd);

impl Trigger for IrqFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop the guest emptied the receive FIFO.
struct FifoSpaceEvents(EventFd);

impl SerialEvents for FifoSpaceEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("serial: failed to signal FIFO space: {e}");
        }
    }
}

/// The guest output stream, movable out of the UART when its registers are replaced.
struct Output<W>(Option<W>);

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.as_mut() {
            Some(w) => w.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

type Uart<W> = vm_superio::Serial<IrqFdTrigger, FifoSpaceEvents, Output<W>>;

/// Builds the UART from a validated state.
fn build_uart<W: Write>(
    state: &SerialState,
    irq: EventFd,
    space_evt: EventFd,
    out: Option<W>,
) -> Result<Uart<W>, SerialError> {
    let theirs = SuperioState {
        baud_divisor_low: state.baud_divisor_low,
        baud_divisor_high: state.baud_divisor_high,
        interrupt_enable: state.interrupt_enable,
        interrupt_identification: state.interrupt_identification,
        line_control: state.line_control,
        line_status: state.line_status,
        modem_control: state.modem_control,
        modem_status: state.modem_status,
        scratch: state.scratch,
        in_buffer: state.in_buffer.clone(),
    };
    vm_superio::Serial::from_state(
        &theirs,
        IrqFdTrigger(irq),
        FifoSpaceEvents(space_evt),
        Output(out),
    )
    .map_err(|e| SerialError::Restore(format!("{e:?}")))
}

fn check_fifo(state: &SerialState) -> Result<(), SerialError> {
    if state.in_buffer.len() > FIFO_SIZE {
        return Err(SerialError::FifoTooLarge {
            len: state.in_buffer.len(),
        });
    }
    Ok(())
}

/// The serial port's saved registers and receive FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// What [`Serial::restore`] needs besides the state.
pub struct SerialArgs<W> {
    /// The irqfd of the UART's interrupt (GSI 4 for COM1).
    pub irq: EventFd,
    /// Where guest output goes.
    pub out: W,
    /// Where guest input comes from, if anywhere.
    pub input: Option<Box<dyn SerialInput>>,
}

/// A 16550 UART. Insert it on the PIO bus (0x3f8, [`PORT_RANGE_LEN`]) and add it to the event
/// loop (it watches its input).
pub struct Serial<W: Write + Send> {
    uart: Uart<W>,
    input: Option<Box<dyn SerialInput>>,
    input_registered: bool,
    space_evt: EventFd,
}

impl<W: Write + Send> std::fmt::Debug for Serial<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("input", &self.input.as_ref().map(|i| i.as_raw_fd()))
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> Serial<W> {
    /// A UART in its power-on state.
    pub fn new(
        irq: EventFd,
        out: W,
        input: Option<Box<dyn SerialInput>>,
    ) -> Result<Self, SerialError> {
        Self::restore(
            SerialArgs { irq, out, input },
            &to_ours(&SuperioState::default()),
        )
    }

    /// The interrupt's irqfd, for the vmm to register with KVM.
    pub fn irq_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// The output stream.
    pub fn writer(&self) -> Option<&W> {
        self.uart.writer().0.as_ref()
    }

    /// Replaces the registers and FIFO with `state`, keeping the irqfd, the output, the input
    /// and the event-loop registration: for a device already wired into a VM and its event
    /// loop (a migration destination restoring in place).
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), SerialError> {
        check_fifo(state)?;
        let irq = self
            .irq_evt()
            .try_clone()
            .map_err(SerialError::CloneEventFd)?;
        let space = self
            .space_evt
            .try_clone()
            .map_err(SerialError::CloneEventFd)?;
        let out = self.uart.writer_mut().0.take();
        match build_uart(state, irq, space, out) {
            Ok(uart) => {
                self.uart = uart;
                // The FIFO may have room now, or none: let the loop re-evaluate the input.
                self.space_evt.write(1).map_err(SerialError::EventFd)?;
                Ok(())
            }
            Err(e) => {
                log::error!("serial: restore failed, output detached");
                Err(e)
            }
        }
    }

    /// The device's identity for the migration handshake.
    pub fn summary(&self) -> DeviceSummary {
        DeviceSummary::Serial
    }

    /// Queues host bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: failed to queue input: {e:?}");
                0
            }
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let room = self.uart.fifo_capacity().min(FIFO_SIZE);
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let fd = input.as_raw_fd();
        let mut buf = [0u8; FIFO_SIZE];
        let read = if room == 0 {
            Ok(None)
        } else {
            input.read(&mut buf[..room]).map(Some)
        };
        match read {
            Ok(Some(0)) => {
                // End of input: nothing more will come.
                remove_input(fd, &mut self.input_registered, ops);
                self.input = None;
            }
            Ok(Some(n)) => {
                self.enqueue_input(&buf[..n]);
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("serial: input failed, detaching it: {e}");
                remove_input(fd, &mut self.input_registered, ops);
                self.input = None;
            }
        }
        if self.uart.fifo_capacity() == 0 {
            // Full FIFO: stop watching the input until the guest drains it.
            remove_input(fd, &mut self.input_registered, ops);
        }
    }

    fn add_input(&mut self, ops: &mut EventOps) {
        if let Some(input) = self.input.as_ref() {
            if !self.input_registered && self.uart.fifo_capacity() > 0 {
                let ev = Events::with_data_raw(input.as_raw_fd(), TOKEN_INPUT, EventSet::IN);
                match ops.add(ev) {
                    Ok(()) => self.input_registered = true,
                    Err(e) => {
                        // Stdin from /dev/null or a regular file cannot be
                        // polled: the guest simply gets no console input.
                        log::info!("serial: console input not watched ({e}); the guest gets none");
                        self.input = None;
                    }
                }
            }
        }
    }
}

fn remove_input(fd: RawFd, registered: &mut bool, ops: &mut EventOps) {
    if *registered {
        if let Err(e) = ops.remove(Events::empty_raw(fd)) {
            log::error!("serial: failed to stop watching the input: {e}");
        }
        *registered = false;
    }
}

fn to_ours(s: &SuperioState) -> SerialState {
    SerialState {
        baud_divisor_low: s.baud_divisor_low,
        baud_divisor_high: s.baud_divisor_high,
        interrupt_enable: s.interrupt_enable,
        interrupt_identification: s.interrupt_identification,
        line_control: s.line_control,
        line_status: s.line_status,
        modem_control: s.modem_control,
        modem_status: s.modem_status,
        scratch: s.scratch,
        in_buffer: s.in_buffer.clone(),
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) if offset < PORT_RANGE_LEN => data[0] = self.uart.read(off),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if offset < PORT_RANGE_LEN {
                if let Err(e) = self.uart.write(off, *value) {
                    log::warn!("serial: write failed: {e:?}");
                }
            }
        }
    }
}

impl<W: Write + Send> MutEventSubscriber for Serial<W> {
    fn init(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.space_evt, TOKEN_SPACE, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::error!("serial: failed to watch the FIFO event: {e}");
        }
        self.add_input(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_INPUT => self.read_input(ops),
            TOKEN_SPACE => {
                let _ = self.space_evt.read();
                self.add_input(ops);
            }
            other => log::warn!("serial: unexpected event token {other}"),
        }
    }
}

impl<W: Write + Send> Persist for Serial<W> {
    type State = SerialState;
    type ConstructorArgs = SerialArgs<W>;
    type Error = SerialError;

    fn save(&self) -> SerialState {
        to_ours(&self.uart.state())
    }

    fn restore(args: SerialArgs<W>, state: &SerialState) -> Result<Self, SerialError> {
        check_fifo(state)?;
        let space_evt = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let space = space_evt.try_clone().map_err(SerialError::CloneEventFd)?;
        let uart = build_uart(state, args.irq, space, Some(args.out))?;
        Ok(Serial {
            uart,
            input: args.input,
            input_registered: false,
            space_evt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    /// A `Write` whose contents the test can read while the device owns it.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read_reg<W: Write + Send>(s: &mut Serial<W>, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn output_goes_to_the_writer_and_raises_the_irq() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let mut s = Serial::new(irq.try_clone().unwrap(), out.clone(), None).unwrap();
        s.write(IER, &[0x02]); // THR empty interrupt
        for b in b"hi\n" {
            s.write(DATA, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
        // Bad widths and offsets are ignored.
        s.write(DATA, &[1, 2]);
        s.write(9, &[1]);
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_respects_the_fifo_and_resumes_when_drained() {
        let (mut host, guest_side) = UnixStream::pair().unwrap();
        guest_side.set_nonblocking(true).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(
            Serial::new(irq, io::sink(), Some(Box::new(guest_side))).unwrap(),
        ));
        let mut em = EventManager::<Arc<Mutex<Serial<io::Sink>>>>::new().unwrap();
        em.add_subscriber(serial.clone());

        // 100 bytes: more than the FIFO holds.
        let input: Vec<u8> = (0..100u8).collect();
        host.write_all(&input).unwrap();
        while serial.lock().unwrap().uart.fifo_capacity() > 0 {
            em.run_with_timeout(5000).unwrap();
        }
        // Full FIFO: the input is no longer watched, so the loop goes idle.
        assert!(!serial.lock().unwrap().input_registered);
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);

        // The guest drains the FIFO, the loop re-arms the input and delivers the rest.
        let mut got = Vec::new();
        while got.len() < input.len() {
            {
                let mut s = serial.lock().unwrap();
                while read_reg(&mut s, LSR) & LSR_DATA_READY != 0 {
                    got.push(read_reg(&mut s, DATA));
                }
            }
            if got.len() < input.len() {
                em.run_with_timeout(5000).unwrap();
            }
        }
        assert_eq!(got, input);
    }

    #[test]
    fn round_trip_keeps_registers_and_fifo() {
        let mut s = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), io::sink(), None).unwrap();
        s.write(IER, &[0x01]);
        s.write(7, &[0x5a]); // scratch
        assert_eq!(s.enqueue_input(b"abc"), 3);
        let state = s.save();
        let json = serde_json::to_string(&state).unwrap();
        let state: SerialState = serde_json::from_str(&json).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let args = SerialArgs {
            irq: irq.try_clone().unwrap(),
            out: io::sink(),
            input: None,
        };
        let mut r = Serial::restore(args, &state).unwrap();
        assert_eq!(r.save(), s.save());
        // The pending receive interrupt is raised again on the new irqfd.
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(read_reg(&mut r, DATA), b'a');
        assert_eq!(read_reg(&mut r, 7), 0x5a);
    }

    #[test]
    fn restore_in_place_keeps_output_input_and_irq() {
        let (mut host, guest_side) = UnixStream::pair().unwrap();
        guest_side.set_nonblocking(true).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let serial = Arc::new(Mutex::new(
            Serial::new(
                irq.try_clone().unwrap(),
                out.clone(),
                Some(Box::new(guest_side)),
            )
            .unwrap(),
        ));
        let mut em = EventManager::<Arc<Mutex<Serial<SharedBuf>>>>::new().unwrap();
        em.add_subscriber(serial.clone());

        // The state of a source UART holding unread input with its interrupt enabled.
        let mut source =
            Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), io::sink(), None).unwrap();
        source.write(IER, &[0x01]);
        source.enqueue_input(b"from the source");
        let state = source.save();
        serial.lock().unwrap().restore_state(&state).unwrap();
        assert_eq!(serial.lock().unwrap().save(), state);
        assert!(irq.read().unwrap() >= 1, "pending input interrupt raised");

        // Output still reaches the same writer; input still flows once the FIFO drains.
        serial.lock().unwrap().write(DATA, b"!");
        assert_eq!(&*out.0.lock().unwrap(), b"!");
        host.write_all(b"+more").unwrap();
        let mut got = Vec::new();
        while got.len() < 20 {
            {
                let mut s = serial.lock().unwrap();
                while read_reg(&mut s, LSR) & LSR_DATA_READY != 0 {
                    got.push(read_reg(&mut s, DATA));
                }
            }
            if got.len() < 20 {
                em.run_with_timeout(5000).unwrap();
            }
        }
        assert_eq!(got, b"from the source+more");

        let bad = SerialState {
            in_buffer: vec![0; 65],
            ..state
        };
        assert!(serial.lock().unwrap().restore_state(&bad).is_err());
    }

    #[test]
    fn restore_rejects_an_oversized_fifo() {
        let state = SerialState {
            in_buffer: vec![0; FIFO_SIZE + 1],
            ..Default::default()
        };
        let args = SerialArgs {
            irq: EventFd::new(EFD_NONBLOCK).unwrap(),
            out: io::sink(),
            input: None,
        };
        assert!(matches!(
            Serial::restore(args, &state),
            Err(SerialError::FifoTooLarge { len: 65 })
        ));
    }
}
