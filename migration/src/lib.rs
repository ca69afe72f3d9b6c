//! tern migration core.
#![forbid(unsafe_code)]
pub mod dirty;
pub mod uri;
