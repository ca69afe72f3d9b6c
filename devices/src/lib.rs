//! tern devices.
