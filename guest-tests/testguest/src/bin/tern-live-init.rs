//! tern-live-init: a Linux `/init` that makes no system call at all.
//!
//! On kvm_pvm hosts a system call from guest user mode crashes the process
//! (and PID 1 crashing panics the kernel), so this init never makes one: it
//! loops forever, dirtying one page of its own 4 MiB BSS roughly every
//! millisecond (a few MiB/s, timed with the TSC), and prints nothing. It
//! keeps Linux alive, and a little busy, while the host talks to the
//! kernel (ping, migration).
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

const PAGES: usize = 1024;
const WORDS_PER_PAGE: usize = 512;
/// TSC ticks between two page writes: about 1 ms at 2 GHz.
const TICKS_PER_WRITE: u64 = 2_000_000;

/// Zero-initialized, so it lives in .bss and costs nothing in the file.
struct Area(UnsafeCell<[u64; PAGES * WORDS_PER_PAGE]>);

// SAFETY: only the one thread of this program touches it.
unsafe impl Sync for Area {}

static AREA: Area = Area(UnsafeCell::new([0; PAGES * WORDS_PER_PAGE]));

// The kernel starts us with %rsp pointing at argc, 16-byte aligned; a Rust
// function expects the alignment a `call` leaves, so make one.
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym live_init_main,
);

extern "C" fn live_init_main() -> ! {
    // SAFETY: rdtsc has no side effects (and is not a system call).
    let now = || unsafe { core::arch::x86_64::_rdtsc() };
    let mut next = now();
    let mut round = 0u64;
    loop {
        for page in 0..PAGES {
            while now() < next {
                core::hint::spin_loop();
            }
            next += TICKS_PER_WRITE;
            // SAFETY: in bounds of AREA, which only this thread uses;
            // volatile, because nothing reads it and the write is the point.
            unsafe {
                (AREA.0.get() as *mut u64)
                    .add(page * WORDS_PER_PAGE)
                    .write_volatile(round)
            };
        }
        round += 1;
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // Nothing here can panic; if something did, never return to a libc that
    // is not there.
    loop {
        core::hint::spin_loop();
    }
}
