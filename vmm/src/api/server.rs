//! The API server thread: accepts connections on the Unix socket, one
//! request each, and hands them to the VMM.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::http::{read_request, write_response, HttpError, Response};
use super::{route, ApiHandler};

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The socket path is taken by a file that is not a stale socket, or by a
    /// socket something still listens on; tern does not remove those.
    #[error("--api-socket: {} already exists and is not a stale socket (another tern running?)", .0.display())]
    Exists(PathBuf),
    /// Binding failed.
    #[error("--api-socket: cannot bind {}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The listening socket; removes its path when dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path` and serves requests on a thread. `path` must not exist,
    /// or be a stale socket (one nothing listens on: a tern that was killed
    /// leaves it behind), which is replaced.
    pub fn start(path: &Path, handler: Arc<dyn ApiHandler>) -> Result<Self, ApiServerError> {
        if let Ok(meta) = path.symlink_metadata() {
            if !is_stale_socket(path, &meta) {
                return Err(ApiServerError::Exists(path.to_owned()));
            }
            log::warn!("--api-socket: replacing stale socket {}", path.display());
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ApiServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let spawned = std::thread::Builder::new()
            .name("tern-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let handler = handler.clone();
                    // Each connection on its own short thread: a slow request
                    // (pause, estimate) does not block `GET /migration`.
                    let _ = std::thread::Builder::new()
                        .name("tern-api-conn".into())
                        .spawn(move || serve(conn, handler.as_ref()));
                }
            });
        if let Err(source) = spawned {
            let _ = std::fs::remove_file(path);
            return Err(ApiServerError::Bind {
                path: path.to_owned(),
                source,
            });
        }
        Ok(ApiServer {
            path: path.to_owned(),
        })
    }
}

/// A Unix socket whose listener is gone: connecting is refused.
fn is_stale_socket(path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_socket()
        && matches!(
            UnixStream::connect(path),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, handler: &dyn ApiHandler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let resp = match read_request(&conn) {
        Ok(req) => match route(&req) {
            Ok(api) => handler.handle(api),
            Err(resp) => resp,
        },
        Err(HttpError::TooLarge) => Response::error(413, "request too large"),
        Err(e) => Response::error(400, e.to_string()),
    };
    let _ = write_response(&conn, &resp);
}
