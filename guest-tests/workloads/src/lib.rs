//! tern's guest workloads, written once as `no_std` logic (no allocation)
//! and used by the ring-3 test guest, the Linux workload program and, with
//! the `std` feature, the host-side runner that reads the events back.
//!
//! - [`event`]: the `tern-guest: {json}` event lines (writer, and reader
//!   with `std`); [`command`]: the commands the host sends back.
//! - [`params`]: `tern.*` kernel command line parameters.
//! - [`page`], [`memory`], [`verify`]: the self-checking page format, the
//!   working set and its generation table, the verifier.
//! - [`dirtier`], [`pacer`]: the memory dirtier and its rate control.
//! - [`meter`], [`clock`]: the stall meter and clock continuity.
//! - [`run`], [`coord`], [`platform`]: the loop every CPU runs and how CPUs
//!   cooperate, over a [`platform::Platform`].
//! - [`disk`]: the disk workload (checked blocks, verify, bench) over a
//!   block device.
//! - [`netload`]: the net workload (numbered frames echoed by a peer) over
//!   a frame device.
//! - [`virtio`]: polling virtio-mmio drivers (split virtqueues, blk, net).
//! - [`bootdata`]: parsers for what a VMM hands the test guest (PVH start
//!   info, memory map, MP table) and its memory plan.
//!
//! The `std` feature (on by default; the test guest turns it off) adds the
//! event reader and the JSON parser it uses.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

mod names;

pub mod bootdata;
pub mod clock;
pub mod command;
pub mod coord;
pub mod dirtier;
pub mod disk;
pub mod event;
pub mod json;
#[cfg(feature = "std")]
pub mod json_read;
pub mod line;
pub mod memory;
pub mod meter;
pub mod netload;
pub mod pacer;
pub mod page;
pub mod params;
pub mod platform;
pub mod poller;
pub mod rng;
pub mod run;
#[cfg(test)]
mod testutil;
pub mod verify;
pub mod virtio;
