//! Loopback TCP throughput as `iperf3` measures it: the standard tool anyone
//! would run to learn a machine's TCP throughput, beside the benchmark's own
//! plain copies ([`crate::bench::loopback`]), so that the send rate can be
//! set against a figure measured outside this project. Run with its default
//! 128 KiB writes and with 1 MiB writes (as tern's frames are written); the
//! rate is what the receiving side got.

use std::io::ErrorKind;
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{run_checked, CommandSpec, Guarded};
use crate::vmm::Endpoint;

/// How many times the client tries to reach a server that is still starting.
const CONNECT_TRIES: u32 = 50;

/// The write sizes measured: `iperf3`'s default, and 1 MiB.
pub const WRITE_SIZES: [Option<usize>; 2] = [None, Some(1 << 20)];

/// A label for a write size of [`WRITE_SIZES`].
pub fn label(write_size: Option<usize>) -> String {
    match write_size {
        None => "iperf3, default writes".into(),
        Some(n) => format!("iperf3 -l {}K", n >> 10),
    }
}

/// A started `iperf3 -s` on a free loopback port, stopped on drop.
pub struct Server {
    port: u16,
    _process: Guarded,
}

impl Server {
    /// Starts the server; fails clearly when `iperf3` is not installed.
    pub fn start() -> Result<Server> {
        let port = Endpoint::free_loopback()?.port;
        let mut cmd = CommandSpec::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .command();
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let process = Guarded::spawn("iperf3 -s", cmd).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                Error::io("iperf3 is not installed (apt-get install iperf3)", source)
            }
            e => e,
        })?;
        Ok(Server {
            port,
            _process: process,
        })
    }

    /// Sends `bytes` to the server with `iperf3 -c`, `write_size` bytes per
    /// write (its default when `None`); MiB/s received.
    pub fn measure(&self, bytes: u64, write_size: Option<usize>) -> Result<f64> {
        let mut client = CommandSpec::new("iperf3").args([
            "-c".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-n".into(),
            bytes.to_string(),
            "-J".into(),
        ]);
        if let Some(n) = write_size {
            client = client.args(["-l".to_string(), n.to_string()]);
        }
        let mut last = String::new();
        for _ in 0..CONNECT_TRIES {
            // A refused connection exits non-zero (its reason is in the JSON
            // on stdout, which run_checked does not keep): try again.
            match run_checked(&client).map(|json| received_mib_per_s(&json)) {
                Ok(Ok(rate)) => return Ok(rate),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            // The server may not be listening yet.
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::vm(
            "iperf3",
            format!("no measurement from 127.0.0.1:{}: {last}", self.port),
        ))
    }
}

/// The receiving side's rate from `iperf3 -J` output, MiB/s, or why there is none.
pub fn received_mib_per_s(json: &str) -> std::result::Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable JSON ({e})"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .filter(|r| *r > 0.0)
        .map(|bits| bits / 8.0 / 1048576.0)
        .ok_or_else(|| "no end.sum_received.bits_per_second".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_receivers() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 1e10},
                        "sum_received": {"bits_per_second": 8388608e3}}}"#;
        assert_eq!(received_mib_per_s(json), Ok(1000.0));
    }

    #[test]
    fn an_error_or_a_missing_rate_is_no_measurement() {
        let refused = r#"{"start": {}, "end": {},
            "error": "unable to connect to server: Connection refused"}"#;
        assert_eq!(
            received_mib_per_s(refused),
            Err("unable to connect to server: Connection refused".into())
        );
        assert!(received_mib_per_s(r#"{"end": {}}"#).is_err());
        assert!(received_mib_per_s("").is_err());
    }

    #[test]
    fn labels_name_the_write_size() {
        assert_eq!(label(None), "iperf3, default writes");
        assert_eq!(label(Some(1 << 20)), "iperf3 -l 1024K");
    }
}
