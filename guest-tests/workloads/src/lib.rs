//! Placeholder; replaced by the workloads crate.
#![cfg_attr(not(feature = "std"), no_std)]
