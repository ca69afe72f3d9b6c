//! The client side of the API, used by `tern status|pause|resume|shutdown|migrate...`.

use std::os::unix::net::UnixStream;
use std::path::Path;

use super::http::{roundtrip, HttpError};

/// Errors talking to a running tern.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there.
    #[error("--api-socket: cannot connect to {}: {source}", path.display())]
    Connect {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("API request failed: {0}")]
    Http(#[from] HttpError),
    /// tern answered with an error.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// Status code.
        status: u16,
        /// tern's message.
        message: String,
    },
}

/// Sends one request; returns the JSON body of a 2xx answer.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let (status, value) = roundtrip(&stream, method, path, body)?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        let message = value
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("request failed")
            .to_string();
        Err(ClientError::Refused { status, message })
    }
}
