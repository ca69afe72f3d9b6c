//! Loading a guest kernel: bzImage, ELF vmlinux (64-bit entry) and PVH ELF
//! through linux-loader, plus the initrd, the command line, the e820 map or PVH
//! memory map, and the MP table.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{
    ram_ranges, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIGH_RAM_START, PVH_INFO_START,
    PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, ZERO_PAGE_START,
};
use super::mptable;
use super::regs::EntryMode;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// The 64-bit entry point of a bzImage is 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Errors loading a kernel. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel (or initrd) file could not be opened or read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF nor a bzImage.
    #[error("{} is not a kernel: neither an ELF image nor a bzImage", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// linux-loader rejected the image.
    #[error("cannot load kernel {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit in guest memory below the kernel's limit.
    #[error("initrd {} ({size} bytes) does not fit in guest memory", path.display())]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has a character the kernel cannot take.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line, boot parameters or tables into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    Setup {
        /// Which structure.
        what: &'static str,
        /// The underlying error, as text (linux-loader's configurator errors are not `Send`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The first instruction's guest physical address.
    pub entry: u64,
    /// Entry protocol.
    pub mode: EntryMode,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    /// Kernel image path.
    pub kernel: &'a Path,
    /// Optional initrd path.
    pub initrd: Option<&'a Path>,
    /// The full kernel command line.
    pub cmdline: &'a str,
    /// Number of vCPUs (for the MP table).
    pub cpus: u8,
    /// Guest memory size in bytes.
    pub mem_bytes: u64,
}

fn setup_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> BootError {
    move |e| BootError::Setup {
        what,
        source: Box::new(e),
    }
}

/// The kernel image formats tern recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageKind {
    Elf,
    BzImage,
}

fn image_kind(file: &mut File, path: &Path) -> Result<ImageKind, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    if n >= 4 && head[0..4] == [0x7f, b'E', b'L', b'F'] {
        return Ok(ImageKind::Elf);
    }
    if n >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]])
            == KERNEL_HDR_MAGIC
    {
        return Ok(ImageKind::BzImage);
    }
    Err(BootError::NotAKernel {
        path: path.to_owned(),
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Loads kernel, initrd, command line, boot parameters and MP table into
/// `mem` and returns where the boot vCPU starts.
pub fn load<M: GuestMemoryBackend>(mem: &M, spec: &BootSpec<'_>) -> Result<BootEntry, BootError> {
    let mut kernel = File::open(spec.kernel).map_err(|source| BootError::Read {
        what: "kernel",
        path: spec.kernel.to_owned(),
        source,
    })?;
    let kind = image_kind(&mut kernel, spec.kernel)?;
    let load_err = |source| BootError::Load {
        path: spec.kernel.to_owned(),
        source,
    };
    let result: KernelLoaderResult = match kind {
        ImageKind::Elf => Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(load_err)?,
        ImageKind::BzImage => {
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START)))
                .map_err(load_err)?
        }
    };
    let kernel_end = result.kernel_load.raw_value() + result.kernel_end;

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(spec.cmdline)
        .map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(setup_err("kernel command line"))?;
    let cmdline_size = spec.cmdline.len() as u32 + 1;

    let initrd_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x7fff_ffff);
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(mem, path, kernel_end, initrd_max)?),
        None => None,
    };

    let table = mptable::build(EBDA_START, spec.cpus).map_err(setup_err("MP table"))?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(setup_err("MP table"))?;

    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    if let Some(entry) = pvh_entry {
        write_start_info(mem, spec.mem_bytes, initrd)?;
        return Ok(BootEntry {
            entry,
            mode: EntryMode::Pvh32,
        });
    }
    write_zero_page(
        mem,
        spec.mem_bytes,
        result.setup_header,
        cmdline_size,
        initrd,
    )?;
    let entry = match kind {
        ImageKind::BzImage => result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        ImageKind::Elf => result.kernel_load.raw_value(),
    };
    Ok(BootEntry {
        entry,
        mode: EntryMode::Linux64,
    })
}

/// Puts the initrd at the highest page-aligned address that is in RAM, below
/// `max_addr` and above the kernel. Returns (address, size).
fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::Read {
        what: "initrd",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
    };
    // The first RAM region (below the MMIO hole) holds the initrd.
    let region = mem.iter().next().ok_or_else(too_big)?;
    let region_end = region.start_addr().raw_value() + region.len();
    let top = region_end.min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.max(HIGH_RAM_START) || size == 0 && addr == 0 {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(setup_err("initrd"))?;
    Ok((addr, size))
}

/// The guest's memory map: (start, size, type).
fn memory_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    map.push((EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED));
    for (start, size) in ram_ranges(mem_bytes) {
        if start == 0 {
            map.push((HIGH_RAM_START, size - HIGH_RAM_START, E820_RAM));
        } else {
            map.push((start, size, E820_RAM));
        }
    }
    map
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    mem_bytes: u64,
    header: Option<setup_header>,
    cmdline_size: u32,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = memory_map(mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Setup {
        what: "boot parameters",
        source: e.to_string().into(),
    })
}

fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    mem_bytes: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = memory_map(mem_bytes)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    debug_assert!(map.len() <= PVH_MEMMAP_MAX_ENTRIES);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        // The module list goes right after the memory map.
        let modlist =
            PVH_MEMMAP_START + (map.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
        params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
        params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP_START));
        params.set_modules::<hvm_modlist_entry>(
            &[hvm_modlist_entry {
                paddr,
                size,
                cmdline_paddr: 0,
                reserved: 0,
            }],
            GuestAddress(modlist),
        );
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem).map_err(|e| BootError::Setup {
        what: "PVH start info",
        source: e.to_string().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn memory_map_reserves_the_mp_table_and_skips_the_hole() {
        let m = memory_map(4 << 30);
        assert_eq!(m[0], (0, EBDA_START, E820_RAM));
        assert_eq!(m[1].2, E820_RESERVED);
        assert_eq!(m.last().unwrap().0, 1 << 32);
        let ram: u64 = m.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (4 << 30) - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("tern-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("garbage");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&[0x55; 4096])
            .unwrap();
        let spec = BootSpec {
            kernel: &p,
            initrd: None,
            cmdline: "console=ttyS0",
            cpus: 1,
            mem_bytes: 64 << 20,
        };
        let err = load(&mem(), &spec).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        assert!(err.to_string().contains("garbage"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let spec = BootSpec {
            kernel: Path::new("/nonexistent/vmlinux"),
            initrd: None,
            cmdline: "",
            cpus: 1,
            mem_bytes: 64 << 20,
        };
        let err = load(&mem(), &spec).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }
}
