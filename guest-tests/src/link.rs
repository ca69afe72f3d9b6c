//! A shaped migration link: two network namespaces joined by a veth pair,
//! with a token-bucket filter on the source side's egress, so "the dirty
//! rate is above the link bandwidth" is real for every VMM. The source VMM
//! runs in one namespace, the destination VMM in the other; the runner
//! itself stays outside and talks to both over Unix sockets.
//!
//! The namespaces are deleted (which removes the veth pair and its qdisc)
//! when the [`ShapedLink`] is dropped; [`remove_stale`] deletes those left
//! by a runner that was killed outright.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;

use crate::error::Result;
use crate::process::{run_checked, CommandSpec};

/// Every namespace this runner creates starts with this.
const PREFIX: &str = "tern-run-";

/// How the link is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LinkShape {
    /// Source → destination rate, bytes per second.
    pub rate_bytes_per_sec: u64,
}

impl LinkShape {
    pub fn mib_per_sec(mib: f64) -> LinkShape {
        LinkShape {
            rate_bytes_per_sec: (mib * 1048576.0) as u64,
        }
    }

    pub fn rate_mib_s(&self) -> f64 {
        self.rate_bytes_per_sec as f64 / 1048576.0
    }

    /// The `tc qdisc add` arguments after `dev DEV root`: a token bucket at
    /// the rate, with a burst of 10 ms of traffic (at least 64 KiB, so one
    /// segmentation-offload packet fits) and at most 100 ms of queue.
    pub fn tbf_args(&self) -> Vec<String> {
        let burst = (self.rate_bytes_per_sec / 100).max(64 * 1024);
        vec![
            "tbf".into(),
            "rate".into(),
            format!("{}bit", self.rate_bytes_per_sec * 8),
            "burst".into(),
            burst.to_string(),
            "latency".into(),
            "100ms".into(),
        ]
    }
}

/// The two namespaces and the veth pair between them.
#[derive(Debug)]
pub struct ShapedLink {
    source_ns: String,
    destination_ns: String,
    source_addr: Ipv4Addr,
    destination_addr: Ipv4Addr,
    shape: LinkShape,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

const SOURCE_DEV: &str = "mig-src";
const DESTINATION_DEV: &str = "mig-dst";

fn ip(args: &[&str]) -> Result<String> {
    run_checked(&CommandSpec::new("ip").args(args.iter().copied()))
}

impl ShapedLink {
    /// Creates the namespaces, the veth pair, the addresses and the qdisc.
    /// Anything half-made is removed again if a step fails.
    pub fn create(shape: LinkShape) -> Result<ShapedLink> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}-{n}", std::process::id());
        let subnet = (n % 250) as u8;
        let link = ShapedLink {
            source_ns: format!("{tag}-src"),
            destination_ns: format!("{tag}-dst"),
            source_addr: Ipv4Addr::new(10, 213, subnet, 1),
            destination_addr: Ipv4Addr::new(10, 213, subnet, 2),
            shape,
        };
        // From here on, dropping `link` deletes whatever exists.
        link.build()?;
        Ok(link)
    }

    fn build(&self) -> Result<()> {
        let (a, b) = (self.source_ns.as_str(), self.destination_ns.as_str());
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&[
            "link",
            "add",
            SOURCE_DEV,
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            DESTINATION_DEV,
            "netns",
            b,
        ])?;
        for (ns, dev, addr) in [
            (a, SOURCE_DEV, self.source_addr),
            (b, DESTINATION_DEV, self.destination_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let mut tc = vec!["-n", a, "qdisc", "add", "dev", SOURCE_DEV, "root"];
        let tbf = self.shape.tbf_args();
        tc.extend(tbf.iter().map(String::as_str));
        run_checked(&CommandSpec::new("tc").args(tc))?;
        Ok(())
    }

    pub fn source_netns(&self) -> &str {
        &self.source_ns
    }

    pub fn destination_netns(&self) -> &str {
        &self.destination_ns
    }

    /// The address the destination listens on.
    pub fn destination_addr(&self) -> Ipv4Addr {
        self.destination_addr
    }

    pub fn shape(&self) -> LinkShape {
        self.shape
    }

    /// The qdisc's counters (`tc -s qdisc show`), for the record.
    pub fn qdisc_stats(&self) -> Option<String> {
        run_checked(&CommandSpec::new("tc").args([
            "-n",
            &self.source_ns,
            "-s",
            "qdisc",
            "show",
            "dev",
            SOURCE_DEV,
        ]))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        for ns in [&self.source_ns, &self.destination_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Deletes the namespaces of runners that no longer exist (killed with
/// SIGKILL, or a second Ctrl-C). Returns the names deleted.
pub fn remove_stale() -> Vec<String> {
    let Ok(list) = ip(&["netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "del", name]).is_ok()
        {
            removed.push(name.to_string());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_burst_holds_an_offload_packet_and_ten_ms() {
        let slow = LinkShape::mib_per_sec(1.0).tbf_args();
        assert_eq!(slow[2], format!("{}bit", 1048576 * 8));
        assert_eq!(slow[4], "65536");
        let fast = LinkShape::mib_per_sec(100.0).tbf_args();
        assert_eq!(fast[4], (100 * 1048576 / 100).to_string());
    }
}
