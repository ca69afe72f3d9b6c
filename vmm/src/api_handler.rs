//! What each API request does to the machine.

use std::sync::Arc;

use serde_json::json;

use crate::api::http::Response;
use crate::api::{ApiHandler, ApiRequest};
use crate::exit::ExitReason;
use crate::machine::{LifecycleError, Machine};
use crate::migrate::MigrationManager;
use crate::vstate::vm::DirtyTracking;

/// The API's view of the machine and its migrations.
pub struct MachineApi {
    /// The VM.
    pub machine: Arc<Machine>,
    /// Outgoing migrations.
    pub migrations: Arc<MigrationManager>,
}

fn lifecycle_error(e: LifecycleError) -> Response {
    match e {
        LifecycleError::WrongState(_) | LifecycleError::Migrating => {
            Response::error(409, e.to_string())
        }
        LifecycleError::Vcpu(_) => Response::error(500, e.to_string()),
    }
}

impl ApiHandler for MachineApi {
    fn handle(&self, req: ApiRequest) -> Response {
        let m = &self.machine;
        match req {
            ApiRequest::GetVm => {
                let counters: Vec<_> = m
                    .controls
                    .iter()
                    .map(|c| {
                        use std::sync::atomic::Ordering::Relaxed;
                        json!({
                            "throttle_pct": c.throttle() * 100.0,
                            "throttle_period_ms": c.throttle_period().as_secs_f64() * 1e3,
                            "run_ns": c.counters.run_ns.load(Relaxed),
                            "throttled_ns": c.counters.throttled_ns.load(Relaxed),
                            "exits": c.counters.exits.load(Relaxed),
                            "dirty_ring_pages": c.counters.dirty_ring_pages.load(Relaxed),
                        })
                    })
                    .collect();
                Response::ok(json!({
                    "state": m.lifecycle(),
                    "migrating": m.is_migrating(),
                    "cpus": m.config.cpus,
                    "memory_bytes": m.config.mem_bytes,
                    "dirty_tracking": match m.vm.tracking {
                        DirtyTracking::Ring { .. } => "ring",
                        DirtyTracking::Bitmap => "bitmap",
                    },
                    "kvm_pvm_host": m.host_is_pvm,
                    "vcpus": counters,
                }))
            }
            ApiRequest::Pause => match m.pause() {
                Ok(took) => {
                    Response::ok(json!({"state": "paused", "pause_us": took.as_micros() as u64}))
                }
                Err(e) => lifecycle_error(e),
            },
            ApiRequest::Resume => match m.resume() {
                Ok(()) => Response::ok(json!({"state": "running"})),
                Err(e) => lifecycle_error(e),
            },
            ApiRequest::Shutdown => {
                m.exit.exit(ExitReason::ApiShutdown);
                Response::ok(json!({"state": "stopping"}))
            }
            ApiRequest::SetThrottle(t) => {
                if m.is_migrating() {
                    return Response::error(409, "a migration controls the throttle");
                }
                let n = m.controls.len();
                if t.percent.len() != 1 && t.percent.len() != n {
                    return Response::error(
                        400,
                        format!("give 1 or {n} throttle values, not {}", t.percent.len()),
                    );
                }
                if let Some(bad) = t.percent.iter().find(|p| !(0.0..=99.0).contains(*p)) {
                    return Response::error(
                        400,
                        format!("throttle {bad} is outside 0..99 percent"),
                    );
                }
                if let Some(ms) = t.period_ms {
                    if !(1.0..=1000.0).contains(&ms) {
                        return Response::error(
                            400,
                            format!("period {ms} ms is outside 1..1000 ms"),
                        );
                    }
                    for c in &m.controls {
                        c.set_throttle_period(std::time::Duration::from_secs_f64(ms / 1e3));
                    }
                }
                for (i, c) in m.controls.iter().enumerate() {
                    let p = if t.percent.len() == 1 {
                        t.percent[0]
                    } else {
                        t.percent[i]
                    };
                    c.set_throttle(p / 100.0);
                }
                m.with_vcpus(|v| {
                    for i in 0..n {
                        v.set_throttle(i, m.controls[i].throttle());
                    }
                });
                Response::ok(json!({"throttle_pct": t.percent}))
            }
            ApiRequest::StartMigration(req) => self.migrations.start(m.clone(), req),
            ApiRequest::GetMigration => self.migrations.status(),
            ApiRequest::CancelMigration => self.migrations.cancel(),
            ApiRequest::Estimate(req) => self.migrations.estimate(m.clone(), req),
            ApiRequest::DeviceFault { id, fault } => match m.devices.set_fault(&id, &fault) {
                Ok(()) => Response::ok(
                    json!({"device": id, "delay_ms": fault.delay_ms, "hold": fault.hold}),
                ),
                Err(e) => Response::error(404, e),
            },
        }
    }
}
