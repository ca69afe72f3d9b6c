//! `tern-runner`: runs a named migration scenario under tern and/or QEMU,
//! or a benchmark, and prints tables (see docs/harness.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use tern_guest_tests::artifacts;
use tern_guest_tests::bench;
use tern_guest_tests::interrupt;
use tern_guest_tests::link;
use tern_guest_tests::qemu::{driver::DEFAULT_CPU_MODEL, Qemu};
use tern_guest_tests::report::{self, summary::RunReport};
use tern_guest_tests::run::{run_scenario, RunContext};
use tern_guest_tests::scenario::{self, Scenario};
use tern_guest_tests::tern::Tern;
use tern_guest_tests::vmm::{Hypervisor, VmmKind};
use tern_guest_tests::workdir::WorkDir;

#[derive(Parser, Debug)]
#[command(
    name = "tern-runner",
    about = "tern's migration scenario runner and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// tern binary [default: $TERN_BIN, $CARGO_TARGET_DIR/release/tern, target/release/tern].
    #[arg(long, global = true)]
    tern: Option<PathBuf>,
    /// QEMU -cpu model.
    #[arg(long, global = true, default_value = DEFAULT_CPU_MODEL)]
    qemu_cpu: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum WhichVmm {
    Tern,
    Qemu,
    Both,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum QemuVariant {
    /// No auto-converge.
    Default,
    Autoconverge,
    Dirtylimit,
}

impl QemuVariant {
    fn kind(self) -> VmmKind {
        match self {
            QemuVariant::Default => VmmKind::Qemu,
            QemuVariant::Autoconverge => VmmKind::QemuAutoConverge,
            QemuVariant::Dirtylimit => VmmKind::QemuDirtyLimit,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the scenarios.
    List,
    /// Run a named scenario.
    Scenario {
        /// Scenario name (see `list`).
        name: String,
        /// Which VMM(s).
        #[arg(long, value_enum, default_value = "both")]
        vmm: WhichVmm,
        /// QEMU variants to run (comma-separated).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "default,autoconverge,dirtylimit"
        )]
        qemu_variants: Vec<QemuVariant>,
        /// Override a parameter: KEY=VALUE (repeatable; `list` shows the keys).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Directory for the result JSON, table and SVG.
        #[arg(long, default_value = "tern-results")]
        out: PathBuf,
    },
    /// Benchmarks (tables, no pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Delete network namespaces left by runners that were killed.
    Cleanup,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Boot time to the test guest's ready line and to Linux's `Run /init`, tern vs QEMU.
    Boot {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// virtio-blk sequential MiB/s and random IOPS at queue depth 32, tern vs QEMU.
    Disk {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// tern's memory overhead: VMM RSS minus the guest memory it touched.
    Memory {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Migration cost: idle 1 GiB and 4 GiB, dirty-low; tern vs QEMU.
    Migrate {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Send rate on a guest with no zero pages: tern, QEMU, loopback TCP.
    SendRate {
        /// Working set filled with non-zero pages, MiB.
        #[arg(long, default_value_t = 1024)]
        ws: u32,
        /// Migrations per VMM (alternating).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Loopback TCP throughput only: plain copies (hot buffers, memory to prefaulted memory, memory to fresh memory) and iperf3.
    Loopback {
        /// MiB to copy.
        #[arg(long, default_value_t = 4096)]
        mib: u64,
    },
}

fn hypervisors(
    cli: &Cli,
    which: WhichVmm,
    variants: &[QemuVariant],
) -> anyhow::Result<Vec<Box<dyn Hypervisor>>> {
    let mut out: Vec<Box<dyn Hypervisor>> = Vec::new();
    if which != WhichVmm::Qemu {
        out.push(Box::new(Tern::new(artifacts::tern_binary(
            cli.tern.as_deref(),
        )?)));
    }
    if which != WhichVmm::Tern {
        let binary = artifacts::qemu_binary()?;
        let mut seen = Vec::new();
        for v in variants {
            if !seen.contains(v) {
                seen.push(*v);
                out.push(Box::new(Qemu {
                    binary: binary.clone(),
                    cpu_model: cli.qemu_cpu.clone(),
                    variant: v.kind(),
                }));
            }
        }
    }
    Ok(out)
}

fn run_named(
    cli: &Cli,
    name: &str,
    which: WhichVmm,
    variants: &[QemuVariant],
    overrides: &[String],
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    let scenario = Scenario::build(name, overrides)?;
    if let Some(dep) = &scenario.depends_on {
        eprintln!("note: {name} depends on {dep}");
    }
    artifacts::require_kvm()?;
    let images = artifacts::guest_images()?;
    let hvs = hypervisors(cli, which, variants)?;
    let mut reports = Vec::new();
    for hv in &hvs {
        eprintln!("== {name} on {}", hv.kind().label());
        let dir = WorkDir::create(hv.kind().label())?;
        let ctx = RunContext {
            images: &images,
            work_dir: dir.path(),
            injection: None,
        };
        match run_scenario(hv.as_ref(), &scenario, &ctx) {
            Ok(r) => {
                let files = report::write_run(out, &r)?;
                println!("{}", report::summary::detail(&r));
                for f in files {
                    eprintln!("wrote {}", f.display());
                }
                reports.push(RunReport::Done(Box::new(r)));
            }
            Err(e) => {
                if matches!(e, tern_guest_tests::Error::Interrupted) {
                    return Err(e.into());
                }
                eprintln!("{name} on {}: {e}", hv.kind().label());
                reports.push(RunReport::Error {
                    vmm: hv.kind(),
                    scenario: name.to_string(),
                    error: e.to_string(),
                });
            }
        }
    }
    if reports.len() > 1 {
        println!(
            "{name}: side by side\n{}",
            report::summary::side_by_side(&reports)
        );
        let done: Vec<_> = reports.iter().filter_map(RunReport::result).collect();
        if !done.is_empty() {
            let svg = out.join(format!("{name}-compare.svg"));
            report::plot::render(&svg, &done)?;
            eprintln!("wrote {}", svg.display());
        }
    }
    Ok(reports
        .iter()
        .all(|r| r.result().is_some_and(|r| r.verdict.passed)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    interrupt::install()?;
    let stale = link::remove_stale();
    if !stale.is_empty() {
        eprintln!("removed namespaces of dead runners: {}", stale.join(", "));
    }
    match &cli.command {
        Command::List => {
            for name in scenario::NAMES {
                let s = scenario::named(name)?;
                let dep = s
                    .depends_on
                    .as_deref()
                    .map_or(String::new(), |d| format!(" [needs {d}]"));
                println!("{name:14} {}{dep}", s.description);
                println!(
                    "{:14} guest: {} | {} vCPU, {} MiB",
                    "",
                    s.guest.cmdline(),
                    s.cpus,
                    s.memory_mib
                );
            }
            println!("\n--set keys: {}", scenario::OVERRIDES);
        }
        Command::Scenario {
            name,
            vmm,
            qemu_variants,
            overrides,
            out,
        } => {
            let passed = run_named(&cli, name, *vmm, qemu_variants, overrides, out)
                .with_context(|| format!("scenario {name}"))?;
            if !passed {
                eprintln!("scenario {name}: not every run passed its checks (see above)");
                std::process::exit(1);
            }
        }
        Command::Bench(b) => {
            let tern = || artifacts::tern_binary(cli.tern.as_deref());
            let qemu = || -> anyhow::Result<Qemu> {
                Ok(Qemu {
                    binary: artifacts::qemu_binary()?,
                    cpu_model: cli.qemu_cpu.clone(),
                    variant: VmmKind::Qemu,
                })
            };
            match b {
                BenchCommand::Boot { runs } => {
                    println!(
                        "{}",
                        bench::boot::run(&Tern::new(tern()?), &qemu()?, *runs)?
                    )
                }
                BenchCommand::Disk { runs } => {
                    println!(
                        "{}",
                        bench::disk::run(&Tern::new(tern()?), &qemu()?, *runs)?
                    )
                }
                BenchCommand::Memory { runs } => {
                    println!("{}", bench::memory::run(&Tern::new(tern()?), *runs)?)
                }
                BenchCommand::Migrate { runs } => {
                    println!(
                        "{}",
                        bench::migrate::run(&Tern::new(tern()?), &qemu()?, *runs)?
                    )
                }
                BenchCommand::SendRate { ws, runs } => {
                    println!(
                        "{}",
                        bench::send_rate::run(&Tern::new(tern()?), &qemu()?, *ws, *runs)?
                    )
                }
                BenchCommand::Loopback { mib } => {
                    use bench::loopback::{measure_copy, Sink, Source};
                    for (label, source, sink) in [
                        (
                            "reused buffer to reused buffer",
                            Source::Reused,
                            Sink::Reused,
                        ),
                        (
                            "memory to prefaulted memory",
                            Source::Memory,
                            Sink::PrefaultedMemory,
                        ),
                        ("memory to fresh memory", Source::Memory, Sink::FreshMemory),
                    ] {
                        let r = measure_copy(*mib << 20, source, sink)?;
                        println!(
                            "loopback TCP copy, {label}: {:.0} MiB/s ({} MiB in {:.2} s)",
                            r.mib_per_s(),
                            mib,
                            r.seconds
                        );
                    }
                    let server = bench::iperf::Server::start()?;
                    for write_size in bench::iperf::WRITE_SIZES {
                        println!(
                            "loopback TCP, {}: {:.0} MiB/s ({} MiB)",
                            bench::iperf::label(write_size),
                            server.measure(*mib << 20, write_size)?,
                            mib
                        );
                    }
                }
            }
        }
        Command::Cleanup => {
            println!(
                "removed: {}",
                if stale.is_empty() {
                    "nothing".into()
                } else {
                    stale.join(", ")
                }
            );
        }
    }
    Ok(())
}
