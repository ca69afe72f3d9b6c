//! tern, driven through its CLI and HTTP API only.

pub mod api;
pub mod driver;
pub mod stats;

pub use driver::Tern;
