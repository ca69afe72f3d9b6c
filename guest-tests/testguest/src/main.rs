//! tern's ring-3 test guest: a freestanding PVH ELF.
//!
//! On kvm_pvm hosts guest ring-0 code is emulated instruction by instruction
//! while ring-3 code runs natively, so this guest does the least it can in
//! ring 0 (boot/: long mode, GDT/IDT/TSS, exception trampolines, a handful
//! of service calls) and everything else in ring 3: reading the boot data,
//! starting the other CPUs, kvmclock, and the workloads from
//! `tern-workloads`. See guest-tests/README.md for parameters and events.
#![no_std]
#![no_main]

mod boot;
mod bootinfo;
mod console;
mod cpu;
mod devices;
mod fault;
mod heap;
mod idle;
mod kvmclock;
mod mem;
mod netdev;
mod paging;
mod phys;
mod platform;
mod smp;
mod timebase;

use core::fmt;

use tern_workloads::bootdata::layout::{self, Span};
use tern_workloads::command::Command;
use tern_workloads::coord::Coordinator;
use tern_workloads::event::{ClockSource, ErrorKind, MemSource, Ready};
use tern_workloads::memory::{GenTable, PageSet};
use tern_workloads::page::PAGE_SIZE;
use tern_workloads::params::{Config, CpuSet, Workload};
use tern_workloads::poller::CommandPoller;
use tern_workloads::run::{emit, emit_error, Run};

use crate::bootinfo::BootInfo;
use crate::heap::Heap;
use crate::platform::GuestPlatform;

/// The workload state all CPUs share.
pub type GuestRun = Run<'static, GuestPlatform>;

extern "C" {
    static tern_boot_tsc: u64;
    static __image_start: u8;
    static __image_end: u8;
}

/// Ring-3 entry of the boot CPU (entry.s), with `%ebx` from the loader.
extern "C" fn bsp_main(start_info_paddr: u64) -> ! {
    console::init();
    // SAFETY: entry.s wrote it before ring 3; nobody writes it after.
    let boot_tsc = unsafe { (&raw const tern_boot_tsc).read_volatile() };
    let mut platform = GuestPlatform {
        tsc_hz: 0,
        boot_tsc,
        kvmclock: false,
        halt_timer: false,
    };

    let boot = BootInfo::read(start_info_paddr);
    for issue in boot.issues.iter().flatten() {
        emit_error(&platform, ErrorKind::Boot, format_args!("{issue}"));
    }
    let config = match Config::parse(boot.cmdline()) {
        Ok(c) => c,
        Err(e) => fail(&platform, ErrorKind::Param, format_args!("{e}")),
    };

    platform.halt_timer = idle::available();
    platform.kvmclock = kvmclock::available();
    let mut kvmclock_hz = None;
    if platform.kvmclock {
        kvmclock::enable(0);
        kvmclock_hz = kvmclock::read(0).map(|(clock, _)| clock.tsc_hz());
    }
    platform.tsc_hz = match timebase::tsc_hz(kvmclock_hz) {
        Some((hz, _)) => hz,
        None => fail(
            &platform,
            ErrorKind::Boot,
            format_args!("no TSC frequency: neither kvmclock nor CPUID gives one"),
        ),
    };
    let hz = platform.tsc_hz;

    let assumed = [Span::new(0, u64::from(config.mem_mib) << 20)];
    let (ram, mem_source) = match boot.has_memmap && !boot.ram().is_empty() {
        true => (boot.ram(), MemSource::Memmap),
        false => (&assumed[..], MemSource::Assumed),
    };
    let image = Span::new(
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    );
    let Some(heap_span) = heap_span(ram, image, boot.modules()) else {
        fail(
            &platform,
            ErrorKind::Memory,
            format_args!(
                "the guest image at {:#x}-{:#x} is not in RAM",
                image.start, image.end
            ),
        )
    };
    // SAFETY: RAM right after our image, before any boot module, that the
    // loader gave us; only this heap hands it out.
    let mut heap = unsafe { Heap::new(heap_span) };
    if let Err(at) = paging::map_above_4g(ram, &mut heap) {
        emit_error(
            &platform,
            ErrorKind::Memory,
            format_args!("RAM from {at:#x} up is not mapped"),
        );
    }

    let limit = config.threads.map_or(boot::MAX_CPUS, |t| t as usize);
    let mut cpus = smp::discover(limit);
    if let Some(e) = cpus.mp_error {
        emit_error(
            &platform,
            ErrorKind::Boot,
            format_args!("{e}; probing for CPUs instead"),
        );
    }
    let online = smp::start_aps(&mut cpus, limit, &mut heap, hz, platform.kvmclock);
    // A device workload runs on CPU 0; the other CPUs run the stall meter
    // alone, so a pause of the whole guest (a migration's switchover, a hung
    // VMM) shows in their ticks while CPU 0 waits on the device.
    let device_workload = matches!(config.workload, Workload::Disk | Workload::Net);
    let busy = if device_workload {
        CpuSet(CpuSet::all_below(online).0 & !1)
    } else {
        config.busy_cpus(CpuSet::all_below(online))
    };

    let ws_bytes = match (config.workload, busy.count()) {
        (Workload::Dirtier, 1..) => u64::from(config.ws_mib) << 20,
        _ => 0,
    };
    let Some(platform) = heap.alloc(platform) else {
        fail(
            &GuestPlatform {
                tsc_hz: hz,
                boot_tsc,
                kvmclock: false,
                halt_timer: false,
            },
            ErrorKind::Memory,
            format_args!("heap exhausted"),
        )
    };
    let platform: &'static GuestPlatform = platform;
    let ready = |ws_bytes: u64| Ready {
        workload: config.workload,
        cpus: online as u32,
        cpus_source: cpus.source,
        busy,
        mem_mib: layout::ram_bytes(ram) >> 20,
        mem_source,
        ws_mib: (ws_bytes >> 20) as u32,
        rate: config.rate,
        pattern: config.pattern,
        tick_ms: config.tick_ms,
        gap_us: config.gap_us,
        clock: if platform.kvmclock {
            ClockSource::Kvmclock
        } else {
            ClockSource::None
        },
        tsc_hz: hz,
        boot_us: tern_workloads::clock::ticks_to_us(cpu::rdtsc() - boot_tsc, hz),
    };
    if device_workload && busy.count() == 0 {
        // One CPU, and it drives the device.
        smp::halt_all();
        emit(platform, &ready(0));
        devices::run(platform, config, &mut heap, boot.cmdline(), ram)
    }

    let ws_pages = (ws_bytes / PAGE_SIZE as u64) as usize;
    let coord = heap.alloc(Coordinator::new(
        (busy.count() - usize::from(busy.contains(0))) as u32,
    ));
    let table = heap.zeroed_u32s(ws_pages);
    let (Some(coord), Some(table)) = (coord, table) else {
        fail(platform, ErrorKind::Memory, format_args!("heap exhausted"))
    };
    let Some(run) = heap.alloc(Run {
        platform,
        config,
        pages: PageSet::empty(),
        table: GenTable::new(table),
        coord,
        busy,
    }) else {
        fail(platform, ErrorKind::Memory, format_args!("heap exhausted"))
    };

    // The working set goes in the RAM left after the heap is final.
    let mut taken = [image; 1 + 4];
    taken[1..1 + boot.modules().len()].copy_from_slice(boot.modules());
    let plan = match layout::plan(
        ram,
        &taken[..1 + boot.modules().len()],
        heap_span.start,
        heap.used(),
        ws_bytes,
    ) {
        Ok(p) => p,
        Err(e) => fail(platform, ErrorKind::Memory, format_args!("{e}")),
    };
    for &span in plan.working_set() {
        // SAFETY: the plan gives page-aligned RAM outside the image, the
        // heap and the boot modules, mapped above (paging) or at boot.
        run.pages.push(unsafe { heap::pages(span) });
    }
    let run: &'static GuestRun = run;

    smp::release(run, busy);
    emit(platform, &ready(ws_bytes));
    if device_workload {
        run.start_meters();
        devices::run(platform, config, &mut heap, boot.cmdline(), ram)
    }
    run.controller(0)
}

/// The heap: from the end of the image to the end of its RAM range, or to
/// the first boot module in between.
fn heap_span(ram: &[Span], image: Span, modules: &[Span]) -> Option<Span> {
    let start = image.end.next_multiple_of(PAGE_SIZE as u64);
    let range = ram
        .iter()
        .find(|r| r.start <= image.start && start <= r.end)?;
    let end = modules
        .iter()
        .map(|m| m.start)
        .filter(|&s| s >= start)
        .fold(range.end, u64::min);
    Some(Span::new(start, end & !(PAGE_SIZE as u64 - 1)))
}

/// The guest cannot run its workload: say why, stop the other CPUs and wait
/// for `reboot`.
pub fn fail(platform: &GuestPlatform, kind: ErrorKind, message: fmt::Arguments<'_>) -> ! {
    emit_error(platform, kind, message);
    smp::halt_all();
    let hz = if platform.tsc_hz == 0 {
        1_000_000_000
    } else {
        platform.tsc_hz
    };
    let mut commands = CommandPoller::new(hz, 10);
    loop {
        if commands.due(cpu::rdtsc()) {
            commands.poll(platform, |command| match command {
                Command::Reboot => platform::reboot(hz),
                _ => emit_error(
                    platform,
                    ErrorKind::Command,
                    format_args!(
                        "the guest did not start (see the error before); only reboot works"
                    ),
                ),
            });
        }
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fault::panicked(info)
}
