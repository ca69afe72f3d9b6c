//! Named scenarios: what the guest runs, the machine, the migration link and
//! the migration's limits, with `--set key=value` overrides.
//!
//! The defaults are the full sizes (what the docs' tables are measured
//! with); tests shrink them with overrides (`ws=16 memory=256 ...`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::link::LinkShape;

/// What the test guest runs (its `tern.*` command line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestSpec {
    /// `tern.test`: `idle`, `dirtier` (or `disk`, once the guest has it).
    pub test: String,
    /// `tern.ws`, MiB.
    pub ws_mib: u32,
    /// `tern.rate`: `max` or MiB/s.
    pub rate: String,
    /// `tern.pattern`: `seq`, `random`, `hotcold`, `burst`.
    pub pattern: String,
    /// `tern.busy`: the vCPUs that dirty memory (default all).
    pub busy: Option<String>,
    /// Any other `tern.KEY=VALUE`.
    pub extra: BTreeMap<String, String>,
}

impl GuestSpec {
    fn dirtier(ws_mib: u32, rate: &str, pattern: &str) -> GuestSpec {
        GuestSpec {
            test: "dirtier".into(),
            ws_mib,
            rate: rate.into(),
            pattern: pattern.into(),
            busy: None,
            extra: BTreeMap::new(),
        }
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut words = vec![format!("tern.test={}", self.test)];
        if self.test == "dirtier" {
            words.push(format!("tern.ws={}", self.ws_mib));
            words.push(format!("tern.rate={}", self.rate));
            words.push(format!("tern.pattern={}", self.pattern));
        }
        if let Some(b) = &self.busy {
            words.push(format!("tern.busy={b}"));
        }
        words.extend(self.extra.iter().map(|(k, v)| format!("tern.{k}={v}")));
        words.join(" ")
    }
}

/// The migration's limits, mapped onto each VMM.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationLimits {
    /// tern `--max-downtime` / QEMU `downtime-limit`, ms.
    pub max_downtime_ms: u64,
    /// tern `--max-bandwidth` / QEMU `max-bandwidth`, MiB/s (None: unlimited,
    /// which for QEMU means a very large value: its default is 128 MiB/s).
    pub max_bandwidth_mib_s: Option<f64>,
    /// Time budget: tern `--timeout`; QEMU is cancelled after it. Not
    /// converging within it is a result.
    pub budget_s: f64,
    /// tern `--aggression` (tern's default when None).
    pub aggression: Option<f64>,
    /// tern `--max-throttle` (default when None).
    pub max_throttle_pct: Option<f64>,
    /// tern `--no-throttle`.
    pub no_throttle: bool,
}

/// QEMU-only knobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QemuKnobs {
    /// `cpu-throttle-initial`, percent (QEMU's default 20).
    pub throttle_initial: u32,
    /// `cpu-throttle-increment`, percent (10).
    pub throttle_increment: u32,
    /// `cpu-throttle-tailslow` (QEMU's default false; on here, its better mode).
    pub tailslow: bool,
    /// `max-cpu-throttle`, percent (99).
    pub max_throttle: u32,
    /// `set-vcpu-dirty-limit` per vCPU, MB/s, for the dirty-limit variant
    /// (None: half the link or bandwidth cap shared by the vCPUs, else 32).
    pub dirty_limit_mb_s: Option<u64>,
}

/// A virtio-blk disk for the disk workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskSpec {
    pub size_mib: u64,
    /// `tern.qd`: requests the guest keeps in flight.
    pub queue_depth: u32,
}

/// One named scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub guest: GuestSpec,
    pub cpus: u32,
    pub memory_mib: u64,
    /// A shaped link between two namespaces; None: loopback in the runner's
    /// namespace.
    pub link: Option<LinkShape>,
    pub limits: MigrationLimits,
    pub qemu: QemuKnobs,
    /// Steady state: this many ticks per metered vCPU after the guest's
    /// baseline event before measuring.
    pub warmup_ticks: u32,
    /// Pre-migration window the work-rate baseline is measured over, s.
    pub baseline_s: f64,
    /// How long the destination's ticks are collected after switchover, s.
    pub after_s: f64,
    pub disk: Option<DiskSpec>,
    /// What this scenario needs that may not exist yet.
    pub depends_on: Option<String>,
}

/// Every scenario name.
pub const NAMES: [&str; 7] = [
    "idle",
    "dirty-low",
    "dirty-2x-link",
    "hot-cold",
    "one-busy-vcpu",
    "burst",
    "disk-qd32",
];

fn base(name: &str, description: &str, guest: GuestSpec) -> Scenario {
    Scenario {
        name: name.into(),
        description: description.into(),
        guest,
        cpus: 1,
        memory_mib: 1024,
        link: None,
        limits: MigrationLimits {
            max_downtime_ms: 300,
            max_bandwidth_mib_s: None,
            budget_s: 60.0,
            aggression: None,
            max_throttle_pct: None,
            no_throttle: false,
        },
        qemu: QemuKnobs {
            throttle_initial: 20,
            throttle_increment: 10,
            tailslow: true,
            max_throttle: 99,
            dirty_limit_mb_s: None,
        },
        warmup_ticks: 5,
        baseline_s: 2.0,
        after_s: 2.0,
        disk: None,
        depends_on: None,
    }
}

/// The scenario called `name`, at its full size.
pub fn named(name: &str) -> Result<Scenario> {
    let s = match name {
        "idle" => {
            let mut guest = GuestSpec::dirtier(0, "0", "seq");
            guest.test = "idle".into();
            base("idle", "idle guest (stall meter only), loopback", guest)
        }
        "dirty-low" => base(
            "dirty-low",
            "a low, steady dirty rate (sequential writes), loopback",
            GuestSpec::dirtier(256, "20", "seq"),
        ),
        "dirty-2x-link" => Scenario {
            link: Some(LinkShape::mib_per_sec(32.0)),
            ..base(
                "dirty-2x-link",
                "sequential writes at twice the shaped link's bandwidth",
                GuestSpec::dirtier(256, "64", "seq"),
            )
        },
        "hot-cold" => Scenario {
            link: Some(LinkShape::mib_per_sec(64.0)),
            ..base(
                "hot-cold",
                "max-rate writes, 90 % of them to the hottest 10 % of the set, shaped link",
                GuestSpec::dirtier(512, "max", "hotcold"),
            )
        },
        "one-busy-vcpu" => {
            let mut guest = GuestSpec::dirtier(256, "max", "seq");
            guest.busy = Some("0".into());
            Scenario {
                cpus: 2,
                link: Some(LinkShape::mib_per_sec(64.0)),
                ..base(
                    "one-busy-vcpu",
                    "2 vCPUs, only vCPU 0 dirties (max rate), shaped link",
                    guest,
                )
            }
        }
        "burst" => Scenario {
            link: Some(LinkShape::mib_per_sec(64.0)),
            ..base(
                "burst",
                "fastest page sweeps (one line per page), shaped link",
                GuestSpec::dirtier(256, "max", "burst"),
            )
        },
        "disk-qd32" => {
            let mut guest = GuestSpec::dirtier(0, "0", "seq");
            guest.test = "disk".into();
            // Write passes until `stop`, 32 requests in flight, over the
            // whole disk area.
            for (k, v) in [("qd", "32"), ("passes", "0"), ("disk_mib", "256")] {
                guest.extra.insert(k.into(), v.into());
            }
            Scenario {
                disk: Some(DiskSpec {
                    size_mib: 257,
                    queue_depth: 32,
                }),
                ..base(
                    "disk-qd32",
                    "virtio-blk checked block writes at queue depth 32 (disk image shared by both ends), loopback",
                    guest,
                )
            }
        }
        other => {
            return Err(Error::Scenario(format!(
                "no scenario {other:?} (known: {})",
                NAMES.join(", ")
            )))
        }
    };
    Ok(s)
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::Scenario(format!("--set {key}={value}: not a number")))
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(Error::Scenario(format!(
            "--set {key}={value}: expected true or false"
        ))),
    }
}

fn optional_mib(key: &str, value: &str) -> Result<Option<f64>> {
    match value {
        "none" | "off" | "0" => Ok(None),
        v => {
            let n: f64 = number(key, v)?;
            if n > 0.0 && n.is_finite() {
                Ok(Some(n))
            } else {
                Err(Error::Scenario(format!(
                    "--set {key}={value}: must be positive or none"
                )))
            }
        }
    }
}

/// The keys `--set` takes, for the help text.
pub const OVERRIDES: &str =
    "ws, rate, pattern, busy, test, guest.KEY (any tern.KEY), cpus, memory (MiB), \
link (MiB/s|none), downtime (ms), bandwidth (MiB/s|none), budget (s), aggression, max-throttle, \
no-throttle, qemu-throttle-initial, qemu-throttle-increment, qemu-tailslow, qemu-max-throttle, \
dirty-limit (MB/s per vCPU), warmup (ticks), baseline (s), after (s), disk (MiB), qd";

impl Scenario {
    /// Applies one `KEY=VALUE` override.
    pub fn apply(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Scenario(format!("--set {assignment}: expected KEY=VALUE")))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "ws" => self.guest.ws_mib = number(key, value)?,
            "rate" => {
                if value != "max" {
                    number::<u32>(key, value)?;
                }
                self.guest.rate = value.into();
            }
            "pattern" => self.guest.pattern = value.into(),
            "busy" => self.guest.busy = Some(value.into()),
            "test" => self.guest.test = value.into(),
            "cpus" => self.cpus = number(key, value)?,
            "memory" => self.memory_mib = number(key, value)?,
            "link" => self.link = optional_mib(key, value)?.map(LinkShape::mib_per_sec),
            "downtime" => self.limits.max_downtime_ms = number(key, value)?,
            "bandwidth" => self.limits.max_bandwidth_mib_s = optional_mib(key, value)?,
            "budget" => self.limits.budget_s = number(key, value)?,
            "aggression" => self.limits.aggression = Some(number(key, value)?),
            "max-throttle" => self.limits.max_throttle_pct = Some(number(key, value)?),
            "no-throttle" => self.limits.no_throttle = boolean(key, value)?,
            "qemu-throttle-initial" => self.qemu.throttle_initial = number(key, value)?,
            "qemu-throttle-increment" => self.qemu.throttle_increment = number(key, value)?,
            "qemu-tailslow" => self.qemu.tailslow = boolean(key, value)?,
            "qemu-max-throttle" => self.qemu.max_throttle = number(key, value)?,
            "dirty-limit" => self.qemu.dirty_limit_mb_s = Some(number(key, value)?),
            "warmup" => self.warmup_ticks = number(key, value)?,
            "baseline" => self.baseline_s = number(key, value)?,
            "after" => self.after_s = number(key, value)?,
            "disk" => {
                // The image is one MiB larger than the area the workload
                // writes (its header block comes first).
                let size_mib: u64 = number(key, value)?;
                let queue_depth = self.disk.as_ref().map_or(32, |d| d.queue_depth);
                self.guest
                    .extra
                    .insert("disk_mib".into(), size_mib.to_string());
                self.disk = Some(DiskSpec {
                    size_mib: size_mib + 1,
                    queue_depth,
                });
            }
            "qd" => {
                let qd: u32 = number(key, value)?;
                self.guest.extra.insert("qd".into(), qd.to_string());
                if let Some(d) = &mut self.disk {
                    d.queue_depth = qd;
                }
            }
            k => match k.strip_prefix("guest.") {
                Some(param) if !param.is_empty() => {
                    self.guest.extra.insert(param.into(), value.into());
                }
                _ => {
                    return Err(Error::Scenario(format!(
                        "--set {assignment}: unknown key {k:?} (known: {OVERRIDES})"
                    )))
                }
            },
        }
        if self.cpus == 0 || self.memory_mib < 16 || self.limits.budget_s <= 0.0 {
            return Err(Error::Scenario(format!(
                "--set {assignment}: cpus must be ≥ 1, memory ≥ 16 MiB, budget > 0"
            )));
        }
        Ok(())
    }

    /// The scenario `name` with `overrides` applied in order.
    pub fn build(name: &str, overrides: &[String]) -> Result<Scenario> {
        let mut s = named(name)?;
        for o in overrides {
            s.apply(o)?;
        }
        Ok(s)
    }

    /// The send-rate cap the VMMs are given, bytes/s.
    pub fn bandwidth_cap(&self) -> Option<u64> {
        self.limits
            .max_bandwidth_mib_s
            .map(|m| (m * 1048576.0) as u64)
    }

    /// The per-vCPU dirty limit of QEMU's dirty-limit variant, MB/s.
    pub fn qemu_dirty_limit(&self) -> u64 {
        if let Some(l) = self.qemu.dirty_limit_mb_s {
            return l;
        }
        let link = self
            .link
            .map(|l| l.rate_mib_s())
            .into_iter()
            .chain(self.limits.max_bandwidth_mib_s)
            .fold(f64::INFINITY, f64::min);
        if link.is_finite() {
            ((link / 2.0 / f64::from(self.cpus)).floor() as u64).max(1)
        } else {
            32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_and_has_a_command_line() {
        for name in NAMES {
            let s = named(name).unwrap();
            assert_eq!(s.name, name);
            assert!(s.guest.cmdline().starts_with("tern.test="), "{name}");
        }
        assert!(named("nope").unwrap_err().to_string().contains("dirty-low"));
    }

    #[test]
    fn overrides_apply_in_order_and_reject_nonsense() {
        let s = Scenario::build(
            "dirty-2x-link",
            &[
                "ws=16".into(),
                "rate=40".into(),
                "link=none".into(),
                "guest.seed=7".into(),
                "budget=10".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.guest.ws_mib, 16);
        assert_eq!(s.link, None);
        assert_eq!(s.limits.budget_s, 10.0);
        assert_eq!(
            s.guest.cmdline(),
            "tern.test=dirtier tern.ws=16 tern.rate=40 tern.pattern=seq tern.seed=7"
        );
        for bad in [
            "ws=lots",
            "rate=fast",
            "nope=1",
            "cpus=0",
            "link=-3",
            "noequals",
        ] {
            assert!(Scenario::build("idle", &[bad.into()]).is_err(), "{bad}");
        }
        let one = named("one-busy-vcpu").unwrap();
        assert!(one.guest.cmdline().contains("tern.busy=0"));
        assert_eq!(named("idle").unwrap().guest.cmdline(), "tern.test=idle");
    }

    #[test]
    fn qemu_dirty_limit_follows_the_link() {
        let s = named("dirty-2x-link").unwrap();
        assert_eq!(s.qemu_dirty_limit(), 16);
        let s = Scenario::build("one-busy-vcpu", &["dirty-limit=5".into()]).unwrap();
        assert_eq!(s.qemu_dirty_limit(), 5);
        assert_eq!(named("idle").unwrap().qemu_dirty_limit(), 32);
        let d = Scenario::build("disk-qd32", &["qd=8".into(), "disk=16".into()]).unwrap();
        assert_eq!(
            d.guest.cmdline(),
            "tern.test=disk tern.disk_mib=16 tern.passes=0 tern.qd=8"
        );
        assert_eq!(
            d.disk.unwrap(),
            DiskSpec {
                size_mib: 17,
                queue_depth: 8
            }
        );
    }
}
