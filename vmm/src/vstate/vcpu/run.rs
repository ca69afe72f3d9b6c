//! The vCPU thread: `KVM_RUN`, exit dispatch, parking, throttling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::control::{Target, VcpuCommand, VcpuControl, VcpuReply};
use super::duty_cycle::DutyCycleRunner;
use super::{kick, state, IoHandler, VcpuContext};
use crate::exit::ExitReason;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

enum Flow {
    Continue,
    Exit,
}

/// Body of a vCPU thread. Returns when the vCPU is told to exit or the guest
/// stops it; the reason for the latter goes to the exit notifier.
pub fn vcpu_loop(mut fd: VcpuFd, id: u8, ctx: Arc<VcpuContext>) {
    let control = ctx.controls[id as usize].clone();
    kick::publish_run_page(fd.get_kvm_run());
    // Precise sleeps for the duty cycle.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0, 0, 0) };
    let reason = match DutyCycleRunner::new() {
        Ok(mut duty) => run_until_stopped(&mut fd, id, &ctx, &control, &mut duty),
        Err(e) => Some(ExitReason::VcpuFailed {
            vcpu: id,
            error: e.to_string(),
        }),
    };
    kick::publish_run_page(std::ptr::null_mut());
    if let Some(reason) = reason {
        ctx.exit.exit(reason);
    }
    let mut st = control.lock();
    st.exited = true;
    st.parked = false;
    drop(st);
    control.notify();
}

fn run_until_stopped(
    fd: &mut VcpuFd,
    id: u8,
    ctx: &VcpuContext,
    control: &VcpuControl,
    duty: &mut DutyCycleRunner,
) -> Option<ExitReason> {
    loop {
        fd.set_kvm_immediate_exit(0);
        if control.take_kick_pending() || control.lock().target != Target::Run {
            if let Flow::Exit = park_if_asked(fd, id, ctx, control) {
                return None;
            }
        }
        if let Err(e) = duty.before_run(control) {
            return Some(ExitReason::VcpuFailed {
                vcpu: id,
                error: e.to_string(),
            });
        }
        let entered = Instant::now();
        let exit = fd.run();
        control
            .counters
            .run_ns
            .fetch_add(entered.elapsed().as_nanos() as u64, Ordering::Relaxed);
        control.counters.exits.fetch_add(1, Ordering::Relaxed);
        let io: &dyn IoHandler = ctx.io.as_ref();
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => io.pio_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => io.pio_write(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => io.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => io.mmio_write(addr, data),
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::Shutdown) => return Some(ExitReason::GuestTripleFault { vcpu: id }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => return Some(ExitReason::GuestShutdown),
                KVM_SYSTEM_EVENT_RESET => return Some(ExitReason::GuestReset),
                KVM_SYSTEM_EVENT_CRASH => {
                    return Some(ExitReason::GuestPanic("KVM reported a guest crash".into()))
                }
                other => {
                    return Some(ExitReason::VcpuFailed {
                        vcpu: id,
                        error: format!("unknown KVM system event {other}"),
                    })
                }
            },
            Ok(VcpuExit::InternalError) => return Some(internal_error(fd, id)),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(ExitReason::VcpuFailed {
                    vcpu: id,
                    error: format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
                ),
                })
            }
            Ok(VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL)) => {
                if let Err(e) = ctx
                    .dirty
                    .harvest_rings(&ctx.vm.fd, &[(id as usize, control)])
                {
                    return Some(ExitReason::VcpuFailed {
                        vcpu: id,
                        error: e.to_string(),
                    });
                }
            }
            Ok(other) => {
                return Some(ExitReason::VcpuFailed {
                    vcpu: id,
                    error: format!("unexpected KVM exit {other:?}"),
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Some(ExitReason::VcpuFailed {
                    vcpu: id,
                    error: format!("KVM_RUN failed: {e}"),
                })
            }
        }
    }
}

fn internal_error(fd: &mut VcpuFd, id: u8) -> ExitReason {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the union holds `internal`.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data = internal.data[..n].to_vec();
    let rip = fd.get_regs().ok().map(|r| r.rip);
    ExitReason::KvmInternalError {
        vcpu: id,
        suberror: internal.suberror,
        rip,
        data,
    }
}

/// Parks the vCPU while it is asked to pause, running commands meanwhile.
fn park_if_asked(fd: &mut VcpuFd, id: u8, ctx: &VcpuContext, control: &VcpuControl) -> Flow {
    if control.lock().target == Target::Run {
        return Flow::Continue;
    }
    // Complete any I/O the last exit left pending, so the saved state is
    // consistent: KVM finishes the instruction, then sees immediate_exit.
    fd.set_kvm_immediate_exit(1);
    let _ = fd.run();
    fd.set_kvm_immediate_exit(0);
    // Tell the guest it was stopped, so its watchdogs do not fire on resume.
    // Not every host supports it (kvm_pvm does not); harmless if it fails.
    let _ = fd.kvmclock_ctrl();

    let mut st = control.lock();
    st.parked = true;
    control.notify();
    loop {
        if let Some(cmd) = st.command.take() {
            drop(st);
            let reply = run_command(fd, id, ctx, cmd);
            st = control.lock();
            st.reply = Some(reply);
            control.notify();
            continue;
        }
        match st.target {
            Target::Run => {
                st.parked = false;
                control.notify();
                return Flow::Continue;
            }
            Target::Exit => return Flow::Exit,
            Target::Pause => st = control.wait(st),
        }
    }
}

fn run_command(fd: &mut VcpuFd, id: u8, ctx: &VcpuContext, cmd: VcpuCommand) -> VcpuReply {
    match cmd {
        VcpuCommand::Save => match state::save(fd, id, &ctx.msr_indices, ctx.xsave_bytes) {
            Ok(s) => VcpuReply::Saved(Box::new(s)),
            Err(e) => VcpuReply::Failed(e.to_string()),
        },
        VcpuCommand::Restore(s) => match state::restore(fd, id, &s) {
            Ok(()) => VcpuReply::Restored,
            Err(e) => VcpuReply::Failed(e.to_string()),
        },
    }
}
