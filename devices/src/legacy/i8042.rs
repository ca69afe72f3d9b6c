//! The i8042 keyboard controller, reduced to what a guest needs: the CPU reset line.
//!
//! Linux reboots by writing 0xFE (pulse reset) to the command port 0x64; tern turns that into
//! a write to the reset `EventFd`, and the vmm exits cleanly. Every read returns 0 (no key,
//! nothing pending), which keeps probing drivers quiet.

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::state::{DeviceSummary, Persist};

/// Offset of the command/status port (0x64) when the device is inserted at 0x60.
pub const COMMAND_OFFSET: u64 = 4;
/// Length of the port range starting at 0x60.
pub const PORT_RANGE_LEN: u64 = 5;
/// The "pulse CPU reset line" command.
pub const CMD_RESET_CPU: u8 = 0xFE;

/// The i8042 device. Insert it on the PIO bus at 0x60 with length [`PORT_RANGE_LEN`].
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
}

/// The i8042's saved state: it has none beyond its existence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest asks for a reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 { reset_evt }
    }

    /// The reset line.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    /// The device's identity for the migration handshake.
    pub fn summary(&self) -> DeviceSummary {
        DeviceSummary::I8042
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            if let Err(e) = self.reset_evt.write(1) {
                log::error!("i8042: failed to signal the reset event: {e}");
            }
        }
    }
}

impl Persist for I8042 {
    type State = I8042State;
    type ConstructorArgs = EventFd;
    type Error = std::convert::Infallible;

    fn save(&self) -> I8042State {
        I8042State {}
    }

    fn restore(reset_evt: EventFd, _state: &I8042State) -> Result<Self, Self::Error> {
        Ok(I8042::new(reset_evt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn reset_command_signals_and_reads_are_zero() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut data = [0xffu8; 1];
        dev.read(COMMAND_OFFSET, &mut data);
        assert_eq!(data, [0]);
        dev.read(0, &mut data);
        assert_eq!(data, [0]);

        // Other commands and other ports do nothing.
        dev.write(COMMAND_OFFSET, &[0xAA]);
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        assert!(evt.read().is_err());

        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn round_trip() {
        let dev = I8042::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let json = serde_json::to_string(&dev.save()).unwrap();
        let state: I8042State = serde_json::from_str(&json).unwrap();
        let restored = I8042::restore(EventFd::new(EFD_NONBLOCK).unwrap(), &state).unwrap();
        assert_eq!(restored.save(), dev.save());
    }
}
