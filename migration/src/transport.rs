//! Sockets for migration streams: connect to or listen on a `MigrationUri`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::uri::MigrationUri;

/// A connected migration stream.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

/// Errors connecting or listening.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not reach the destination.
    #[error("cannot connect to {uri}")]
    Connect {
        /// Where.
        uri: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Could not listen.
    #[error("cannot listen on {uri}")]
    Listen {
        /// Where.
        uri: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Accepting failed.
    #[error("cannot accept a migration connection")]
    Accept(#[source] io::Error),
}

impl Stream {
    /// Connects to `uri`, giving up after `timeout` per address.
    pub fn connect(uri: &MigrationUri, timeout: Duration) -> Result<Self, TransportError> {
        let err = |source| TransportError::Connect {
            uri: uri.to_string(),
            source,
        };
        match uri {
            MigrationUri::Tcp { host, port } => {
                let addrs = (host.as_str(), *port).to_socket_addrs().map_err(err)?;
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true).map_err(err)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(err(last))
            }
            MigrationUri::Unix(path) => UnixStream::connect(path).map(Stream::Unix).map_err(err),
        }
    }

    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Self> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    /// Closes both directions for every handle (wakes a blocked reader).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Write timeout (None = block): a write that makes no progress for this
    /// long fails (`WouldBlock`), so a peer that stops reading cannot hold the
    /// writer forever.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        match self {
            Stream::Tcp(s) => s.write_timeout().ok().flatten(),
            Stream::Unix(s) => s.write_timeout().ok().flatten(),
        }
    }

    /// Read timeout (None = block).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        match self {
            Stream::Tcp(s) => s.read_timeout().ok().flatten(),
            Stream::Unix(s) => s.read_timeout().ok().flatten(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A listening socket for `tern run --incoming`.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix; the path is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `uri`. A Unix path must not exist.
    pub fn bind(uri: &MigrationUri) -> Result<Self, TransportError> {
        let err = |source| TransportError::Listen {
            uri: uri.to_string(),
            source,
        };
        match uri {
            MigrationUri::Tcp { host, port } => TcpListener::bind((host.as_str(), *port))
                .map(Listener::Tcp)
                .map_err(err),
            MigrationUri::Unix(path) => UnixListener::bind(path)
                .map(|l| Listener::Unix(l, path.clone()))
                .map_err(err),
        }
    }

    /// Waits for one connection.
    pub fn accept(&self) -> Result<Stream, TransportError> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().map_err(TransportError::Accept)?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => l
                .accept()
                .map(|(s, _)| Stream::Unix(s))
                .map_err(TransportError::Accept),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
