//! The 16550 UART at 0x3f8: whole lines out (one `rep outsb` through a
//! service call per line, under a spinlock so CPUs' lines do not mix) and
//! polled input. VMMs (QEMU, tern's vm-superio) accept bytes as fast as they
//! come, so output does not wait for the transmitter.

use core::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::boot::service;

const COM1: u16 = 0x3f8;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 1;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Interrupts off; FIFOs on and cleared, so the VMM can queue up to 16 input
/// bytes between two polls.
pub fn init() {
    service::port_write(IER, 0);
    service::port_write(FCR, 0x07);
}

fn lock(mut patience: Option<u64>) {
    while LOCK
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        if let Some(n) = patience.as_mut() {
            if *n == 0 {
                return; // whoever holds it is not coming back: write anyway
            }
            *n -= 1;
        }
        core::hint::spin_loop();
    }
}

/// Writes one line (which carries its own `\n`).
pub fn write_line(line: &str) {
    lock(None);
    service::port_write_bytes(COM1, line.as_bytes());
    LOCK.store(false, Release);
}

/// For the fault reporter: the lock may be held by the CPU that faulted, so
/// after a while (about a second of spinning) write regardless.
pub fn write_line_after_fault(line: &str) {
    lock(Some(1 << 28));
    service::port_write_bytes(COM1, line.as_bytes());
    LOCK.store(false, Release);
}

/// Reads the bytes waiting in the receive FIFO (two service calls per byte,
/// one per empty poll). Only CPU 0 reads.
pub fn read_input(buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() && service::port_read(LSR) & LSR_DATA_READY != 0 {
        buf[n] = service::port_read(COM1);
        n += 1;
    }
    n
}
