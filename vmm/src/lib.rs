//! tern VMM library.
