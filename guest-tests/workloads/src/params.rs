//! Workload parameters from the kernel command line: `tern.test=NAME` and
//! `tern.<param>=<value>` tokens (see guest-tests/README.md for the list).
//! Tokens without the `tern.` prefix belong to someone else and are ignored;
//! an unknown `tern.` key or a bad value is an error naming the token, so a
//! typo never silently runs the wrong test.

use core::fmt;

use crate::names::named_enum;

named_enum! {
    /// Which workload the guest runs.
    pub enum Workload {
        /// Only the stall meter, on CPU 0; the other CPUs halt.
        Idle = "idle",
        /// The memory dirtier plus the stall meter.
        Dirtier = "dirtier",
        /// virtio-blk: checked block writes, verification, benchmarks (CPU 0).
        Disk = "disk",
        /// virtio-net: sequence-numbered frames to and from a host peer (CPU 0).
        Net = "net",
    }
}

named_enum! {
    /// What the disk workload does.
    pub enum DiskMode {
        /// Write `tern.passes` passes of checked blocks, then wait for commands.
        Write = "write",
        /// Verify the disk against its own header (after a reboot).
        Verify = "verify",
        /// Sequential 1 MiB and random 4 KiB throughput at `tern.qd`.
        Bench = "bench",
    }
}

named_enum! {
    /// Which pages the dirtier writes next.
    pub enum Pattern {
        /// Sweeps its pages in order.
        Seq = "seq",
        /// Uniformly random pages.
        Random = "random",
        /// 90 % of the writes go to the first 10 % of its pages.
        HotCold = "hotcold",
        /// Sweeps in order as fast as the CPU allows, writing only each page's
        /// header line (see [`crate::page`]): the most pages per second.
        Burst = "burst",
    }
}

named_enum! {
    /// What a CPU does when its loop has nothing to do until its next tick
    /// or command poll (no dirtier: `tern.rate=0` or the `idle` workload).
    pub enum IdleMode {
        /// Keeps iterating: the stall meter sees every gap longer than
        /// `tern.gap_us`, at the price of a CPU spinning the whole time.
        Spin = "spin",
        /// Halts until the next tick or poll (at most 10 ms), where the
        /// platform can; the meter then sees a stall only as a late wake.
        /// An idle guest that leaves the host's CPUs to others.
        Halt = "halt",
    }
}

/// The dirty rate of the whole guest, shared evenly by the busy CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// As fast as possible.
    Max,
    /// MiB of pages dirtied per second (0: none, only the stall meter runs).
    MibPerSec(u32),
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::MibPerSec(n) => write!(f, "{n}"),
        }
    }
}

/// A set of CPU (or thread) indices below 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CpuSet(pub u64);

impl CpuSet {
    pub const MAX: usize = 64;

    pub fn all_below(n: usize) -> Self {
        CpuSet(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    pub fn contains(self, cpu: usize) -> bool {
        cpu < Self::MAX && self.0 & (1 << cpu) != 0
    }

    pub fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn intersect(self, other: CpuSet) -> CpuSet {
        CpuSet(self.0 & other.0)
    }

    /// The position of `cpu` among the members, if it is one.
    pub fn rank(self, cpu: usize) -> Option<usize> {
        self.contains(cpu)
            .then(|| (self.0 & ((1u64 << cpu) - 1)).count_ones() as usize)
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..Self::MAX).filter(move |&c| self.contains(c))
    }

    /// Parses `none`, `all` (up to 64), or a list like `0,2-5`.
    pub fn parse(s: &str) -> Option<CpuSet> {
        match s {
            "none" => return Some(CpuSet(0)),
            "all" => return Some(CpuSet(u64::MAX)),
            _ => {}
        }
        let mut set = 0u64;
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
                None => {
                    let n = part.parse::<usize>().ok()?;
                    (n, n)
                }
            };
            if lo > hi || hi >= Self::MAX {
                return None;
            }
            for c in lo..=hi {
                set |= 1 << c;
            }
        }
        Some(CpuSet(set))
    }
}

/// Everything the command line selects, with defaults for what it leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `tern.test`: the workload (default `dirtier`).
    pub workload: Workload,
    /// `tern.ws`: working set in MiB, split evenly among the busy CPUs (64).
    pub ws_mib: u32,
    /// `tern.rate`: `max` or MiB/s for the whole guest (`max`).
    pub rate: Rate,
    /// `tern.pattern` (`seq`).
    pub pattern: Pattern,
    /// `tern.busy`: CPUs that dirty memory (default all); the others idle.
    pub busy: Option<CpuSet>,
    /// `tern.threads`: CPUs (or threads, for the Linux program) to use at
    /// most (default all).
    pub threads: Option<u32>,
    /// `tern.tick_ms`: stall-meter interval (100).
    pub tick_ms: u32,
    /// `tern.gap_us`: a gap between loop iterations longer than this counts
    /// as time the CPU did not run (50).
    pub gap_us: u32,
    /// `tern.poll_ms`: how often CPU 0 polls the serial port for commands
    /// (10; each poll costs a trip through ring 0).
    pub poll_ms: u32,
    /// `tern.baseline_ms`: how long the unthrottled work-rate baseline is
    /// measured at start (500).
    pub baseline_ms: u32,
    /// `tern.seed`: seed of the random patterns (1).
    pub seed: u64,
    /// `tern.mem_mib`: RAM size to assume when the boot loader gives no
    /// memory map (128).
    pub mem_mib: u32,
    /// `tern.disk_mode` (`write`).
    pub disk_mode: DiskMode,
    /// `tern.disk_mib`: size of the disk area the disk workload uses, MiB
    /// (64; 0: the whole disk).
    pub disk_mib: u32,
    /// `tern.qd`: requests in flight (32).
    pub qd: u32,
    /// `tern.passes`: write passes over the disk area (1; 0: until `stop`).
    pub passes: u32,
    /// `tern.bench_ms`: length of each random-I/O benchmark phase (3000).
    pub bench_ms: u32,
    /// `tern.frames`: frames per second the net workload sends (1000).
    pub frames: u32,
    /// `tern.frame_bytes`: size of those frames, Ethernet header included (128).
    pub frame_bytes: u32,
    /// `tern.idle`: `spin` or `halt` when there is nothing to do (`spin`).
    pub idle: IdleMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload: Workload::Dirtier,
            ws_mib: 64,
            rate: Rate::Max,
            pattern: Pattern::Seq,
            busy: None,
            threads: None,
            tick_ms: 100,
            gap_us: 50,
            poll_ms: 10,
            baseline_ms: 500,
            seed: 1,
            mem_mib: 128,
            disk_mode: DiskMode::Write,
            disk_mib: 64,
            qd: 32,
            passes: 1,
            bench_ms: 3000,
            frames: 1000,
            frame_bytes: 128,
            idle: IdleMode::Spin,
        }
    }
}

/// What is wrong with a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    UnknownKey,
    MissingValue,
    NotANumber,
    OutOfRange { min: u64, max: u64 },
    NotOneOf(&'static str),
}

/// A rejected `tern.` token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamError<'a> {
    pub token: &'a str,
    pub problem: Problem,
}

impl fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.token)?;
        match self.problem {
            Problem::UnknownKey => f.write_str("unknown parameter"),
            Problem::MissingValue => f.write_str("expected tern.<param>=<value>"),
            Problem::NotANumber => f.write_str("not a number"),
            Problem::OutOfRange { min, max } => write!(f, "must be between {min} and {max}"),
            Problem::NotOneOf(choices) => write!(f, "must be one of {choices}"),
        }
    }
}

impl Config {
    /// Parses a whole command line.
    pub fn parse(cmdline: &str) -> Result<Config, ParamError<'_>> {
        let mut config = Config::default();
        for token in cmdline.split_ascii_whitespace() {
            if let Some(param) = token.strip_prefix("tern.") {
                config.apply(token, param)?;
            }
        }
        Ok(config)
    }

    fn apply<'a>(&mut self, token: &'a str, param: &'a str) -> Result<(), ParamError<'a>> {
        let err = |problem| ParamError { token, problem };
        let (key, value) = param.split_once('=').ok_or(err(Problem::MissingValue))?;
        let number = |min: u64, max: u64| -> Result<u64, ParamError<'a>> {
            let n: u64 = value.parse().map_err(|_| err(Problem::NotANumber))?;
            if n < min || n > max {
                return Err(err(Problem::OutOfRange { min, max }));
            }
            Ok(n)
        };
        match key {
            "test" => {
                self.workload = Workload::from_name(value)
                    .ok_or(err(Problem::NotOneOf("idle, dirtier, disk, net")))?
            }
            "ws" => self.ws_mib = number(0, 1 << 20)? as u32,
            "rate" => {
                self.rate = match value {
                    "max" => Rate::Max,
                    _ => Rate::MibPerSec(number(0, 1 << 20)? as u32),
                }
            }
            "pattern" => {
                self.pattern = Pattern::from_name(value)
                    .ok_or(err(Problem::NotOneOf("seq, random, hotcold, burst")))?
            }
            "busy" => {
                self.busy = Some(
                    CpuSet::parse(value)
                        .ok_or(err(Problem::NotOneOf("all, none, or a list like 0,2-3")))?,
                )
            }
            "threads" => self.threads = Some(number(1, CpuSet::MAX as u64)? as u32),
            "tick_ms" => self.tick_ms = number(1, 60_000)? as u32,
            "gap_us" => self.gap_us = number(1, 1_000_000)? as u32,
            "poll_ms" => self.poll_ms = number(1, 1000)? as u32,
            "baseline_ms" => self.baseline_ms = number(0, 60_000)? as u32,
            "seed" => self.seed = number(0, u64::MAX)?,
            "mem_mib" => self.mem_mib = number(1, 1 << 24)? as u32,
            "disk_mode" => {
                self.disk_mode = DiskMode::from_name(value)
                    .ok_or(err(Problem::NotOneOf("write, verify, bench")))?
            }
            "disk_mib" => self.disk_mib = number(0, 1 << 24)? as u32,
            "qd" => self.qd = number(1, 128)? as u32,
            "passes" => self.passes = number(0, 1 << 20)? as u32,
            "bench_ms" => self.bench_ms = number(1, 600_000)? as u32,
            "frames" => self.frames = number(0, 1_000_000)? as u32,
            "frame_bytes" => self.frame_bytes = number(64, 1514)? as u32,
            "idle" => {
                self.idle =
                    IdleMode::from_name(value).ok_or(err(Problem::NotOneOf("spin, halt")))?
            }
            _ => return Err(err(Problem::UnknownKey)),
        }
        Ok(())
    }

    /// The CPUs that run the workload loop among `online` CPUs: for the
    /// dirtier those that dirty memory; for `idle` every CPU (each runs the
    /// stall meter, with no working set); the others halt.
    pub fn busy_cpus(&self, online: CpuSet) -> CpuSet {
        match self.workload {
            Workload::Idle => online,
            Workload::Disk | Workload::Net => CpuSet(0),
            Workload::Dirtier => self.busy.unwrap_or(CpuSet(u64::MAX)).intersect(online),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_is_given() {
        let c = Config::parse("console=ttyS0 reboot=k").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn parses_every_parameter() {
        let c = Config::parse(
            "tern.test=dirtier tern.ws=256 tern.rate=40 tern.pattern=hotcold tern.busy=0,2-3 \
             tern.threads=4 tern.tick_ms=50 tern.gap_us=20 tern.poll_ms=5 tern.baseline_ms=0 \
             tern.seed=99 tern.mem_mib=512 tern.idle=halt virtio_mmio.device=512@0xfeb00e00:12",
        )
        .unwrap();
        assert_eq!(c.idle, IdleMode::Halt);
        assert_eq!(c.ws_mib, 256);
        assert_eq!(c.rate, Rate::MibPerSec(40));
        assert_eq!(c.pattern, Pattern::HotCold);
        assert_eq!(c.busy, Some(CpuSet(0b1101)));
        assert_eq!(c.threads, Some(4));
        assert_eq!(
            (c.tick_ms, c.gap_us, c.poll_ms, c.baseline_ms),
            (50, 20, 5, 0)
        );
        assert_eq!((c.seed, c.mem_mib), (99, 512));
        assert_eq!(
            Config::parse("tern.rate=max tern.test=idle")
                .unwrap()
                .workload,
            Workload::Idle
        );
    }

    #[test]
    fn errors_name_the_token() {
        let e = Config::parse("a tern.ws=lots b").unwrap_err();
        assert_eq!(
            e,
            ParamError {
                token: "tern.ws=lots",
                problem: Problem::NotANumber
            }
        );
        let mut s = crate::line::LineBuf::<80>::new();
        core::fmt::Write::write_fmt(&mut s, format_args!("{e}")).unwrap();
        assert_eq!(s.as_str(), "tern.ws=lots: not a number");
        assert_eq!(
            Config::parse("tern.wss=1").unwrap_err().problem,
            Problem::UnknownKey
        );
        assert_eq!(
            Config::parse("tern.ws").unwrap_err().problem,
            Problem::MissingValue
        );
        assert_eq!(
            Config::parse("tern.tick_ms=0").unwrap_err().problem,
            Problem::OutOfRange {
                min: 1,
                max: 60_000
            }
        );
        assert!(matches!(
            Config::parse("tern.pattern=zigzag").unwrap_err().problem,
            Problem::NotOneOf(_)
        ));
        assert_eq!(
            Config::parse("tern.idle=doze").unwrap_err().problem,
            Problem::NotOneOf("spin, halt")
        );
        assert!(Config::parse("tern.busy=3-1").is_err());
        assert!(Config::parse("tern.busy=64").is_err());
        assert!(Config::parse("tern.seed=-1").is_err());
    }

    #[test]
    fn cpu_sets() {
        assert_eq!(CpuSet::parse("0"), Some(CpuSet(1)));
        assert_eq!(CpuSet::parse("none"), Some(CpuSet(0)));
        assert_eq!(
            CpuSet::parse("1,3-4").unwrap().iter().collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(CpuSet::parse("63"), Some(CpuSet(1 << 63)));
        assert_eq!(CpuSet::parse(""), None);
        assert_eq!(CpuSet::parse("1,"), None);
        assert_eq!(CpuSet::all_below(3), CpuSet(0b111));
        assert_eq!(CpuSet::all_below(64), CpuSet(u64::MAX));
        let s = CpuSet(0b1010);
        assert_eq!((s.rank(1), s.rank(3), s.rank(2)), (Some(0), Some(1), None));
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn device_workload_parameters() {
        let c = Config::parse(
            "tern.test=disk tern.disk_mode=bench tern.disk_mib=0 tern.qd=8 tern.passes=0 tern.bench_ms=500 \
             tern.frames=50 tern.frame_bytes=1514",
        )
        .unwrap();
        assert_eq!(
            (
                c.workload,
                c.disk_mode,
                c.disk_mib,
                c.qd,
                c.passes,
                c.bench_ms
            ),
            (Workload::Disk, DiskMode::Bench, 0, 8, 0, 500)
        );
        assert_eq!((c.frames, c.frame_bytes), (50, 1514));
        assert!(Config::parse("tern.qd=0").is_err());
        assert!(Config::parse("tern.frame_bytes=63").is_err());
        assert!(Config::parse("tern.disk_mode=read").is_err());
        assert_eq!(
            Config::parse("tern.test=net").unwrap().busy_cpus(CpuSet(3)),
            CpuSet(0)
        );
    }

    #[test]
    fn busy_cpus_follow_the_workload() {
        let online = CpuSet::all_below(4);
        let c = Config::parse("tern.busy=0,5").unwrap();
        assert_eq!(c.busy_cpus(online), CpuSet(1));
        assert_eq!(Config::default().busy_cpus(online), online);
        assert_eq!(
            Config::parse("tern.test=idle").unwrap().busy_cpus(online),
            online
        );
    }
}
