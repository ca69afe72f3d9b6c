//! tern's command line (clap derive): one flag per setting.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::PvmWorkarounds;
use crate::vstate::vm::DirtyTrackingChoice;

/// tern: a small KVM VMM whose live migration converges for busy guests.
#[derive(Parser, Debug)]
#[command(name = "tern", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// tern's subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest (or receive one with --incoming) and run it until it stops.
    Run(RunArgs),
    /// Live-migrate the guest of a running tern to another tern started with --incoming.
    Migrate(MigrateArgs),
    /// Show the statistics of the current or last migration.
    MigrateStatus(StatusArgs),
    /// Cancel the running migration; the guest keeps running here.
    MigrateCancel(SocketArg),
    /// Show the VM's state.
    Status(SocketArg),
    /// Pause every vCPU.
    Pause(SocketArg),
    /// Resume the vCPUs.
    Resume(SocketArg),
    /// Stop the VM and its tern.
    Shutdown(SocketArg),
}

/// `tern run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Guest kernel: bzImage, ELF vmlinux or PVH ELF.
    #[arg(long, required_unless_present = "incoming")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0 reboot=k panic=1].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Back all guest memory before the guest starts (or, with --incoming,
    /// before listening): no first-touch page faults later, at the cost of
    /// committing the whole size up front (QEMU's -mem-prealloc).
    #[arg(long)]
    pub prefault: bool,
    /// Serve the control API on this Unix socket (it must not exist).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// virtio-blk disk: PATH[,readonly=on] (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// virtio-net interface on a tap: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net")]
    pub nets: Vec<String>,
    /// virtio-vsock device: cid=N,socket=PATH.
    #[arg(long)]
    pub vsock: Option<String>,
    /// Wait for a live migration on tcp:HOST:PORT or unix:PATH instead of booting.
    #[arg(long)]
    pub incoming: Option<String>,
    /// Add the kvm_pvm guest-kernel workarounds to the command line.
    #[arg(long, value_enum, default_value_t = PvmWorkarounds::Auto)]
    pub pvm_workarounds: PvmWorkarounds,
    /// How KVM reports dirty pages during a migration.
    #[arg(long, value_enum, default_value_t = DirtyTrackingChoice::Auto)]
    pub dirty_tracking: DirtyTrackingChoice,
}

/// `tern migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// API socket of the tern whose guest moves.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Destination: tcp:HOST:PORT or unix:PATH.
    #[arg(long, required_unless_present = "estimate")]
    pub to: Option<String>,
    /// Largest acceptable guest pause at switchover, ms.
    #[arg(long, default_value_t = 300)]
    pub max_downtime: u64,
    /// Send-rate cap while the guest runs, bytes per second with an optional unit: 100M, 1G,
    /// 2Gbit. The final copy, with the guest paused, is not capped: it is bounded by
    /// --max-downtime instead.
    #[arg(long)]
    pub max_bandwidth: Option<String>,
    /// Give up (per --on-no-converge) after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Give up (per --on-no-converge) after this many rounds.
    #[arg(long)]
    pub max_iterations: Option<u32>,
    /// 0 = guest performance first ... 1 = finish as fast as possible.
    #[arg(long, default_value_t = 0.5)]
    pub aggression: f64,
    /// Largest vCPU throttle, percent.
    #[arg(long, default_value_t = 99.0)]
    pub max_throttle: f64,
    /// When the migration cannot converge: abort (guest keeps running here) or force (stop and copy).
    #[arg(long, default_value = "abort", value_parser = ["abort", "force"])]
    pub on_no_converge: String,
    /// Never throttle vCPUs (plain pre-copy).
    #[arg(long)]
    pub no_throttle: bool,
    /// Longest pause, in ms, a throttled vCPU may see before the switchover
    /// (default: none; at 99 % throttle the duty cycle sleeps up to ~1 s).
    #[arg(long)]
    pub max_stall: Option<u64>,
    /// Longest a device drain window stays open while its devices are busy, ms, before I/O
    /// resumes and the next round retries (default 500; keep it far below the guest's disk
    /// timeout).
    #[arg(long)]
    pub drain_window: Option<u64>,
    /// Print the statistics as JSON instead of a progress bar and summary.
    #[arg(long)]
    pub json: bool,
    /// Do not migrate: sample the guest and print the predicted cost per aggression level.
    #[arg(long)]
    pub estimate: bool,
    /// How long --estimate samples the guest, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub sample: f64,
}

/// `tern migrate-status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// API socket of the tern.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Commands that only need the API socket.
#[derive(Args, Debug)]
pub struct SocketArg {
    /// API socket of the tern.
    #[arg(long)]
    pub api_socket: PathBuf,
}

/// Parses a rate: `100M` (bytes/s), `1G`, `2Gbit`, `800Mbit`, plain bytes.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    let lower = t.to_ascii_lowercase();
    if let Some(num) = lower.strip_suffix("bit") {
        let (digits, mult) = match num.chars().last() {
            Some('k') => (&num[..num.len() - 1], 1e3),
            Some('m') => (&num[..num.len() - 1], 1e6),
            Some('g') => (&num[..num.len() - 1], 1e9),
            _ => (num, 1.0),
        };
        let v: f64 = digits
            .parse()
            .map_err(|_| format!("--max-bandwidth: '{s}' is not a rate (e.g. 100M, 1G, 2Gbit)"))?;
        if v <= 0.0 || !v.is_finite() {
            return Err(format!("--max-bandwidth: '{s}' must be positive"));
        }
        return Ok((v * mult / 8.0) as u64);
    }
    match crate::config::parse_size("--max-bandwidth", t) {
        Ok(0) => Err(format!("--max-bandwidth: '{s}' must be positive")),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100M"), Ok(100 << 20));
        assert_eq!(parse_rate("8Mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("10Gbit/s"), Ok(1_250_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
