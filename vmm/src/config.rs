//! Parsing and validating what the user asked for, once, into a `VmConfig`.
//! Every error names the flag or the path it is about.

use std::path::{Path, PathBuf};

use migration::uri::MigrationUri;

use crate::vstate::vm::DirtyTrackingChoice;

/// Errors in the command line or the host's ability to satisfy it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size could not be parsed.
    #[error("{flag}: '{value}' is not a size (use e.g. 512M or 2G)")]
    BadSize {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A value is out of range.
    #[error("{flag}: {why}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// Why it does not work.
        why: String,
    },
    /// A file given on the command line cannot be used.
    #[error("{flag}: cannot use {}: {why}", path.display())]
    BadPath {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A device option string is malformed.
    #[error("{flag}: {why}")]
    BadOption {
        /// The flag.
        flag: &'static str,
        /// Why.
        why: String,
    },
}

/// Parses `512M`, `2G`, `1024K`, `4096` (bytes) and the like. Suffixes are
/// binary (K = 1024); an optional trailing `B`/`iB` is accepted.
pub fn parse_size(flag: &'static str, value: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize {
        flag,
        value: value.to_string(),
    };
    let v = value.trim();
    let v = v
        .strip_suffix("iB")
        .or_else(|| v.strip_suffix('B'))
        .unwrap_or(v);
    let (digits, shift) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 30),
        Some('T' | 't') => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Formats a byte count for people (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Total RAM of this host, from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Checks that the guest memory size is usable.
pub fn validate_memory(bytes: u64, host: Option<u64>) -> Result<(), ConfigError> {
    const MIN: u64 = 16 << 20;
    if bytes < MIN {
        return Err(ConfigError::OutOfRange {
            flag: "--memory",
            why: format!("{} is too small (at least 16M)", human_bytes(bytes)),
        });
    }
    if bytes % 4096 != 0 {
        return Err(ConfigError::OutOfRange {
            flag: "--memory",
            why: "must be a multiple of 4 KiB".into(),
        });
    }
    if let Some(host) = host {
        if bytes > host {
            return Err(ConfigError::OutOfRange {
                flag: "--memory",
                why: format!(
                    "{} is more than this host's {}",
                    human_bytes(bytes),
                    human_bytes(host)
                ),
            });
        }
    }
    Ok(())
}

/// Checks the vCPU count.
pub fn validate_cpus(cpus: u32) -> Result<u8, ConfigError> {
    if cpus == 0 || cpus > 64 {
        return Err(ConfigError::OutOfRange {
            flag: "--cpus",
            why: format!("{cpus} vCPUs: must be between 1 and 64"),
        });
    }
    Ok(cpus as u8)
}

/// Checks that `path` is a readable regular file.
pub fn readable_file(flag: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    let bad = |why: String| ConfigError::BadPath {
        flag,
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    Ok(path.to_owned())
}

/// A device option string split up: the leading value (if it has no `=`) and the pairs.
pub type SplitOptions<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>);

/// Splits `a,k=v,k2=v2` into the leading value (if it has no `=`) and the pairs.
pub fn split_options<'a>(flag: &'static str, s: &'a str) -> Result<SplitOptions<'a>, ConfigError> {
    let mut lead = None;
    let mut pairs = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => pairs.push((k, v)),
            None if i == 0 && !part.is_empty() => lead = Some(part),
            _ => {
                return Err(ConfigError::BadOption {
                    flag,
                    why: format!("cannot parse '{part}' in '{s}'"),
                })
            }
        }
    }
    Ok((lead, pairs))
}

/// A disk for virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// Parses `--disk PATH[,readonly=on]` (also `path=PATH`).
pub fn parse_disk(s: &str) -> Result<DiskConfig, ConfigError> {
    let (lead, pairs) = split_options("--disk", s)?;
    let mut path = lead.map(PathBuf::from);
    let mut readonly = false;
    for (k, v) in pairs {
        match k {
            "path" => path = Some(PathBuf::from(v)),
            "readonly" => readonly = parse_on_off("--disk", k, v)?,
            _ => {
                return Err(ConfigError::BadOption {
                    flag: "--disk",
                    why: format!("unknown option '{k}' (known: path, readonly)"),
                })
            }
        }
    }
    let path = path.ok_or_else(|| ConfigError::BadOption {
        flag: "--disk",
        why: "no path given".into(),
    })?;
    let meta = std::fs::metadata(&path).map_err(|e| ConfigError::BadPath {
        flag: "--disk",
        path: path.clone(),
        why: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ConfigError::BadPath {
            flag: "--disk",
            path,
            why: "not a regular file".into(),
        });
    }
    Ok(DiskConfig { path, readonly })
}

fn parse_on_off(flag: &'static str, key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::BadOption {
            flag,
            why: format!("{key}={v}: expected on or off"),
        }),
    }
}

/// A network interface on a tap device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap interface name.
    pub tap: String,
    /// MAC address; generated when absent.
    pub mac: Option<[u8; 6]>,
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Parses `--net tap=NAME[,mac=MAC]`.
pub fn parse_net(s: &str) -> Result<NetConfig, ConfigError> {
    let (lead, pairs) = split_options("--net", s)?;
    let mut tap = lead.map(str::to_string);
    let mut mac = None;
    for (k, v) in pairs {
        match k {
            "tap" => tap = Some(v.to_string()),
            "mac" => {
                mac = Some(parse_mac(v).ok_or_else(|| ConfigError::BadOption {
                    flag: "--net",
                    why: format!("'{v}' is not a MAC address"),
                })?)
            }
            _ => {
                return Err(ConfigError::BadOption {
                    flag: "--net",
                    why: format!("unknown option '{k}' (known: tap, mac)"),
                })
            }
        }
    }
    let tap = tap
        .filter(|t| !t.is_empty() && t.len() < 16)
        .ok_or_else(|| ConfigError::BadOption {
            flag: "--net",
            why: "tap=NAME is required (at most 15 characters)".into(),
        })?;
    Ok(NetConfig { tap, mac })
}

/// A vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest context id (≥ 3).
    pub cid: u64,
    /// Host Unix socket path.
    pub socket: PathBuf,
}

/// Parses `--vsock cid=N,socket=PATH`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, ConfigError> {
    let (_, pairs) = split_options("--vsock", s)?;
    let mut cid = None;
    let mut socket = None;
    for (k, v) in pairs {
        match k {
            "cid" => {
                cid = Some(v.parse::<u64>().map_err(|_| ConfigError::BadOption {
                    flag: "--vsock",
                    why: format!("cid '{v}' is not a number"),
                })?)
            }
            "socket" => socket = Some(PathBuf::from(v)),
            _ => {
                return Err(ConfigError::BadOption {
                    flag: "--vsock",
                    why: format!("unknown option '{k}' (known: cid, socket)"),
                })
            }
        }
    }
    let cid = cid
        .filter(|&c| (3..u64::from(u32::MAX)).contains(&c))
        .ok_or_else(|| ConfigError::BadOption {
            flag: "--vsock",
            why: "cid=N with N ≥ 3 is required".into(),
        })?;
    let socket = socket.ok_or_else(|| ConfigError::BadOption {
        flag: "--vsock",
        why: "socket=PATH is required".into(),
    })?;
    Ok(VsockConfig { cid, socket })
}

/// Whether to add the kvm_pvm guest-kernel workarounds to the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PvmWorkarounds {
    /// When `/dev/kvm` is provided by kvm_pvm.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Kernel command-line parameters a Linux guest needs on a kvm_pvm host: its
/// instruction emulator cannot run XSAVE/XRSTOR, CMPXCHG16B or POPCNT in
/// kernel mode, and the others are cleared to stay clear of what it may lack.
pub const PVM_CMDLINE: &str =
    "noxsave nofsgsbase clearcpuid=cx16,popcnt,smap,smep,rdrand,rdseed,serialize,invpcid,pcid,rdpid";

/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// A validated VM configuration.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Command line without device entries.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// Back all guest RAM before starting.
    pub prefault: bool,
    /// Disks.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces.
    pub nets: Vec<NetConfig>,
    /// vsock device.
    pub vsock: Option<VsockConfig>,
    /// Dirty tracking mode.
    pub dirty_tracking: DirtyTrackingChoice,
    /// Wait for an incoming migration instead of booting.
    pub incoming: Option<MigrationUri>,
}

/// Confines a guest's user space to vCPU 0 on a kvm_pvm host with `cpus` vCPUs
/// (`None` with one). A process that moves between vCPUs there can lose a
/// write it made to a page it had just faulted in: under tern and QEMU alike,
/// 1–9 of every 300 freshly executed busybox processes died in glibc's start-up
/// with the TLS data they had just written gone, none with one vCPU or with user space held on
/// one (docs/results.md). `isolcpus=` leaves the kernel SMP — its threads,
/// interrupts and per-CPU work use every vCPU — and starts init, so all of
/// user space, on the housekeeping vCPU 0.
fn pvm_isolcpus(cpus: u8) -> Option<String> {
    match cpus {
        0 | 1 => None,
        2 => Some("isolcpus=1".to_string()),
        n => Some(format!("isolcpus=1-{}", n - 1)),
    }
}

/// Builds the kernel command line: the user's (or the default), plus the
/// kvm_pvm workarounds when they apply (`isolcpus=` only with several vCPUs,
/// and never over one the user gave).
pub fn kernel_cmdline(
    user: Option<&str>,
    workarounds: PvmWorkarounds,
    host_is_pvm: bool,
    cpus: u8,
) -> String {
    let mut s = user.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    let add = match workarounds {
        PvmWorkarounds::Auto => host_is_pvm,
        PvmWorkarounds::On => true,
        PvmWorkarounds::Off => false,
    };
    if add {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(PVM_CMDLINE);
        let user_isolates = s.split_whitespace().any(|w| w.starts_with("isolcpus="));
        if let Some(isolate) = pvm_isolcpus(cpus).filter(|_| !user_isolates) {
            s.push(' ');
            s.push_str(&isolate);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--memory", "512M"), Ok(512 << 20));
        assert_eq!(parse_size("--memory", "2G"), Ok(2 << 30));
        assert_eq!(parse_size("--memory", "2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("--memory", "4096"), Ok(4096));
        assert_eq!(parse_size("--memory", "0"), Ok(0));
        for bad in ["abc", "", "M", "-1G", "1.5G", "99999999999999999999G"] {
            assert!(parse_size("--memory", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_limits() {
        assert!(validate_memory(0, None)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(validate_memory(1 << 40, Some(24 << 30))
            .unwrap_err()
            .to_string()
            .contains("more than this host"));
        assert!(validate_memory(512 << 20, Some(24 << 30)).is_ok());
    }

    #[test]
    fn cpus() {
        assert!(validate_cpus(0).unwrap_err().to_string().contains("--cpus"));
        assert_eq!(validate_cpus(2), Ok(2));
        assert!(validate_cpus(65).is_err());
    }

    #[test]
    fn nets_and_macs() {
        let n = parse_net("tap=tern0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.tap, "tern0");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert!(parse_net("mac=52:54:00:12:34:56").is_err());
        assert!(parse_net("tap=x,mac=zz").is_err());
        assert!(parse_net("tap=x,colour=red").is_err());
    }

    #[test]
    fn vsock() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!(v.cid, 3);
        assert!(parse_vsock("cid=2,socket=/tmp/x").is_err());
        assert!(parse_vsock("cid=3").is_err());
    }

    #[test]
    fn pvm_workarounds_only_when_asked_or_detected() {
        assert!(kernel_cmdline(None, PvmWorkarounds::Auto, true, 1).contains("noxsave"));
        assert!(!kernel_cmdline(None, PvmWorkarounds::Auto, false, 1).contains("noxsave"));
        assert!(kernel_cmdline(Some("x"), PvmWorkarounds::On, false, 1).ends_with(PVM_CMDLINE));
        assert_eq!(kernel_cmdline(Some("x"), PvmWorkarounds::Off, true, 4), "x");
    }

    #[test]
    fn pvm_keeps_user_space_on_vcpu_0_when_there_are_several() {
        let one = kernel_cmdline(Some("x"), PvmWorkarounds::On, false, 1);
        assert!(!one.contains("isolcpus"), "{one}");
        let two = kernel_cmdline(Some("x"), PvmWorkarounds::On, false, 2);
        assert!(two.ends_with(&format!("{PVM_CMDLINE} isolcpus=1")), "{two}");
        let four = kernel_cmdline(Some("x"), PvmWorkarounds::Auto, true, 4);
        assert!(four.ends_with(" isolcpus=1-3"), "{four}");
        // Not on a host without kvm_pvm, and never over the user's own.
        let plain = kernel_cmdline(Some("x"), PvmWorkarounds::Auto, false, 4);
        assert_eq!(plain, "x");
        let own = kernel_cmdline(Some("x isolcpus=3"), PvmWorkarounds::On, false, 4);
        assert_eq!(own.matches("isolcpus=").count(), 1, "{own}");
        assert!(own.contains("isolcpus=3"), "{own}");
    }
}
