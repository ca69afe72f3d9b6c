//! Legacy PC devices on the port I/O bus.

pub mod i8042;
pub mod serial;

pub use i8042::{I8042State, I8042};
pub use serial::{Serial, SerialArgs, SerialError, SerialInput, SerialState};
