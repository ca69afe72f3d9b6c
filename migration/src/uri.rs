//! Where a migration stream goes: `tcp:HOST:PORT` or `unix:PATH`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A migration endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUri {
    /// A TCP address; the host may be a name or an IP literal (IPv6 in brackets).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix stream socket.
    Unix(PathBuf),
}

/// Why a URI could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// Neither `tcp:` nor `unix:`.
    #[error("'{0}': a migration URI is tcp:HOST:PORT or unix:PATH")]
    Scheme(String),
    /// `tcp:` without a valid port.
    #[error("'{0}': expected tcp:HOST:PORT with a port from 1 to 65535")]
    Port(String),
    /// `tcp:` without a host.
    #[error("'{0}': the host is empty")]
    Host(String),
    /// `unix:` without a path.
    #[error("'{0}': the socket path is empty")]
    Path(String),
}

impl FromStr for MigrationUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| UriError::Port(s.into()))?;
            let port: u16 = port.parse().map_err(|_| UriError::Port(s.into()))?;
            if port == 0 {
                return Err(UriError::Port(s.into()));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(UriError::Host(s.into()));
            }
            Ok(MigrationUri::Tcp {
                host: host.to_string(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(UriError::Path(s.into()));
            }
            Ok(MigrationUri::Unix(PathBuf::from(path)))
        } else {
            Err(UriError::Scheme(s.into()))
        }
    }
}

impl fmt::Display for MigrationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationUri::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUri::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            MigrationUri::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "tcp:127.0.0.1:4444",
            "tcp:[::1]:80",
            "unix:/tmp/m.sock",
            "tcp:dst.example:9",
        ] {
            let u: MigrationUri = s.parse().unwrap();
            assert_eq!(u.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_uris() {
        assert!(matches!(
            "http://x".parse::<MigrationUri>(),
            Err(UriError::Scheme(_))
        ));
        assert!(matches!(
            "tcp:host".parse::<MigrationUri>(),
            Err(UriError::Port(_))
        ));
        assert!(matches!(
            "tcp:host:0".parse::<MigrationUri>(),
            Err(UriError::Port(_))
        ));
        assert!(matches!(
            "tcp:host:99999".parse::<MigrationUri>(),
            Err(UriError::Port(_))
        ));
        assert!(matches!(
            "tcp::80".parse::<MigrationUri>(),
            Err(UriError::Host(_))
        ));
        assert!(matches!(
            "unix:".parse::<MigrationUri>(),
            Err(UriError::Path(_))
        ));
    }
}
