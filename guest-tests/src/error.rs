//! The runner's errors. Everything a VMM or the guest prints is data: a
//! surprise there becomes one of these, never a panic.

use std::path::PathBuf;

/// Why a scenario, a benchmark or a step of one could not be carried out.
///
/// A migration that does not converge is *not* an error: it is a result
/// (see [`crate::vmm::MigrationStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Ctrl-C, SIGTERM or SIGHUP: everything started was stopped.
    #[error("interrupted by a signal; VMs, helpers and namespaces were cleaned up")]
    Interrupted,

    /// An operating-system call on behalf of `what` failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A guest artifact or a binary is missing.
    #[error("artifact: {0}")]
    Artifact(String),

    /// A program the runner starts (tern, QEMU, ip, tc) failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },

    /// A VMM process did something unexpected (exited, never got ready).
    #[error("{vm}: {message}")]
    Vm { vm: String, message: String },

    /// The test guest did not boot, twice in a row.
    #[error("{vm}: the test guest did not boot (tried twice): first: {first}; retry: {retry}")]
    Boot {
        vm: String,
        first: String,
        retry: String,
    },

    /// The guest reported an error event, or said something the runner
    /// cannot read where it needed an answer.
    #[error("guest on {vm}: {message}")]
    Guest { vm: String, message: String },

    /// A wait ran out.
    #[error("{vm}: no {what} within {seconds} s")]
    Timeout {
        vm: String,
        what: String,
        seconds: f64,
    },

    /// A QMP command failed or its answer was malformed.
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },

    /// A tern API request failed or its answer was malformed.
    #[error("tern API {request}: {message}")]
    Api { request: String, message: String },

    /// A scenario name or override is wrong.
    #[error("scenario: {0}")]
    Scenario(String),

    /// Writing a result (JSON, table, SVG) failed.
    #[error("report {path}: {message}")]
    Report { path: PathBuf, message: String },
}

impl Error {
    /// An [`Error::Io`] naming what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Vm`].
    pub fn vm(vm: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Vm {
            vm: vm.into(),
            message: message.into(),
        }
    }
}

/// The runner's result type.
pub type Result<T> = std::result::Result<T, Error>;
