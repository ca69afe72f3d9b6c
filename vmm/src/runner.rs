//! `tern run`: build the VM, boot it or receive it, serve the API, and run
//! until the guest stops.

use std::sync::{Arc, Mutex};

use migration::receiver::{receive, ReceiveError};
use migration::transport::{Listener, TransportError};
use migration::uri::MigrationUri;

use crate::api::server::{ApiServer, ApiServerError};
use crate::api_handler::MachineApi;
use crate::arch::boot::BootSpec;
use crate::builder::{self, BuildError};
use crate::cli::RunArgs;
use crate::config::{self, ConfigError, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::{ExitNotifier, ExitReason};
use crate::machine::{Lifecycle, Machine};
use crate::migrate::batched_input::BatchedInput;
use crate::migrate::destination::TernDestination;
use crate::migrate::MigrationManager;
use crate::vstate::kvm::{self, KvmError, KvmHost};
use crate::vstate::memory::prefault;
use crate::vstate::vcpu::{Target, VcpuError};

/// Bytes the destination reads ahead of the migration stream's parser.
const READ_AHEAD: usize = 16 << 10;

/// Why `tern run` could not run the VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad command line.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Devices.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// The API socket.
    #[error(transparent)]
    Api(#[from] ApiServerError),
    /// vCPU threads.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// Waiting for the migration.
    #[error("--incoming: {0}")]
    Listen(#[from] TransportError),
    /// The incoming migration failed; no guest was started.
    #[error("incoming migration failed, no guest was started: {0}")]
    Incoming(#[from] ReceiveError),
    /// An OS resource.
    #[error("{0}")]
    Os(String),
}

/// Validates `tern run`'s flags into a `VmConfig`.
pub fn config_from_args(args: &RunArgs, host_is_pvm: bool) -> Result<VmConfig, ConfigError> {
    let mem_bytes = config::parse_size("--memory", &args.memory)?;
    config::validate_memory(mem_bytes, config::host_memory_bytes())?;
    let cpus = config::validate_cpus(args.cpus)?;
    let incoming = match &args.incoming {
        Some(s) => Some(
            s.parse::<MigrationUri>()
                .map_err(|e| ConfigError::BadOption {
                    flag: "--incoming",
                    why: e.to_string(),
                })?,
        ),
        None => None,
    };
    let kernel = match (&args.kernel, &incoming) {
        (Some(k), _) => config::readable_file("--kernel", k)?,
        (None, Some(_)) => Default::default(),
        (None, None) => {
            return Err(ConfigError::BadOption {
                flag: "--kernel",
                why: "a kernel is required unless --incoming is given".into(),
            })
        }
    };
    let initrd = match &args.initrd {
        Some(p) => Some(config::readable_file("--initrd", p)?),
        None => None,
    };
    let disks = args
        .disks
        .iter()
        .map(|d| config::parse_disk(d))
        .collect::<Result<_, _>>()?;
    let nets = args
        .nets
        .iter()
        .map(|n| config::parse_net(n))
        .collect::<Result<_, _>>()?;
    let vsock = args.vsock.as_deref().map(config::parse_vsock).transpose()?;
    Ok(VmConfig {
        kernel,
        initrd,
        cmdline: config::kernel_cmdline(
            args.cmdline.as_deref(),
            args.pvm_workarounds,
            host_is_pvm,
            cpus,
        ),
        cpus,
        mem_bytes,
        prefault: args.prefault,
        disks,
        nets,
        vsock,
        dirty_tracking: args.dirty_tracking,
        incoming,
    })
}

/// Runs a VM to its end and says why it ended.
pub fn run(args: &RunArgs) -> Result<ExitReason, RunError> {
    let host_is_pvm = kvm::host_is_pvm();
    let cfg = config_from_args(args, host_is_pvm)?;
    if let Some(p) = &args.api_socket {
        if p.symlink_metadata().is_ok() {
            return Err(ApiServerError::Exists(p.clone()).into());
        }
    }
    let host = KvmHost::open()?;
    let parts = builder::create(&host, cfg.mem_bytes, cfg.cpus, cfg.dirty_tracking)?;
    if cfg.prefault {
        let started = std::time::Instant::now();
        prefault(&parts.machine.mem).map_err(BuildError::from)?;
        log::info!(
            "--prefault: {} MiB of guest memory backed in {:.0} ms",
            cfg.mem_bytes >> 20,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let exit = Arc::new(
        ExitNotifier::new().map_err(|e| RunError::Os(format!("cannot create an eventfd: {e}")))?,
    );
    let panic = Arc::new(Mutex::new(None));
    let devices = DeviceManager::new(
        &parts.machine.vm.fd,
        &parts.machine.mem,
        &cfg,
        panic.clone(),
        cfg.incoming.is_none(),
    )?;
    let mut cmdline = cfg.cmdline.clone();
    for entry in devices.cmdline_entries() {
        cmdline.push(' ');
        cmdline.push_str(&entry);
    }
    if cfg.incoming.is_none() {
        let spec = BootSpec {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cmdline,
            cpus: cfg.cpus,
            mem_bytes: cfg.mem_bytes,
        };
        builder::load_and_configure(&parts, &spec)?;
    }
    let reset = devices
        .reset_evt()
        .map_err(|e| RunError::Os(format!("cannot duplicate the reset eventfd: {e}")))?;
    let subscribers = devices.subscribers();
    let devices = Arc::new(devices);
    let lifecycle = if cfg.incoming.is_some() {
        Lifecycle::Incoming
    } else {
        Lifecycle::Running
    };
    let incoming = cfg.incoming.clone();
    let machine = Arc::new(Machine::new(
        cfg,
        parts.machine,
        devices,
        exit.clone(),
        host_is_pvm,
        lifecycle,
    ));
    let migrations = Arc::new(MigrationManager::default());
    let api = match &args.api_socket {
        Some(p) => Some(ApiServer::start(
            p,
            Arc::new(MachineApi {
                machine: machine.clone(),
                migrations: migrations.clone(),
            }),
        )?),
        None => None,
    };

    match incoming {
        Some(uri) => {
            let listener = Listener::bind(&uri)?;
            eprintln!("tern: waiting for an incoming migration on {uri}");
            let stream = listener.accept()?;
            crate::migrate::socket_buffers::widen(&stream);
            drop(listener);
            // Buffered for the many small frames and the few bytes ahead of
            // each run's pages. Small on purpose: whatever the buffer holds
            // when a run's pages are read is copied once more, and a large
            // read ahead would put a quarter of every 1 MiB run through it.
            let reader = std::io::BufReader::with_capacity(
                READ_AHEAD,
                BatchedInput::new(
                    stream
                        .try_clone()
                        .map_err(|e| RunError::Os(format!("migration socket: {e}")))?,
                ),
            );
            let mut dest = TernDestination::new(machine.clone(), parts.vcpu_fds);
            let report = receive(reader, stream, &mut dest)?;
            let cpu = report
                .cpu
                .map(|c| format!(", {:.0} ms of CPU", c.as_secs_f64() * 1e3))
                .unwrap_or_default();
            eprintln!(
                "tern: guest received ({} rounds, {} data pages, {} zero pages, {} pages again \
                 after they arrived changed, {} bytes{cpu}) and running",
                report.rounds,
                report.data_pages,
                report.zero_pages,
                report.pages_resent_damaged,
                report.bytes
            );
        }
        None => machine.start_vcpus(parts.vcpu_fds, Target::Run)?,
    }

    let mut event_loop = EventLoop::new(exit.clone(), reset, panic)?;
    for s in subscribers {
        event_loop.add(s);
    }
    let reason = event_loop.run_until_exit(&exit)?;
    machine.stop_vcpus();
    if let (ExitReason::MigratedAway, Some(api)) = (&reason, &api) {
        // Give `tern migrate` the final statistics: wait until a client read
        // them (the read marks it), then until its response is written out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        migrations.wait_final_read(deadline);
        api.wait_idle(deadline);
    }
    Ok(reason)
}
