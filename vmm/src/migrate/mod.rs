//! Live migration, the I/O side: the source loop, the destination host, and
//! the manager that the API drives. The policy lives in the `migration`
//! crate's pure controller; this module only observes and obeys.

pub mod batched_input;
pub mod destination;
pub mod estimate;
pub mod guest_send;
pub mod guest_state;
pub mod harvest;
pub mod send;
pub mod socket_buffers;
pub mod source;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use migration::sender::SendError;
use migration::stats::{DrainStats, MigrationPhase, MigrationStats};
use serde_json::json;

use crate::api::http::Response;
use crate::api::types::{EstimateRequest, MigrateRequest};
use crate::machine::{Lifecycle, Machine};

/// Why a migration did not complete. The guest keeps running on the source in every case.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The request was invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The destination could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The session failed (refused, destination failed or gone, corrupt stream, timeout).
    #[error(transparent)]
    Session(#[from] SendError),
    /// Dirty tracking failed.
    #[error("dirty tracking: {0}")]
    DirtyLog(String),
    /// Reading guest memory failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Pausing or saving vCPUs failed.
    #[error("vCPUs: {0}")]
    Vcpu(String),
    /// A device could not be quiesced or saved.
    #[error("devices: {0}")]
    Device(String),
    /// Cancelled by the user.
    #[error("cancelled")]
    Cancelled,
    /// Stopped by the convergence policy.
    #[error("{0}")]
    Aborted(String),
}

/// Shared between the migration thread and the API.
pub struct MigrationControl {
    /// Set by `DELETE /migration`.
    pub cancel: AtomicBool,
    stats: Mutex<MigrationStats>,
    /// Device drain counters.
    pub drain: Mutex<DrainStats>,
    started: Instant,
}

impl MigrationControl {
    fn new(to: &str, tracking: &str) -> Self {
        MigrationControl {
            cancel: AtomicBool::new(false),
            stats: Mutex::new(MigrationStats {
                phase: MigrationPhase::Setup,
                to: to.to_string(),
                dirty_tracking: tracking.to_string(),
                ..Default::default()
            }),
            drain: Mutex::new(DrainStats::default()),
            started: Instant::now(),
        }
    }

    /// The statistics, locked.
    pub fn stats(&self) -> MutexGuard<'_, MigrationStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates the statistics.
    pub fn update(&self, f: impl FnOnce(&mut MigrationStats)) {
        f(&mut self.stats());
    }

    /// A consistent copy for reporting, with live totals filled in.
    pub fn snapshot(&self) -> MigrationStats {
        let mut s = self.stats().clone();
        if !s.phase.is_final() {
            s.total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        }
        s.drain = self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s
    }
}

/// Starts, reports and cancels outgoing migrations.
#[derive(Default)]
pub struct MigrationManager {
    current: Mutex<Option<Arc<MigrationControl>>>,
    final_read: AtomicBool,
}

impl MigrationManager {
    /// Starts a migration on its own thread (`PUT /migration`).
    pub fn start(&self, machine: Arc<Machine>, req: MigrateRequest) -> Response {
        if machine.lifecycle() != Lifecycle::Running {
            return Response::error(
                409,
                format!("cannot migrate: the VM is {:?}", machine.lifecycle()).to_lowercase(),
            );
        }
        if let Err(e) = req.to.parse::<migration::uri::MigrationUri>() {
            return Response::error(400, e.to_string());
        }
        if let Err(e) = source::controller_config(&req, machine.controls.len()) {
            return Response::error(400, e.to_string());
        }
        if !machine.begin_migration() {
            return Response::error(409, "a migration is already running");
        }
        let tracking = match machine.vm.tracking {
            crate::vstate::vm::DirtyTracking::Ring { .. } => "ring",
            crate::vstate::vm::DirtyTracking::Bitmap => "bitmap",
        };
        let ctl = Arc::new(MigrationControl::new(&req.to, tracking));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctl.clone());
        let thread_ctl = ctl.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-mig".into())
            .spawn(move || {
                let result = source::run(&machine, &req, &thread_ctl);
                if let Err(e) = result {
                    source::restore_running_guest(&machine);
                    let phase = match e {
                        MigrationError::Cancelled => MigrationPhase::Cancelled,
                        MigrationError::Aborted(_) => MigrationPhase::Aborted,
                        _ => MigrationPhase::Failed,
                    };
                    eprintln!(
                        "tern: migration to {} {}: {e}; the guest keeps running here",
                        req.to,
                        match phase {
                            MigrationPhase::Cancelled => "cancelled",
                            MigrationPhase::Aborted => "aborted",
                            _ => "failed",
                        }
                    );
                    thread_ctl.update(|s| {
                        s.phase = phase;
                        s.error = Some(e.to_string());
                        s.total_ms = thread_ctl.started.elapsed().as_secs_f64() * 1e3;
                        s.throttle_pct = vec![0.0; s.throttle_pct.len()];
                    });
                }
                machine.end_migration();
            });
        match spawned {
            Ok(_) => Response {
                status: 202,
                body: json!({"phase": "setup", "to": ctl.stats().to}),
            },
            Err(e) => Response::error(500, format!("cannot start the migration thread: {e}")),
        }
    }

    /// The current or last migration's statistics (`GET /migration`).
    pub fn status(&self) -> Response {
        match self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(ctl) => {
                let snap = ctl.snapshot();
                if snap.phase.is_final() {
                    self.final_read
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Response::ok(serde_json::to_value(snap).unwrap_or_default())
            }
            None => {
                Response::ok(serde_json::to_value(MigrationStats::default()).unwrap_or_default())
            }
        }
    }

    /// After the guest left for the destination: waits until `deadline` for
    /// a client to read the final statistics, so `tern migrate` can show
    /// them. The read is marked when they are taken, before the response is
    /// written: the API server's `wait_idle` covers the rest.
    pub fn wait_final_read(&self, deadline: Instant) {
        while !self.final_read.load(std::sync::atomic::Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Cancels the running migration (`DELETE /migration`).
    pub fn cancel(&self) -> Response {
        match self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(ctl) if !ctl.stats().phase.is_final() => {
                ctl.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                Response {
                    status: 202,
                    body: json!({"cancelling": true}),
                }
            }
            _ => Response::error(409, "no migration is running"),
        }
    }

    /// Samples the guest and predicts a migration's cost (`PUT /migration/estimate`).
    pub fn estimate(&self, machine: Arc<Machine>, req: EstimateRequest) -> Response {
        if machine.lifecycle() != Lifecycle::Running {
            return Response::error(409, "cannot estimate: the VM is not running");
        }
        if !machine.begin_migration() {
            return Response::error(409, "a migration is running");
        }
        let r = estimate::run(&machine, &req);
        machine.end_migration();
        match r {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(400, e.to_string()),
        }
    }
}
