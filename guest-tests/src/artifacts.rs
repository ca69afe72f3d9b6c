//! Where the guest images and the VMM binaries are.
//!
//! Guest images come from `resources/build-guest.sh` (it builds what is
//! missing into its cache and prints `NAME=PATH` lines). The tern binary is
//! `--tern PATH`, else `$TERN_BIN`, else `release/tern` then `debug/tern`
//! under `$CARGO_TARGET_DIR` and the workspace's `target/`. QEMU is
//! `$TERN_QEMU` or `qemu-system-x86_64`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The guest images.
#[derive(Clone, Debug)]
pub struct GuestImages {
    /// The ring-3 test guest (PVH ELF).
    pub testguest: PathBuf,
    /// Linux as a PVH-capable ELF.
    pub vmlinux: PathBuf,
    /// Linux bzImage.
    pub bzimage: PathBuf,
    /// busybox + workload initramfs.
    pub initramfs: PathBuf,
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Parses the `NAME=PATH` lines of `build-guest.sh`.
pub fn parse_build_output(stdout: &str) -> Result<GuestImages> {
    let find = |key: &str| -> Result<PathBuf> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|p| PathBuf::from(p.trim()))
            .ok_or_else(|| Error::Artifact(format!("build-guest.sh printed no {key}= line")))
    };
    Ok(GuestImages {
        testguest: find("testguest")?,
        vmlinux: find("vmlinux")?,
        bzimage: find("kernel")?,
        initramfs: find("initramfs")?,
    })
}

/// Builds (or finds in the cache) the guest images.
pub fn guest_images() -> Result<GuestImages> {
    let script = workspace_root().join("resources/build-guest.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    if !out.status.success() {
        return Err(Error::Artifact(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    let images = parse_build_output(&String::from_utf8_lossy(&out.stdout))?;
    for p in [&images.testguest, &images.vmlinux, &images.initramfs] {
        if !p.is_file() {
            return Err(Error::Artifact(format!(
                "{} (from build-guest.sh) does not exist",
                p.display()
            )));
        }
    }
    Ok(images)
}

/// The tern binary (see the module docs for the search order).
pub fn tern_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os("TERN_BIN") {
        candidates.push(PathBuf::from(p));
    } else {
        // Release builds first; the debug build is what `cargo test
        // --workspace` leaves (tern-vmm's own tests build it).
        let mut targets = Vec::new();
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            targets.push(PathBuf::from(dir));
        }
        targets.push(workspace_root().join("target"));
        for profile in ["release", "debug"] {
            candidates.extend(targets.iter().map(|t| t.join(profile).join("tern")));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::Artifact(format!(
                "no tern binary at {} (build it: cargo build --release -p tern-vmm, or set TERN_BIN)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        })
}

/// The QEMU binary.
pub fn qemu_binary() -> Result<PathBuf> {
    let name = std::env::var_os("TERN_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
    if name.components().count() > 1 {
        return if name.is_file() {
            Ok(name)
        } else {
            Err(Error::Artifact(format!(
                "{} does not exist",
                name.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Artifact(format!(
                "{} is not on PATH (apt-get install qemu-system-x86, or set TERN_QEMU)",
                name.display()
            ))
        })
}

/// Fails unless `/dev/kvm` can be opened read-write.
pub fn require_kvm() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| Error::Artifact(format!("/dev/kvm: {e} (these runs need KVM)")))
}

/// Whether `/dev/kvm` is provided by kvm_pvm (its guests need the same
/// Linux command-line workarounds under every VMM).
pub fn host_is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_output_lines() {
        let out = "kernel=/c/bzImage\nvmlinux=/c/vmlinux\ntestguest=/c/tg\ninitramfs=/c/i.cpio\ninitramfs_live=/c/l.cpio\n";
        let g = parse_build_output(out).unwrap();
        assert_eq!(g.testguest, PathBuf::from("/c/tg"));
        assert_eq!(g.initramfs, PathBuf::from("/c/i.cpio"));
        assert_eq!(g.bzimage, PathBuf::from("/c/bzImage"));
        let e = parse_build_output("kernel=/x\n").unwrap_err();
        assert!(e.to_string().contains("testguest="), "{e}");
    }
}
