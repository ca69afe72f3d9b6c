//! Xen's PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h): the
//! loader enters the kernel in 32-bit mode with `%ebx` pointing at
//! `hvm_start_info`.
//!
//! ```text
//!  0 u32 magic 0x336ec578     4 u32 version        8 u32 flags
//! 12 u32 nr_modules          16 u64 modlist_paddr 24 u64 cmdline_paddr
//! 32 u64 rsdp_paddr          40 u64 memmap_paddr  48 u32 memmap_entries (version >= 1)
//! ```
//! Memory map entries are 24 bytes (`u64 addr, u64 size, u32 type, u32
//! reserved`, type 1 = RAM); module entries 32 bytes (`u64 paddr, u64 size,
//! u64 cmdline_paddr, u64 reserved`).

use super::{u32_at, u64_at};

pub const MAGIC: u32 = 0x336e_c578;
/// Bytes of `hvm_start_info` this parser reads (version 1).
pub const START_INFO_SIZE: usize = 56;
pub const MEMMAP_ENTRY_SIZE: usize = 24;
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// `hvm_memmap_table_entry.type` of usable RAM.
pub const TYPE_RAM: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    /// `None` for version 0, which has no memory map.
    pub memmap: Option<(u64, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvhError {
    BadMagic(u32),
    Short,
}

impl core::fmt::Display for PvhError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PvhError::BadMagic(m) => write!(f, "hvm_start_info magic is {m:#x}, not {MAGIC:#x}"),
            PvhError::Short => f.write_str("hvm_start_info is truncated"),
        }
    }
}

impl StartInfo {
    pub fn parse(b: &[u8]) -> Result<StartInfo, PvhError> {
        let magic = u32_at(b, 0).ok_or(PvhError::Short)?;
        if magic != MAGIC {
            return Err(PvhError::BadMagic(magic));
        }
        let field32 = |at| u32_at(b, at).ok_or(PvhError::Short);
        let field64 = |at| u64_at(b, at).ok_or(PvhError::Short);
        let version = field32(4)?;
        let memmap = match version {
            0 => None,
            _ => Some((field64(40)?, field32(48)?)).filter(|&(addr, n)| addr != 0 && n != 0),
        };
        Ok(StartInfo {
            version,
            nr_modules: field32(12)?,
            modlist_paddr: field64(16)?,
            cmdline_paddr: field64(24)?,
            memmap,
        })
    }
}

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl MemmapEntry {
    pub fn parse(b: &[u8]) -> Option<MemmapEntry> {
        Some(MemmapEntry {
            addr: u64_at(b, 0)?,
            size: u64_at(b, 8)?,
            kind: u32_at(b, 16)?,
        })
    }

    pub fn is_ram(&self) -> bool {
        self.kind == TYPE_RAM
    }
}

/// A module (e.g. an initrd): its memory must not be reused.
pub fn parse_module(b: &[u8]) -> Option<(u64, u64)> {
    Some((u64_at(b, 0)?, u64_at(b, 8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u32, memmap: (u64, u32)) -> [u8; START_INFO_SIZE] {
        let mut b = [0u8; START_INFO_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&0x6080u64.to_le_bytes());
        b[24..32].copy_from_slice(&0x20000u64.to_le_bytes());
        b[40..48].copy_from_slice(&memmap.0.to_le_bytes());
        b[48..52].copy_from_slice(&memmap.1.to_le_bytes());
        b
    }

    #[test]
    fn parses_versions_0_and_1() {
        let v1 = StartInfo::parse(&info(1, (0x6040, 3))).unwrap();
        assert_eq!(
            v1,
            StartInfo {
                version: 1,
                nr_modules: 1,
                modlist_paddr: 0x6080,
                cmdline_paddr: 0x20000,
                memmap: Some((0x6040, 3))
            }
        );
        assert_eq!(
            StartInfo::parse(&info(0, (0x6040, 3))).unwrap().memmap,
            None
        );
        assert_eq!(
            StartInfo::parse(&info(1, (0x6040, 0))).unwrap().memmap,
            None
        );
    }

    #[test]
    fn rejects_bad_magic_and_short_input() {
        let mut b = info(1, (1, 1));
        b[0] ^= 1;
        assert_eq!(StartInfo::parse(&b), Err(PvhError::BadMagic(MAGIC ^ 1)));
        assert_eq!(
            StartInfo::parse(&info(1, (1, 1))[..40]),
            Err(PvhError::Short)
        );
        assert_eq!(StartInfo::parse(&[]), Err(PvhError::Short));
    }

    #[test]
    fn memmap_entries_and_modules() {
        let mut e = [0u8; MEMMAP_ENTRY_SIZE];
        e[0..8].copy_from_slice(&0x100000u64.to_le_bytes());
        e[8..16].copy_from_slice(&(511u64 << 20).to_le_bytes());
        e[16..20].copy_from_slice(&1u32.to_le_bytes());
        let m = MemmapEntry::parse(&e).unwrap();
        assert!(m.is_ram());
        assert_eq!((m.addr, m.size), (0x100000, 511 << 20));
        assert_eq!(MemmapEntry::parse(&e[..19]), None);
        assert_eq!(parse_module(&e), Some((0x100000, 511 << 20)));
    }
}
