//! Runs the ring-3 test guest under QEMU (microvm, KVM) and checks it end to
//! end, printing what it measured. Needs qemu-system-x86_64 and /dev/kvm.
//!
//! ```text
//! cargo run --release -p tern-workloads --example qemu-testguest -- [options] SCENARIO [tern.k=v ...]
//!   smoke         ready, ticks, verify, corrupt + verify names the page, stop, reboot
//!   migrate       live migration (QMP migrate to a second QEMU with -incoming), verify
//!                 on the destination; reports downtime and the guest's stall
//!   dirty-log     dirty rate with and without KVM dirty logging (QMP calc-dirty-rate)
//!   fault         the `fault` command: a ring-3 page fault comes back as an error event
//!   disk          virtio-blk: write, verify, corrupt, reboot + verify from the disk
//!                 alone, a read-only disk, the benchmark
//!   disk-migrate  writes in flight across a live migration, verified after it
//!   net           virtio-net: frames echoed by a peer on the host, loss and RTT
//!   share         the guest's CPU share against the host's account of its vCPU
//!                 thread, unthrottled and under cgroup duty cycles
//! options: --kernel PATH (default: resources/build-testguest.sh), --smp N (1),
//!          --mem SIZE (512M), --cpu MODEL (host,-arch-capabilities), --seconds S (3)
//! ```
//!
//! The guest speaks the tern-guest protocol on its serial port (stdio here);
//! events are read with `tern_workloads::event::parse_line`.

mod disk;
mod memory;
mod net;
mod share;
mod vm;

use vm::{Options, Result};

fn scenario(o: &Options) -> Result<()> {
    match o.scenario.as_str() {
        "smoke" => memory::smoke(o),
        "migrate" => memory::migrate(o),
        "dirty-log" => memory::dirty_log(o),
        "fault" => memory::fault(o),
        "disk" => disk::disk(o),
        "disk-migrate" => disk::disk_migrate(o),
        "net" => net::net(o),
        "share" => share::share(o),
        s => Err(format!(
            "unknown scenario {s:?} (smoke, migrate, dirty-log, fault, disk, disk-migrate, net, share)"
        )),
    }
}

fn main() {
    let result = Options::parse().and_then(|o| {
        std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
        println!(
            "kernel {} smp {} mem {} args {:?}",
            o.kernel.display(),
            o.smp,
            o.mem,
            o.guest_args
        );
        let r = scenario(&o);
        let _ = std::fs::remove_dir_all(&o.dir);
        r
    });
    match result {
        Ok(()) => println!("PASS"),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}
