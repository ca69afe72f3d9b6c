//! tern migration core.
#![forbid(unsafe_code)]
