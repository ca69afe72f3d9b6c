//! The API server thread: accepts connections on the Unix socket, one
//! request each, and hands them to the VMM.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Connections accepted whose response is not yet written.
    in_flight: Arc<AtomicUsize>,
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
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counted = in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let handler = handler.clone();
                    // Counted from accept to the response's last byte, so
                    // the process does not exit in between (see `wait_idle`).
                    let in_flight = InFlight::enter(&counted);
                    // Each connection on its own short thread: a slow request
                    // (pause, estimate) does not block `GET /migration`.
                    let _ = std::thread::Builder::new()
                        .name("tern-api-conn".into())
                        .spawn(move || {
                            serve(conn, handler.as_ref());
                            drop(in_flight);
                        });
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
            in_flight,
        })
    }

    /// Waits until no response is being prepared or written, or until
    /// `deadline`. Before the process exits: a client that asked for the
    /// final migration statistics gets all of them, not a closed socket.
    /// Returns whether the server went idle.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One connection counted as in flight until dropped (also when its thread
/// could not be spawned: the closure, and with it the guard, is dropped).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::http::roundtrip;
    use crate::api::ApiRequest;
    use std::sync::mpsc;

    /// Answers after `delay`, saying the handler has started first.
    struct Slow {
        delay: Duration,
        started: std::sync::Mutex<mpsc::Sender<()>>,
    }

    impl ApiHandler for Slow {
        fn handle(&self, _req: ApiRequest) -> Response {
            let _ = self.started.lock().unwrap().send(());
            std::thread::sleep(self.delay);
            Response::ok(serde_json::json!({"phase": "completed"}))
        }
    }

    #[test]
    fn wait_idle_covers_a_response_being_written() {
        let dir = std::env::temp_dir().join(format!("tern-api-idle-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let (tx, started) = mpsc::channel();
        let server = ApiServer::start(
            &sock,
            Arc::new(Slow {
                delay: Duration::from_millis(300),
                started: std::sync::Mutex::new(tx),
            }),
        )
        .unwrap();
        assert!(server.wait_idle(Instant::now()), "idle before any request");

        let client_sock = sock.clone();
        let client = std::thread::spawn(move || {
            let conn = UnixStream::connect(client_sock).unwrap();
            roundtrip(conn, "GET", "/migration", None)
        });
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // The handler is running: not idle, and a short deadline says so.
        assert!(!server.wait_idle(Instant::now() + Duration::from_millis(20)));
        assert!(server.wait_idle(Instant::now() + Duration::from_secs(5)));
        // Once idle, the whole response has been written: dropping the
        // server (as the exiting process would) does not cut the client off.
        drop(server);
        let (status, body) = client.join().unwrap().expect("a complete response");
        assert_eq!(status, 200);
        assert_eq!(body["phase"], "completed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
