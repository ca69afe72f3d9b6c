//! What the loader told us: `hvm_start_info`, read once at boot into our own
//! memory (the trampoline later overwrites low memory).

use tern_workloads::bootdata::layout::Span;
use tern_workloads::bootdata::pvh::{self, MemmapEntry, PvhError, StartInfo};

use crate::phys;

/// Longest command line kept (Linux's x86 limit is 2048).
const CMDLINE_MAX: usize = 4096;
const MAX_RAM_RANGES: usize = 32;
const MAX_MODULES: usize = 4;
/// Memory map entries read at most (real maps have a handful).
const MAX_MEMMAP_ENTRIES: u32 = 1024;

/// Problems found reading the boot data; the guest reports them and carries
/// on with what it has.
#[derive(Clone, Copy, Debug)]
pub enum BootIssue {
    StartInfo(PvhError),
    Unreadable(&'static str, u64),
    CmdlineNotUtf8 { valid_up_to: usize },
    TooManyRamRanges,
    MemmapTooLong(u32),
}

impl core::fmt::Display for BootIssue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootIssue::StartInfo(e) => write!(f, "{e}; no command line and no memory map"),
            BootIssue::Unreadable(what, at) => write!(f, "{what} at {at:#x} is not readable"),
            BootIssue::CmdlineNotUtf8 { valid_up_to } => write!(
                f,
                "command line is not UTF-8 after byte {valid_up_to}; ignoring the rest"
            ),
            BootIssue::MemmapTooLong(n) => write!(
                f,
                "memory map claims {n} entries; reading the first {MAX_MEMMAP_ENTRIES}"
            ),
            BootIssue::TooManyRamRanges => write!(
                f,
                "memory map has more than {MAX_RAM_RANGES} RAM ranges; ignoring the rest"
            ),
        }
    }
}

pub struct BootInfo {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    ram: [Span; MAX_RAM_RANGES],
    ram_count: usize,
    /// Boot modules (an initrd), whose memory is not ours to reuse.
    modules: [Span; MAX_MODULES],
    module_count: usize,
    /// Whether a memory map was given at all.
    pub has_memmap: bool,
    pub issues: [Option<BootIssue>; 4],
}

impl BootInfo {
    pub fn read(start_info_paddr: u64) -> BootInfo {
        let mut info = BootInfo {
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            ram: [Span::default(); MAX_RAM_RANGES],
            ram_count: 0,
            modules: [Span::default(); MAX_MODULES],
            module_count: 0,
            has_memmap: false,
            issues: [None; 4],
        };
        let mut raw = [0u8; pvh::START_INFO_SIZE];
        if phys::read(start_info_paddr, &mut raw).is_none() {
            info.note(BootIssue::Unreadable("hvm_start_info", start_info_paddr));
            return info;
        }
        let start = match StartInfo::parse(&raw) {
            Ok(s) => s,
            Err(e) => {
                info.note(BootIssue::StartInfo(e));
                return info;
            }
        };
        info.read_cmdline(start.cmdline_paddr);
        if let Some((addr, entries)) = start.memmap {
            info.has_memmap = true;
            info.read_memmap(addr, entries);
        }
        info.read_modules(start.modlist_paddr, start.nr_modules);
        info
    }

    fn note(&mut self, issue: BootIssue) {
        if let Some(slot) = self.issues.iter_mut().find(|s| s.is_none()) {
            *slot = Some(issue);
        }
    }

    fn read_cmdline(&mut self, paddr: u64) {
        if paddr == 0 {
            return;
        }
        // Byte by byte up to the NUL: the line may end right before
        // unreadable memory.
        let mut len = 0;
        while len < CMDLINE_MAX {
            let mut b = [0u8];
            if phys::read(paddr + len as u64, &mut b).is_none() {
                self.note(BootIssue::Unreadable("command line", paddr));
                break;
            }
            if b[0] == 0 {
                break;
            }
            self.cmdline[len] = b[0];
            len += 1;
        }
        self.cmdline_len = match core::str::from_utf8(&self.cmdline[..len]) {
            Ok(_) => len,
            Err(e) => {
                self.note(BootIssue::CmdlineNotUtf8 {
                    valid_up_to: e.valid_up_to(),
                });
                e.valid_up_to()
            }
        };
    }

    fn read_memmap(&mut self, paddr: u64, entries: u32) {
        if entries > MAX_MEMMAP_ENTRIES {
            self.note(BootIssue::MemmapTooLong(entries));
        }
        for i in 0..u64::from(entries.min(MAX_MEMMAP_ENTRIES)) {
            let mut raw = [0u8; pvh::MEMMAP_ENTRY_SIZE];
            let at = paddr + i * pvh::MEMMAP_ENTRY_SIZE as u64;
            let Some(entry) = phys::read(at, &mut raw).and_then(|_| MemmapEntry::parse(&raw))
            else {
                self.note(BootIssue::Unreadable("memory map entry", at));
                return;
            };
            if !entry.is_ram() || entry.size == 0 {
                continue;
            }
            if self.ram_count == MAX_RAM_RANGES {
                self.note(BootIssue::TooManyRamRanges);
                return;
            }
            self.ram[self.ram_count] = Span::new(entry.addr, entry.addr.saturating_add(entry.size));
            self.ram_count += 1;
        }
    }

    fn read_modules(&mut self, paddr: u64, count: u32) {
        for i in 0..u64::from(count).min(MAX_MODULES as u64) {
            let mut raw = [0u8; pvh::MODLIST_ENTRY_SIZE];
            let at = paddr + i * pvh::MODLIST_ENTRY_SIZE as u64;
            match phys::read(at, &mut raw).and_then(|_| pvh::parse_module(&raw)) {
                Some((addr, size)) => {
                    self.modules[self.module_count] = Span::new(addr, addr.saturating_add(size));
                    self.module_count += 1;
                }
                None => self.note(BootIssue::Unreadable("module list entry", at)),
            }
        }
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    pub fn ram(&self) -> &[Span] {
        &self.ram[..self.ram_count]
    }

    pub fn modules(&self) -> &[Span] {
        &self.modules[..self.module_count]
    }
}
